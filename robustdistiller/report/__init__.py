"""The cross-task robustness report: ``python -m robustdistiller.report SPEC.yaml [--mode run|print|report]``.

1. :mod:`~robustdistiller.report.spec` reads the spec: upstreams, tasks (any of the registry
   :mod:`~robustdistiller.downstream.tasks`), conditions, data folders, overrides, output root, mode.
2. :mod:`~robustdistiller.report.runner` runs the (task, upstream) pairs that have no ``results.json``
   yet (``run``), or prints their commands (``print``); a folder run with other options is refused.
3. :mod:`~robustdistiller.report.tables` and :mod:`~robustdistiller.report.plots` collect every pair's
   ``results.json`` into ``<output_root>/report/``: ``report.md`` (tables, plot links, provenance),
   one CSV per task (and its degradation), ``summary.csv``, ``provenance.csv``, PNGs and ``report.json``.
"""

import datetime
import json
import logging
import os

from robustdistiller.report import plots, tables
from robustdistiller.report.runner import check_pairs, print_commands, read_status, run_pairs
from robustdistiller.report.spec import load_spec, spec_from_dict, SpecError

logger = logging.getLogger(__name__)


def path_from_report(value, folder):
    """A path as ``report.md`` shows it: relative to the report's folder when absolute, else unchanged.

    Hub ids and other non-paths stay as they are; ``failed: <log>`` keeps its prefix.

    Example
    -------
    >>> path_from_report("/runs/out/KS/a/log.txt", "/runs/out/report"), path_from_report("microsoft/wavlm", "/r")
    ('../KS/a/log.txt', 'microsoft/wavlm')
    >>> path_from_report("failed: /runs/out/KS/a/log.txt", "/runs/out/report")
    'failed: ../KS/a/log.txt'
    """
    if not isinstance(value, str):
        return value
    prefix, text = ("failed: ", value[len("failed: ") :]) if value.startswith("failed: ") else ("", value)
    if os.path.isabs(text):
        return prefix + os.path.relpath(text, folder)
    return value


def _relative_rows(rows, folder):
    return [[path_from_report(value, folder) for value in row] for row in rows]


__all__ = ["build_report", "load_spec", "path_from_report", "run_report", "spec_from_dict", "SpecError"]


def _other_protocol_sections(spec, report, folder):
    """One table per task and a summary for each test protocol after the spec's first (``test_protocol``).

    The sections above are the first protocol's; each other one goes to ``report["protocols"][name]`` and to
    ``<protocol>_<TASK>.csv`` / ``<protocol>_summary.csv``.
    """
    lines = [
        "",
        f"Test protocol of the tables above: `{spec.test_protocols[0]}` (docs/test_protocols.md).",
    ]
    report["protocols"] = {}
    for protocol in spec.test_protocols[1:]:
        other = tables.collect(spec, read_status(spec), protocol)
        report["protocols"][protocol] = other
        lines += ["", f"## Test protocol `{protocol}`", "", f"Pairs in `<output root>/{protocol}/<TASK>/<upstream>`."]
        for task, entry in other["tasks"].items():
            header, rows = tables.task_rows(entry)
            lines += ["", f"### {task} ({protocol})", "", tables.markdown_table(header, _relative_rows(rows, folder))]
            tables.write_csv(os.path.join(folder, f"{protocol}_{task}.csv"), *tables.raw_task_rows(entry))
        header, rows = tables.summary_rows(other)
        lines += ["", f"### Cross-task summary ({protocol})", "", tables.markdown_table(header, rows)]
        tables.write_csv(os.path.join(folder, f"{protocol}_summary.csv"), header, rows)
    return lines


