"""The start of every downstream run: option checks, the output folder's lock, the upstream's identity.

:func:`start_run` is the first thing every recipe does after loading its YAML.
"""

import datetime
import json
import logging
import os
import sys

import speechbrain as sb
import yaml

from robustdistiller.downstream.brain import checkpoint_selection
from robustdistiller.downstream.upstream import (
    _describe_upstream,
    check_upstream_identity,
    FrozenUpstream,
    UPSTREAM_IDENTITY_FILE,
)
from robustdistiller.runs.options import as_list, integer_at_least
from robustdistiller.runs.run_folder import lock_output_folder

logger = logging.getLogger(__name__)


# Downstream YAML options that are lists; a single string given for one is a one-item list.
LIST_OPTIONS = tuple(
    f"{prefix}_{name}"
    for prefix in ("test", "train")
    for name in ("musan_subsets", "noise_folders", "rirs_noises_subsets")
) + ("test_condition_names",)


def check_downstream_options(hparams):
    """Checks and normalises the options every downstream recipe reads, naming the option at fault.

    ``number_of_epochs``, where the recipe trains, must be an integer >= 1 (and ``number_of_updates``,
    where the recipe has it, null or >= 1); where the recipe trains a head (``opt_class``), the best
    checkpoint must be named (``selection_metric``, ``selection_mode``:
    :func:`~robustdistiller.downstream.brain.checkpoint_selection`); the list options of
    :data:`LIST_OPTIONS` become lists (a single string is a one-item list). ``hparams`` is updated in place.

    Raises
    ------
    robustdistiller.runs.options.OptionError

    Example
    -------
    >>> options = {"number_of_epochs": 3, "test_condition_names": "clean", "test_musan_subsets": ["music"]}
    >>> check_downstream_options(options)
    >>> options["test_condition_names"], options["test_musan_subsets"]
    (['clean'], ['music'])
    >>> check_downstream_options({"number_of_epochs": 0})
    Traceback (most recent call last):
    ...
    robustdistiller.runs.options.OptionError: Option `number_of_epochs` must be an integer >= 1, got 0.
    >>> check_downstream_options({"opt_class": None, "selection_metric": "EER", "selection_mode": "lowest"})
    Traceback (most recent call last):
    ...
    robustdistiller.runs.options.OptionError: Option `selection_mode` must be one of ['max', 'min'], got 'lowest'.
    """
    if "number_of_epochs" in hparams:  # QbE has no training
        hparams["number_of_epochs"] = integer_at_least(hparams["number_of_epochs"], "number_of_epochs", 1)
    if hparams.get("number_of_updates") is not None:
        hparams["number_of_updates"] = integer_at_least(hparams["number_of_updates"], "number_of_updates", 1)
    if "opt_class" in hparams:  # QbE trains nothing
        checkpoint_selection(hparams)
    for name in LIST_OPTIONS:
        if name in hparams and hparams[name] is not None:
            hparams[name] = as_list(hparams[name], name)


def start_run(hparams_file, hparams, overrides):
    """The start of every downstream run, before anything is written to its output folder.

    1. :func:`check_downstream_options`;
    2. on the main process, the exclusive lock of the output folder
       (:func:`~robustdistiller.runs.run_folder.lock_output_folder`: a second run in the same folder stops
       with :class:`~robustdistiller.runs.run_folder.OutputFolderInUse`);
    3. :func:`check_upstream_identity` of ``hparams["upstream"]`` (when it is a built
       :class:`FrozenUpstream`) against ``<save_folder>/upstream.json``, which the main process
       writes on a first run;
    4. ``speechbrain.create_experiment_directory`` (the YAML, the overrides and the log);
    5. ``<output_folder>/run_info.json`` (:data:`RUN_INFO_FILE`): recipe, YAML, overrides, learning rate,
       command and start time, the provenance :func:`~robustdistiller.downstream.results.write_condition_results`
       copies into ``results.json``.

    Arguments
    ---------
    hparams_file : str
        The recipe's YAML.
    hparams : dict
        The loaded options (updated in place by the option checks).
    overrides : str or dict
        The command-line overrides.
    """
    check_downstream_options(hparams)
    main_process = sb.utils.distributed.if_main_process()
    if main_process:
        lock_output_folder(hparams["output_folder"])
    upstream = hparams.get("upstream")
    recorded = None
    if isinstance(upstream, FrozenUpstream):
        recorded = check_upstream_identity(hparams["save_folder"], upstream, record=main_process)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"], hyperparams_to_save=hparams_file, overrides=overrides
    )
    if main_process:
        write_run_info(hparams_file, hparams, overrides)
    if not isinstance(upstream, FrozenUpstream):
        return
    identity = upstream.identity()
    if recorded is None:
        logger.info(
            "Upstream %s recorded in %s",
            _describe_upstream(identity),
            os.path.join(hparams["save_folder"], UPSTREAM_IDENTITY_FILE),
        )
    elif (recorded.get("source_path") or recorded.get("source")) != (identity["source_path"] or identity["source"]):
        logger.info(
            "Upstream %s has the weights recorded for this folder (given then as '%s'): resuming.",
            _describe_upstream(identity),
            recorded.get("source_path") or recorded.get("source"),
        )
    else:
        logger.info("Upstream %s is the one recorded for this folder: resuming.", _describe_upstream(identity))


RUN_INFO_FILE = "run_info.json"
"""Provenance of a downstream run, in its output folder (rewritten by every start, resumes included)."""


def write_run_info(hparams_file, hparams, overrides):
    """Writes :data:`RUN_INFO_FILE`: what produced the numbers of this output folder.

    ``recipe`` is the recipe folder relative to ``recipes/`` (e.g. ``SpeechCommands/KS``) when the YAML
    lies in one; ``lr`` is the YAML's ``lr`` (None when the recipe has none, e.g. QbE).
    """
    hparams_file = os.path.abspath(hparams_file)
    recipe_folder = os.path.dirname(os.path.dirname(hparams_file))
    parts = recipe_folder.split(os.sep)
    recipe = "/".join(parts[parts.index("recipes") + 1 :]) if "recipes" in parts else recipe_folder
    if isinstance(overrides, str):
        overrides = yaml.safe_load(overrides) if overrides.strip() else {}
    info = {
        "recipe": recipe,
        "hparams_file": hparams_file,
        "overrides": overrides or {},
        "lr": hparams.get("lr"),
        "seed": hparams.get("seed"),
        "command": " ".join(sys.argv),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    with open(os.path.join(hparams["output_folder"], RUN_INFO_FILE), "w", encoding="utf-8") as fout:
        json.dump(info, fout, indent=2, default=str)
