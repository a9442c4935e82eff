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
import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from prepare_librimix_sd import prepare_librimix_sd
from speechbrain.utils.distributed import run_on_main

from robustdistiller.downstream import build_corruptors, prepare_corruption_lists, start_run, write_condition_results
from robustdistiller.downstream.der import constant_baseline
from robustdistiller.downstream.diarization import DiarizationBrain, frame_labels, parse_turns
from robustdistiller.downstream.signal import drop_missing_inputs, signal_datasets

logger = logging.getLogger(__name__)

SOURCE_COLUMNS = ("s1_wav", "s2_wav")
METRICS = ["DER", "DER_best_on_test", "miss", "false_alarm", "confusion", "frame_accuracy", "loss"]


def dataio_prepare(hparams, test_corruptor, train_corruptor):
    """Train / dev datasets and the test-set factory; ``labels`` = ``[F, 2]`` frame labels of the turns."""
    frame_shift, sample_rate = hparams["frame_shift"], hparams["sample_rate"]

    @sb.utils.data_pipeline.takes("sig", "segments")
    @sb.utils.data_pipeline.provides("labels")
    def make_labels(sig, segments):
        turns = parse_turns(segments)
        speakers = sorted(turns)
        if len(speakers) > hparams["num_speakers"]:
            raise ValueError(f"A recording has {len(speakers)} speakers ({speakers}); num_speakers is "
                             f"{hparams['num_speakers']}")
        speakers += [None] * (hparams["num_speakers"] - len(speakers))  # silent extra columns
        return frame_labels(turns, speakers, sig.shape[0] // frame_shift, frame_shift, sample_rate)

    csv_files = {"train": hparams["train_csv"], "valid": hparams["valid_csv"], "test": hparams["test_csv"]}
    return signal_datasets(hparams, csv_files, SOURCE_COLUMNS, ["id", "sig", "labels", "segments"], [make_labels],
                           test_corruptor, train_corruptor, load_sources=False)


def always_active_baseline(csv_file, resolution):
    """DER of "both speakers always active" on a split (the baseline that learning must beat)."""
    with open(csv_file, newline="", encoding="utf-8") as fin:
        rows = list(csv.DictReader(fin))
    references = {row["ID"]: parse_turns(row["segments"]) for row in rows}
    return constant_baseline(references, {row["ID"]: float(row["duration"]) for row in rows}, resolution)


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    start_run(hparams_file, hparams, overrides)  # option checks, output folder lock, upstream identity
    run_on_main(prepare_librimix_sd, kwargs=hparams["prepare_options"])
    run_on_main(prepare_corruption_lists, args=[hparams])
    test_corruptor, train_corruptor, conditions = build_corruptors(hparams)
    conditions = drop_missing_inputs(conditions, hparams["test_csv"], SOURCE_COLUMNS,
                                     hparams.get("corruption_input", "sources"))
    train, valid, make_test_set = dataio_prepare(hparams, test_corruptor, train_corruptor)

    brain = DiarizationBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.fit(
        hparams["epoch_counter"],
        train,
        valid,
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    setting, dev_grid = brain.choose_decoding(valid, hparams["test_dataloader_opts"])
    results = brain.evaluate_best(make_test_set, conditions, hparams["test_dataloader_opts"])
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
                "primary_metric": "DER", "higher_is_better": False,
                "decoding": {"setting": setting, "threshold": dev_grid[setting]["threshold"],
                             "median": dev_grid[setting]["median"], "chosen_on": "dev (released mix_both)",
                             "dev_DER": dev_grid[setting]["DER"]},
                "dev_grid": dev_grid,
                "baseline_always_active_test": {key: baseline[key] for key in ("DER", "miss", "false_alarm",
                                                                              "confusion")},
                "metric_notes": {"DER": "percent, collar 0, overlap scored, setting chosen on dev",
                                 "DER_best_on_test": "s3prl's oracle: lowest DER of the grid on this test set"},
            },
        )
