"""PNG plots of the report (matplotlib, Agg backend): metric vs SNR per task, degradation heat maps."""

import logging
import math
import re

from robustdistiller.report.tables import CLEAN, display_value, metric_label

logger = logging.getLogger(__name__)

SNR_CONDITION = re.compile(r"^snr(-?\d+(?:\.\d+)?)$")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def snr_conditions(conditions):
    """``[(snr, name)]`` of the additive-noise conditions ``snr<N>``, by increasing SNR.

    Example
    -------
    >>> snr_conditions(["clean", "snr20", "snr0", "reverb", "snr5"])
    [(0.0, 'snr0'), (5.0, 'snr5'), (20.0, 'snr20')]
    """
    found = [(float(SNR_CONDITION.match(name).group(1)), name) for name in conditions if SNR_CONDITION.match(name)]
    return sorted(found)


def plot_snr_curve(task, entry, path):
    """Primary metric vs SNR, one line per upstream, clean as a marker right of the highest SNR.

    Returns the path, or None when the task has no ``snr<N>`` condition.
    """
    snrs = snr_conditions(entry["conditions"])
    if not snrs:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    step = (snrs[-1][0] - snrs[0][0]) / max(1, len(snrs) - 1) or 5.0
    clean_x = snrs[-1][0] + step
    for name, cell in entry["cells"].items():
        if cell["status"] != "ok":
            continue
        points = [(snr, display_value(cell["values"].get(condition), entry["scale"])) for snr, condition in snrs]
        points = [(snr, value) for snr, value in points if value is not None and math.isfinite(value)]
        (line,) = axis.plot([snr for snr, _ in points], [value for _, value in points], marker="o", label=name)
        clean = display_value(cell["values"].get(CLEAN), entry["scale"])
        if clean is not None:
            axis.plot([clean_x], [clean], marker="*", markersize=12, color=line.get_color(), linestyle="none")
            axis.axhline(clean, color=line.get_color(), linestyle=":", linewidth=0.8)
    ticks = [snr for snr, _ in snrs]
    axis.set_xticks(ticks + [clean_x])
    axis.set_xticklabels([f"{snr:g}" for snr in ticks] + ["clean"])
    axis.set_xlabel("SNR (dB); star and dotted line: clean")
    axis.set_ylabel(metric_label(entry))
    axis.set_title(f"{task}: {entry['metric']} under additive noise")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_degradation_heatmap(report, upstream, path):
    """Heat map of one upstream's degradation (%, positive = worse) per task x corrupted condition.

    Cells without a number (missing, failed, no clean reference) are grey and say so. Returns the path,
    or None when no task has a corrupted condition.
    """
    tasks = list(report["tasks"])
    conditions = []
    for entry in report["tasks"].values():
        conditions += [name for name in entry["conditions"] if name != CLEAN and name not in conditions]
    if not conditions:
        return None
    import numpy as np

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
    figure, axis = plt.subplots(figsize=(1.2 * len(conditions) + 2.5, 0.6 * len(tasks) + 1.8))
    finite = values[np.isfinite(values)]
    limit = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    colormap = plt.get_cmap("RdYlGn_r").with_extremes(bad="lightgrey")
    image = axis.imshow(np.ma.masked_invalid(values), cmap=colormap, vmin=-limit, vmax=limit, aspect="auto")
    for row in range(len(tasks)):
        for column in range(len(conditions)):
            axis.text(column, row, labels[row][column], ha="center", va="center", fontsize=8)
    axis.set_xticks(range(len(conditions)))
    axis.set_xticklabels(conditions)
    axis.set_yticks(range(len(tasks)))
    axis.set_yticklabels(tasks)
    axis.set_title(f"{upstream}: degradation from clean (%, + = worse)", fontsize=10)
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
