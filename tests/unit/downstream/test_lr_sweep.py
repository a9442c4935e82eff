"""Learning-rate sweep entry point: the KS recipe swept over two learning rates on its fixture (best by
dev, resume without rerunning, a folder made with other overrides refused), and a stand-in recipe for
failures, retries and bad input."""

from pathlib import Path
import json
import logging
import os
import re
import textwrap

import pytest

from tests.conftest import REPOSITORY_ROOT

from robustdistiller.downstream import lr_sweep
from robustdistiller.testing.fixtures.speech_commands import generate_speech_commands

KS_FOLDER = os.path.join(REPOSITORY_ROOT, "recipes", "SpeechCommands", "KS")
LRS = (0.001, 0.1)


def ks_overrides(speech_commands, upstream):
    """Overrides that make the KS recipe tiny: a tiny random WavLM, 2 epochs, small batches, clean test."""
    return [
        f"--data_folder={speech_commands['data_folder']}",
        f"--test_folder={speech_commands['test_folder']}",
        f"--upstream_source={upstream}",
        "--number_of_epochs=2",
        "--projector_size=16",
        '--train_dataloader_opts={"batch_size": 8, "drop_last": true, "num_workers": 0}',
        '--valid_dataloader_opts={"batch_size": 16, "num_workers": 0}',
        '--test_condition_names=["clean"]',
    ]


def valid_accuracies(train_log):
    """Dev accuracy of every epoch from a recipe's train_log.txt (the plain reference of the sweep)."""
    with open(train_log, encoding="utf-8") as fin:
        return [float(value) for value in re.findall(r"valid accuracy: ([0-9.e+-]+)", fin.read())]


def tree_state(folder):
    """Path -> modification time of every file under ``folder``."""
    return {
        os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
        for root, _, names in os.walk(folder)
        for name in names
    }


@pytest.fixture(scope="module")
def ks_sweep(tmp_path_factory, tiny_teacher_folder):
    """One two-lr KS sweep (the runs are shared by the assertions), then a second, identical invocation."""
    root = tmp_path_factory.mktemp("lr_sweep")
    speech_commands = generate_speech_commands(
        str(root / "data"), seed=0, train_speakers=3, dev_speakers=2, test_speakers=1, background_seconds=3
    )
    sweep_folder = str(root / "sweep")
    argv = [
        "recipes/SpeechCommands/KS",
        "hparams/superb_ks.yaml",
        "--sweep-folder",
        sweep_folder,
        "--lrs",
        *map(str, LRS),
        "--metric",
        "accuracy",
        "--mode",
        "max",
        "--",
        *ks_overrides(speech_commands, tiny_teacher_folder),
    ]
    previous = os.getcwd()
    os.chdir(REPOSITORY_ROOT)  # the recipe folder is given relative to the repository, as in docs/downstream.md
    try:
        first_code = lr_sweep.main(argv)
        first_summary = json.loads(Path(os.path.join(sweep_folder, "sweep.json")).read_text())
        state = tree_state(sweep_folder)
        second_code = lr_sweep.main(argv)
        changed = lr_sweep.main(argv[:-1] + ["--projector_size=32"])
    finally:
        os.chdir(previous)
    return {
        "folder": sweep_folder,
        "codes": (first_code, second_code, changed),
        "first": first_summary,
        "state_before_second": state,
        "argv": argv,
    }


def test_ks_sweep_runs_each_lr_in_its_folder_and_picks_the_best_dev(ks_sweep):
    folder = ks_sweep["folder"]
    assert ks_sweep["codes"][0] == 0
    summary = ks_sweep["first"]
    runs = summary["runs"]
    assert [run["lr"] for run in runs] == list(LRS)
    assert [run["status"] for run in runs] == ["finished", "finished"]
    assert [run["folder"] for run in runs] == [os.path.join(folder, f"lr_{lr:g}") for lr in LRS]
    for run in runs:
        # the run trained with its own learning rate, in its own folder
        train_log = os.path.join(run["folder"], "train_log.txt")
        assert f"lr: {run['lr']:.2e}" in Path(train_log).read_text()
        assert json.loads(Path(os.path.join(run["folder"], "results.json")).read_text())["task"].startswith("KS")
        # the dev value read from the checkpoints is the best epoch of the recipe's own log
        accuracies = valid_accuracies(train_log)
        assert len(accuracies) == 2
        assert run["dev"] == pytest.approx(max(accuracies), rel=1e-2)
        assert os.path.dirname(run["checkpoint"]) == os.path.join(run["folder"], "save")
        assert 0.0 <= run["test"]["clean"] <= 1.0
    best = max(runs, key=lambda run: run["dev"])
    assert summary["best"]["lr"] == best["lr"] and summary["metric"] == "accuracy" and summary["mode"] == "max"
    table = Path(os.path.join(folder, "sweep.md")).read_text()
    assert "| 0.001" in table and "| 0.1" in table and f"{lr_sweep.format_lr(best['lr'])} (best)" in table
    assert os.path.getsize(os.path.join(folder, "sweep.png")) > 0
    settings = json.loads(Path(os.path.join(folder, lr_sweep.SETTINGS_FILE)).read_text())
    assert settings["recipe_folder"] == KS_FOLDER and "--projector_size=16" in settings["overrides"]