def build_report(spec):
    """Collects the results of ``spec`` and writes ``<output_root>/report/``; returns the report dict."""
    folder = spec.report_folder
    os.makedirs(folder, exist_ok=True)
    report = tables.collect(spec, read_status(spec))
    report["generated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    lines = [
        "# Robustness report",
        "",
        f"Spec: `{path_from_report(spec.path, folder)}`. Generated {report['generated']}. Output root: "
        f"`{path_from_report(spec.output_root, folder)}`. Paths are relative to this report's folder.",
        "",
        "Each pair (task, upstream) ran in `<output root>/<TASK>/<upstream>`; a pair without results is shown "
        "as `missing` (not run yet) or `failed: <log>`. Degradation is relative to the same upstream's clean "
        "number, oriented so that positive = worse.",
        "",
        "## Upstreams",
        "",
        tables.markdown_table(
            ["upstream", "source"],
            [
                [name, f"`{path_from_report(options['upstream_source'], folder)}`"]
                for name, options in spec.upstreams.items()
            ],
        ),
    ]
    files = {"tasks": {}, "heatmaps": {}}
    for task, entry in report["tasks"].items():
        header, rows = tables.task_rows(entry)
        lines += [
            "",
            f"## {task} ({entry['recipe']})",
            "",
            f"Primary metric: {tables.metric_label(entry)}." + (f" Note: {entry['note']}." if entry["note"] else ""),
            "",
            tables.markdown_table(header, _relative_rows(rows, folder)),
        ]
        tables.write_csv(os.path.join(folder, f"{task}.csv"), *tables.raw_task_rows(entry))
        task_files = {"csv": f"{task}.csv"}
        header, rows = tables.task_rows(entry, "degradation")
        if len(header) > 1:
            lines += [
                "",
                "Degradation from clean (positive = worse):",
                "",
                tables.markdown_table(header, _relative_rows(rows, folder)),
            ]
            tables.write_csv(
                os.path.join(folder, f"{task}_degradation.csv"), *tables.raw_task_rows(entry, "degradation")
            )
            task_files["degradation_csv"] = f"{task}_degradation.csv"
        if plots.plot_snr_curve(task, entry, os.path.join(folder, f"{task}_snr.png")):
            lines += ["", f"![{task} vs SNR]({task}_snr.png)"]
            task_files["snr_plot"] = f"{task}_snr.png"
        files["tasks"][task] = task_files
    header, rows = tables.summary_rows(report)
    lines += [
        "",
        "## Cross-task summary",
        "",
        "Every metric oriented so that higher is better (100 - error rate for error rates); per condition "
        "and upstream: mean rank across tasks (1 = best), tasks ranked, and the normalised score "
        "1000 x mean over tasks of (x - low) / (high - low), with [low, high] from the spec's "
        "`score_references` or else the lowest and highest value of the task in this report.",
        "",
        tables.markdown_table(header, rows),
    ]
    tables.write_csv(os.path.join(folder, "summary.csv"), header, rows)
    lines += _other_protocol_sections(spec, report, folder)
    limit = plots.degradation_color_limit(report)
    lines += [
        "",
        "## Degradation heat maps",
        "",
        f"One colour scale for every upstream: -{limit:.3g} to +{limit:.3g} %.",
        "",
    ]
    for name in spec.upstreams:
        if plots.plot_degradation_heatmap(report, name, os.path.join(folder, f"degradation_{name}.png"), limit=limit):
            files["heatmaps"][name] = f"degradation_{name}.png"
            lines.append(f"![{name}](degradation_{name}.png)")
    files["heatmap_limit"] = limit
    if plots.plot_layer_weights(report, os.path.join(folder, "layer_weights.png")):
        files["layer_weights"] = "layer_weights.png"
        lines += [
            "",
            "## Learned layer weights",
            "",
            "The weighted sum's layer weights each pair learned (softmax; layer 0 is the encoder input).",
            "",
            "![layer weights](layer_weights.png)",
        ]
    header, rows = tables.provenance_table_rows(report)
    lines += ["", "## Provenance", "", tables.markdown_table(header, _relative_rows(rows, folder))]
    tables.write_csv(os.path.join(folder, "provenance.csv"), header, rows)
    report["files"] = files
    with open(os.path.join(folder, "report.md"), "w", encoding="utf-8") as fout:
        fout.write("\n".join(lines) + "\n")
    with open(os.path.join(folder, "report.json"), "w", encoding="utf-8") as fout:
        json.dump(report, fout, indent=2)
    logger.info("Report written to %s/report.md", folder)
    return report


def run_report(spec, stream=None):
    """Does what ``spec.mode`` says; returns ``(exit code, report or None)``.

    ``print``: the commands of the pairs still to run, one per line, and nothing else; ``run``: runs them
    one after the other, then :func:`build_report`; ``report``: :func:`build_report` only. Exit code 1 when a
    pair failed (the report is still written).
    """
    done, to_run = check_pairs(spec)
    if spec.mode == "print":
        print_commands(spec, to_run, stream)
        return 0, None
    failed = []
    if spec.mode == "run":
        status = run_pairs(spec, to_run, done, stream)
        failed = [pair.label for pair in to_run if status[pair.label]["status"] == "failed"]
    report = build_report(spec)
    return (1 if failed else 0), report
