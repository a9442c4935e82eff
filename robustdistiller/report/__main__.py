"""``python -m robustdistiller.report SPEC.yaml [--mode run|print|report]``: see :mod:`robustdistiller.report`."""

import argparse
import logging
import sys

from robustdistiller.report import load_spec, run_report, SpecError
from robustdistiller.report.runner import PairMismatch
from robustdistiller.report.tables import markdown_table, metric_label, summary_rows, task_rows

logger = logging.getLogger(__name__)


def format_report(report):
    """The per-task tables and the cross-task summary, as printed at the end of a run."""
    blocks = []
    for task, entry in report["tasks"].items():
        blocks.append(f"{task}: {metric_label(entry)}\n" + markdown_table(*task_rows(entry)))
    blocks.append(
        "Cross-task summary (higher-is-better orientation; rank 1 = best)\n" + markdown_table(*summary_rows(report))
    )
    return "\n\n".join(blocks)


def main(argv=None):
    """Command line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m robustdistiller.report", description="Cross-task robustness report over (task, upstream) pairs."
    )
    parser.add_argument("spec", help="the report spec (YAML, see recipes/report_example.yaml)")
    parser.add_argument(
        "--mode",
        choices=("run", "print", "report"),
        help="replaces the spec's mode: run the missing pairs, print their commands, or only build the report",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")
    try:
        spec = load_spec(args.spec, mode=args.mode)
        code, report = run_report(spec)
    except (SpecError, PairMismatch) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if report is not None:
        print(format_report(report))
        print(f"\nReport: {spec.report_folder}/report.md (tables, plots, provenance)")
    return code


if __name__ == "__main__":
    sys.exit(main())
