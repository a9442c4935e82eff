"""Learning-rate sweep of a downstream recipe: one run per learning rate, the best picked on dev.

SUPERB tunes the learning rate of every task and upstream on a log grid (``docs/reference/superb_tasks.md`` "Protocol";
batch sizes stay fixed). This entry point runs a recipe's ``train.py`` once per learning rate, each in
a subprocess and in its own output folder ``<sweep_folder>/lr_<value>``, reads each run's dev metric
and writes the table::

    python -m robustdistiller.downstream.lr_sweep recipes/SpeechCommands/KS hparams/superb_ks.yaml \\
        --sweep-folder results/lr_sweep/KS/wavlm-base-plus --lrs 1e-5 1e-4 1e-3 1e-2 1e-1 \\
        --metric accuracy --mode max \\
        -- --data_folder=/data/speech_commands_v0.01 --test_folder=/data/speech_commands_test_set_v0.01 \\
           --upstream_source=microsoft/wavlm-base-plus

``--log-grid 1e-5 1e-1 5`` is the same grid given as start, stop and number of points. Everything after
``--`` is passed to every run unchanged; the sweep adds ``--lr=<value>`` (``--lr-key`` names another
option) and ``--output_folder=<sweep_folder>/lr_<value>``, so neither may be among the overrides.
The runs start in the recipe folder, as ``python train.py`` does: relative paths among the overrides
are read from there (a warning names those that exist only from the current folder); the sweep
folder itself may be relative to the current folder.

Where the dev metric comes from
    The recipes keep their best dev checkpoint with ``save_and_keep_only(meta=<dev stats>,
    max_keys=[...] or min_keys=[...])``, so every kept ``<output_folder>/save/CKPT+*/CKPT.yaml`` holds
    the dev statistics of its epoch, and the best of them by ``--metric`` / ``--mode`` is the dev value
    of the checkpoint the recipe tested. (Checkpoints without the metric, e.g. intra-epoch ones, are
    ignored.) ``--mode`` must match the recipe's own selection (``max`` for accuracy, ``min`` for EER,
    PER, WER...). The test values of ``<output_folder>/results.json`` are copied into the table for
    information only; the choice never looks at them.

Outputs in the sweep folder
    ``sweep.json`` (settings, one row per learning rate, the best), ``sweep.md`` (the table),
    ``sweep.png`` (dev metric against the learning rate, when matplotlib is installed),
    ``sweep_settings.json`` (what the folder was made with) and ``logs/lr_<value>.log`` (each run's
    console output, appended at every attempt).

Resuming
    A learning rate whose run folder has ``results.json`` is finished and is not rerun (its dev metric
    is read again). Any other run (interrupted, or failed before) is started again in the same folder,
    where the recipe resumes from its own last checkpoint. A sweep folder made with another recipe,
    YAML, ``--lr-key`` or other overrides is refused (:class:`SweepSettingsError`); adding learning
    rates to a sweep is allowed. Two sweeps in one folder at the same time are refused by the folder's
    lock (:func:`~robustdistiller.runs.run_folder.lock_output_folder`).

Failures
    A run that exits with an error is marked ``failed`` in the table with the path of its log, and the
    sweep goes on with the other learning rates; the command then exits with status 1.
"""

import argparse
import datetime
import json
import logging
import math
import os
import subprocess
import sys

import yaml

from robustdistiller import child_environment
from robustdistiller.export.folder import file_sha256
from robustdistiller.recipe_files import recipe_path
from robustdistiller.runs.run_folder import OutputFolderInUse, lock_output_folder, release_output_folder

logger = logging.getLogger(__name__)

SETTINGS_FILE = "sweep_settings.json"
RESULTS_FILE = "results.json"
# the settings that make a sweep folder's runs comparable (a change is refused)
IDENTITY_KEYS = ("recipe_folder", "hparams_file", "lr_key", "overrides")
MODES = ("max", "min")


class SweepError(ValueError):
    """Bad input for a sweep (the message names the file or option at fault)."""


