"""Results of a downstream run: ``results.json`` and a Markdown table per condition."""

import datetime
import json
import logging
import os

logger = logging.getLogger(__name__)


def format_results_table(results, metric_names):
    """Markdown table: one row per condition, one column per metric."""
    header = "| condition | " + " | ".join(metric_names) + " |"
    rule = "|---|" + "---|" * len(metric_names)
    rows = [header, rule]
    for name, stats in results.items():
        cells = []
        for metric in metric_names:
            value = stats.get(metric)
            cells.append("-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value))
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def write_condition_results(output_folder, task, results, metric_names, upstream=None, layer_weights=None, extra=None):
    """Writes ``results.json`` and ``results.md`` (one row per test condition) to ``output_folder``.

    Arguments
    ---------
    output_folder : str
        The recipe's output folder.
    task : str
        Task name (KS, IC, ...).
    results : dict
        ``condition -> {metric: value}``.
    metric_names : list of str
        Metrics to put in the table (all are kept in the JSON).
    upstream : FrozenUpstream, optional
        Recorded as its :meth:`~FrozenUpstream.identity` (kind, source, weights fingerprint, layers,
        width, options, description).
    layer_weights : list of float, optional
        The weighted sum's weights.
    extra : dict, optional
        More fields for the JSON.

    ``results.json`` also gets ``provenance``: the run's ``run_info.json`` (recipe, YAML, overrides,
    learning rate, command, start; written by :func:`~robustdistiller.downstream.run.start_run`) and the
    time the results were written. Each condition's entry records the ``checkpoint`` it was tested with
    (:meth:`~robustdistiller.downstream.brain.DownstreamBrain.evaluate_conditions`).

    Returns
    -------
    dict
        What was written to ``results.json``.
    """
    content = {"task": task, "results": results, "provenance": read_provenance(output_folder)}
    if upstream is not None:
        content["upstream"] = upstream.identity()
    if layer_weights is not None:
        content["layer_weights"] = layer_weights
    content.update(extra or {})
    os.makedirs(output_folder, exist_ok=True)
    with open(os.path.join(output_folder, "results.json"), "w", encoding="utf-8") as fout:
        json.dump(content, fout, indent=2)
    lines = [f"# {task}: results per test condition", ""]
    if upstream is not None:
        lines += [f"Upstream: {upstream.description}", ""]
    lines.append(format_results_table(results, metric_names))
    if layer_weights is not None:
        lines += [
            "",
            "Layer weights: " + ", ".join(f"{index}: {weight:.3f}" for index, weight in enumerate(layer_weights)),
        ]
    with open(os.path.join(output_folder, "results.md"), "w", encoding="utf-8") as fout:
        fout.write("\n".join(lines) + "\n")
    logger.info("Results per condition written to %s/results.{json,md}", output_folder)
    return content


def read_provenance(output_folder):
    """``run_info.json`` of ``output_folder`` (empty when missing) plus ``finished``, the time of writing."""
    info = {}
    path = os.path.join(output_folder, "run_info.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fin:
            info = json.load(fin)
    info["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return info
