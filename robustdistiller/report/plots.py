"""PNG plots of the report (matplotlib, Agg backend): metric vs SNR per task, degradation heat maps on one shared
colour scale, and the learned layer weights per task and upstream.

Made to be read: every upstream has its own marker and a small horizontal offset, so identical numbers stay
visible side by side; a single SNR still shows a line (to the clean point); a task with a chance level
(:attr:`robustdistiller.downstream.tasks.TaskInfo.chance`) shows it dashed; the heat maps of all upstreams share
one symmetric colour scale (stored in each PNG's ``Description``), with white labels on dark cells; the layer
weights show the initial uniform weights dotted. Each ``plot_*`` writes the figure of its ``*_figure`` companion
(:func:`snr_curve_figure`, :func:`degradation_heatmap_figure`, :func:`layer_weights_figure`), which tests and
users can read back or restyle.
"""

import logging
import math
import re

import numpy as np

from robustdistiller.report.tables import CLEAN, display_value, metric_label

logger = logging.getLogger(__name__)

SNR_CONDITION = re.compile(r"^snr(-?\d+(?:\.\d+)?)$")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
LINE_STYLES = ("-", "--", "-.", ":")
UNIFORM_LABEL = "uniform (1 / layers): the initial weights"
DARK_CELL_FRACTION = 0.55
"""Cells whose |degradation| is above this share of the colour scale get white labels (dark red / dark green)."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def upstream_color(index):
    """The colour of the ``index``-th upstream of the report (matplotlib's default cycle), the same in every plot.

    Example
    -------
    >>> upstream_color(0), upstream_color(11)
    ('C0', 'C1')
    """
    return f"C{index % 10}"


def snr_conditions(conditions):
    """``[(snr, name)]`` of the additive-noise conditions ``snr<N>``, by increasing SNR.

    Example
    -------
    >>> snr_conditions(["clean", "snr20", "snr0", "reverb", "snr5"])
    [(0.0, 'snr0'), (5.0, 'snr5'), (20.0, 'snr20')]
    """
    found = [(float(SNR_CONDITION.match(name).group(1)), name) for name in conditions if SNR_CONDITION.match(name)]
    return sorted(found)


def upstream_offsets(count, spacing):
    """Horizontal offsets that spread ``count`` upstreams around each x, ``spacing`` apart, centred on 0.

    Example
    -------
    >>> upstream_offsets(3, 0.5)
    [-0.5, 0.0, 0.5]
    """
    return [(index - (count - 1) / 2) * spacing for index in range(count)]


def snr_curve_figure(task, entry):
    """Primary metric vs SNR, one line per upstream, ending at the clean point right of the highest SNR.

    Returns the matplotlib figure (close it after use), or None when no upstream has a number for an ``snr<N>``
    condition. Upstream ``i`` of ``entry["cells"]`` is drawn with colour :func:`upstream_color` ``(i)``, marker
    ``MARKERS[i]`` and x offset :func:`upstream_offsets` ``[i]``; an upstream without numbers is a legend entry only.
    """
    measured = {
        condition
        for cell in entry["cells"].values()
        if cell["status"] == "ok"
        for condition, value in cell["values"].items()
        if value is not None
    }
    snrs = snr_conditions([condition for condition in entry["conditions"] if condition in measured])
    if not snrs:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    step = (snrs[-1][0] - snrs[0][0]) / max(1, len(snrs) - 1) or 5.0
    clean_x = snrs[-1][0] + step
    names = list(entry["cells"])
    offsets = upstream_offsets(len(names), 0.08 * step)
    for index, name in enumerate(names):
        cell = entry["cells"][name]
        conditions = [(snr, condition) for snr, condition in snrs] + [(clean_x, CLEAN)]
        values = cell["values"] if cell["status"] == "ok" else {}
        points = [(x, display_value(values.get(condition), entry["scale"])) for x, condition in conditions]
        points = [(x + offsets[index], value) for x, value in points if value is not None and math.isfinite(value)]
        if not points:  # named in the legend, never silently dropped
            axis.plot(
                [],
                [],
                linestyle="none",
                label=f"{name}: {cell['status'] if cell['status'] != 'ok' else 'no SNR numbers'}",
            )
            continue
        axis.plot(
            [x for x, _ in points],
            [value for _, value in points],
            color=upstream_color(index),
            marker=MARKERS[index % len(MARKERS)],
            linestyle=LINE_STYLES[index // len(MARKERS) % len(LINE_STYLES)],
            markersize=7,
            markerfacecolor="white" if index % 2 else None,  # hollow every other one: overlaps stay visible
            label=name,
        )
    if entry.get("chance") is not None:
        chance = display_value(entry["chance"], entry["scale"])
        axis.axhline(chance, color="grey", linestyle="--", linewidth=1.0, label=f"chance ({chance:.3g})")
    ticks = [snr for snr, _ in snrs]
    axis.axvline((ticks[-1] + clean_x) / 2, color="grey", linestyle=":", linewidth=0.8)  # noisy | clean
    axis.set_xticks(ticks + [clean_x])
    axis.set_xticklabels([f"{snr:g}" for snr in ticks] + ["clean"])
    axis.set_xlim(ticks[0] - 0.6 * step, clean_x + 0.6 * step)
    axis.set_xlabel("SNR of the added noise (dB)")
    axis.set_ylabel(metric_label(entry))
    axis.set_title(f"{task}: {entry['metric']} under additive noise")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, title="upstream", title_fontsize=8)
    figure.tight_layout()
    return figure


def plot_snr_curve(task, entry, path):
    """Writes :func:`snr_curve_figure` as a PNG; returns the path, or None when there is nothing to plot."""
    return _save(snr_curve_figure(task, entry), path)


def _corrupted_conditions(report):
    conditions = []
    for entry in report["tasks"].values():
        conditions += [name for name in entry["conditions"] if name != CLEAN and name not in conditions]
    return conditions


def degradation_color_limit(report):
    """The one symmetric colour scale (±limit, %) of every upstream's heat map: the largest |degradation|.

    Example
    -------
    >>> cell = lambda value: {"status": "ok", "degradation": {"snr5": value}}
    >>> report = {"tasks": {"KS": {"conditions": ["clean", "snr5"], "cells": {"a": cell(53.0), "b": cell(-65.0)}}}}
    >>> degradation_color_limit(report)
    65.0
    """
    values = [
        abs(value)
        for entry in report["tasks"].values()
        for cell in entry["cells"].values()
        if cell["status"] == "ok"
        for value in (cell.get("degradation") or {}).values()
        if value is not None and math.isfinite(value)
    ]
    return max([1.0] + values)


def degradation_heatmap_figure(report, upstream, limit=None):
    """Heat map of one upstream's degradation (%, positive = worse) per task x corrupted condition.

    Cells without a number (missing, failed, no clean reference) are grey and say so. ``limit`` (default
    :func:`degradation_color_limit` of the report) fixes the colour scale to ±limit, the same for every upstream.
    Returns the matplotlib figure (close it after use), or None when no task has a corrupted condition.
    """
    tasks = list(report["tasks"])
    conditions = _corrupted_conditions(report)
    if not conditions:
        return None
    limit = degradation_color_limit(report) if limit is None else float(limit)
    values = np.full((len(tasks), len(conditions)), np.nan)
    labels = [["" for _ in conditions] for _ in tasks]
    for row, task in enumerate(tasks):
        cell = report["tasks"][task]["cells"][upstream]
        for column, condition in enumerate(conditions):
            if cell["status"] != "ok":
                labels[row][column] = cell["status"]
            elif condition not in report["tasks"][task]["conditions"] or cell["values"].get(condition) is None:
                labels[row][column] = "missing"
            elif cell["degradation"].get(condition) is None:
                labels[row][column] = "n/a"
            else:
                values[row, column] = cell["degradation"][condition]
                labels[row][column] = f"{values[row, column]:+.1f}"
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(1.2 * len(conditions) + 2.8, 0.6 * len(tasks) + 1.8))
    colormap = plt.get_cmap("RdYlGn_r").with_extremes(bad="lightgrey")
    image = axis.imshow(np.ma.masked_invalid(values), cmap=colormap, vmin=-limit, vmax=limit, aspect="auto")
    for row in range(len(tasks)):
        for column in range(len(conditions)):
            dark = np.isfinite(values[row, column]) and abs(values[row, column]) > DARK_CELL_FRACTION * limit
            axis.text(
                column,
                row,
                labels[row][column],
                ha="center",
                va="center",
                fontsize=8,
                color="white" if dark else "black",
            )
    axis.set_xticks(range(len(conditions)))
    axis.set_xticklabels(conditions)
    axis.set_yticks(range(len(tasks)))
    axis.set_yticklabels(tasks)
    axis.set_xlabel("test condition")
    axis.set_ylabel("task")
    axis.set_title(f"{upstream}: degradation relative to its clean number (%, + = worse)", fontsize=10)
    colorbar = figure.colorbar(image, ax=axis)
    colorbar.set_label(f"% (one scale for all upstreams: ±{limit:.3g})", fontsize=8)
    figure.tight_layout()
    return figure


def plot_degradation_heatmap(report, upstream, path, limit=None):
    """Writes :func:`degradation_heatmap_figure` as a PNG, its colour scale in the PNG's ``Description``; returns
    the path, or None when there is nothing to plot."""
    limit = degradation_color_limit(report) if limit is None else float(limit)
    metadata = {"Description": f"degradation colour scale: -{limit:g} to {limit:g} %"}
    return _save(degradation_heatmap_figure(report, upstream, limit), path, metadata=metadata)


def layer_weights_figure(report):
    """The learned weighted-sum layer weights, one panel per task, one line per upstream (layer 0: CNN output).

    Returns the matplotlib figure (close it after use), or None when no pair saved layer weights.
    """
    panels = []
    upstreams = list(dict.fromkeys(name for entry in report["tasks"].values() for name in entry["cells"]))
    for task, entry in report["tasks"].items():
        weights = {
            name: cell["layer_weights"]
            for name, cell in entry["cells"].items()
            if cell["status"] == "ok" and cell.get("layer_weights")
        }
        if weights:
            panels.append((task, weights))
    if not panels:
        return None
    plt = _pyplot()
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for axis in axes.flat[len(panels) :]:
        axis.set_visible(False)
    for axis, (task, weights) in zip(axes.flat, panels):
        for name, values in weights.items():
            index = upstreams.index(name)  # one colour and marker per upstream in every panel and plot
            axis.plot(
                range(len(values)),
                values,
                color=upstream_color(index),
                marker=MARKERS[index % len(MARKERS)],
                markerfacecolor="white" if index % 2 else None,
                label=name,
            )
        longest = max(len(values) for values in weights.values())
        for count in sorted({len(values) for values in weights.values()}):  # the initial (uniform) weights
            axis.hlines(1 / count, 0, count - 1, colors="grey", linestyles=":", linewidth=1.0, label=UNIFORM_LABEL)
        axis.set_xticks(range(longest))
        axis.set_title(task, fontsize=10)
        axis.set_xlabel("layer (0: encoder input)")
        axis.set_ylabel("weight (softmax)")
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    handles = {}
    for axis in axes.flat[: len(panels)]:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    ordered = [name for name in upstreams + [UNIFORM_LABEL] if name in handles]
    figure.suptitle("Learned layer weights of the weighted sum (per task and upstream)", fontsize=11)
    figure.tight_layout()
    figure.legend(
        [handles[name] for name in ordered],
        ordered,
        loc="upper left",
        bbox_to_anchor=(1.0, 0.9),
        fontsize=8,
        title="upstream",
        title_fontsize=8,
    )  # one legend beside the panels, off the lines
    return figure


def plot_layer_weights(report, path):
    """Writes :func:`layer_weights_figure` as a PNG; returns the path, or None when there is nothing to plot."""
    return _save(layer_weights_figure(report), path)


def _save(figure, path, metadata=None):
    if figure is None:
        return None
    # bbox_inches="tight": legends placed beside the axes (layer weights) stay inside the PNG
    figure.savefig(path, dpi=100, metadata=metadata, bbox_inches="tight")
    _pyplot().close(figure)
    return path
