"""Utterance classification (KS, IC, ER, SID): the Brain and the datasets with label encoding.

Class order (the index of each class in the classifier's output): a recipe that follows an s3prl map
passes it as ``labels`` to :func:`classification_datasets` (ER: s3prl's ``neu hap ang sad``; SID: the
speaker ids in sorted order, :func:`sorted_column_values`), so a head trained here loads in s3prl and
the reverse; without ``labels`` the classes are numbered by first appearance in the training list.
"""

import csv
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
    :func:`classification_datasets`). Cross-entropy; accuracy on dev and test; the best dev checkpoint
    (``selection_metric: accuracy`` in KS, ER, SID) is kept. ``self.stage_stats`` of a test stage:
    ``{"loss", "accuracy"}``.
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
            self.accuracy_metric.append(batch.id, predictions.detach().argmax(dim=-1).tolist(), labels.tolist())
        return loss

    def on_stage_start(self, stage, epoch=None):
        """New accuracy accumulator for dev and test."""
        super().on_stage_start(stage, epoch)
        if stage != sb.Stage.TRAIN:
            self.accuracy_metric = sb.utils.metric_stats.ClassificationStats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs, keeps the best dev checkpoint (:meth:`keep_best_checkpoint`), records test statistics."""
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
            self.keep_best_checkpoint(stats)
        else:
            self.stage_stats = stats
            self.hparams.train_logger.log_stats(
                stats_meta={"test condition": getattr(self, "condition", "")}, test_stats=stats
            )


def sorted_column_values(csv_paths, column):
    """The distinct values of ``column`` over the CSVs, sorted (e.g. SID's speaker ids, s3prl's class order).

    Raises
    ------
    ValueError
        A CSV has no such column (file and column named).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "list.csv")
    >>> _ = open(path, "w").write("ID,speaker\\na,id10270\\nb,id10001\\nc,id10270\\n")
    >>> sorted_column_values([path], "speaker")
    ['id10001', 'id10270']
    """
    return sorted({value for path in csv_paths for value in _column_values(path, column)})


def _column_values(path, column):
    with open(path, encoding="utf-8", newline="") as fin:
        reader = csv.DictReader(fin)
        if column not in (reader.fieldnames or []):
            raise ValueError(f"{path}: no column {column!r} (columns: {reader.fieldnames})")
        return [row[column] for row in reader]


def fixed_order_encoder(labels, path, csv_paths, label_column):
    """A ``CategoricalEncoder`` with ``labels[i] -> i``, checked against the lists and saved to ``path``.

    Arguments
    ---------
    labels : sequence of str
        Every class, in output order.
    path : str
        ``label_encoder.txt`` of the run: written if absent; if present (an earlier run in the same
        folder) it must hold the same order, else a checkpoint there would read its outputs as other
        classes.
    csv_paths : dict
        ``split -> CSV``; every value of ``label_column`` must be one of ``labels``.
    label_column : str
        CSV column of the class.

    Raises
    ------
    ValueError
        Duplicate labels, a CSV label outside ``labels``, or ``path`` holding another order (all named).
    """
    labels = [str(label) for label in labels]
    if len(set(labels)) != len(labels):
        raise ValueError(f"The class list has duplicates: {labels}")
    known = set(labels)
    for split, csv_path in csv_paths.items():
        unknown = sorted(set(_column_values(csv_path, label_column)) - known)
        if unknown:
            raise ValueError(
                f"{csv_path} ({split}) has {label_column} values outside the {len(labels)} classes "
                f"{labels[:8]}{'...' if len(labels) > 8 else ''}: {unknown[:5]}"
            )
    encoder = sb.dataio.encoder.CategoricalEncoder()
    encoder.load_or_create(path=path, from_iterables=[labels])
    found = [encoder.ind2lab[index] for index in range(len(encoder))]
    if found != labels:
        raise ValueError(
            f"{path} numbers the classes {found[:8]}{'...' if len(found) > 8 else ''}, not in this recipe's order "
            f"{labels[:8]}{'...' if len(labels) > 8 else ''} (an earlier run or version wrote it; its checkpoints "
            f"use that order): run in a new output folder"
        )
    return encoder


def classification_datasets(
    hparams, csv_files, test_corruptor, train_corruptor=None, label_column="label", labels=None
):
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
    labels : sequence of str, optional
        The classes in output order (``labels[i]`` is class ``i``), e.g. s3prl's map; every label of
        the three lists must be among them (:func:`fixed_order_encoder`). None: numbered by first
        appearance in the training list.

    Returns
    -------
    dict
        ``train``, ``valid`` (datasets), ``make_test_set`` (``(name, spec) -> dataset``),
        ``label_encoder`` (``CategoricalEncoder``: ``labels``, or fitted on train).
    """
    encoder_path = os.path.join(hparams["save_folder"], "label_encoder.txt")
    if labels is not None:
        label_encoder = fixed_order_encoder(labels, encoder_path, csv_files, label_column)
    else:
        label_encoder = sb.dataio.encoder.CategoricalEncoder()

    @sb.utils.data_pipeline.takes(label_column)
    @sb.utils.data_pipeline.provides("label_encoded")
    def encode_label(label):
        return label_encoder.encode_label_torch(label)

    data = recipe_datasets(
        hparams, csv_files, ["id", "sig", "label_encoded"], [encode_label], test_corruptor, train_corruptor
    )
    if labels is None:
        label_encoder.load_or_create(path=encoder_path, from_didatasets=[data["train"]], output_key=label_column)
    return {**data, "label_encoder": label_encoder}
