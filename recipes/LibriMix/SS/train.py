#!/usr/bin/env python3
"""SUPERB source separation (SS) on Libri2Mix with a frozen upstream, clean and corrupted tests.

The upstream stays frozen and hears the two-speaker mixture; a learnable weighted sum of its layers
feeds s3prl's ``separation_stft`` head (:class:`~robustdistiller.downstream.separation.MaskEstimator`:
3-layer BiLSTM 896, one ReLU mask per source on the mixture's STFT), trained with the NPSM target, MSE
and utterance-level PIT (:class:`~robustdistiller.downstream.separation.MaskingBrain`). The checkpoint of
the best dev_1000 SI-SDRi is tested on the 3,000 test mixtures under every condition: ``official``
(``mix_clean``, the SUPERB number), ``mix_both`` (when generated) and the shared corrupted conditions
applied to ``s1 + s2``. Results go to ``<output_folder>/results.{json,md}``, separated examples to
``<output_folder>/examples/<condition>/``.

To run::

    python train.py hparams/superb_ss.yaml --data_folder=/data/Libri2Mix \
        --upstream_source=/models/exported_student \
        --test_musan_folder=/data/musan --test_rir_folder=/data/RIRS_NOISES
"""

import logging
import sys

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from prepare_librimix_ss import prepare_librimix_ss
from speechbrain.utils.distributed import run_on_main

from robustdistiller.downstream import build_corruptors, prepare_corruption_lists, start_run, write_condition_results
from robustdistiller.downstream.separation import MaskingBrain
from robustdistiller.downstream.signal import drop_missing_inputs, signal_datasets
from robustdistiller.runs.options import exit_if_required_options_missing

logger = logging.getLogger(__name__)

METRICS = ["SI_SDRi", "SI_SDR", "SI_SDR_input", "PESQ", "PESQ_improvement", "STOI", "STOI_improvement", "utterances"]


def dataio_prepare(hparams, test_corruptor, train_corruptor):
    """Train / dev_1000 datasets and the ``(name, spec) -> test set`` factory (``sig``, ``sources`` [B, T, 2]).

    The targets come already scaled by the corruption's gain, so the batches need no ``corruption_gain``.
    """
    csv_files = {"train": hparams["train_csv"], "valid": hparams["valid_csv"], "test": hparams["test_csv"]}
    return signal_datasets(
        hparams, csv_files, hparams["source_columns"], ["id", "sig", "sources"], [], test_corruptor, train_corruptor
    )


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    exit_if_required_options_missing(hparams_file, overrides)  # names every unset !PLACEHOLDER
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    start_run(hparams_file, hparams, overrides)  # option checks, output folder lock, upstream identity
    run_on_main(prepare_librimix_ss, kwargs=hparams["prepare_options"])
    run_on_main(prepare_corruption_lists, args=[hparams])
    test_corruptor, train_corruptor, conditions = build_corruptors(hparams)
    conditions = drop_missing_inputs(
        conditions, hparams["test_csv"], hparams["source_columns"], hparams["corruption_input"]
    )
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
            "SS (Libri2Mix)",
            results,
            METRICS,
            upstream=hparams["upstream"],
            layer_weights=brain.layer_weights(),
            extra={
                "primary_metric": "SI_SDRi",
                "higher_is_better": True,
                "untrained_valid": untrained,
                "conditions": conditions,
                "valid_subset": {"size": hparams["valid_subset_size"], "seed": hparams["valid_subset_seed"]},
                "permutation": "max mean SI-SDR (s3prl/asteroid: mir_eval SIR)",
                "si_sdr": "pb_bss_eval>=0.0.2: zero-mean, scale-invariant, eps 1e-8",
            },
        )
