"""Collecting the pairs' ``results.json`` into per-task tables, degradation from clean and a cross-task summary.

Orientation and scale (see :data:`robustdistiller.downstream.tasks.METRIC_SCALES`):

* tables show each task's primary metric in its usual unit: fractions (accuracy, F1, MTWV) as percent,
  error rates as stored (percent), PESQ / dB as they are;
* the *degradation* of a condition is relative to the same upstream's clean number and oriented so that
  positive = worse: ``100 * (clean - x) / |clean|`` for a higher-is-better metric,
  ``100 * (x - clean) / |clean|`` for a lower-is-better one;
* the cross-task summary orients every metric so that higher is better (``100 - error rate`` for
  error rates in percent, ``-x`` for another lower-is-better metric), then, per upstream and condition,
  gives the mean rank across tasks (1 = best among the report's upstreams, ties share the mean rank) and a
  SUPERB-style normalised score ``1000 * mean over tasks of (x - low) / (high - low)``, where ``[low, high]``
  is the spec's ``score_references`` of the task (oriented units) or, without one, the lowest and highest
  oriented value of that task over every upstream and condition of the report.
"""

import csv
import json
import logging
import math
import os

from robustdistiller.downstream.tasks import REPOSITORY_ROOT, primary_metric_of
from robustdistiller.report.spec import protocol_conditions

logger = logging.getLogger(__name__)

CLEAN = "clean"


# ----------------------------------------------------------------------------------- maths ---
def display_value(value, scale):
    """The value in the tables' unit: fractions as percent.

    Example
    -------
    >>> display_value(0.875, "fraction"), display_value(12.5, "percent"), display_value(2.6, "raw")
    (87.5, 12.5, 2.6)
    """
    if value is None:
        return None
    return 100.0 * value if scale == "fraction" else float(value)


def oriented_value(value, scale, higher_is_better):
    """The value made higher-is-better: ``100 - error`` for rates (fraction/percent), ``-x`` otherwise.

    Example
    -------
    >>> oriented_value(0.9, "fraction", True), oriented_value(4.0, "percent", False), oriented_value(3.0, "raw", False)
    (90.0, 96.0, -3.0)
    """
    shown = display_value(value, scale)
    if shown is None or higher_is_better:
        return shown
    return 100.0 - shown if scale in ("fraction", "percent") else -shown


def degradation(clean, value, higher_is_better):
    """Relative degradation from clean in percent, positive = worse (None without a usable clean number).

    Example
    -------
    >>> degradation(0.5, 0.25, True), degradation(10.0, 15.0, False), degradation(10.0, 8.0, False)
    (50.0, 50.0, -20.0)
    >>> degradation(0.0, 0.5, True) is None
    True
    """
    if clean is None or value is None or clean == 0 or not math.isfinite(clean) or not math.isfinite(value):
        return None
    change = (clean - value) if higher_is_better else (value - clean)
    return 100.0 * change / abs(clean)


def ranks(scores):
    """``{name: rank}`` of higher-is-better scores: 1 = best, ties share their mean rank.

    Example
    -------
    >>> ranks({"a": 90.0, "b": 95.0, "c": 90.0})
    {'b': 1.0, 'a': 2.5, 'c': 2.5}
    """
    ordered = sorted(scores.items(), key=lambda item: -item[1])
    result, position = {}, 0
    while position < len(ordered):
        end = position
        while end + 1 < len(ordered) and ordered[end + 1][1] == ordered[position][1]:
            end += 1
        for name, _ in ordered[position : end + 1]:
            result[name] = (position + end) / 2 + 1
        position = end + 1
    return result


def normalised(value, low, high):
    """``(value - low) / (high - low)``; 1.0 when ``high == low`` (every upstream ties)."""
    if high == low:
        return 1.0
    return (value - low) / (high - low)


