#!/usr/bin/env python3
"""SUPERB emotion recognition (ER) on IEMOCAP with a frozen upstream, clean and corrupted tests.

The upstream (an exported RobustDistiller student, a distillation checkpoint, an s3prl checkpoint or
any Hugging Face WavLM / HuBERT / wav2vec 2.0) stays frozen; a learnable weighted sum of its layers
feeds a projector, mean pooling and a linear classifier over four emotions (neutral, happy with
excited merged in, angry, sad: outputs 0 to 3 in s3prl's order). Leave-one-session-out: the fold
``test_session`` trains on four sessions (minus a random 20 % dev set, s3prl's by default) and tests
the best dev checkpoint on the held-out session under every test condition; the results go to ``<output_folder>/results.{json,md}``.

With ``run_all_folds: True`` the five folds run one after the other, fold N in
``<output_folder>/fold<N>/`` (each exactly as a single-fold run with ``test_session: N``), and
``<output_folder>/results.{json,md}`` gets the mean (and standard deviation) over the folds of every
test condition -- the number SUPERB reports.

To run::

    python train.py hparams/superb_er.yaml --data_folder=/data/IEMOCAP_full_release \
        --upstream_source=/models/exported_student \
        --test_musan_folder=/data/musan --test_rir_folder=/data/RIRS_NOISES --run_all_folds=True
"""

import logging
import os
import statistics
import sys

import ruamel.yaml
import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml, resolve_references
from prepare_iemocap import EMOTION_LABELS, SESSIONS, prepare_iemocap
from speechbrain.utils.distributed import run_on_main

from robustdistiller.downstream import (
    UtteranceClassificationBrain,
    build_corruptors,
    classification_datasets,
    prepare_corruption_lists,
    start_run,
    write_condition_results,
)
from robustdistiller.runs.options import exit_if_required_options_missing

logger = logging.getLogger(__name__)

METRICS = ["accuracy", "loss"]


def dataio_prepare(hparams, test_corruptor, train_corruptor):
    """Train / dev datasets, the test-set factory and the emotion encoder of one fold."""
    csv_files = {"train": hparams["train_csv"], "valid": hparams["dev_csv"], "test": hparams["test_csv"]}
    data = classification_datasets(
        hparams, csv_files, test_corruptor, train_corruptor, label_column="emotion", labels=EMOTION_LABELS
    )  # s3prl's class indices: neu 0, hap 1, ang 2, sad 3
    if len(data["label_encoder"]) != hparams["num_emotions"]:
        raise ValueError(
            f"The training set of fold {hparams['test_session']} has {len(data['label_encoder'])} emotions "
            f"({sorted(data['label_encoder'].lab2ind)}), but num_emotions is {hparams['num_emotions']}"
        )
    return data


def run_fold(hparams_file, run_opts, overrides):
    """Prepares, trains and tests one fold; returns its results, layer weights and upstream."""
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    start_run(hparams_file, hparams, overrides)  # option checks, output folder lock, upstream identity
    run_on_main(prepare_iemocap, kwargs=hparams["prepare_options"])
    run_on_main(prepare_corruption_lists, args=[hparams])
    test_corruptor, train_corruptor, conditions = build_corruptors(hparams)
    data = dataio_prepare(hparams, test_corruptor, train_corruptor)

    brain = UtteranceClassificationBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit(
        hparams["epoch_counter"],
        data["train"],
        data["valid"],
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    results = brain.evaluate_conditions(data["make_test_set"], conditions, hparams["test_dataloader_opts"])
    if sb.utils.distributed.if_main_process():
        write_condition_results(
            hparams["output_folder"],
            f"ER (IEMOCAP, test session {hparams['test_session']})",
            results,
            METRICS,
            upstream=hparams["upstream"],
            layer_weights=brain.layer_weights(),
            extra={"test_session": hparams["test_session"], "num_classes": len(data["label_encoder"])},
        )
    return results, brain.layer_weights(), hparams["upstream"]


def average_over_folds(fold_results):
    """Mean of every metric over the folds, per condition, plus ``accuracy_std`` (population).

    Non-numeric entries (each fold's tested ``checkpoint``) are not averaged.

    Example
    -------
    >>> average = average_over_folds({1: {"clean": {"accuracy": 0.5, "loss": 1.0, "checkpoint": "CKPT+1"}},
    ...                               2: {"clean": {"accuracy": 0.7, "loss": 2.0, "checkpoint": "CKPT+2"}}})
    >>> {metric: round(value, 6) for metric, value in average["clean"].items()}
    {'accuracy': 0.6, 'loss': 1.5, 'accuracy_std': 0.1}
    """
    conditions = next(iter(fold_results.values()))
    average = {}
    for condition, stats in conditions.items():
        average[condition] = {
            metric: statistics.fmean(fold_results[fold][condition][metric] for fold in fold_results)
            for metric, value in stats.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        average[condition]["accuracy_std"] = statistics.pstdev(
            fold_results[fold][condition]["accuracy"] for fold in fold_results
        )
    return average


def load_plain_options(hparams_file, overrides):
    """The YAML's values with overrides applied, without building any object (no upstream is loaded)."""
    with open(hparams_file, encoding="utf-8") as fin:
        resolved = resolve_references(fin, overrides)
    return ruamel.yaml.YAML().load(resolved), ruamel.yaml.YAML().load(overrides or "{}") or {}


def main(argv):
    """Runs one fold, or the five folds and their mean (``run_all_folds``)."""
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    exit_if_required_options_missing(hparams_file, overrides)  # names every unset !PLACEHOLDER
    sb.utils.distributed.ddp_init_group(run_opts)
    options, override_map = load_plain_options(hparams_file, overrides)
    if not options["run_all_folds"]:
        run_fold(hparams_file, run_opts, overrides)
        return
    base_folder = options["output_folder"]
    # options, then the lock of the folder of all folds (each fold checks its upstream in its own folder)
    start_run(hparams_file, options, overrides)
    fold_results, fold_weights = {}, {}
    for session in SESSIONS:
        fold_folder = os.path.join(base_folder, f"fold{session}")
        logger.info("Fold %d of %d: test session %d in %s", session, len(SESSIONS), session, fold_folder)
        fold_overrides = dict(override_map, test_session=session, output_folder=fold_folder)
        fold_results[session], fold_weights[session], upstream = run_fold(hparams_file, run_opts, fold_overrides)
    if sb.utils.distributed.if_main_process():
        num_layers = len(fold_weights[SESSIONS[0]])
        write_condition_results(
            base_folder,
            f"ER (IEMOCAP, mean over {len(SESSIONS)} leave-one-session-out folds)",
            average_over_folds(fold_results),
            ["accuracy", "accuracy_std", "loss"],
            upstream=upstream,
            layer_weights=[
                statistics.fmean(fold_weights[fold][layer] for fold in fold_weights) for layer in range(num_layers)
            ],
            extra={"folds": {str(fold): results for fold, results in fold_results.items()}},
        )


if __name__ == "__main__":
    main(sys.argv[1:])
