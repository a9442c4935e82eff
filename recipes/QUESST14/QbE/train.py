#!/usr/bin/env python3
"""SUPERB query by example (QbE) on QUESST 2014 with a frozen upstream: DTW search, no training.

As s3prl's ``quesst14_dtw`` downstream (``docs/reference/superb_tasks.md`` "QbE"): every upstream layer is used on
its own; for one layer the features of all queries and documents are standardised together, each
query is searched in each document by subsequence DTW over ``exp(cosine distance) - 1`` distances,
and the scores are z-normalised per query (:mod:`robustdistiller.downstream.qbe`). Every layer is
scored on the English dev queries (clean); the best dev layer (and nothing else) is then evaluated on
the English eval queries, clean and under every test condition (the documents are corrupted by
default, ``corrupt: documents | queries | both``, each file seeded by the condition and its id).
Each search writes a ``benchmark.stdlist.xml`` for the official scorer, and is scored here by MTWV
over the full ground truth (SUPERB's convention: unscored trials -10). There is no Brain: nothing is
trained, so the recipe reads top to bottom as feature extraction, search and scoring.

To run::

    python train.py hparams/superb_qbe.yaml --data_folder=/data/quesst14Database \
        --upstream_source=/models/exported_student \
        --test_musan_folder=/data/musan --test_rir_folder=/data/RIRS_NOISES
"""

import logging
import os
import sys
import time

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml
from prepare_quesst14 import prepare_quesst14
from speechbrain.utils.distributed import run_on_main

from robustdistiller.downstream import (
    build_corruptors,
    condition_test_set_factory,
    prepare_corruption_lists,
    start_run,
    write_condition_results,
)
from robustdistiller.downstream.qbe import (
    qbe_scores,
    read_ground_truth,
    target_separation,
    term_weighted_value,
    write_stdlist,
)
from robustdistiller.runs.options import OptionError, exit_if_required_options_missing
from robustdistiller.runs.workers import cap_num_workers

logger = logging.getLogger(__name__)

CORRUPTED_SIDES = {"documents": ("documents",), "queries": ("queries",), "both": ("documents", "queries")}
CLEAN = {"condition": "clean"}


def dataio_prepare(hparams, corruptor):
    """The queries and the documents, in the dict every recipe's ``dataio_prepare`` returns.

    Returns
    -------
    dict
        ``train``: None (nothing is trained); ``valid``: the dev queries (clean: the layer sweep);
        ``make_test_set``: ``(name, spec) -> dataset`` of the eval queries; ``make_document_set``: the same
        for the documents (searched with the dev queries clean, with the eval queries under every condition).
    """
    make_dev_set = condition_test_set_factory(hparams, hparams["dev_queries_csv"], corruptor, ["id", "sig"])
    return {
        "train": None,
        "valid": make_dev_set("clean", CLEAN),
        "make_test_set": condition_test_set_factory(hparams, hparams["eval_queries_csv"], corruptor, ["id", "sig"]),
        "make_document_set": condition_test_set_factory(hparams, hparams["documents_csv"], corruptor, ["id", "sig"]),
    }


def extract_features(upstream, dataset, layers, loader_opts, device):
    """``{layer: {id: [frames, dims] float32 array}}`` of the valid frames of every utterance."""
    features = {layer: {} for layer in layers}
    loader = sb.dataio.dataloader.make_dataloader(dataset, **cap_num_workers(loader_opts))
    for batch in loader:
        wavs, wav_lens = batch.sig
        layer_features, frame_mask = upstream(wavs.to(device), wav_lens.to(device))
        for index, utterance_id in enumerate(batch.id):
            valid = frame_mask[index]
            for layer in layers:
                features[layer][utterance_id] = layer_features[index, layer][valid].cpu().numpy()
    return features


def search_and_score(hparams, query_features, document_features, ground_truth, stdlist_path):
    """Scores of one layer's search, its stdlist and its metrics (MTWV, actTWV, separation)."""
    start = time.time()
    scores = qbe_scores(
        query_features,
        document_features,
        minmax=hparams["minmax_norm"],
        normalize=hparams["score_normalization"],
        eps=hparams["feature_std_floor"] if hparams["feature_normalization"] else None,
        min_query_frames=hparams["min_query_frames"],
        chunk_frames=hparams["dtw_chunk_frames"],
    )
    threshold = hparams["decision_threshold"]
    write_stdlist(stdlist_path, scores, threshold=threshold)
    decisions = {q: {d: score > threshold for d, score in found.items()} for q, found in scores.items()}
    twv = term_weighted_value(
        scores,
        ground_truth,
        beta=hparams["twv_beta"],
        missing_score=hparams["missing_trial_score"],
        decisions=decisions,
    )
    metrics = {"mtwv": twv["mtwv"], "act_twv": twv["act_twv"], "mtwv_threshold": twv["threshold"]}
    metrics.update(target_separation(scores, ground_truth["targets"]))
    metrics.update({key: twv[key] for key in ("num_queries", "num_scored_queries", "num_documents")})
    metrics["search_seconds"] = round(time.time() - start, 3)
    return metrics


