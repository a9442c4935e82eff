"""The run signature check: what a resume with a changed or newly signed setting logs."""

import logging

from robustdistiller.runs.run_folder import check_run_signature, write_run_signature


def test_checked_twice_warns_once(tmp_path, caplog):
    """train.py and the Brain both check the signature of a resume: each warning reaches the log once."""
    folder = str(tmp_path / "save")
    write_run_signature(folder, {"lr": 0.0002})
    signature = {"lr": 0.001, "data_fingerprint": "abc"}
    with caplog.at_level(logging.WARNING, logger="robustdistiller.runs.run_folder"):
        for _ in range(2):
            changed = check_run_signature(folder, signature, accept=["lr"], resuming=True)
            assert changed == {"lr": (0.0002, 0.001)}
    messages = [record.getMessage() for record in caplog.records]
    assert sum("accepted on purpose: lr 0.0002 -> 0.001" in message for message in messages) == 1
    assert sum("did not record data_fingerprint" in message for message in messages) == 1