def test_ks_sweep_resumes_without_rerunning_and_refuses_other_overrides(ks_sweep):
    folder = ks_sweep["folder"]
    first_code, second_code, changed_code = ks_sweep["codes"]
    assert second_code == 0
    summary = json.loads(Path(os.path.join(folder, "sweep.json")).read_text())
    assert all(run["reused"] for run in summary["runs"])
    assert [run["dev"] for run in summary["runs"]] == [run["dev"] for run in ks_sweep["first"]["runs"]]
    assert summary["best"]["lr"] == ks_sweep["first"]["best"]["lr"]
    after = tree_state(folder)
    before = ks_sweep["state_before_second"]
    # nothing of the runs (checkpoints, logs, results) was rewritten: only the sweep's own table
    rewritten = {path for path in before if after.get(path) != before[path]}
    assert rewritten <= {os.path.join(folder, name) for name in ("sweep.json", "sweep.md", "sweep.png", ".run.lock")}
    assert set(after) == set(before)
    for lr in LRS:  # one attempt each in the logs
        assert Path(os.path.join(folder, "logs", f"lr_{lr:g}.log")).read_text().count("===== exit status 0") == 1
    assert changed_code == 2  # other overrides in the same sweep folder: refused before anything runs


# ------------------------------------------------------------------ a stand-in recipe (fast) ---

FAKE_TRAIN = textwrap.dedent(
    """
    import json, math, os, sys
    options = dict(argument[2:].split("=", 1) for argument in sys.argv[2:])
    lr, output = float(options["lr"]), options["output_folder"]
    os.makedirs(os.path.join(output, "save", "CKPT+1"), exist_ok=True)
    with open(os.path.join(output, "attempts.txt"), "a") as fout:
        fout.write("x")
    attempts = len(open(os.path.join(output, "attempts.txt")).read())
    dev = 1.0 - abs(math.log10(lr) + 2) / 10  # best at lr = 0.01
    with open(os.path.join(output, "save", "CKPT+1", "CKPT.yaml"), "w") as fout:
        fout.write(f"accuracy: {dev}\\nloss: 0.5\\nend-of-epoch: true\\n")
    if lr == 0.1 and attempts == 1 and options.get("fail_once") == "true":
        sys.exit("boom: first attempt at lr 0.1 fails")
    with open(os.path.join(output, "results.json"), "w") as fout:
        json.dump({"task": "fake", "results": {"clean": {"accuracy": dev - 0.1}}}, fout)
    """
)


@pytest.fixture
def fake_recipe(tmp_path):
    folder = tmp_path / "recipes" / "Fake" / "T"
    (folder / "hparams").mkdir(parents=True)
    (folder / "train.py").write_text(FAKE_TRAIN)
    (folder / "hparams" / "fake.yaml").write_text("seed: 1\nlr: 0.0001\noutput_folder: results/fake\n")
    return str(folder)


def test_a_failing_run_is_marked_and_retried_and_the_others_go_on(fake_recipe, tmp_path, caplog):
    sweep_folder = str(tmp_path / "sweep")
    argv = [
        fake_recipe,
        "hparams/fake.yaml",
        "--sweep-folder",
        sweep_folder,
        "--log-grid",
        "1e-3",
        "1e-1",
        "3",
        "--",
        "--fail_once=true",
    ]
    with caplog.at_level(logging.INFO, logger=lr_sweep.__name__):
        assert lr_sweep.main(argv) == 1
    summary = json.loads(Path(os.path.join(sweep_folder, "sweep.json")).read_text())
    assert [(run["lr"], run["status"]) for run in summary["runs"]] == [
        (0.001, "finished"),
        (0.01, "finished"),
        (0.1, "failed"),
    ]
    failed = summary["runs"][2]
    assert failed["log"] == os.path.join(sweep_folder, "logs", "lr_0.1.log")
    assert "boom" in Path(failed["log"]).read_text()
    assert failed["log"] in Path(os.path.join(sweep_folder, "sweep.md")).read_text()
    assert summary["best"]["lr"] == 0.01 and summary["best"]["dev"] == pytest.approx(1.0)
    assert summary["runs"][1]["test"] == {"clean": pytest.approx(0.9)}
    assert "[3/3] lr=0.1" in caplog.text and "lr_0.1.log" in caplog.text

    # next invocation: the finished runs are kept, the failed one is rerun in its own folder
    assert lr_sweep.main(argv) == 0
    attempts = {
        lr: Path(os.path.join(sweep_folder, f"lr_{lr:g}", "attempts.txt")).read_text() for lr in (0.001, 0.01, 0.1)
    }
    assert attempts == {0.001: "x", 0.01: "x", 0.1: "xx"}
    summary = json.loads(Path(os.path.join(sweep_folder, "sweep.json")).read_text())
    assert [run["reused"] for run in summary["runs"]] == [True, True, False]
    assert all(run["status"] == "finished" for run in summary["runs"])

    # more learning rates may be added to the sweep; lower-is-better selection
    assert lr_sweep.main(argv[:4] + ["--lrs", "1e-4", "1e-3", "--metric", "loss", "--mode", "min"] + argv[-2:]) == 0
    assert os.path.isdir(os.path.join(sweep_folder, "lr_0.0001"))