def sweep_dev_layers(hparams, data, device):
    """MTWV of every swept layer on clean dev; the upstream runs once per ``layers_per_pass`` layers."""
    upstream = hparams["upstream"]
    layers = hparams["dev_layers"]
    layers = list(range(upstream.num_layers)) if layers is None else [int(layer) for layer in layers]
    if not layers or not all(0 <= layer < upstream.num_layers for layer in layers):
        raise OptionError(
            f"Option `dev_layers` must list layers in [0, {upstream.num_layers - 1}] "
            f"(null: all), got {hparams['dev_layers']!r}."
        )
    per_pass = max(int(hparams["layers_per_pass"] or len(layers)), 1)
    ground_truth = read_ground_truth(hparams["dev_ground_truth"])
    loader_opts = hparams["extraction_dataloader_opts"]
    results = {}
    for first in range(0, len(layers), per_pass):
        group = layers[first : first + per_pass]
        queries = extract_features(upstream, data["valid"], group, loader_opts, device)
        documents = extract_features(upstream, data["make_document_set"]("clean", CLEAN), group, loader_opts, device)
        for layer in group:
            path = os.path.join(hparams["stdlist_folder"], "dev", f"layer_{layer}", "benchmark.stdlist.xml")
            results[layer] = search_and_score(hparams, queries[layer], documents[layer], ground_truth, path)
            logger.info("dev layer %d: MTWV %.4f (AUC %.3f)", layer, results[layer]["mtwv"], results[layer]["auc"])
    return results


def evaluate_conditions(hparams, data, conditions, layer, device):
    """Eval metrics of ``layer`` under every condition; uncorrupted sides are extracted only once."""
    corrupted = CORRUPTED_SIDES[hparams["corrupt"]]
    upstream, loader_opts = hparams["upstream"], hparams["extraction_dataloader_opts"]
    ground_truth = read_ground_truth(hparams["eval_ground_truth"])
    cache, results = {}, {}

    def features(side, name, spec):
        key = (side, name if side in corrupted else "clean")
        if key not in cache:
            dataset = data["make_document_set" if side == "documents" else "make_test_set"]
            use_name, use_spec = (name, spec) if side in corrupted else ("clean", CLEAN)
            cache[key] = extract_features(upstream, dataset(use_name, use_spec), [layer], loader_opts, device)[layer]
        return cache[key]

    for name, spec in conditions.items():
        path = os.path.join(hparams["stdlist_folder"], "eval", name, "benchmark.stdlist.xml")
        results[name] = search_and_score(
            hparams, features("queries", name, spec), features("documents", name, spec), ground_truth, path
        )
        if name != "clean":  # corrupted features serve one condition only
            for side in corrupted:
                cache.pop((side, name), None)
        logger.info("eval %s (layer %d): MTWV %.4f", name, layer, results[name]["mtwv"])
    clean = results.get("clean", {}).get("mtwv")
    for stats in results.values():
        stats["relative_drop"] = (clean - stats["mtwv"]) / clean if clean else None
    return results


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    exit_if_required_options_missing(hparams_file, overrides)  # names every unset !PLACEHOLDER
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    if hparams["corrupt"] not in CORRUPTED_SIDES:
        raise OptionError(f"Option `corrupt` must be one of {sorted(CORRUPTED_SIDES)}, got {hparams['corrupt']!r}.")
    start_run(hparams_file, hparams, overrides)  # option checks, output folder lock, upstream identity
    run_on_main(
        prepare_quesst14,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["save_folder"],
            "languages": hparams["languages"],
            "csv_files": {
                "documents": hparams["documents_csv"],
                "dev_queries": hparams["dev_queries_csv"],
                "eval_queries": hparams["eval_queries_csv"],
            },
            "skip_prep": hparams["skip_prep"],
        },
    )
    run_on_main(prepare_corruption_lists, args=[hparams])
    test_corruptor, _, conditions = build_corruptors(hparams)
    data = dataio_prepare(hparams, test_corruptor)
    device = run_opts.get("device") or "cpu"
    hparams["upstream"].to(device)

    started = time.time()
    dev_results = sweep_dev_layers(hparams, data, device)
    best_layer = max(dev_results, key=lambda layer: (dev_results[layer]["mtwv"], dev_results[layer]["auc"] or 0))
    logger.info("Best dev layer: %d (MTWV %.4f)", best_layer, dev_results[best_layer]["mtwv"])
    results = evaluate_conditions(hparams, data, conditions, best_layer, device)
    if sb.utils.distributed.if_main_process():
        write_condition_results(
            hparams["output_folder"],
            "QbE (QUESST14)",
            results,
            ["mtwv", "act_twv", "auc", "relative_drop"],
            upstream=hparams["upstream"],
            extra={
                "best_layer": best_layer,
                "dev": {str(layer): stats for layer, stats in dev_results.items()},
                "corrupt": hparams["corrupt"],
                "languages": hparams["languages"],
                "twv_beta": hparams["twv_beta"],
                "missing_trial_score": hparams["missing_trial_score"],
                "seconds": round(time.time() - started, 1),
            },
        )
