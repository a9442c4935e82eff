"""Downstream runs know their upstream: identity recorded and checked, output folders per upstream,
single strings as one-item lists, counts >= 1, one run per output folder.

One tiny KS run (random tiny WavLM upstream, one epoch, clean test only) is shared by the recipe
tests; the reruns in its folder either stop before writing anything or resume without training.
"""

from pathlib import Path
import json
import os
import shutil

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml, resolve_references
from ruamel.yaml import YAML

from tests.conftest import REPOSITORY_ROOT, folder_snapshot, run_recipe_script

from robustdistiller.downstream import (
    FrozenUpstream,
    UpstreamChangedError,
    build_corruptors,
    check_downstream_options,
    check_upstream_identity,
    read_upstream_identity,
    upstream_name,
)
from robustdistiller.runs.fingerprint import weights_fingerprint
from robustdistiller.testing.fixtures.speech_commands import generate_speech_commands
from robustdistiller.runs.options import OptionError
from robustdistiller.runs.run_folder import LOCK_FILE, lock_output_folder, release_output_folder
from robustdistiller.models.teacher import save_random_teacher

KS_FOLDER = os.path.join(REPOSITORY_ROOT, "recipes", "SpeechCommands", "KS")
RECIPE_YAMLS = {
    "KS": "SpeechCommands/KS/hparams/superb_ks.yaml",
    "IC": "FluentSpeechCommands/IC/hparams/superb_ic.yaml",
    "ER": "IEMOCAP/ER/hparams/superb_er.yaml",
    "SID": "VoxCeleb1/SID/hparams/superb_sid.yaml",
    "ASV": "VoxCeleb1/ASV/hparams/superb_asv.yaml",
}


@pytest.fixture(scope="module")
def speech_commands(tmp_path_factory):
    return generate_speech_commands(str(tmp_path_factory.mktemp("speech_commands")), seed=0)


@pytest.fixture(scope="module")
def other_teacher_folder(tmp_path_factory):
    """Upstream B: the same tiny WavLM architecture as ``tiny_teacher_folder``, other random weights."""
    return save_random_teacher(str(tmp_path_factory.mktemp("teacher_b")), model_type="wavlm", tiny=True, seed=1)


def ks_overrides(speech_commands, upstream_source, output_folder, **extra):
    overrides = {
        "data_folder": speech_commands["data_folder"],
        "test_folder": speech_commands["test_folder"],
        "upstream_source": upstream_source,
        "output_folder": output_folder,
        "number_of_epochs": 1,
        "test_condition_names": "clean",  # a single string: a one-item list
        "train_dataloader_opts": {"batch_size": 8, "drop_last": True, "num_workers": 0},
        "valid_dataloader_opts": {"batch_size": 16, "num_workers": 0},
    }
    overrides.update(extra)
    return overrides


def run_ks(overrides):
    return run_recipe_script("SpeechCommands/KS", "hparams/superb_ks.yaml", overrides)


@pytest.fixture(scope="module")
def first_run(speech_commands, tiny_teacher_folder, other_teacher_folder, tmp_path_factory):
    """A finished one-epoch KS run with upstream A, and snapshots of every input folder."""
    inputs = (speech_commands["data_folder"], speech_commands["test_folder"], tiny_teacher_folder, other_teacher_folder)
    before = folder_snapshot(*inputs)
    output = str(tmp_path_factory.mktemp("ks_runs") / "ks")
    code, log = run_ks(ks_overrides(speech_commands, tiny_teacher_folder, output))
    assert code == 0, log
    return {"output": output, "inputs": inputs, "before": before}


def output_state(folder):
    """Snapshot of an output folder, without the lock file (every start rewrites its holder)."""
    return {path: state for path, state in folder_snapshot(folder).items() if os.path.basename(path) != LOCK_FILE}


# ---------------------------------------------------------------------------- the recipe runs ---


