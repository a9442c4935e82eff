#!/usr/bin/env python3
"""SUPERB speech enhancement (SE) on VoiceBank-DEMAND with a frozen upstream, official and corrupted tests.

The upstream stays frozen and hears the noisy waveform; a learnable weighted sum of its layers feeds
s3prl's ``enhancement_stft`` head (:class:`~robustdistiller.downstream.separation.MaskEstimator`: a
3-layer BiLSTM of 896 per direction, ``Linear(1792 -> 257)``, ReLU), whose mask on the noisy STFT
magnitude is trained with the MSE to the NPSM target of the clean speech. The enhanced waveform is the
masked noisy complex STFT (noisy phase), inverted. Metrics per utterance, averaged: PESQ (wide band),
STOI and SI-SDR (pb_bss_eval's, zero-mean, as s3prl), of the output and of the condition's own input,
and their improvements. The best dev PESQ checkpoint is tested on the released noisy test set
(``official``, the SUPERB number) and on the clean test speech under every shared test condition. Results go to
``<output_folder>/results.{json,md}``, a few enhanced examples to ``<output_folder>/examples/``.

To run::

    python train.py hparams/superb_se.yaml --data_folder=/data/VoiceBank-DEMAND \
        --upstream_source=/models/exported_student \
        --test_musan_folder=/data/musan --test_rir_folder=/data/RIRS_NOISES
"""

import logging
import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from prepare_voicebank import prepare_voicebank
from speechbrain.utils.distributed import run_on_main

from robustdistiller.downstream import build_corruptors, prepare_corruption_lists, start_run, write_condition_results
from robustdistiller.downstream.separation import MaskingBrain
from robustdistiller.downstream.signal import drop_missing_inputs, signal_datasets
from robustdistiller.runs.options import exit_if_required_options_missing

logger = logging.getLogger(__name__)

SOURCE_COLUMNS = ("clean_wav",)
"""The CSV column of the target (one source: the clean speech)."""
METRICS = [
    "PESQ",
    "PESQ_input",
    "PESQ_improvement",
    "STOI",
    "STOI_input",
    "STOI_improvement",
    "SI_SDR",
    "SI_SDR_input",
    "SI_SDRi",
    "utterances",
]
"""Columns of ``results.md`` (``results.json`` keeps every statistic)."""


def dataio_prepare(hparams, test_corruptor, train_corruptor):
    """Train / dev datasets (the released noisy input, its clean twin as target) and the test-set factory."""
    csv_files = {"train": hparams["train_csv"], "valid": hparams["valid_csv"], "test": hparams["test_csv"]}
    return signal_datasets(
        hparams, csv_files, SOURCE_COLUMNS, ["id", "sig", "sources"], [], test_corruptor, train_corruptor
    )


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    exit_if_required_options_missing(hparams_file, overrides)  # names every unset !PLACEHOLDER
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    start_run(hparams_file, hparams, overrides)  # option checks, output folder lock, upstream identity
    run_on_main(prepare_voicebank, kwargs=hparams["prepare_options"])
    run_on_main(prepare_corruption_lists, args=[hparams])
    test_corruptor, train_corruptor, conditions = build_corruptors(hparams)
    conditions = drop_missing_inputs(conditions, hparams["test_csv"], SOURCE_COLUMNS, hparams["corruption_input"])
    data = dataio_prepare(hparams, test_corruptor, train_corruptor)

    brain = MaskingBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    untrained = None
    if hparams["evaluate_untrained"]:  # the baseline: dev metrics of the untrained head
        untrained = brain.evaluate_untrained(data["valid"], hparams["valid_dataloader_opts"])
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
            "SE (VoiceBank-DEMAND)",
            results,
            METRICS,
            upstream=hparams["upstream"],
            layer_weights=brain.layer_weights(),
            extra={
                "primary_metric": "PESQ",
                "higher_is_better": True,
                "selection_metric": hparams["selection_metric"],
                "untrained_valid": untrained,
                "conditions": conditions,
                "head": {
                    key: hparams[key]
                    for key in (
                        "head_hidden_size",
                        "head_layers",
                        "mask_activation",
                        "mask_target",
                        "mask_distance",
                        "n_fft",
                        "win_length",
                        "hop_length",
                        "feature_repeat",
                    )
                },
            },
        )