def test_a_recipe_name_is_the_package_recipe_unless_a_folder_of_that_name_is_here(fake_recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    package_recipe = os.path.join(REPOSITORY_ROOT, "recipes", "SpeechCommands", "KS")
    for name in ("SpeechCommands/KS", "recipes/SpeechCommands/KS"):
        assert lr_sweep.resolve_recipe(name, "hparams/superb_ks.yaml") == (
            package_recipe,
            os.path.join(package_recipe, "hparams", "superb_ks.yaml"),
        )
    assert lr_sweep.resolve_recipe("recipes/Fake/T", "hparams/fake.yaml")[0] == fake_recipe  # a folder here wins
    with pytest.raises(lr_sweep.SweepError, match="'Nowhere/KS' does not exist.*robustdistiller list-recipes"):
        lr_sweep.resolve_recipe("Nowhere/KS", "hparams/superb_ks.yaml")


def test_bad_input_is_named(fake_recipe, tmp_path):
    sweep_folder = str(tmp_path / "sweep")
    with pytest.raises(lr_sweep.SweepError, match=r"nowhere.*train.py"):
        lr_sweep.run_sweep(str(tmp_path / "nowhere"), "hparams/fake.yaml", [1e-3], sweep_folder)
    with pytest.raises(lr_sweep.SweepError, match=r"missing.yaml.*\['fake.yaml'\]"):
        lr_sweep.run_sweep(fake_recipe, "hparams/missing.yaml", [1e-3], sweep_folder)
    with pytest.raises(lr_sweep.SweepError, match="--output_folder"):
        lr_sweep.run_sweep(fake_recipe, "hparams/fake.yaml", [1e-3], sweep_folder, overrides=["--output_folder=x"])
    with pytest.raises(lr_sweep.SweepError, match="no top-level option `learning_rate`.*--lr-key"):
        lr_sweep.run_sweep(fake_recipe, "hparams/fake.yaml", [1e-3], sweep_folder, lr_key="learning_rate")
    with pytest.raises(lr_sweep.SweepError, match="given twice"):
        lr_sweep.run_sweep(fake_recipe, "hparams/fake.yaml", [1e-3, 0.001], sweep_folder)
    assert not os.path.exists(sweep_folder)  # nothing written before the input is checked
    (tmp_path / "here").mkdir()
    previous = os.getcwd()
    os.chdir(tmp_path)
    try:  # a path relative to the caller's folder would be read from the recipe folder: named
        assert lr_sweep.warn_relative_paths(["--data_folder=here", "--seed=1"], fake_recipe) == ["data_folder"]
    finally:
        os.chdir(previous)
    # a run without the requested dev metric is reported, not picked
    summary = lr_sweep.run_sweep(fake_recipe, "hparams/fake.yaml", [1e-3], sweep_folder, metric="EER", mode="min")
    assert summary["runs"][0]["status"] == "no dev metric" and "accuracy" in summary["runs"][0]["error"]
    assert summary["best"] is None
    with pytest.raises(lr_sweep.SweepSettingsError, match="overrides: recorded \\[\\], now \\['--seed=2'\\]"):
        lr_sweep.run_sweep(fake_recipe, "hparams/fake.yaml", [1e-3], sweep_folder, overrides=["--seed=2"])
    with pytest.raises(SystemExit):  # --lrs and --log-grid are exclusive
        lr_sweep.parse_arguments(
            [fake_recipe, "h.yaml", "--sweep-folder", "s", "--lrs", "1", "--log-grid", "1", "2", "3"]
        )