def test_run_records_its_upstream_in_save_folder_and_results(first_run, tiny_teacher_folder):
    expected = FrozenUpstream(tiny_teacher_folder).identity()
    assert expected["fingerprint"] == weights_fingerprint(FrozenUpstream(tiny_teacher_folder).model)
    recorded = read_upstream_identity(os.path.join(first_run["output"], "save"))
    assert recorded == expected
    assert recorded["kind"] == "hf" and recorded["source_path"] == os.path.abspath(tiny_teacher_folder)
    assert (recorded["num_layers"], recorded["hidden_size"]) == (13, 64)
    assert recorded["include_predictions"] is False and recorded["per_utterance_norm"] is True
    results = json.loads(Path(os.path.join(first_run["output"], "results.json")).read_text())
    assert results["upstream"] == expected
    assert list(results["results"]) == ["clean"]  # test_condition_names="clean" ran that one condition
    run_log = Path(os.path.join(first_run["output"], "log.txt")).read_text()
    assert f"fingerprint {expected['fingerprint']}) recorded in" in run_log
    assert folder_snapshot(*first_run["inputs"]) == first_run["before"]


def test_rerun_with_another_upstream_is_refused_naming_both(
    first_run, speech_commands, tiny_teacher_folder, other_teacher_folder
):
    output = first_run["output"]
    before = output_state(output)
    code, log = run_ks(ks_overrides(speech_commands, other_teacher_folder, output))
    assert code != 0
    assert "UpstreamChangedError" in log
    fingerprint_a = FrozenUpstream(tiny_teacher_folder).identity()["fingerprint"]
    fingerprint_b = FrozenUpstream(other_teacher_folder).identity()["fingerprint"]
    assert fingerprint_a != fingerprint_b
    for text in (
        fingerprint_a,
        fingerprint_b,
        os.path.abspath(tiny_teacher_folder),
        os.path.abspath(other_teacher_folder),
        "fingerprint: recorded",
        "--output_folder",
    ):
        assert text in log, text
    # refused before anything was written: the head, the logs, the YAML copy and the results are A's
    assert output_state(output) == before
    assert folder_snapshot(*first_run["inputs"]) == first_run["before"]


def test_same_upstream_by_another_path_resumes(first_run, speech_commands, tiny_teacher_folder):
    output = first_run["output"]
    relative = os.path.relpath(tiny_teacher_folder, KS_FOLDER)  # the recipe runs in its own folder
    assert relative != tiny_teacher_folder
    code, log = run_ks(ks_overrides(speech_commands, relative, output))
    assert code == 0, log
    run_log = Path(os.path.join(output, "log.txt")).read_text()
    assert "is the one recorded for this folder: resuming" in run_log  # same absolute path, same weights
    train_log = Path(os.path.join(output, "train_log.txt")).read_text()
    assert train_log.count("valid accuracy") == 1  # the finished epoch was recovered, not trained again
    results = json.loads(Path(os.path.join(output, "results.json")).read_text())
    assert results["upstream"]["source"] == relative
    assert results["upstream"]["fingerprint"] == FrozenUpstream(tiny_teacher_folder).identity()["fingerprint"]
    # the record keeps the first spelling
    assert read_upstream_identity(os.path.join(output, "save"))["source"] == tiny_teacher_folder
    assert folder_snapshot(*first_run["inputs"]) == first_run["before"]


def test_zero_epochs_is_refused_before_anything_is_written(speech_commands, tiny_teacher_folder, tmp_path):
    output = str(tmp_path / "zero")
    code, log = run_ks(ks_overrides(speech_commands, tiny_teacher_folder, output, number_of_epochs=0))
    assert code != 0
    assert "Option `number_of_epochs` must be an integer >= 1, got 0" in log
    assert folder_snapshot(output) == {}  # (the checkpointer makes the empty save folder when the YAML loads)


