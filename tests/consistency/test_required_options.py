"""Every entry point run without its required options (the YAML's ``!PLACEHOLDER`` keys) names all of
them as command-line options and stops before anything is loaded or written.

HyperPyYAML alone reports one placeholder at a time, and in the downstream recipes an ``!applyref`` on
``upstream_source`` ran first and failed with ``TypeError: ... not TaggedScalar`` (issue 22, item 1).
"""

import glob
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPOSITORY_ROOT

ROOT_YAMLS = ("distill.yaml", "distilhubert.yaml", "dpwavlm.yaml", "robust_dpwavlm.yaml")

ENTRY_POINTS = [
    (os.path.join(os.path.dirname(os.path.dirname(yaml_file)), "train.py"), yaml_file)
    for yaml_file in sorted(glob.glob(os.path.join(REPOSITORY_ROOT, "recipes", "*", "*", "hparams", "*.yaml")))
] + [(os.path.join(REPOSITORY_ROOT, "train.py"), os.path.join(REPOSITORY_ROOT, "hparams", name)) for name in ROOT_YAMLS]


def _entry_point_id(entry_point):
    return os.path.relpath(entry_point[1], REPOSITORY_ROOT)


def _placeholders(yaml_file):
    """The top-level keys marked ``!PLACEHOLDER``, read independently of the code under test."""
    with open(yaml_file, encoding="utf-8") as fin:
        return re.findall(r"^(\w+):\s*!PLACEHOLDER\b", fin.read(), re.MULTILINE)


def test_every_entry_point_is_listed():
    assert len(ENTRY_POINTS) == 16, [_entry_point_id(e) for e in ENTRY_POINTS]
    for script, yaml_file in ENTRY_POINTS:
        assert os.path.isfile(script), script
        assert _placeholders(yaml_file), f"{yaml_file} has no !PLACEHOLDER (this test would check nothing)"


# Runs every entry point in one subprocess (each as ``__main__`` with its own argv), so torch and
# SpeechBrain are imported once rather than 16 times; the cwd is an empty folder checked after each run.
DRIVER = r"""
import contextlib, io, json, os, runpy, sys, traceback
results = {}
for script, yaml_file in json.loads(sys.argv[1]):
    sys.argv = [script, yaml_file]
    sys.path.insert(0, os.path.dirname(script))
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            runpy.run_path(script, run_name="__main__")
            status, message = 0, ""
        except SystemExit as stop:
            status = 1 if isinstance(stop.code, str) else (stop.code or 0)
            message = stop.code if isinstance(stop.code, str) else ""
        except BaseException:
            status, message = 1, traceback.format_exc()
    sys.path.remove(os.path.dirname(script))
    results[yaml_file] = {"status": status, "message": message + output.getvalue(), "written": sorted(os.listdir("."))}
print("RESULTS" + json.dumps(results))
"""


def _run(command, cwd):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=REPOSITORY_ROOT)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    """``{yaml_file: {status, message, written}}`` of every entry point run with no options."""
    import json

    work_folder = tmp_path_factory.mktemp("work")  # the relative output folders of the YAMLs would land here
    result = _run([sys.executable, "-c", DRIVER, json.dumps(ENTRY_POINTS)], work_folder)
    assert "RESULTS" in result.stdout, result.stdout + result.stderr
    return json.loads(result.stdout.split("RESULTS", 1)[1])


@pytest.mark.parametrize("entry_point", ENTRY_POINTS, ids=_entry_point_id)
def test_unset_placeholders_are_named_before_anything_is_written(entry_point, refusals):
    yaml_file = entry_point[1]
    outcome = refusals[yaml_file]
    message = outcome["message"]
    assert outcome["status"] != 0, message
    assert "Traceback" not in message, message
    assert "Missing required option" in message, message
    for name in _placeholders(yaml_file):
        assert f"--{name}" in message, f"--{name} not named:\n{message}"
    assert outcome["written"] == [], f"written before refusing the options: {outcome['written']}"


def test_the_refusal_from_a_shell(tmp_path):
    """The message as a user sees it (one entry point in its own interpreter): no traceback, exit status 1."""
    script = os.path.join(REPOSITORY_ROOT, "recipes", "SpeechCommands", "KS", "train.py")
    yaml_file = os.path.join(REPOSITORY_ROOT, "recipes", "SpeechCommands", "KS", "hparams", "superb_ks.yaml")
    result = _run([sys.executable, script, yaml_file, "--data_folder=/nowhere"], tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "Missing required options: --test_folder, --upstream_source" in result.stderr, result.stderr
    assert "--data_folder" not in result.stderr.split("(")[0], result.stderr
    assert os.listdir(tmp_path) == []
