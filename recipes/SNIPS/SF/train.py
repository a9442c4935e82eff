#!/usr/bin/env python3
"""SUPERB slot filling (SF) on Audio-SNIPS with a frozen upstream, clean and corrupted tests.

The upstream (an exported RobustDistiller student, a distillation checkpoint, an s3prl checkpoint or
any Hugging Face WavLM / HuBERT / wav2vec 2.0) stays frozen; a learnable weighted sum of its layers
feeds s3prl's ASR/SF CTC head (projector, 2-layer BiLSTM, linear) over characters plus a ``B-<slot>``
and an ``E-<slot>`` token per slot type. SpecAugment acts on the weighted-sum features in training.
Decoding is greedy CTC (``ctc_decoding``: ``standard`` = s3prl 0.4.18's, the default, or
``s3prl_pre2022``), shared with PR and ASR (:func:`robustdistiller.downstream.ctc.greedy_ctc_decode`);
the slots are parsed back out of the decoded text and scored with s3prl's slot-type F1 (checkpoint
selection) and slot-value CER (:mod:`robustdistiller.downstream.slot_filling`).
The best dev checkpoint is tested under every test condition; the results go to
``<output_folder>/results.{json,md}`` and the decoded texts to ``<output_folder>/hypotheses/``.

To run::

    python train.py hparams/superb_sf.yaml --data_folder=/data/SNIPS \
        --upstream_source=/models/exported_student \
        --test_musan_folder=/data/musan --test_rir_folder=/data/RIRS_NOISES
"""

import logging
import sys

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from prepare_snips import SPLITS, prepare_snips
from speechbrain.utils.distributed import run_on_main

from robustdistiller.downstream import (
    build_corruptors,
    prepare_corruption_lists,
    recipe_datasets,
    start_run,
    write_condition_results,
)
from robustdistiller.downstream.ctc import CTCBrain
from robustdistiller.downstream.slot_filling import (
    SlotTextEncoder,
    ctc_vocabulary,
    slot_filling_metrics,
    tokens_to_text,
)
from robustdistiller.runs.options import as_list, exit_if_required_options_missing

logger = logging.getLogger(__name__)

METRICS = [
    "slot_type_f1",
    "slot_value_cer",
    "slot_value_wer",
    "slot_edit_f1_full",
    "slot_edit_f1_part",
    "wer",
    "cer",
    "loss",
]


class SlotFillingBrain(CTCBrain):
    """CTC over characters and slot tokens; s3prl's SF metrics on the decoded texts.

    The best checkpoint has the highest dev ``slot_type_f1`` (``selection_metric``). The greedy decoding
    rule is ``hparams.ctc_decoding`` (read by :class:`~robustdistiller.downstream.ctc.CTCBrain`).
    """

    def init_metrics(self, stage):
        """Decoded texts of the stage: hypotheses and references."""
        self.hypothesis_texts, self.reference_texts = [], []

    def append_metrics(self, ids, hypotheses, references):
        """Keeps the decoded texts (hypotheses and references) for the stage's metrics."""
        self.hypothesis_texts += [tokens_to_text(tokens) for tokens in hypotheses]
        self.reference_texts += [tokens_to_text(tokens) for tokens in references]

    def summarize_metrics(self, stage):
        """s3prl's SF metrics (fractions; slot edit F1 in %)."""
        return slot_filling_metrics(self.hypothesis_texts, self.reference_texts)

    def format_tokens(self, tokens):
        """The text with its slot tokens, as s3prl writes it."""
        return tokens_to_text(tokens)


def load_encoder(hparams):
    """The target encoder of ``hparams["slots_file"]``; its outputs must number ``hparams["vocab_size"]``."""
    encoder = SlotTextEncoder.from_slots_file(hparams["slots_file"])
    if encoder.vocab_size != hparams["vocab_size"]:
        raise ValueError(
            f"{hparams['slots_file']} has {len(encoder.slot_types)} slot types: {encoder.vocab_size} CTC outputs, "
            f"but vocab_size is {hparams['vocab_size']} (set vocab_size: {encoder.vocab_size})"
        )
    return encoder


def dataio_prepare(hparams, encoder, test_corruptor, train_corruptor):
    """Train / dev datasets and the test-set factory; ``tokens`` = the encoded words and slots."""

    @sb.utils.data_pipeline.takes("words", "tags")
    @sb.utils.data_pipeline.provides("tokens")
    def encode_tokens(words, tags):
        return torch.LongTensor(encoder.encode(words.split(" "), tags.split(" ")))

    csv_files = {"train": hparams["train_csv"], "valid": hparams["valid_csv"], "test": hparams["test_csv"]}
    return recipe_datasets(
        hparams, csv_files, ["id", "sig", "tokens"], [encode_tokens], test_corruptor, train_corruptor
    )


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    exit_if_required_options_missing(hparams_file, overrides)  # names every unset !PLACEHOLDER
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    start_run(hparams_file, hparams, overrides)  # option checks, output folder lock, upstream identity
    run_on_main(
        prepare_snips,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["save_folder"],
            "speakers": {split: as_list(hparams[f"{split}_speakers"], f"{split}_speakers") for split in SPLITS},
            "csv_files": {split: hparams[f"{split}_csv"] for split in SPLITS},
            "skip_prep": hparams["skip_prep"],
        },
    )
    encoder = load_encoder(hparams)
    if not hparams["specaugment"]:
        hparams["feature_augment"] = None
    run_on_main(prepare_corruption_lists, args=[hparams])
    test_corruptor, train_corruptor, conditions = build_corruptors(hparams)
    data = dataio_prepare(hparams, encoder, test_corruptor, train_corruptor)

    brain = SlotFillingBrain(
        ctc_vocabulary(encoder),
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
            "SF (Audio-SNIPS)",
            results,
            METRICS,
            upstream=hparams["upstream"],
            layer_weights=brain.layer_weights(),
            extra={
                "slot_types": encoder.slot_types,
                "vocab_size": encoder.vocab_size,
                "ctc_decoding": brain.ctc_decoding,
            },
        )
