"""robustdistiller/cli.py: the ``robustdistiller`` command's dispatch, the distill and copy-recipe commands."""

import os
import sys

import pytest

from tests.conftest import REPOSITORY_ROOT

from robustdistiller import cli


def test_each_tool_gets_the_rest_of_the_line_and_its_own_name(monkeypatch, capsys):
    received = []
    monkeypatch.setitem(cli.COMMANDS, "export", lambda argv: received.append((sys.argv[0], argv)))
    assert cli.main(["export", "--help", "source", "--onnx"]) == 0
    assert received == [("robustdistiller export", ["--help", "source", "--onnx"])]
    assert sys.argv[0] != "robustdistiller export"  # restored
    with pytest.raises(SystemExit) as exit_request:
        cli.main(["exports"])
    assert exit_request.value.code == 2 and "invalid choice: 'exports'" in capsys.readouterr().err
    assert cli.main([]) == 2 and "copy-recipe NAME FOLDER" in capsys.readouterr().err


def test_real_export_help_is_reached(capsys):
    with pytest.raises(SystemExit) as exit_request:
        cli.main(["export", "--help"])
    assert exit_request.value.code == 0
    assert capsys.readouterr().out.startswith("usage: robustdistiller export")


def test_distill_runs_train_py_on_a_yaml_path_or_name_with_the_overrides_in_order(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda command, env: calls.append(command) or 7)
    assert cli.main(["distill", "distill.yaml", "--data_folder=/data", "--seed", "3"]) == 7
    own_yaml = tmp_path / "mine.yaml"
    own_yaml.write_text("seed: 1\n", encoding="utf-8")
    assert cli.main(["distill", str(own_yaml)]) == 7
    train_script = os.path.join(REPOSITORY_ROOT, "train.py")
    assert calls == [
        [
            sys.executable,
            train_script,
            os.path.join(REPOSITORY_ROOT, "hparams", "distill.yaml"),
            "--data_folder=/data",
            "--seed",
            "3",
        ],
        [sys.executable, train_script, str(own_yaml)],
    ]
    with pytest.raises(SystemExit) as exit_request:
        cli.main(["distill", "nope.yaml"])
    error = capsys.readouterr().err
    assert exit_request.value.code == 2 and "no YAML 'nope.yaml'" in error and "distilhubert.yaml" in error
    assert len(calls) == 2


def test_copy_recipe_and_list_recipes(tmp_path, capsys):
    assert cli.main(["copy-recipe", "KS", str(tmp_path / "ks")]) == 0
    assert os.path.isfile(tmp_path / "ks" / "train.py")
    assert cli.main(["copy-recipe", "KS", str(tmp_path / "ks")]) == 2
    assert "ks exists and is not an empty folder" in capsys.readouterr().err
    assert cli.main(["list-recipes"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith("distill") and "SpeechCommands/KS" in listed
