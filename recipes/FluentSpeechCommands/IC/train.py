#!/usr/bin/env python3
"""SUPERB intent classification (IC) on Fluent Speech Commands with a frozen upstream, clean and corrupted tests.

The upstream (an exported RobustDistiller student, a distillation checkpoint, an s3prl checkpoint or
any Hugging Face WavLM / HuBERT / wav2vec 2.0) stays frozen; a learnable weighted sum of its layers
feeds a projector, mean pooling and, as in s3prl's ``fluent_commands``, one linear layer over the
concatenated value sets of the three slots (action, object, location): each slot's part of the
output gets its own softmax cross-entropy and the loss is their sum. An utterance is right when all
three slots are; the per-slot accuracies are reported too. The checkpoint with the best dev accuracy
is tested on the test speakers under every test condition; the results go to
``<output_folder>/results.{json,md}``.

To run::

    python train.py hparams/superb_ic.yaml --data_folder=/data/fluent_speech_commands_dataset \
        --upstream_source=/models/exported_student \
        --test_musan_folder=/data/musan --test_rir_folder=/data/RIRS_NOISES
"""

import logging
import os
import sys

import speechbrain as sb
import torch
import torch.nn as nn
from hyperpyyaml import load_hyperpyyaml
from prepare_fluent_speech_commands import SLOTS, prepare_fluent_speech_commands
from speechbrain.utils.distributed import run_on_main

from robustdistiller.downstream import (
    build_corruptors,
    DownstreamBrain,
    masked_mean,
    prepare_corruption_lists,
    recipe_datasets,
    start_run,
    write_condition_results,
)
from robustdistiller.runs.options import exit_if_required_options_missing

logger = logging.getLogger(__name__)


def all_slots_right(predicted, labels):
    """Per-utterance 1.0 where every slot of ``[B, slots]`` predictions is right (a MetricStats metric).

    Example
    -------
    >>> all_slots_right(torch.tensor([[0, 1, 2], [0, 1, 2]]), torch.tensor([[0, 1, 2], [0, 3, 2]]))
    tensor([1., 0.])
    """
    return (predicted == labels).all(dim=-1).float()


