"""Running the (task, upstream) pairs of a spec, or printing their commands; done pairs are skipped.

A pair is *done* when its output folder holds ``results.json``. A folder that already holds a
``hyperparams.yaml`` is only reused when it is what the spec would run now (the recipe YAML with the
pair's overrides, compared key by key): otherwise the pair is refused with :class:`PairMismatch`,
naming the pair, the keys and both values. Each run's console output goes to
``<output_root>/logs/<TASK>/<upstream>.log``; ``<output_root>/logs/status.json`` records how each run ended
(the tables show a failed pair as ``failed: <log>``).
"""

import datetime
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time

import ruamel.yaml
import speechbrain as sb
from hyperpyyaml import resolve_references

from robustdistiller import child_environment

logger = logging.getLogger(__name__)

STATUS_FILE = "status.json"


class PairMismatch(RuntimeError):
    """Pairs whose output folder was run with other options than the spec's (never silently reused)."""


def command_for(spec, pair):
    """``[python, recipes/.../train.py, recipes/.../hparams/x.yaml, --key=<json>, ...]`` of ``pair``.

    Values are written as JSON (which YAML reads), as ``tests/conftest.py`` does.
    """
    return [spec.python, pair.task.train_script] + command_for_arguments(pair)


def command_for_arguments(pair):
    """The recipe's ``sys.argv[1:]`` for ``pair`` (YAML and ``--key=<json>`` options)."""
    return [pair.task.hparams_file] + [f"--{key}={json.dumps(value)}" for key, value in pair.overrides.items()]


def format_command(command):
    """One shell line (each argument quoted where needed)."""
    return " ".join(shlex.quote(part) for part in command)


def _plain(node):
    """A ruamel node as plain, comparable Python values (tags kept as ``!tag value``)."""
    if isinstance(node, dict):
        return {str(key): _plain(value) for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(value) for value in node]
    tag = getattr(getattr(node, "tag", None), "value", None)
    if tag:  # TaggedScalar
        return f"{tag} {getattr(node, 'value', '')}"
    if hasattr(node, "value") and not isinstance(node, (str, int, float, bool)):
        return str(node.value)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, (int, float)):
        return float(node) if isinstance(node, float) else int(node)
    return str(node)


def _load_plain(text):
    loader = ruamel.yaml.YAML()
    return _plain(loader.load(text) or {})


def expected_hyperparams(pair):
    """The ``hyperparams.yaml`` content (plain values) the recipe would write for ``pair``."""
    # The overrides exactly as the recipe gets them: ``sb.parse_arguments`` keeps SpeechBrain's run
    # options (``--grad_accumulation_factor``, ``--precision``...) out of the YAML overrides.
    _, _, overrides = sb.parse_arguments(command_for_arguments(pair))
    with open(pair.task.hparams_file, encoding="utf-8") as fin:
        resolved = resolve_references(fin, overrides)
    return _load_plain(resolved.getvalue())


def hyperparams_differences(pair):
    """``[(key, recorded value, value the spec would run)]`` for a folder with ``hyperparams.yaml``; [] if none.

    ``hyperparams.yaml`` is what SpeechBrain wrote when the pair last started: the recipe YAML with the
    overrides of that run.
    """
    path = os.path.join(pair.output_folder, "hyperparams.yaml")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as fin:
        recorded = _load_plain(fin.read())
    expected = expected_hyperparams(pair)
    missing = object()
    differences = []
    for key in list(expected) + [key for key in recorded if key not in expected]:
        old, new = recorded.get(key, missing), expected.get(key, missing)
        if old != new:
            differences.append((key, "<absent>" if old is missing else old, "<absent>" if new is missing else new))
    # Keys derived from a changed option (``opt_class`` from ``lr``...) differ too: name the options
    # themselves (the spec's overrides and those of the recorded run) when they explain the difference.
    options = set(pair.overrides) | set(_recorded_overrides(pair.output_folder))
    named = [difference for difference in differences if difference[0] in options]
    return (named or differences) + run_option_differences(pair)


