#!/usr/bin/env python3
"""SUPERB phoneme recognition (PR) on LibriSpeech with a frozen upstream, clean and corrupted tests.

The upstream stays frozen; a learnable weighted sum of its layers feeds s3prl's PR head
(``Linear(D -> 256) -> Linear(256 -> 74)``, no activation) trained with CTC (blank ``<pad>`` = 0)
on stress-marked ARPAbet phone targets from a pronunciation lexicon (the target ends with
``<eos>``, as s3prl's). Greedy CTC decoding; PER with SpeechBrain's ``ErrorRateStats``; the best dev
PER checkpoint is tested on test-clean under every test condition. Results go to
``<output_folder>/results.{json,md}``, per-utterance hypotheses to
``<output_folder>/hypotheses/<condition>.txt``.

To run::

    python train.py hparams/superb_pr.yaml --data_folder=/data/LibriSpeech \
        --lexicon_files='[/data/lexicon/librispeech-lexicon-200k-g2p.txt,
                          /data/lexicon/librispeech-lexicon-allothers-g2p.txt]' \
        --upstream_source=/models/exported_student \
        --test_musan_folder=/data/musan --test_rir_folder=/data/RIRS_NOISES
"""

import logging
import sys

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from prepare_librispeech_pr import prepare_librispeech_pr
from speechbrain.utils.distributed import run_on_main

from robustdistiller.downstream import (
    build_corruptors,
    prepare_corruption_lists,
    recipe_datasets,
    start_run,
    write_condition_results,
)
from robustdistiller.downstream.ctc import CTCBrain
from robustdistiller.runs.options import exit_if_required_options_missing

logger = logging.getLogger(__name__)


class PhoneRecognitionBrain(CTCBrain):
    """CTC over phones; PER (``ErrorRateStats`` over phone tokens) on dev and test; best dev PER kept."""

    def init_metrics(self, stage):
        self.per_metric = self.hparams.error_rate_computer()

    def append_metrics(self, ids, hypotheses, references):
        self.per_metric.append(ids, hypotheses, references)

    def summarize_metrics(self, stage):
        return {"PER": float(self.per_metric.summarize("error_rate"))}


def dataio_prepare(hparams, vocabulary, test_corruptor, train_corruptor):
    """Train / dev datasets and the test-set factory (a dict); ``tokens`` = phone ids (+ ``<eos>``)."""
    eos = [vocabulary.index["<eos>"]] if hparams["append_eos"] else []

    @sb.utils.data_pipeline.takes("phones")
    @sb.utils.data_pipeline.provides("tokens")
    def encode_phones(phones):
        return torch.LongTensor(vocabulary.encode(phones.split()) + eos)

    csv_files = {"train": hparams["train_csv"], "valid": hparams["valid_csv"], "test": hparams["test_csv"]}
    return recipe_datasets(
        hparams, csv_files, ["id", "sig", "tokens"], [encode_phones], test_corruptor, train_corruptor
    )


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    exit_if_required_options_missing(hparams_file, overrides)  # names every unset !PLACEHOLDER
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    start_run(hparams_file, hparams, overrides)  # option checks, output folder lock, upstream identity
    run_on_main(
        prepare_librispeech_pr,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["save_folder"],
            "splits": {"train": hparams["train_split"], "valid": hparams["valid_split"], "test": hparams["test_split"]},
            "csv_files": {"train": hparams["train_csv"], "valid": hparams["valid_csv"], "test": hparams["test_csv"]},
            "lexicon_files": hparams["lexicon_files"],
            "lexicon_fallback": hparams["lexicon_fallback"],
            "on_oov": hparams["on_oov"],
            "skip_prep": hparams["skip_prep"],
        },
    )
    run_on_main(prepare_corruption_lists, args=[hparams])
    test_corruptor, train_corruptor, conditions = build_corruptors(hparams)
    vocabulary = hparams["vocabulary"]
    logger.info("PR vocabulary: %d outputs (%d phones)", len(vocabulary), len(vocabulary) - 5)
    data = dataio_prepare(hparams, vocabulary, test_corruptor, train_corruptor)

    brain = PhoneRecognitionBrain(
        vocabulary,
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
            "PR (LibriSpeech)",
            results,
            ["PER", "loss"],
            upstream=hparams["upstream"],
            layer_weights=brain.layer_weights(),
            extra={
                "untrained_valid": untrained,
                "vocabulary": vocabulary.tokens,
                "ctc_decoding": brain.ctc_decoding,
                "test_split": hparams["test_split"],
            },
        )