def test_a_second_run_in_a_locked_output_folder_stops(speech_commands, tiny_teacher_folder, tmp_path):
    output = str(tmp_path / "locked")
    lock_output_folder(output)  # a live run holds it
    try:
        code, log = run_ks(ks_overrides(speech_commands, tiny_teacher_folder, output))
    finally:
        release_output_folder(output)
    assert code != 0
    assert "OutputFolderInUse" in log and "another --output_folder" in log
    assert output_state(output) == {}  # nothing of the refused run (the save folder the YAML made is empty)


# ------------------------------------------------------------------ default output folder name ---


def test_upstream_name_is_short_safe_and_spelling_independent(tmp_path, monkeypatch):
    assert upstream_name("microsoft/wavlm-base-plus") == "wavlm-base-plus"
    assert upstream_name("facebook/hubert-base-ls960") == "hubert-base-ls960"
    run = tmp_path / "robust_run"
    checkpoint = run / "save" / "CKPT+2024-05-01+12-00-00+00"
    checkpoint.mkdir(parents=True)
    assert upstream_name(str(checkpoint)) == "robust_run-CKPT+2024-05-01+12-00-00+00"
    assert upstream_name(str(run / "save")) == upstream_name(str(run)) == "robust_run"
    assert upstream_name(str(checkpoint / "student.ckpt")) == "robust_run-CKPT+2024-05-01+12-00-00+00-student"
    monkeypatch.chdir(tmp_path)
    assert upstream_name("robust_run") == upstream_name("./robust_run/") == upstream_name(str(run))
    assert upstream_name("/models/odd name $HOME;rm") == "odd_name_HOME_rm"
    long_name = upstream_name("/models/" + "x" * 200)
    assert len(long_name) == 80 and long_name != upstream_name("/models/" + "x" * 199)
    with pytest.raises(OptionError, match="upstream_source"):
        upstream_name("")


def plain_options(task, upstream_source):
    """A recipe YAML's values, references resolved, no object built (as ER's run_all_folds reads it)."""
    overrides = {"data_folder": "/data", "test_folder": "/data/test", "upstream_source": upstream_source}
    with open(os.path.join(REPOSITORY_ROOT, "recipes", RECIPE_YAMLS[task]), encoding="utf-8") as fin:
        return YAML().load(resolve_references(fin, overrides))


@pytest.mark.parametrize("task", sorted(RECIPE_YAMLS))
def test_default_output_folder_carries_the_upstream_name(task, tiny_teacher_folder, other_teacher_folder):
    folders = {}
    for source in ("microsoft/wavlm-base-plus", tiny_teacher_folder, other_teacher_folder):
        options = plain_options(task, source)
        assert options["upstream_name"] == upstream_name(source)
        assert options["output_folder"] == f"results/{task}/{upstream_name(source)}/{options['seed']}"
        assert options["save_folder"] == options["output_folder"] + "/save"
        folders[source] = options["output_folder"]
    assert len(set(folders.values())) == 3


def test_built_ks_yaml_has_one_output_folder_per_upstream(speech_commands, tiny_teacher_folder, other_teacher_folder):
    folders = []
    for source in (tiny_teacher_folder, other_teacher_folder):
        overrides = {
            "data_folder": speech_commands["data_folder"],
            "test_folder": speech_commands["test_folder"],
            "upstream_source": source,
        }
        with open(os.path.join(REPOSITORY_ROOT, "recipes", RECIPE_YAMLS["KS"]), encoding="utf-8") as fin:
            hparams = load_hyperpyyaml(fin, overrides)
        assert hparams["upstream"].source == source
        folders.append(hparams["output_folder"])
    assert folders == [
        f"results/KS/{os.path.basename(tiny_teacher_folder)}/1986",
        f"results/KS/{os.path.basename(other_teacher_folder)}/1986",
    ]


# ---------------------------------------------------------------------- identity, options (unit) ---