def run_option_differences(pair):
    """Differences in SpeechBrain run options (not in ``hyperparams.yaml``), read from ``run_info.json``'s command.

    Only scalar run options are compared (``--grad_accumulation_factor=1``, ``--precision="bf16"``).
    """
    path = os.path.join(pair.output_folder, "run_info.json")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as fin:
        command = json.load(fin).get("command") or ""
    _, _, yaml_overrides = sb.parse_arguments(command_for_arguments(pair))
    yaml_keys = set(ruamel.yaml.YAML().load(yaml_overrides or "{}") or {})
    differences = []
    for key, value in pair.overrides.items():
        if key in yaml_keys:
            continue
        found = re.search(rf"--{re.escape(key)}[= ](\S+)", command)
        recorded = found.group(1) if found else "<absent>"
        if recorded != json.dumps(value):
            differences.append((f"{key} (run option)", recorded, json.dumps(value)))
    return differences


def _recorded_overrides(output_folder):
    path = os.path.join(output_folder, "run_info.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as fin:
        return json.load(fin).get("overrides") or {}


def _short(value, limit=160):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_pairs(spec):
    """Splits the spec's pairs into ``(done, to_run)``; raises :class:`PairMismatch` for folders run otherwise.

    Every pair is checked before anything runs, and the error lists all the refused pairs.
    """
    done, to_run, refused = [], [], []
    for pair in spec.pairs():
        differences = hyperparams_differences(pair)
        if differences:
            lines = [
                f"  {key}: {_short(old)} in {pair.output_folder}/"
                f"{'run_info.json' if key.endswith('(run option)') else 'hyperparams.yaml'}, {_short(new)} in the spec"
                for key, old, new in differences
            ]
            refused.append(f"{pair.label} ({pair.output_folder}) was run with other options:\n" + "\n".join(lines))
        elif os.path.isfile(os.path.join(pair.output_folder, "results.json")):
            done.append(pair)
        else:
            to_run.append(pair)
    if refused:
        raise PairMismatch(
            f"Report spec {spec.path}: {len(refused)} pair(s) refused (their folders are never silently "
            "reused; restore the spec's values, or remove the folder / choose another output_root):\n"
            + "\n".join(refused)
        )
    return done, to_run


def read_status(spec):
    """``{"TASK/upstream": {"status", "returncode", "log", "seconds", "finished"}}`` of earlier runs."""
    path = os.path.join(spec.log_folder, STATUS_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as fin:
        return json.load(fin)


def _write_status(spec, status):
    os.makedirs(spec.log_folder, exist_ok=True)
    path = os.path.join(spec.log_folder, STATUS_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as fout:
        json.dump(status, fout, indent=2)
    os.replace(path + ".tmp", path)


def print_commands(spec, pairs, stream=None):
    """Prints one command per pair to run (for a cluster), nothing else, to ``stream`` (stdout)."""
    stream = stream or sys.stdout
    for pair in pairs:
        print(format_command(command_for(spec, pair)), file=stream)


def run_pairs(spec, pairs, done=(), stream=None):
    """Runs ``pairs`` one after the other, one progress line each; returns the ``status.json`` content.

    A failing run does not stop the others; its status is ``failed`` with its exit code and log.
    """
    stream = stream or sys.stdout
    status = read_status(spec)
    total = len(pairs) + len(done)
    for index, pair in enumerate(done, start=1):
        print(
            f"[{index}/{total}] {pair.label}: done earlier ({pair.output_folder}/results.json), skipped",
            file=stream,
            flush=True,
        )
    environment = child_environment()
    for index, pair in enumerate(pairs, start=len(done) + 1):
        log_file = spec.log_file(pair)
        os.makedirs(os.path.dirname(log_file), exist_ok=True)
        command = command_for(spec, pair)
        print(f"[{index}/{total}] {pair.label}: running (log: {log_file})", file=stream, flush=True)
        start = time.time()
        with open(log_file, "w", encoding="utf-8") as log:
            log.write("# " + format_command(command) + "\n")
            log.flush()
            returncode = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
        seconds = round(time.time() - start, 1)
        succeeded = returncode == 0 and os.path.isfile(os.path.join(pair.output_folder, "results.json"))
        status[pair.label] = {
            "status": "done" if succeeded else "failed",
            "returncode": returncode,
            "log": log_file,
            "seconds": seconds,
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        _write_status(spec, status)
        if succeeded:
            print(f"[{index}/{total}] {pair.label}: done in {seconds:.0f} s", file=stream, flush=True)
        else:
            print(
                f"[{index}/{total}] {pair.label}: FAILED (exit {returncode}) after {seconds:.0f} s, see {log_file}",
                file=stream,
                flush=True,
            )
    return status
