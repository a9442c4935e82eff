#!/usr/bin/env python3
"""SUPERB keyword spotting (KS) on Speech Commands v0.01 with a frozen upstream, clean and corrupted tests.

The upstream (an exported RobustDistiller student, a distillation checkpoint, an s3prl checkpoint or
any Hugging Face WavLM / HuBERT / wav2vec 2.0) stays frozen; a learnable weighted sum of its layers
feeds a projector, mean pooling and a linear classifier over 12 classes (ten commands, ``_unknown_``,
``_silence_``). As in s3prl, training batches are drawn by a weighted sampler that makes every class
equally likely (``_unknown_`` holds most utterances, ``_silence_`` few windows), and dev is a seeded
class-balanced draw too. The best dev checkpoint is tested on the separate v0.01 test archive under
every test condition; the results go to ``<output_folder>/results.{json,md}``.

To run::

    python train.py hparams/superb_ks.yaml --data_folder=/data/speech_commands_v0.01 \
        --test_folder=/data/speech_commands_test_set_v0.01 \
        --upstream_source=/models/exported_student \
        --test_musan_folder=/data/musan --test_rir_folder=/data/RIRS_NOISES
"""

import collections
import logging
import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from prepare_speech_commands import prepare_speech_commands
from speechbrain.dataio.sampler import ReproducibleWeightedRandomSampler
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


def dataio_prepare(hparams, test_corruptor, train_corruptor):
    """Train / dev datasets, the test-set factory, the label encoder and the loader options.

    With ``class_balanced_sampling`` (s3prl), training draws every class equally often (a new draw
    every epoch) and dev is one seeded class-balanced draw, the same at every epoch.
    """
    csv_files = {"train": hparams["train_csv"], "valid": hparams["dev_csv"], "test": hparams["test_csv"]}
    data = classification_datasets(hparams, csv_files, test_corruptor, train_corruptor, label_column="label")
    if len(data["label_encoder"]) != hparams["num_classes"]:
        raise ValueError(
            f"The training set has {len(data['label_encoder'])} classes {sorted(data['label_encoder'].lab2ind)}, "
            f"but num_classes is {hparams['num_classes']}"
        )
    data["train_loader_kwargs"] = dict(hparams["train_dataloader_opts"])
    data["valid_loader_kwargs"] = dict(hparams["valid_dataloader_opts"])
    if hparams["class_balanced_sampling"]:
        data["train_loader_kwargs"]["sampler"] = class_balanced_sampler(data["train"], seed=hparams["seed"])
        data["valid_loader_kwargs"]["sampler"] = class_balanced_sampler(data["valid"], seed=hparams["seed"])
    else:
        data["train_loader_kwargs"]["shuffle"] = True
    return data


def class_balanced_sampler(dataset, seed, label_key="label"):
    """A seeded sampler drawing ``len(dataset)`` items with replacement, every class equally likely.

    Each item's weight is ``N / count(its class)`` (s3prl's ``sample_weights``).

    Arguments
    ---------
    dataset : speechbrain.dataio.dataset.DynamicItemDataset
        Dataset with a ``label_key`` item (read without loading audio).
    seed : int
        Base seed (SpeechBrain adds the epoch when ``set_epoch`` is called).
    label_key : str
        The class item.

    Returns
    -------
    ReproducibleWeightedRandomSampler
    """
    with dataset.output_keys_as([label_key]):
        labels = [item[label_key] for item in dataset]
    counts = collections.Counter(labels)
    logger.info("Class-balanced sampling over %d items: %s", len(labels), dict(sorted(counts.items())))
    weights = [len(labels) / counts[label] for label in labels]
    return ReproducibleWeightedRandomSampler(weights, num_samples=len(labels), replacement=True, seed=seed)


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    exit_if_required_options_missing(hparams_file, overrides)  # names every unset !PLACEHOLDER
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    start_run(hparams_file, hparams, overrides)  # option checks, output folder lock, upstream identity
    run_on_main(prepare_speech_commands, kwargs=hparams["prepare_options"])
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
    # Brain calls set_epoch on its train_sampler (a new draw every epoch); under DDP it wraps this one.
    brain.train_sampler = data["train_loader_kwargs"].get("sampler")
    brain.fit(
        hparams["epoch_counter"],
        data["train"],
        data["valid"],
        train_loader_kwargs=data["train_loader_kwargs"],
        valid_loader_kwargs=data["valid_loader_kwargs"],
    )
    results = brain.evaluate_conditions(data["make_test_set"], conditions, hparams["test_dataloader_opts"])
    if sb.utils.distributed.if_main_process():
        label_encoder = data["label_encoder"]
        write_condition_results(
            hparams["output_folder"],
            "KS (Speech Commands v0.01)",
            results,
            ["accuracy", "loss"],
            upstream=hparams["upstream"],
            layer_weights=brain.layer_weights(),
            extra={"classes": [label_encoder.ind2lab[index] for index in range(len(label_encoder))]},
        )