class SweepSettingsError(SweepError):
    """A sweep folder made with other settings than those of this invocation."""


def format_lr(lr):
    """A learning rate as the short text used in folder names and overrides (6 significant digits).

    Example
    -------
    >>> [format_lr(value) for value in (1e-5, 0.0001, 3.1622776601683795e-05, 0.1)]
    ['1e-05', '0.0001', '3.16228e-05', '0.1']
    """
    return f"{float(lr):.6g}"


def run_folder_name(lr):
    """Name of a learning rate's output folder inside the sweep folder.

    Example
    -------
    >>> run_folder_name(1e-3)
    'lr_0.001'
    """
    return f"lr_{format_lr(lr)}"


def log_grid(start, stop, num):
    """``num`` learning rates evenly spaced in log scale from ``start`` to ``stop`` (both included).

    Example
    -------
    >>> [format_lr(value) for value in log_grid(1e-5, 1e-1, 5)]
    ['1e-05', '0.0001', '0.001', '0.01', '0.1']
    >>> [format_lr(value) for value in log_grid(1e-4, 1e-3, 3)]
    ['0.0001', '0.000316228', '0.001']
    """
    if not (start > 0 and stop > 0):
        raise SweepError(f"--log-grid: start and stop must be > 0, got {start} and {stop}")
    if num < 1 or int(num) != num:
        raise SweepError(f"--log-grid: the number of points must be an integer >= 1, got {num}")
    num = int(num)
    if num == 1:
        return [float(start)]
    low, high = math.log10(start), math.log10(stop)
    return [10 ** (low + (high - low) * index / (num - 1)) for index in range(num)]


def normalise_lrs(lrs):
    """Learning rates rounded to their folder-name text, duplicates and non-positive values refused.

    Example
    -------
    >>> normalise_lrs([1e-3, 1e-4])
    [0.001, 0.0001]
    >>> normalise_lrs([1e-3, 0.0010000001])
    Traceback (most recent call last):
    ...
    robustdistiller.downstream.lr_sweep.SweepError: Learning rate 0.001 is given twice (after rounding to 6 significant digits).
    """
    values = []
    for lr in lrs:
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise SweepError(f"Learning rates must be finite numbers > 0, got {lr!r}")
        value = float(format_lr(lr))
        if value in values:
            raise SweepError(
                f"Learning rate {format_lr(value)} is given twice (after rounding to 6 significant digits)."
            )
        values.append(value)
    if not values:
        raise SweepError("No learning rate given (--lrs or --log-grid).")
    return values


def resolve_recipe(recipe_folder, hparams_file):
    """Absolute paths of a recipe folder (holding ``train.py``) and its YAML.

    ``recipe_folder`` is a folder, else a recipe of this package (``SpeechCommands/KS`` or
    ``recipes/SpeechCommands/KS``, found in the checkout or the installed wheel).
    ``hparams_file`` may be absolute, relative to the recipe folder (``hparams/superb_ks.yaml``) or
    relative to the current folder.

    Raises
    ------
    SweepError
        Naming the missing folder or file and the expected layout.

    Example
    -------
    >>> folder, hparams_file = resolve_recipe("SpeechCommands/KS", "hparams/superb_ks.yaml")
    >>> os.path.relpath(hparams_file, folder)
    'hparams/superb_ks.yaml'
    """
    folder = os.path.abspath(recipe_folder)
    if not os.path.isdir(folder) and not os.path.isabs(recipe_folder):  # a recipe name: the package's own copy
        parts = os.path.normpath(recipe_folder).split(os.sep)
        shipped = recipe_path("recipes", *(parts[1:] if parts[0] == "recipes" else parts))
        folder = shipped if os.path.isdir(shipped) else folder
    if not os.path.isdir(folder):
        raise SweepError(
            f"Recipe folder '{recipe_folder}' does not exist; expected a recipe folder "
            "recipes/<Dataset>/<Task>/ holding train.py and hparams/*.yaml, or a recipe name "
            "(`robustdistiller list-recipes`)."
        )
    if not os.path.isfile(os.path.join(folder, "train.py")):
        raise SweepError(
            f"Recipe folder '{recipe_folder}' has no train.py; expected a recipe folder "
            "recipes/<Dataset>/<Task>/ holding train.py and hparams/*.yaml."
        )
    candidates = [hparams_file] if os.path.isabs(hparams_file) else [os.path.join(folder, hparams_file), hparams_file]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return folder, os.path.abspath(candidate)
    available = (
        sorted(name for name in os.listdir(os.path.join(folder, "hparams")) if name.endswith(".yaml"))
        if os.path.isdir(os.path.join(folder, "hparams"))
        else []
    )
    raise SweepError(
        f"Hyperparameter file '{hparams_file}' is neither in the recipe folder '{recipe_folder}' nor at that path; "
        f"the recipe's hparams/ has: {available}"
    )


