"""A non-editable install is a real install: the wheel declares its dependencies and the ``robustdistiller``
command, ships ``train.py``, ``hparams/`` and ``recipes/``, and works from a fresh venv outside the checkout.

The wheel is built offline from a copy of the sources (the checkout is left as it is) and installed without
dependencies into a fresh venv; the fresh venv sees the project venv's packages through a plain path line in a
``.pth`` file, which (unlike the project venv's own ``.pth`` files) does not run the editable install's finder,
so ``import robustdistiller`` there can only find the wheel's copy.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPOSITORY_ROOT
from tests.consistency.test_install import _requirement_lines

from robustdistiller.recipe_files import list_recipes

SOURCE_ENTRIES = (
    "pyproject.toml",
    "setup.py",
    "MANIFEST.in",
    "README.md",
    "LICENSE",
    "requirements.txt",
    "requirements-dev.txt",
    "constraints.txt",
    "train.py",
    "hparams",
    "recipes",
    "robustdistiller",
)


@pytest.fixture(scope="module")
def wheel_path(tmp_path_factory):
    """The wheel built from a copy of the checkout's sources."""
    source = tmp_path_factory.mktemp("source")
    ignored = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "results")
    for name in SOURCE_ENTRIES:
        path = os.path.join(REPOSITORY_ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, source / name, ignore=ignored)
        else:
            shutil.copy2(path, source / name)
    dist = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)]
    subprocess.run([*command, str(source)], check=True, capture_output=True, text=True)
    (wheel,) = dist.glob("robustdistiller-*.whl")
    return wheel


@pytest.fixture(scope="module")
def fresh_venv(wheel_path, tmp_path_factory):
    """A fresh venv with the wheel installed (no dependencies); returns its bin folder."""
    folder = tmp_path_factory.mktemp("venv")
    venv.create(folder, with_pip=False)
    python = folder / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q"]
    subprocess.run([*install, str(wheel_path)], check=True, capture_output=True, text=True)
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    project_paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    with open(os.path.join(site_packages, "project_dependencies.pth"), "w", encoding="utf-8") as fout:
        fout.write("\n".join(project_paths) + "\n")
    return folder / "bin"


def _run(command, cwd):
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=environment, timeout=300)


def test_wheel_declares_dependencies_command_and_recipe_files(wheel_path):
    with zipfile.ZipFile(wheel_path) as archive:
        names = set(archive.namelist())
        (metadata_name,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode("utf-8"))
        (entry_points_name,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        entry_points = archive.read(entry_points_name).decode("utf-8")
    declared = sorted(str(Requirement(line)) for line in metadata.get_all("Requires-Dist"))
    expected = sorted(str(Requirement(line)) for line in _requirement_lines(Path(REPOSITORY_ROOT) / "requirements.txt"))
    assert declared == expected
    assert "robustdistiller = robustdistiller.cli:main" in entry_points
    for path in (
        "robustdistiller/_recipes/train.py",
        "robustdistiller/_recipes/hparams/distill.yaml",
        "robustdistiller/_recipes/recipes/SpeechCommands/KS/train.py",
        "robustdistiller/_recipes/recipes/SpeechCommands/KS/hparams/superb_ks.yaml",
        "robustdistiller/downstream/package_data/iemocap_s3prl_order.tsv",
        "robustdistiller/downstream/protocol_presets/huang2022.yaml",
    ):
        assert path in names, f"the wheel lacks {path}"
    assert not [name for name in names if name.endswith(".pyc")]


def test_installed_wheel_runs_outside_the_checkout(fresh_venv, tmp_path):
    python, command = str(fresh_venv / "python"), str(fresh_venv / "robustdistiller")
    located = _run(
        [python, "-c", "import robustdistiller.recipe_files as r; print(r.__file__); print(r.recipe_root())"], tmp_path
    )
    assert located.returncode == 0, located.stderr
    module_file, recipe_root = located.stdout.split()
    venv_folder = str(fresh_venv.parent)
    assert module_file.startswith(venv_folder) and recipe_root.startswith(venv_folder), located.stdout

    for tool in ("export", "demo"):
        help_text = _run([command, tool, "--help"], tmp_path)
        assert help_text.returncode == 0, help_text.stderr
        assert help_text.stdout.startswith(f"usage: robustdistiller {tool}"), help_text.stdout

    listed = _run([command, "list-recipes"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1:] == list_recipes()  # the checkout's recipes, all shipped

    copied = _run([command, "copy-recipe", "KS", str(tmp_path / "my_ks")], tmp_path)
    assert copied.returncode == 0, copied.stderr
    assert (tmp_path / "my_ks" / "train.py").is_file() and (tmp_path / "my_ks" / "hparams").is_dir()
    refused = _run([command, "copy-recipe", "KS", str(tmp_path / "my_ks")], tmp_path)
    assert refused.returncode == 2 and "not an empty folder" in refused.stderr

    # The distillation's first step: the wheel's train.py runs on its YAML and names the missing options.
    distill = _run([command, "distill", "distill.yaml"], tmp_path)
    assert distill.returncode != 0
    assert "data_folder" in distill.stdout + distill.stderr
    assert not (tmp_path / "results").exists() or not os.listdir(tmp_path / "results")