# ------------------------------------------------------------------------------ collection ---
def collect(spec, status=None, protocol=None):
    """Reads every pair's ``results.json``: the report's data (what ``report.json`` holds).

    A pair without ``results.json`` is ``failed`` (with its log) when ``status`` (the runner's
    ``status.json``) says its last run failed, ``missing`` otherwise. ``protocol``: the test protocol
    whose pairs are read (default: the spec's first).
    """
    protocol = protocol or spec.test_protocols[0]
    status = status or {}
    tasks = {}
    for task in spec.tasks:
        cells = {}
        metric, higher, scale = primary_metric_of(task)
        for name in spec.upstreams:
            pair = spec.pair(task, name, protocol)
            path = os.path.join(pair.output_folder, "results.json")
            cell = {"output_folder": pair.output_folder, "values": {}, "secondary": {}}
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as fin:
                    results = json.load(fin)
                metric, higher, scale = primary_metric_of(task, results)
                cell.update(
                    status="ok",
                    results_file=path,
                    task_title=results.get("task"),
                    provenance=results.get("provenance") or {},
                    upstream=results.get("upstream") or {},
                    layer_weights=results.get("layer_weights"),
                )
                for condition, stats in (results.get("results") or {}).items():
                    cell["values"][condition] = stats.get(metric)
                    cell["secondary"][condition] = {
                        key: stats.get(key) for key in task.secondary_metrics if key in stats
                    }
                    cell.setdefault("checkpoints", {})[condition] = stats.get("checkpoint")
            elif status.get(pair.label, {}).get("status") == "failed":
                cell.update(
                    status="failed", log=status[pair.label]["log"], returncode=status[pair.label].get("returncode")
                )
            else:
                cell["status"] = "missing"
            cells[name] = cell
        if spec.conditions is not None:
            conditions = protocol_conditions(task, protocol, spec.conditions)
        else:
            conditions = []
            for cell in cells.values():
                conditions += [name for name in cell["values"] if name not in conditions]
            conditions = conditions or protocol_conditions(task, protocol)
        entry = {
            "metric": metric,
            "higher_is_better": higher,
            "scale": scale,
            "conditions": conditions,
            "note": task.note,
            "recipe": task.recipe,
            "chance": task.chance,
            "cells": cells,
        }
        _add_degradation(entry)
        tasks[task.name] = entry
    report = {"spec": spec.path, "output_root": spec.output_root, "upstreams": list(spec.upstreams), "tasks": tasks}
    report["test_protocol"] = protocol
    report["summary"] = summary(report, spec.score_references)
    report["provenance"] = provenance_rows(report)
    return report


def _add_degradation(entry):
    for cell in entry["cells"].values():
        clean = cell["values"].get(CLEAN)
        cell["degradation"] = {
            condition: degradation(clean, cell["values"].get(condition), entry["higher_is_better"])
            for condition in entry["conditions"]
            if condition != CLEAN
        }


def summary(report, references=None):
    """Per condition and upstream: mean rank across tasks, tasks ranked, normalised score (module docstring).

    Returns
    -------
    dict
        ``{condition: {upstream: {"mean_rank", "tasks", "score", "ranks": {task: rank}}}}``; an upstream
        without any number under a condition has ``mean_rank`` / ``score`` None.
    """
    references = references or {}
    conditions = []
    for entry in report["tasks"].values():
        conditions += [name for name in entry["conditions"] if name not in conditions]
    bounds = {}
    for task, entry in report["tasks"].items():
        oriented = [
            oriented_value(value, entry["scale"], entry["higher_is_better"])
            for cell in entry["cells"].values()
            for value in cell["values"].values()
            if _number(value)
        ]
        if task in references:
            bounds[task] = tuple(references[task])
        elif oriented:
            bounds[task] = (min(oriented), max(oriented))
    result = {}
    for condition in conditions:
        per_upstream = {name: {"ranks": {}, "normalised": {}} for name in report["upstreams"]}
        for task, entry in report["tasks"].items():
            if condition not in entry["conditions"]:
                continue
            scores = {
                name: oriented_value(cell["values"][condition], entry["scale"], entry["higher_is_better"])
                for name, cell in entry["cells"].items()
                if _number(cell["values"].get(condition))
            }
            for name, rank in ranks(scores).items():
                per_upstream[name]["ranks"][task] = rank
                per_upstream[name]["normalised"][task] = normalised(scores[name], *bounds[task])
        result[condition] = {}
        for name, values in per_upstream.items():
            count = len(values["ranks"])
            result[condition][name] = {
                "mean_rank": sum(values["ranks"].values()) / count if count else None,
                "score": 1000.0 * sum(values["normalised"].values()) / count if count else None,
                "tasks": count,
                "ranks": values["ranks"],
            }
    return result


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def provenance_rows(report):
    """One row per pair with results: task, upstream, recipe, hparams, lr, seed, checkpoint, finished, folder."""
    rows = []
    for task, entry in report["tasks"].items():
        for name, cell in entry["cells"].items():
            if cell["status"] != "ok":
                continue
            info = cell["provenance"]
            hparams = info.get("hparams_file") or ""
            if hparams.startswith(REPOSITORY_ROOT + os.sep):
                hparams = os.path.relpath(hparams, REPOSITORY_ROOT)
            checkpoints = sorted({value for value in cell.get("checkpoints", {}).values() if value})
            rows.append(
                {
                    "task": task,
                    "upstream": name,
                    "recipe": info.get("recipe"),
                    "hparams": hparams,
                    "lr": info.get("lr"),
                    "seed": info.get("seed"),
                    "checkpoint": ", ".join(checkpoints) or None,
                    "finished": info.get("finished"),
                    "output_folder": cell["output_folder"],
                    "upstream_fingerprint": cell["upstream"].get("fingerprint"),
                }
            )
    return rows


