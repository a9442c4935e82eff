#!/usr/bin/env python3
"""SUPERB speaker identification (SID) on VoxCeleb1 with a frozen upstream, clean and corrupted tests.

The upstream (an exported RobustDistiller student, a distillation checkpoint, an s3prl checkpoint or
any Hugging Face WavLM / HuBERT / wav2vec 2.0) stays frozen; a learnable weighted sum of its layers
feeds a projector, mean pooling and a linear classifier over the 1,251 speakers, numbered in sorted
speaker id order as s3prl does (``id10001`` 0, ... ``id11251`` 1250: s3prl's ``int(id[2:]) - 10001``
on the real corpus), so a head trained here loads in s3prl and the reverse. The best dev
checkpoint is tested on the iden_split test set under every test condition; the results go to
``<output_folder>/results.{json,md}``.

To run::

    python train.py hparams/superb_sid.yaml --data_folder=/data/VoxCeleb1 \
        --upstream_source=/models/exported_student \
        --test_musan_folder=/data/musan --test_rir_folder=/data/RIRS_NOISES
"""

import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from prepare_voxceleb1_sid import prepare_voxceleb1_sid
from speechbrain.utils.distributed import run_on_main

from robustdistiller.downstream import (
    UtteranceClassificationBrain,
    build_corruptors,
    classification_datasets,
    prepare_corruption_lists,
    start_run,
    write_condition_results,
)
from robustdistiller.downstream.classification import sorted_column_values
from robustdistiller.runs.options import exit_if_required_options_missing


def dataio_prepare(hparams, test_corruptor, train_corruptor):
    """Train / dev datasets, the test-set factory and the speaker encoder."""
    csv_files = {"train": hparams["train_csv"], "valid": hparams["dev_csv"], "test": hparams["test_csv"]}
    # s3prl's class of a speaker: its rank in speaker id order (int(id[2:]) - 10001 on VoxCeleb1)
    speakers = sorted_column_values(csv_files.values(), "speaker")
    if len(speakers) != hparams["num_speakers"]:
        raise ValueError(
            f"The SID lists ({hparams['train_csv']}, ...) hold {len(speakers)} speakers, but "
            f"num_speakers is {hparams['num_speakers']}"
        )
    return classification_datasets(
        hparams, csv_files, test_corruptor, train_corruptor, label_column="speaker", labels=speakers
    )


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    exit_if_required_options_missing(hparams_file, overrides)  # names every unset !PLACEHOLDER
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    start_run(hparams_file, hparams, overrides)  # option checks, output folder lock, upstream identity
    run_on_main(prepare_voxceleb1_sid, kwargs=hparams["prepare_options"])
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
            "SID (VoxCeleb1)",
            results,
            ["accuracy", "loss"],
            upstream=hparams["upstream"],
            layer_weights=brain.layer_weights(),
            extra={"num_classes": len(data["label_encoder"])},
        )