def _yaml_top_level_keys(hparams_file):
    """Top-level option names of a HyperPyYAML file (read without resolving tags)."""
    keys = set()
    with open(hparams_file, encoding="utf-8") as fin:
        for line in fin:
            if line[:1].strip() and not line.startswith("#") and ":" in line:
                keys.add(line.split(":", 1)[0].strip())
    return keys


def check_overrides(overrides, lr_key, hparams_file):
    """Refuses overrides that the sweep sets itself, and an ``lr_key`` the YAML lacks.

    Example
    -------
    >>> check_overrides(["--lr=0.1"], "lr", None)
    Traceback (most recent call last):
    ...
    robustdistiller.downstream.lr_sweep.SweepError: The recipe overrides set `--lr`, which the sweep sets for each run; remove it.
    """
    for argument in overrides:
        if not argument.startswith("--"):
            continue
        name = argument[2:].split("=", 1)[0]
        if name in (lr_key, "output_folder"):
            raise SweepError(f"The recipe overrides set `--{name}`, which the sweep sets for each run; remove it.")
    if hparams_file is not None and lr_key not in _yaml_top_level_keys(hparams_file):
        raise SweepError(
            f"'{hparams_file}' has no top-level option `{lr_key}`; name the recipe's learning-rate option "
            "with --lr-key."
        )


def warn_relative_paths(overrides, recipe_folder):
    """Warns about override values that are paths from the current folder but not from the recipe folder.

    Returns the names of those overrides.
    """
    suspicious = []
    for argument in overrides:
        if not argument.startswith("--") or "=" not in argument:
            continue
        name, value = argument[2:].split("=", 1)
        if (
            value
            and not os.path.isabs(value)
            and os.path.exists(value)
            and not os.path.exists(os.path.join(recipe_folder, value))
        ):
            suspicious.append(name)
            logger.warning(
                "Override --%s=%s is a path from the current folder, but the runs start in %s: "
                "give it as an absolute path.",
                name,
                value,
                recipe_folder,
            )
    return suspicious


def sweep_settings(recipe_folder, hparams_file, lr_key, overrides):
    """The settings recorded in (and compared with) ``<sweep_folder>/sweep_settings.json``."""
    return {
        "recipe_folder": recipe_folder,
        "hparams_file": hparams_file,
        "hparams_sha256": file_sha256(hparams_file),
        "lr_key": lr_key,
        "overrides": list(overrides),
    }


def check_or_record_settings(sweep_folder, settings):
    """Records the sweep's settings on a first invocation; later ones must have the same.

    Raises
    ------
    SweepSettingsError
        Listing each differing setting with both values. A changed YAML content (same path) is only
        a warning: the recipe's own resume checks decide about its runs.
    """
    path = os.path.join(sweep_folder, SETTINGS_FILE)
    if not os.path.exists(path):
        with open(path, "w", encoding="utf-8") as fout:
            json.dump(settings, fout, indent=2)
        return
    with open(path, encoding="utf-8") as fin:
        recorded = json.load(fin)
    differences = [
        f"{key}: recorded {recorded.get(key)!r}, now {settings[key]!r}"
        for key in IDENTITY_KEYS
        if recorded.get(key) != settings[key]
    ]
    if differences:
        raise SweepSettingsError(
            f"Sweep folder '{sweep_folder}' was made with other settings ({path}):\n  "
            + "\n  ".join(differences)
            + "\nUse another --sweep-folder for another recipe or other overrides."
        )
    if recorded.get("hparams_sha256") != settings["hparams_sha256"]:
        logger.warning(
            "%s changed since this sweep started (finished runs are kept as they are).", settings["hparams_file"]
        )


