#!/usr/bin/env python3
"""SUPERB speaker diarization (SD) on s3prl's LibriMix variant with a frozen upstream, clean and corrupted tests.

The upstream stays frozen; a learnable weighted sum of its layers feeds s3prl's SD head
(``LSTM(D -> 512, 1 layer, unidirectional) -> Linear(512 -> 2)``) trained with permutation-invariant
BCE on frame labels at the upstream rate (320 samples). The best dev frame-accuracy checkpoint decodes
(clean, released) dev under the threshold x median-filter grid; the lowest-DER setting is frozen and
every test condition is scored with it (``DER``, ``miss``, ``false_alarm``, ``confusion``), besides
s3prl's oracle best-on-test DER (``DER_best_on_test``). Results go to
``<output_folder>/results.{json,md}``, hypothesis RTTMs to ``<output_folder>/rttm/<condition>.rttm``.

To run::

    python train.py hparams/superb_sd.yaml --data_folder=/data/Libri2Mix \
        --vad_rttm_folder=/data/LibriMix/metadata/LibriSpeech \
        --upstream_source=/models/exported_student \
        --test_musan_folder=/data/musan --test_rir_folder=/data/RIRS_NOISES
"""

import csv
import logging
import os
import sys

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from prepare_librimix_sd import prepare_librimix_sd
from speechbrain.utils.distributed import run_on_main

from robustdistiller.downstream import (
    DownstreamBrain,
    build_corruptors,
    prepare_corruption_lists,
    start_run,
    write_condition_results,
)
from robustdistiller.downstream.der import best_setting, constant_baseline, decode_all, score_grid, write_rttm
from robustdistiller.downstream.diarization import (
    frame_accuracy_counts,
    frame_labels,
    match_frames,
    parse_turns,
    pit_bce_loss,
)
from robustdistiller.downstream.signal import drop_missing_inputs, signal_datasets
from robustdistiller.runs.options import exit_if_required_options_missing

logger = logging.getLogger(__name__)

SOURCE_COLUMNS = ("s1_wav", "s2_wav")
METRICS = ["DER", "DER_best_on_test", "miss", "false_alarm", "confusion", "frame_accuracy", "loss"]