def test_identity_check_compares_weights_not_paths(tiny_teacher_folder, other_teacher_folder, tmp_path):
    save_folder = str(tmp_path / "save")
    first = FrozenUpstream(tiny_teacher_folder)
    check_upstream_identity(save_folder, first)
    copy = shutil.copytree(tiny_teacher_folder, str(tmp_path / "copy_of_a"))
    assert check_upstream_identity(save_folder, FrozenUpstream(copy))["source"] == tiny_teacher_folder  # accepted
    with pytest.raises(UpstreamChangedError, match="per_utterance_norm: recorded True, now False"):
        check_upstream_identity(save_folder, FrozenUpstream(tiny_teacher_folder, per_utterance_norm=False))
    with pytest.raises(UpstreamChangedError) as refused:
        check_upstream_identity(save_folder, FrozenUpstream(other_teacher_folder))
    message = str(refused.value)
    assert "fingerprint: recorded" in message and "num_layers" not in message  # only what differs
    assert os.path.abspath(tiny_teacher_folder) in message and os.path.abspath(other_teacher_folder) in message
    # a process that only checks (not the main one) writes nothing
    assert check_upstream_identity(str(tmp_path / "other"), first, record=False) is None
    assert not os.path.exists(tmp_path / "other")


def test_fingerprint_ignores_device_order_and_grad_but_not_values():
    layer = torch.nn.Linear(3, 2)
    state = {name: tensor.clone() for name, tensor in reversed(list(layer.state_dict().items()))}
    assert weights_fingerprint(layer) == weights_fingerprint(state)
    assert weights_fingerprint(layer) == weights_fingerprint(layer.requires_grad_(False))
    changed = dict(state, bias=state["bias"] + 1e-6)
    assert weights_fingerprint(changed) != weights_fingerprint(state)
    assert weights_fingerprint({"bias": state["bias"].double()}) != weights_fingerprint({"bias": state["bias"]})
    assert weights_fingerprint({"b": state["bias"]}) != weights_fingerprint({"bias": state["bias"]})
    if torch.cuda.is_available():
        assert weights_fingerprint(layer.cuda()) == weights_fingerprint(state)


def test_list_options_accept_a_single_string_and_counts_are_checked(mini_corpus, tmp_path):
    options = {
        "number_of_epochs": "3",
        "number_of_updates": None,
        "test_condition_names": "snr5",
        "test_musan_subsets": "music",
        "test_noise_folders": str(tmp_path),
        "train_rirs_noises_subsets": "real",
    }
    check_downstream_options(options)
    assert options == {
        "number_of_epochs": 3,
        "number_of_updates": None,
        "test_condition_names": ["snr5"],
        "test_musan_subsets": ["music"],
        "test_noise_folders": [str(tmp_path)],
        "train_rirs_noises_subsets": ["real"],
    }
    for bad in ({"number_of_epochs": 0}, {"number_of_epochs": 2.5}, {"number_of_epochs": 2, "number_of_updates": 0}):
        with pytest.raises(OptionError, match="number_of_(epochs|updates)"):
            check_downstream_options(bad)
    # build_corruptors reads raw single strings too (not only after check_downstream_options)
    hparams = {
        "save_folder": str(tmp_path / "save"),
        "test_musan_folder": mini_corpus["musan"],
        "test_musan_subsets": "music",
        "test_noise_folders": [],
        "test_rir_folder": None,
        "test_conditions": {"clean": {"condition": "clean"}, "snr5": {"condition": "noise", "snr": 5}},
        "test_condition_names": "snr5",
        "seed": 1,
    }
    from robustdistiller.downstream import prepare_corruption_lists

    noise_csv, _ = prepare_corruption_lists(hparams)["test"]
    assert all("/music/" in line for line in Path(noise_csv).read_text().splitlines()[1:])
    _, _, conditions = build_corruptors(hparams)
    assert list(conditions) == ["snr5"]
    with pytest.raises(OptionError, match="test_condition_names.*snr3"):
        build_corruptors({**hparams, "test_condition_names": "snr3"})
