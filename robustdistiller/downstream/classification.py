"""Utterance classification (KS, IC, ER, SID): the Brain and the datasets with label encoding."""

import logging
import os

import speechbrain as sb
import torch.nn as nn

from robustdistiller.downstream.brain import DownstreamBrain
from robustdistiller.downstream.data import recipe_datasets
from robustdistiller.downstream.heads import masked_mean

logger = logging.getLogger(__name__)


class UtteranceClassificationBrain(DownstreamBrain):
    """SUPERB utterance-level classification: projector, mean pooling over valid frames, linear.

    ``modules``: ``weighted_sum``, ``projector`` (``Linear(D -> P)``), ``classifier``
    (``Linear(P -> classes)``). Batches carry ``sig`` and ``label_encoded`` (see
    :func:`classification_datasets`). Cross-entropy; accuracy on dev and test; the checkpoint with the
    best dev accuracy is kept. ``self.stage_stats`` of a test stage: ``{"loss", "accuracy"}``.
    """

    def compute_forward(self, batch, stage):
        """Logits ``[B, classes]``."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        features, frame_mask = self.encode(wavs, wav_lens)
        pooled = masked_mean(self.modules.projector(features), frame_mask)
        return self.modules.classifier(pooled)

    def compute_objectives(self, predictions, batch, stage):
        """Cross-entropy; accumulates accuracy outside training."""
        labels = batch.label_encoded.data[:, 0].to(self.device)
        loss = nn.functional.cross_entropy(predictions, labels)
        if stage != sb.Stage.TRAIN:
            self.accuracy_metric.append(
                batch.id, predictions.detach().argmax(dim=-1).tolist(), labels.tolist()
            )
        return loss

    def on_stage_start(self, stage, epoch=None):
        """New accuracy accumulator for dev and test."""
        super().on_stage_start(stage, epoch)
        if stage != sb.Stage.TRAIN:
            self.accuracy_metric = sb.utils.metric_stats.ClassificationStats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs, checkpoints on the best dev accuracy, records test statistics."""
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        stats = {"loss": stage_loss, "accuracy": float(self.accuracy_metric.summarize("accuracy"))}
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]},
                train_stats={"loss": self.train_loss},
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(meta=stats, max_keys=["accuracy"])
        else:
            self.stage_stats = stats
            self.hparams.train_logger.log_stats(stats_meta={"test condition": getattr(self, "condition", "")},
                                                test_stats=stats)


def classification_datasets(hparams, csv_files, test_corruptor, train_corruptor=None, label_column="label"):
    """Datasets of an utterance-classification recipe, with the label encoder.

    Arguments
    ---------
    hparams : dict
        Reads ``sample_rate``, ``seed``, ``max_train_samples`` (random training crops; None keeps
        whole utterances), ``save_folder``.
    csv_files : dict
        ``{"train", "valid", "test"}`` CSVs with ``ID, duration, wav, start, stop, <label_column>``.
    test_corruptor : Corruptor
        Corrupts the test sets (:func:`build_corruptors`).
    train_corruptor : Corruptor, optional
        Corrupts the training set (``train_corruption: True``).
    label_column : str
        CSV column of the class.

    Returns
    -------
    dict
        ``train``, ``valid`` (datasets), ``make_test_set`` (``(name, spec) -> dataset``),
        ``label_encoder`` (``CategoricalEncoder`` fitted on train).
    """
    label_encoder = sb.dataio.encoder.CategoricalEncoder()

    @sb.utils.data_pipeline.takes(label_column)
    @sb.utils.data_pipeline.provides("label_encoded")
    def encode_label(label):
        return label_encoder.encode_label_torch(label)

    train, valid, make_test_set = recipe_datasets(
        hparams, csv_files, ["id", "sig", "label_encoded"], [encode_label], test_corruptor, train_corruptor
    )
    label_encoder.load_or_create(
        path=os.path.join(hparams["save_folder"], "label_encoder.txt"),
        from_didatasets=[train],
        output_key=label_column,
    )
    return {
        "train": train,
        "valid": valid,
        "make_test_set": make_test_set,
        "label_encoder": label_encoder,
    }

