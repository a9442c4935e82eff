"""``python -m robustdistiller.report SPEC.yaml [--mode run|print|report]``: see :mod:`robustdistiller.report`.

``SPEC.yaml`` may also be the name of a ready spec of :data:`SPEC_SHORTCUTS` (``released``: the authors' released
checkpoints against their teachers), used when no file of that name exists.
"""

import argparse
import logging
import os
import sys

from robustdistiller.downstream.tasks import RECIPES_ROOT
from robustdistiller.report import load_spec, run_report, SpecError
from robustdistiller.report.runner import PairMismatch
from robustdistiller.report.tables import markdown_table, metric_label, summary_rows, task_rows

logger = logging.getLogger(__name__)


SPEC_SHORTCUTS = {
    "released": os.path.join(RECIPES_ROOT, "report_released_checkpoints.yaml"),
    "example": os.path.join(RECIPES_ROOT, "report_example.yaml"),
}
"""Ready specs by name (``python -m robustdistiller.report released``)."""


def spec_path(argument):
    """The spec file of the ``spec`` argument: the file itself when it exists, else the ready spec of that name.

    Example
    -------
    >>> os.path.basename(spec_path("released"))
    'report_released_checkpoints.yaml'
    >>> spec_path("my_spec.yaml")
    'my_spec.yaml'
    """
    if not os.path.exists(argument) and argument in SPEC_SHORTCUTS:
        return SPEC_SHORTCUTS[argument]
    return argument


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
    parser.add_argument(
        "spec",
        help="the report spec (YAML, see recipes/report_example.yaml), or a ready spec's name: "
        + ", ".join(
            f"{name} ({os.path.relpath(path, os.path.dirname(RECIPES_ROOT))})" for name, path in SPEC_SHORTCUTS.items()
        ),
    )
    parser.add_argument(
        "--mode",
        choices=("run", "print", "report"),
        help="replaces the spec's mode: run the missing pairs, print their commands, or only build the report",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")
    try:
        spec = load_spec(spec_path(args.spec), mode=args.mode)
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