class DiarizationBrain(DownstreamBrain):
    """Frame-level 2-speaker diarization over a frozen upstream (s3prl's ``-d diarization``).

    ``modules``: ``weighted_sum`` and ``head`` (:class:`~robustdistiller.downstream.diarization.DiarizationHead`).
    Batches hold ``sig`` and ``labels`` (``[B, F, S]`` from
    :func:`~robustdistiller.downstream.diarization.frame_labels`, padded) and, outside training, ``segments``
    (the JSON reference turns). Dev: PIT BCE loss and ``frame_accuracy`` (the checkpoint selection, as
    s3prl: ``selection_metric: frame_accuracy``, ``selection_mode: max``). Test: the posteriors of every
    recording are decoded under the whole ``thresholds x medians`` grid; ``DER`` / ``miss`` /
    ``false_alarm`` / ``confusion`` are those of :attr:`decoding` (the setting chosen on clean dev by
    :meth:`choose_decoding`), ``DER_best_on_test`` the lowest DER of the grid (s3prl's oracle number).
    Hypothesis RTTMs at the chosen setting go to ``<output_folder>/rttm/<condition>.rttm``.

    Expected ``hparams``: ``frame_shift``, ``sample_rate``, ``decode_thresholds``, ``decode_medians``,
    ``der_resolution``, ``output_folder``, ``train_logger``.
    """

    decoding = None

    def compute_forward(self, batch, stage):
        """``(logits [B, F, S], label lengths [B])`` with features matched to the label length."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        labels, label_lens = batch.labels
        num_frames = labels.shape[1]
        lengths = torch.round(label_lens * num_frames).long()
        features, frame_mask = self.encode(wavs, wav_lens)
        features = match_frames(features, frame_mask.sum(dim=1), num_frames)
        return self.modules.head(features), lengths

    def compute_objectives(self, predictions, batch, stage):
        """PIT BCE; outside training the frame accuracy and (test) the posteriors are accumulated."""
        logits, lengths = predictions
        labels = batch.labels[0].to(self.device)
        loss, permuted = pit_bce_loss(logits.float(), labels, lengths)
        if stage != sb.Stage.TRAIN:
            correct, frames = frame_accuracy_counts(logits.detach(), permuted, lengths)
            self.correct += correct
            self.frames += frames
            if stage == sb.Stage.TEST:
                probabilities = torch.sigmoid(logits.detach().float()).cpu().numpy()
                for index, utterance_id in enumerate(batch.id):
                    self.posteriors[utterance_id] = probabilities[index, : int(lengths[index])]
                    self.references[utterance_id] = parse_turns(batch.segments[index])
        return loss

    def on_stage_start(self, stage, epoch=None):
        """New accumulators for dev and test."""
        super().on_stage_start(stage, epoch)
        self.correct, self.frames, self.posteriors, self.references = 0.0, 0, {}, {}

    def score_posteriors(self):
        """:func:`score_grid` of the stage's posteriors."""
        return score_grid(
            self.posteriors,
            self.references,
            self.hparams.decode_thresholds,
            self.hparams.decode_medians,
            frame_seconds=self.hparams.frame_shift / self.hparams.sample_rate,
            resolution=self.hparams.der_resolution,
        )

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs; keeps the best dev frame-accuracy checkpoint; test: DER at the chosen setting and the grid."""
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        stats = {"loss": stage_loss, "frame_accuracy": 100.0 * self.correct / max(self.frames, 1)}
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]},
                train_stats={"loss": self.train_loss},
                valid_stats=stats,
            )
            self.keep_best_checkpoint(stats)
            return
        self.grid = self.score_posteriors()
        condition = getattr(self, "condition", "") or "test"
        if self.decoding is not None:
            chosen = self.grid[self.decoding]
            oracle = best_setting(self.grid)
            stats.update({key: chosen[key] for key in ("DER", "miss", "false_alarm", "confusion")})
            stats.update({"DER_best_on_test": self.grid[oracle]["DER"], "best_on_test_setting": oracle})
            if sb.utils.distributed.if_main_process():
                hypotheses = decode_all(
                    self.posteriors,
                    chosen["threshold"],
                    chosen["median"],
                    self.hparams.frame_shift / self.hparams.sample_rate,
                )
                write_rttm(os.path.join(self.hparams.output_folder, "rttm", f"{condition}.rttm"), hypotheses)
        self.stage_stats = stats
        self.hparams.train_logger.log_stats(stats_meta={"test condition": condition}, test_stats=stats)

    def choose_decoding(self, dev_set, loader_kwargs):
        """Decodes (clean, released) dev with the best checkpoint and freezes the lowest-DER setting.

        Returns
        -------
        (str, dict)
            The chosen setting's name and the dev grid.
        """
        self.decoding, self.stage_stats, self.condition = None, {}, "dev"
        self.evaluate(dev_set, test_loader_kwargs=dict(loader_kwargs), **self.best_checkpoint_key)
        self.decoding = best_setting(self.grid)
        self.condition = ""
        logger.info(
            "Decoding setting chosen on dev: %s (dev DER %.2f%%)", self.decoding, self.grid[self.decoding]["DER"]
        )
        return self.decoding, self.grid


def dataio_prepare(hparams, test_corruptor, train_corruptor):
    """Train / dev datasets and the test-set factory; ``labels`` = ``[F, 2]`` frame labels of the turns."""
    frame_shift, sample_rate = hparams["frame_shift"], hparams["sample_rate"]

    @sb.utils.data_pipeline.takes("sig", "segments")
    @sb.utils.data_pipeline.provides("labels")
    def make_labels(sig, segments):
        turns = parse_turns(segments)
        speakers = sorted(turns)
        if len(speakers) > hparams["num_speakers"]:
            raise ValueError(
                f"A recording has {len(speakers)} speakers ({speakers}); num_speakers is {hparams['num_speakers']}"
            )
        speakers += [None] * (hparams["num_speakers"] - len(speakers))  # silent extra columns
        return frame_labels(turns, speakers, sig.shape[0] // frame_shift, frame_shift, sample_rate)

    csv_files = {"train": hparams["train_csv"], "valid": hparams["valid_csv"], "test": hparams["test_csv"]}
    return signal_datasets(
        hparams,
        csv_files,
        SOURCE_COLUMNS,
        ["id", "sig", "labels", "segments"],
        [make_labels],
        test_corruptor,
        train_corruptor,
        load_sources=False,
    )


def always_active_baseline(csv_file, resolution):
    """DER of "both speakers always active" on a split (the baseline that learning must beat)."""
    with open(csv_file, newline="", encoding="utf-8") as fin:
        rows = list(csv.DictReader(fin))
    references = {row["ID"]: parse_turns(row["segments"]) for row in rows}
    return constant_baseline(references, {row["ID"]: float(row["duration"]) for row in rows}, resolution)


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    exit_if_required_options_missing(hparams_file, overrides)  # names every unset !PLACEHOLDER
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    start_run(hparams_file, hparams, overrides)  # option checks, output folder lock, upstream identity
    run_on_main(prepare_librimix_sd, kwargs=hparams["prepare_options"])
    run_on_main(prepare_corruption_lists, args=[hparams])
    test_corruptor, train_corruptor, conditions = build_corruptors(hparams)
    conditions = drop_missing_inputs(
        conditions, hparams["test_csv"], SOURCE_COLUMNS, hparams.get("corruption_input", "sources")
    )
    data = dataio_prepare(hparams, test_corruptor, train_corruptor)

    brain = DiarizationBrain(
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
    setting, dev_grid = brain.choose_decoding(data["valid"], hparams["test_dataloader_opts"])
    results = brain.evaluate_conditions(data["make_test_set"], conditions, hparams["test_dataloader_opts"])
    if sb.utils.distributed.if_main_process():
        baseline = always_active_baseline(hparams["test_csv"], hparams["der_resolution"])
        write_condition_results(
            hparams["output_folder"],
            "SD (LibriMix)",
            results,
            METRICS,
            upstream=hparams["upstream"],
            layer_weights=brain.layer_weights(),
            extra={
                "primary_metric": "DER",
                "higher_is_better": False,
                "decoding": {
                    "setting": setting,
                    "threshold": dev_grid[setting]["threshold"],
                    "median": dev_grid[setting]["median"],
                    "chosen_on": "dev (released mix_both)",
                    "dev_DER": dev_grid[setting]["DER"],
                },
                "dev_grid": dev_grid,
                "baseline_always_active_test": {
                    key: baseline[key] for key in ("DER", "miss", "false_alarm", "confusion")
                },
                "metric_notes": {
                    "DER": "percent, collar 0, overlap scored, setting chosen on dev",
                    "DER_best_on_test": "s3prl's oracle: lowest DER of the grid on this test set",
                },
            },
        )