# ------------------------------------------------------------------------------ formatting ---
def _status_text(cell):
    if cell["status"] == "failed":
        return f"failed: {cell['log']}"
    return "missing"


def _format_number(value, decimals=2):
    return "n/a" if value is None else f"{value:.{decimals}f}"


def metric_label(entry):
    """``accuracy (%)``, ``PER (%)``, ``PESQ``... with the orientation arrow."""
    unit = " (%)" if entry["scale"] in ("fraction", "percent") else ""
    arrow = "higher is better" if entry["higher_is_better"] else "lower is better"
    return f"{entry['metric']}{unit}, {arrow}"


def task_rows(entry, kind="metric"):
    """Rows (upstream first) of a task's table: ``kind`` ``metric`` (display unit) or ``degradation`` (%)."""
    conditions = entry["conditions"] if kind == "metric" else [c for c in entry["conditions"] if c != CLEAN]
    rows = []
    for name, cell in entry["cells"].items():
        if cell["status"] != "ok":  # the log once, then the status
            rows.append([name] + [_status_text(cell)] + [cell["status"]] * (len(conditions) - 1))
            continue
        row = [name]
        for condition in conditions:
            if condition not in cell["values"] or cell["values"][condition] is None:
                row.append("missing")
            elif kind == "metric":
                row.append(
                    _format_number(
                        display_value(cell["values"][condition], entry["scale"]), 2 if entry["scale"] != "raw" else 3
                    )
                )
            else:
                value = cell["degradation"].get(condition)
                row.append("n/a" if value is None else f"{value:+.1f} %")
        rows.append(row)
    return ["upstream"] + conditions, rows


def markdown_table(header, rows):
    """A Markdown table.

    Example
    -------
    >>> print(markdown_table(["a", "b"], [["x", "1"]]))
    | a | b |
    |---|---|
    | x | 1 |
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path, header, rows):
    """Writes a CSV table."""
    with open(path, "w", newline="", encoding="utf-8") as fout:
        writer = csv.writer(fout)
        writer.writerow(header)
        writer.writerows(rows)


def raw_task_rows(entry, kind="metric"):
    """CSV rows: the values as ``results.json`` stores them (degradation in %), or ``missing`` / ``failed: log``."""
    conditions = entry["conditions"] if kind == "metric" else [c for c in entry["conditions"] if c != CLEAN]
    rows = []
    for name, cell in entry["cells"].items():
        if cell["status"] != "ok":
            rows.append([name] + [_status_text(cell)] * len(conditions))
            continue
        row = [name]
        for condition in conditions:
            value = cell["values"].get(condition)
            if value is None:
                row.append("missing")
            elif kind == "metric":
                row.append(repr(float(value)))
            else:
                change = cell["degradation"].get(condition)
                row.append("n/a" if change is None else repr(round(float(change), 6)))
        rows.append(row)
    return ["upstream"] + conditions, rows


def summary_rows(report):
    """Rows of the cross-task summary: condition, upstream, mean rank, tasks ranked, score, ranks per task."""
    tasks = list(report["tasks"])
    header = ["condition", "upstream", "mean rank", "tasks", "score"] + [f"rank {task}" for task in tasks]
    rows = []
    for condition, per_upstream in report["summary"].items():
        for name, stats in per_upstream.items():
            rows.append(
                [
                    condition,
                    name,
                    _format_number(stats["mean_rank"]),
                    f"{stats['tasks']}/{len(tasks)}",
                    _format_number(stats["score"], 1),
                ]
                + [_format_number(stats["ranks"].get(task), 1) if task in stats["ranks"] else "-" for task in tasks]
            )
    return header, rows


PROVENANCE_COLUMNS = ["task", "upstream", "recipe", "hparams", "lr", "seed", "checkpoint", "finished", "output_folder"]


def provenance_table_rows(report):
    """Header and rows of the provenance table."""
    return PROVENANCE_COLUMNS, [
        [("-" if row[key] is None else row[key]) for key in PROVENANCE_COLUMNS] for row in report["provenance"]
    ]