def read_dev_metric(output_folder, metric, mode):
    """Best dev value of ``metric`` over the kept checkpoints' ``CKPT.yaml`` of a run.

    Arguments
    ---------
    output_folder : str
        The run's output folder (checkpoints in ``<output_folder>/save/CKPT+*/``).
    metric : str
        A key of the checkpoints' meta (``accuracy``, ``EER``...).
    mode : str
        ``max`` or ``min``.

    Returns
    -------
    value : float or None
        None when no checkpoint holds ``metric``.
    checkpoint : str or None
        The checkpoint folder it comes from.
    available : list of str
        The numeric meta keys seen (for the message when ``metric`` is missing).

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> for name, accuracy in (("CKPT+a", 0.5), ("CKPT+b", 0.75)):
    ...     os.makedirs(os.path.join(folder, "save", name))
    ...     with open(os.path.join(folder, "save", name, "CKPT.yaml"), "w") as fout:
    ...         _ = fout.write(f"accuracy: {accuracy}\\nloss: 1.0\\nend-of-epoch: true\\n")
    >>> value, checkpoint, _ = read_dev_metric(folder, "accuracy", "max")
    >>> value, os.path.basename(checkpoint)
    (0.75, 'CKPT+b')
    >>> read_dev_metric(folder, "EER", "min")[0] is None
    True
    """
    save_folder = os.path.join(output_folder, "save")
    best, best_checkpoint, available = None, None, set()
    names = sorted(os.listdir(save_folder)) if os.path.isdir(save_folder) else []
    for name in names:
        meta_path = os.path.join(save_folder, name, "CKPT.yaml")
        if not name.startswith("CKPT+") or not os.path.isfile(meta_path):
            continue
        try:
            with open(meta_path, encoding="utf-8") as fin:
                meta = yaml.safe_load(fin) or {}
        except (OSError, yaml.YAMLError) as error:
            logger.warning("Skipping unreadable %s: %s", meta_path, error)
            continue
        available.update(key for key, value in meta.items() if isinstance(value, (int, float)))
        value = meta.get(metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            continue
        if best is None or (value > best if mode == "max" else value < best):
            best, best_checkpoint = float(value), os.path.join(save_folder, name)
    return best, best_checkpoint, sorted(available - {"unixtime"})


def read_test_metric(output_folder, metric):
    """``condition -> value of metric`` from a run's ``results.json`` (empty when missing)."""
    path = os.path.join(output_folder, RESULTS_FILE)
    try:
        with open(path, encoding="utf-8") as fin:
            results = json.load(fin).get("results", {})
    except (OSError, ValueError):
        return {}
    return {name: stats.get(metric) for name, stats in results.items() if isinstance(stats, dict)}


def run_recipe(recipe_folder, hparams_file, overrides, lr, lr_key, output_folder, log_path, python=None):
    """Runs ``train.py`` of a recipe for one learning rate (in the recipe folder); returns its exit status.

    Its standard output and error are appended to ``log_path``.
    """
    command = [
        python or sys.executable,
        "train.py",
        hparams_file,
        *overrides,
        f"--{lr_key}={format_lr(lr)}",
        f"--output_folder={output_folder}",
    ]
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        log.write(f"\n===== {started} lr_sweep: {' '.join(command)} (in {recipe_folder})\n")
        log.flush()
        completed = subprocess.run(
            command,
            cwd=recipe_folder,
            env=child_environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.write(f"===== exit status {completed.returncode}\n")
    return completed.returncode


def _log_tail(path, lines=5):
    try:
        with open(path, encoding="utf-8", errors="replace") as fin:
            return "".join(fin.readlines()[-lines:]).rstrip()
    except OSError:
        return ""


def run_sweep(
    recipe_folder,
    hparams_file,
    lrs,
    sweep_folder,
    metric="accuracy",
    mode="max",
    overrides=(),
    lr_key="lr",
    python=None,
):
    """Runs (or resumes) the sweep and writes its table; see the module's documentation.

    Arguments
    ---------
    recipe_folder : str
        ``recipes/<Dataset>/<Task>`` (holding ``train.py``).
    hparams_file : str
        The recipe's YAML (absolute, relative to the recipe folder, or to the current folder).
    lrs : list of float
        The learning rates.
    sweep_folder : str
        Where the runs and the table go.
    metric, mode : str
        The dev metric of the checkpoints' meta and whether higher (``max``) or lower (``min``) is better.
    overrides : list of str
        ``--key=value`` arguments given to every run.
    lr_key : str
        The recipe's learning-rate option.
    python : str, optional
        The interpreter of the runs (default: this one).

    Returns
    -------
    dict
        The content of ``sweep.json``.
    """
    if mode not in MODES:
        raise SweepError(f"--mode must be one of {MODES}, got {mode!r}")
    recipe_folder, hparams_file = resolve_recipe(recipe_folder, hparams_file)
    overrides = list(overrides)
    check_overrides(overrides, lr_key, hparams_file)
    warn_relative_paths(overrides, recipe_folder)
    lrs = normalise_lrs(lrs)
    sweep_folder = os.path.abspath(sweep_folder)
    os.makedirs(sweep_folder, exist_ok=True)
    lock_output_folder(sweep_folder)  # a second sweep in this folder stops here
    try:
        settings = sweep_settings(recipe_folder, hparams_file, lr_key, overrides)
        check_or_record_settings(sweep_folder, settings)
        rows = []
        for index, lr in enumerate(lrs, start=1):
            rows.append(_sweep_one(index, len(lrs), lr, settings, sweep_folder, metric, mode, python))
            summary = summarise(settings, rows, metric, mode)
            write_sweep_table(sweep_folder, summary, plot=index == len(lrs))  # kept up to date after every run
    finally:
        release_output_folder(sweep_folder)
    best = summary["best"]
    if best is None:
        logger.warning("No run of the sweep has a dev %s; table in %s", metric, os.path.join(sweep_folder, "sweep.md"))
    else:
        logger.info(
            "Best learning rate: %s (dev %s %.4g, %s); table in %s",
            format_lr(best["lr"]),
            metric,
            best["dev"],
            best["folder"],
            os.path.join(sweep_folder, "sweep.md"),
        )
    return summary


def _sweep_one(index, total, lr, settings, sweep_folder, metric, mode, python):
    """Runs (or reuses) one learning rate; returns its row of the table."""
    name = run_folder_name(lr)
    output_folder = os.path.join(sweep_folder, name)
    log_path = os.path.join(sweep_folder, "logs", f"{name}.log")
    row = {"lr": lr, "folder": output_folder, "log": log_path, "reused": False}
    finished = os.path.isfile(os.path.join(output_folder, RESULTS_FILE))
    if finished:
        logger.info("[%d/%d] lr=%s: finished before (%s), not rerun", index, total, format_lr(lr), output_folder)
        row["reused"] = True
        code = 0
    else:
        resuming = os.path.isdir(output_folder)
        logger.info(
            "[%d/%d] lr=%s: %s train.py in %s (log: %s)",
            index,
            total,
            format_lr(lr),
            "resuming" if resuming else "running",
            output_folder,
            log_path,
        )
        code = run_recipe(
            settings["recipe_folder"],
            settings["hparams_file"],
            settings["overrides"],
            lr,
            settings["lr_key"],
            output_folder,
            log_path,
            python=python,
        )
    dev, checkpoint, available = read_dev_metric(output_folder, metric, mode)
    row.update(dev=dev, checkpoint=checkpoint, test=read_test_metric(output_folder, metric))
    if code != 0:
        row.update(status="failed", error=f"exit status {code}")
        logger.error(
            "[%d/%d] lr=%s failed (exit status %d); log: %s\n%s",
            index,
            total,
            format_lr(lr),
            code,
            log_path,
            _log_tail(log_path),
        )
    elif not os.path.isfile(os.path.join(output_folder, RESULTS_FILE)):
        row.update(status="failed", error=f"no {RESULTS_FILE} written")
        logger.error("[%d/%d] lr=%s ended without %s; log: %s", index, total, format_lr(lr), RESULTS_FILE, log_path)
    elif dev is None:
        row.update(status="no dev metric", error=f"no checkpoint meta has `{metric}` (numeric keys there: {available})")
        logger.error(
            "[%d/%d] lr=%s: no CKPT.yaml in %s has `%s` (its keys: %s); use --metric",
            index,
            total,
            format_lr(lr),
            os.path.join(output_folder, "save"),
            metric,
            available,
        )
    else:
        row["status"] = "finished"
        logger.info("[%d/%d] lr=%s: dev %s %.4g", index, total, format_lr(lr), metric, dev)
    return row


def summarise(settings, rows, metric, mode):
    """The content of ``sweep.json``: settings, rows (sorted by learning rate) and the best finished row.

    Example
    -------
    >>> rows = [{"lr": 0.01, "status": "finished", "dev": 0.5, "folder": "a"},
    ...         {"lr": 0.001, "status": "finished", "dev": 0.7, "folder": "b"},
    ...         {"lr": 0.1, "status": "failed", "dev": None, "folder": "c"}]
    >>> summarise({}, rows, "accuracy", "max")["best"]["lr"]
    0.001
    >>> summarise({}, rows, "EER", "min")["best"]["lr"]
    0.01
    """
    finished = [row for row in rows if row["status"] == "finished"]
    best = None
    if finished:
        best = (max if mode == "max" else min)(finished, key=lambda row: row["dev"])
    return {
        "settings": settings,
        "metric": metric,
        "mode": mode,
        "runs": sorted(rows, key=lambda row: row["lr"]),
        "best": best,
    }


def format_sweep_table(summary):
    """Markdown table of a sweep: one row per learning rate, the best marked."""
    metric = summary["metric"]
    conditions = list(dict.fromkeys(name for row in summary["runs"] for name in row.get("test", {})))
    shown = conditions[:1]  # the first test condition (clean in every recipe), for information
    header = f"| lr | status | dev {metric} ({summary['mode']}) |" + "".join(
        f" test {metric} ({name}) |" for name in shown
    )
    lines = [header, "|---" * (3 + len(shown)) + "|"]
    best_lr = summary["best"]["lr"] if summary["best"] else None

    def cell(value):
        return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    for row in summary["runs"]:
        lr = format_lr(row["lr"]) + (" (best)" if row["lr"] == best_lr else "")
        status = (
            row["status"]
            if row["status"] == "finished"
            else f"{row['status']}: {row.get('error', '')}, log {row['log']}"
        )
        lines.append(
            f"| {lr} | {status} | {cell(row.get('dev'))} |"
            + "".join(f" {cell(row.get('test', {}).get(name))} |" for name in shown)
        )
    return "\n".join(lines)


def plot_sweep(summary, path):
    """Dev metric against the learning rate (log axis); returns False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: no sweep plot")
        return False
    points = [(row["lr"], row["dev"]) for row in summary["runs"] if row["status"] == "finished"]
    figure, axes = plt.subplots(figsize=(5, 3.5))
    if points:
        axes.semilogx(*zip(*points), marker="o")
    if summary["best"]:
        axes.semilogx(
            [summary["best"]["lr"]], [summary["best"]["dev"]], marker="*", markersize=14, linestyle="", label="best"
        )
        axes.legend()
    axes.set_xlabel("learning rate")
    axes.set_ylabel(f"dev {summary['metric']}")
    recipe = summary["settings"].get("recipe_folder", "")
    axes.set_title("/".join(recipe.split(os.sep)[-2:]) or "learning-rate sweep")
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def write_sweep_table(sweep_folder, summary, plot=True):
    """Writes ``sweep.json``, ``sweep.md`` and (``plot``) ``sweep.png`` to the sweep folder."""
    with open(os.path.join(sweep_folder, "sweep.json"), "w", encoding="utf-8") as fout:
        json.dump(summary, fout, indent=2)
    settings = summary["settings"]
    lines = [
        f"# Learning-rate sweep: {settings['recipe_folder']}",
        "",
        f"YAML: {settings['hparams_file']}",
        f"Overrides: {' '.join(settings['overrides']) or '(none)'}",
        f"Selection: best dev `{summary['metric']}` ({summary['mode']}) of each run's kept checkpoints; "
        "test values for information only.",
        "",
        format_sweep_table(summary),
    ]
    if summary["best"]:
        lines += ["", f"Best: lr = {format_lr(summary['best']['lr'])} ({summary['best']['folder']})"]
    with open(os.path.join(sweep_folder, "sweep.md"), "w", encoding="utf-8") as fout:
        fout.write("\n".join(lines) + "\n")
    if plot:
        plot_sweep(summary, os.path.join(sweep_folder, "sweep.png"))


def parse_arguments(argv):
    """The command line: sweep options, then ``--`` and the recipe's overrides."""
    if "--" in argv:
        split = argv.index("--")
        argv, overrides = argv[:split], argv[split + 1 :]
    else:
        overrides = []
    parser = argparse.ArgumentParser(
        prog="python -m robustdistiller.downstream.lr_sweep",
        description="Runs a downstream recipe once per learning rate and picks the best on the dev metric.",
        epilog="Everything after `--` is passed to every run of train.py (e.g. --data_folder=... "
        "--upstream_source=...).",
    )
    parser.add_argument(
        "recipe_folder", help="recipes/<Dataset>/<Task> (holding train.py), or a recipe name (SpeechCommands/KS)"
    )
    parser.add_argument("hparams_file", help="the recipe's YAML, e.g. hparams/superb_ks.yaml")
    parser.add_argument("--sweep-folder", required=True, help="folder of the runs (lr_<value>/) and the table")
    grid = parser.add_mutually_exclusive_group(required=True)
    grid.add_argument("--lrs", type=float, nargs="+", metavar="LR", help="the learning rates")
    grid.add_argument(
        "--log-grid",
        type=float,
        nargs=3,
        metavar=("START", "STOP", "NUM"),
        help="NUM learning rates log-spaced from START to STOP",
    )
    parser.add_argument(
        "--metric", default="accuracy", help="dev metric of the checkpoints' CKPT.yaml (default: accuracy)"
    )
    parser.add_argument("--mode", choices=MODES, default="max", help="max: higher is better (default); min: lower")
    parser.add_argument("--lr-key", default="lr", help="the recipe's learning-rate option (default: lr)")
    arguments = parser.parse_args(argv)
    arguments.overrides = overrides
    return arguments


def main(argv=None):
    """Command-line entry point; returns 0 when every run finished, 1 when some failed, 2 on bad input."""
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s lr_sweep: %(message)s", datefmt="%H:%M:%S")
    try:
        lrs = arguments.lrs if arguments.lrs is not None else log_grid(*arguments.log_grid)
        summary = run_sweep(
            arguments.recipe_folder,
            arguments.hparams_file,
            lrs,
            arguments.sweep_folder,
            metric=arguments.metric,
            mode=arguments.mode,
            overrides=arguments.overrides,
            lr_key=arguments.lr_key,
        )
    except (SweepError, OutputFolderInUse) as error:
        logger.error("%s", error)
        return 2
    failed = [row for row in summary["runs"] if row["status"] != "finished"]
    for row in failed:
        logger.error("lr=%s %s (%s); log: %s", format_lr(row["lr"]), row["status"], row.get("error"), row["log"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
