"""The install is the tested install: ``constraints.txt`` pins the whole working set.

``requirements.txt`` is the readable list of what the package needs (some entries with lower bounds
only), ``requirements-dev.txt`` adds the test and lint tools; ``constraints.txt`` fixes the version of every package that ``make test`` and ``.ci/run``
install. These tests fail when the two files disagree, or when the environment running the tests is
not the pinned one (a fresh install resolving to newer releases than CI tested).
"""

from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def _requirement_lines(path):
    """Non-empty lines of a requirements-style file, comments removed."""
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-r "):  # requirements-dev.txt includes requirements.txt
            lines.append(line)
    return lines


def _pins():
    """``{canonical name: version}`` from constraints.txt; every line must be ``name==version``."""
    pins = {}
    for line in _requirement_lines(ROOT / "constraints.txt"):
        requirement = Requirement(line)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", (
            f"constraints.txt: {line!r} is not pinned as name==version"
        )
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"constraints.txt pins {requirement.name} twice"
        pins[name] = specifiers[0].version
    return pins


def test_every_requirement_is_pinned_within_its_range():
    pins = _pins()
    for line in _requirement_lines(ROOT / "requirements.txt") + _requirement_lines(ROOT / "requirements-dev.txt"):
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"requirements.txt needs {requirement.name}, constraints.txt does not pin it"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {requirement.name}=={pins[name]}, outside requirements.txt's {requirement.specifier}"
        )


def test_installed_environment_is_the_pinned_set():
    pins = _pins()
    mismatched = []
    for name, version in sorted(pins.items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            mismatched.append(f"{name}: pinned {version}, not installed")
            continue
        if installed != version:
            mismatched.append(f"{name}: pinned {version}, installed {installed}")
    if mismatched:
        pytest.fail(
            "the environment is not the pinned working set (run `make venv` from a clean .venv, or "
            "refresh constraints.txt with `make lock`):\n  " + "\n  ".join(mismatched)
        )
