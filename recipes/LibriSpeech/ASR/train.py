#!/usr/bin/env python3
"""SUPERB speech recognition (ASR) on LibriSpeech with a frozen upstream, clean and corrupted tests.

The upstream stays frozen; a learnable weighted sum of its layers, SpecAugment in training (time warp,
time and feature masks on the summed features), then s3prl's ASR head: ``Linear(D -> 1024)``, two
BiLSTM layers of 1024 per direction with dropout 0.2 after each, ``Linear(2048 -> 32)``; CTC over
s3prl's characters (``char.dict`` order; blank ``<s>`` = 0, ``|`` the word boundary, target ends with ``</s>``). Greedy
CTC decoding without LM; WER and CER (s3prl's UER: over the character tokens, boundaries included)
with SpeechBrain's ``ErrorRateStats``. The best dev-clean WER checkpoint is tested on test-clean under
every test condition, and on optional extra subsets (dev-other, test-other) clean. Results go to
``<output_folder>/results.{json,md}``, per-utterance hypotheses to
``<output_folder>/hypotheses/<condition>.txt``.

To run::

    python train.py hparams/superb_asr.yaml --data_folder=/data/LibriSpeech \
        --upstream_source=/models/exported_student \
        --test_musan_folder=/data/musan --test_rir_folder=/data/RIRS_NOISES
"""

import logging
import os
import sys

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from prepare_librispeech_asr import prepare_librispeech_asr
from speechbrain.utils.distributed import run_on_main

from robustdistiller.downstream import (
    audio_dataset,
    AudioPipeline,
    build_corruptors,
    prepare_corruption_lists,
    recipe_datasets,
    start_run,
    write_condition_results,
)
from robustdistiller.downstream.ctc import CTCBrain, characters_to_words, words_to_characters
from robustdistiller.runs.options import exit_if_required_options_missing

logger = logging.getLogger(__name__)


class SpeechRecognitionBrain(CTCBrain):
    """CTC over characters; WER and CER on dev and test; the best dev WER checkpoint is kept."""

    def init_metrics(self, stage):
        self.wer_metric = self.hparams.error_rate_computer()
        self.cer_metric = self.hparams.error_rate_computer()

    def append_metrics(self, ids, hypotheses, references):
        self.cer_metric.append(ids, hypotheses, references)
        self.wer_metric.append(
            ids,
            [characters_to_words(tokens).split() for tokens in hypotheses],
            [characters_to_words(tokens).split() for tokens in references],
        )

    def summarize_metrics(self, stage):
        return {
            "WER": float(self.wer_metric.summarize("error_rate")),
            "CER": float(self.cer_metric.summarize("error_rate")),
        }

    def format_tokens(self, tokens):
        return characters_to_words(tokens)


def dataio_prepare(hparams, vocabulary, test_corruptor, train_corruptor):
    """Train / dev datasets, the test-set factory and ``extra_test_sets`` (clean, ``{split: dataset}``)."""
    eos = [vocabulary.index["</s>"]] if hparams["append_eos"] else []

    @sb.utils.data_pipeline.takes("words")
    @sb.utils.data_pipeline.provides("tokens")
    def encode_characters(words):
        return torch.LongTensor(vocabulary.encode(words_to_characters(words.upper())) + eos)

    output_keys = ["id", "sig", "tokens"]
    csv_files = {"train": hparams["train_csv"], "valid": hparams["valid_csv"], "test": hparams["test_csv"]}
    data = recipe_datasets(hparams, csv_files, output_keys, [encode_characters], test_corruptor, train_corruptor)
    data["extra_test_sets"] = {
        split: audio_dataset(
            extra_csv(hparams, split),
            AudioPipeline(hparams["sample_rate"]),
            output_keys,
            extra_items=[encode_characters],
        )
        for split in hparams["extra_test_splits"]
    }
    return data


def extra_csv(hparams, split):
    """CSV of an extra (clean-only) test subset."""
    return os.path.join(hparams["save_folder"], f"{split}.csv")


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    exit_if_required_options_missing(hparams_file, overrides)  # names every unset !PLACEHOLDER
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    start_run(hparams_file, hparams, overrides)  # option checks, output folder lock, upstream identity
    csv_files = [
        (hparams["train_split"], hparams["train_csv"]),
        (hparams["valid_split"], hparams["valid_csv"]),
        (hparams["test_split"], hparams["test_csv"]),
    ]
    csv_files += [(split, extra_csv(hparams, split)) for split in hparams["extra_test_splits"]]
    run_on_main(
        prepare_librispeech_asr,
        kwargs={"data_folder": hparams["data_folder"], "csv_files": csv_files, "skip_prep": hparams["skip_prep"]},
    )
    run_on_main(prepare_corruption_lists, args=[hparams])
    test_corruptor, train_corruptor, conditions = build_corruptors(hparams)
    vocabulary = hparams["vocabulary"]
    data = dataio_prepare(hparams, vocabulary, test_corruptor, train_corruptor)

    brain = SpeechRecognitionBrain(
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
    for split, dataset in data["extra_test_sets"].items():  # clean only
        results.update(
            brain.evaluate_conditions(
                lambda name, spec, dataset=dataset: dataset,
                {split: {"condition": "clean"}},
                hparams["test_dataloader_opts"],
            )
        )
    if sb.utils.distributed.if_main_process():
        write_condition_results(
            hparams["output_folder"],
            "ASR (LibriSpeech)",
            results,
            ["WER", "CER", "loss"],
            upstream=hparams["upstream"],
            layer_weights=brain.layer_weights(),
            extra={
                "untrained_valid": untrained,
                "vocabulary": vocabulary.tokens,
                "ctc_decoding": brain.ctc_decoding,
                "test_split": hparams["test_split"],
                "extra_test_splits": hparams["extra_test_splits"],
            },
        )