class IntentClassificationBrain(DownstreamBrain):
    """SUPERB IC: projector, mean pooling over valid frames, one linear over all slots' values.

    ``modules``: ``weighted_sum``, ``projector`` (``Linear(D -> P)``), ``classifier``
    (``Linear(P -> sum(slot_sizes))``, split per slot as s3prl does) and, only with
    ``feature_normalization: True``, ``feature_normalizer`` (global per-layer standardisation of the
    upstream layers, not part of SUPERB). Batches carry ``sig`` and ``intent_encoded`` (``[B, 3]``:
    action, object, location indices). ``self.stage_stats`` of a test stage: ``loss``, ``accuracy``
    (all slots right) and ``<slot>_accuracy``; the best dev checkpoint (``selection_metric: accuracy``) is kept.
    """

    def encode(self, wavs, wav_lens):
        """Upstream layers, standardised per layer when ``feature_normalizer`` is a module, weighted-summed."""
        layers, frame_mask = self.hparams.upstream(wavs, wav_lens)
        normalizer = getattr(self.modules, "feature_normalizer", None)
        if normalizer is not None:
            frame_lens = frame_mask.sum(dim=1) / frame_mask.shape[1]
            epoch = self.hparams.epoch_counter.current
            layers = normalizer(layers.transpose(1, 2), frame_lens, epoch=epoch).transpose(1, 2)
        return self.modules.weighted_sum(layers), frame_mask

    def compute_forward(self, batch, stage):
        """Logits ``[B, sum(slot_sizes)]``."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        features, frame_mask = self.encode(wavs, wav_lens)
        pooled = masked_mean(self.modules.projector(features), frame_mask)
        return self.modules.classifier(pooled)

    def compute_objectives(self, predictions, batch, stage):
        """Sum over the slots of the cross-entropy of each slot's logits; accumulates accuracies outside training."""
        labels = batch.intent_encoded.data.to(self.device)
        slot_logits = predictions.split(list(self.hparams.slot_sizes), dim=-1)
        loss = sum(nn.functional.cross_entropy(logits, labels[:, index]) for index, logits in enumerate(slot_logits))
        if stage != sb.Stage.TRAIN:
            predicted = torch.stack([logits.argmax(dim=-1) for logits in slot_logits], dim=1)
            self.accuracy_metrics["accuracy"].append(batch.id, predicted, labels)
            for index, slot in enumerate(SLOTS):
                self.accuracy_metrics[f"{slot}_accuracy"].append(
                    batch.id, predicted[:, index : index + 1], labels[:, index : index + 1]
                )
        return loss

    def on_stage_start(self, stage, epoch=None):
        """New accuracy accumulators for dev and test."""
        super().on_stage_start(stage, epoch)
        if stage != sb.Stage.TRAIN:
            names = ["accuracy"] + [f"{slot}_accuracy" for slot in SLOTS]
            self.accuracy_metrics = {name: sb.utils.metric_stats.MetricStats(metric=all_slots_right) for name in names}

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs, keeps the best dev checkpoint (:meth:`keep_best_checkpoint`), records test statistics."""
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        stats = {"loss": stage_loss}
        stats.update({name: float(metric.summarize("average")) for name, metric in self.accuracy_metrics.items()})
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]},
                train_stats={"loss": self.train_loss},
                valid_stats=stats,
            )
            self.keep_best_checkpoint(stats)
        else:
            self.stage_stats = stats
            self.hparams.train_logger.log_stats(
                stats_meta={"test condition": getattr(self, "condition", "")}, test_stats=stats
            )


def dataio_prepare(hparams, test_corruptor, train_corruptor):
    """Train / dev datasets, the test-set factory and one label encoder per slot (fitted on train)."""
    csv_files = {"train": hparams["train_csv"], "valid": hparams["valid_csv"], "test": hparams["test_csv"]}
    slot_encoders = {slot: sb.dataio.encoder.CategoricalEncoder() for slot in SLOTS}

    @sb.utils.data_pipeline.takes(*SLOTS)
    @sb.utils.data_pipeline.provides("intent_encoded")
    def encode_intent(*values):
        return torch.LongTensor([slot_encoders[slot].encode_label(value) for slot, value in zip(SLOTS, values)])

    output_keys = ["id", "sig", "intent_encoded"]
    data = recipe_datasets(hparams, csv_files, output_keys, [encode_intent], test_corruptor, train_corruptor)
    for slot, encoder in slot_encoders.items():
        encoder.load_or_create(
            path=os.path.join(hparams["save_folder"], f"{slot}_encoder.txt"),
            from_didatasets=[data["train"]],
            output_key=slot,
        )
    sizes = [len(slot_encoders[slot]) for slot in SLOTS]
    if sizes != list(hparams["slot_sizes"]):
        raise ValueError(
            f"The training CSV {csv_files['train']} has {sizes} values for the slots {list(SLOTS)}, but slot_sizes "
            f"is {list(hparams['slot_sizes'])}; pass --slot_sizes={sizes}"
        )
    for encoder, size in zip(slot_encoders.values(), sizes):
        encoder.expect_len(size)
    logger.info("Slot values: %s", "; ".join(f"{slot}: {len(encoder)}" for slot, encoder in slot_encoders.items()))
    return {**data, "slot_encoders": slot_encoders}


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    exit_if_required_options_missing(hparams_file, overrides)  # names every unset !PLACEHOLDER
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    start_run(hparams_file, hparams, overrides)  # option checks, output folder lock, upstream identity
    run_on_main(prepare_fluent_speech_commands, kwargs=hparams["prepare_options"])
    run_on_main(prepare_corruption_lists, args=[hparams])
    test_corruptor, train_corruptor, conditions = build_corruptors(hparams)
    data = dataio_prepare(hparams, test_corruptor, train_corruptor)

    if hparams["feature_normalization"]:
        hparams["modules"]["feature_normalizer"] = hparams["feature_normalizer"]
        hparams["checkpointer"].add_recoverable("feature_normalizer", hparams["feature_normalizer"])

    brain = IntentClassificationBrain(
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
            "IC (Fluent Speech Commands)",
            results,
            ["accuracy"] + [f"{slot}_accuracy" for slot in SLOTS] + ["loss"],
            upstream=hparams["upstream"],
            layer_weights=brain.layer_weights(),
            extra={
                "slot_values": {
                    slot: [encoder.decode_ndim(index) for index in range(len(encoder))]
                    for slot, encoder in data["slot_encoders"].items()
                }
            },
        )
