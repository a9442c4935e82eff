"""The run signature check: what a resume with a changed or newly signed setting logs."""

from robustdistiller.runs import run_folder
from robustdistiller.runs.run_folder import check_run_signature, write_run_signature


def test_checked_twice_warns_once(tmp_path, monkeypatch):
    """train.py and the Brain both check the signature of a resume: each warning reaches the log once."""
    # the module logger's calls are recorded directly: an earlier recipe in the same process may have
    # reconfigured logging (SpeechBrain's setup disables existing loggers), which caplog would not see past
    warnings = []
    monkeypatch.setattr(run_folder.logger, "warning", lambda text, *arguments: warnings.append(text % arguments))
    signature = {"lr": 0.001, "data_fingerprint": "abc"}
    for run in ("first", "second"):  # two runs with the same change: each is warned about once
        folder = str(tmp_path / run / "save")
        write_run_signature(folder, {"lr": 0.0002})
        for _ in range(2):
            changed = check_run_signature(folder, signature, accept=["lr"], resuming=True)
            assert changed == {"lr": (0.0002, 0.001)}
    assert sum("accepted on purpose: lr 0.0002 -> 0.001" in message for message in warnings) == 2
    assert sum("did not record data_fingerprint" in message for message in warnings) == 2
