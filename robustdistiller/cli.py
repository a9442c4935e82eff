"""The ``robustdistiller`` command (installed by ``pip install .``): one command, one sub-command per tool.

``robustdistiller distill hparams/distill.yaml --data_folder=...`` runs the distillation recipe (the root
``train.py``, found by :func:`robustdistiller.recipe_files.recipe_root` in a checkout or in the installed wheel);
``export``, ``report``, ``demo`` and ``lr-sweep`` are the ``python -m`` tools of the same names;
``list-recipes`` and ``copy-recipe`` show the recipes and copy one out for copy-and-modify.
Everything after the sub-command goes to it unchanged (``robustdistiller export --help``).
"""

import os
import subprocess
import sys

from robustdistiller import child_environment
from robustdistiller.demo import main as demo_main
from robustdistiller.downstream.lr_sweep import main as lr_sweep_main
from robustdistiller.export.cli import main as export_main
from robustdistiller.recipe_files import copy_recipe, list_recipes, recipe_path
from robustdistiller.report.__main__ import main as report_main

USAGE = """usage: robustdistiller COMMAND [ARGUMENTS...]

commands:
  distill YAML [--key=value ...]   distil a student: the root train.py on YAML (a path, or a name under hparams/:
                                   distill.yaml, distilhubert.yaml, dpwavlm.yaml, robust_dpwavlm.yaml)
  export SOURCE OUTPUT [...]       export a trained student (python -m robustdistiller.export)
  report SPEC.yaml [...]           cross-task robustness report (python -m robustdistiller.report)
  demo [--output FOLDER]           the distillation demo on generated data (make demo)
  lr-sweep [...]                   downstream learning-rate sweep (python -m robustdistiller.downstream.lr_sweep)
  list-recipes                     the downstream recipes (Dataset/Task)
  copy-recipe NAME FOLDER          copy a recipe out to modify it: distill (train.py + hparams/) or Dataset/Task

'robustdistiller COMMAND --help' explains each command."""


def _distill(argv):
    """Runs the root ``train.py`` on a YAML, in the current folder (outputs go where the YAML says)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.splitlines()[3].strip())
        print(f"train.py: {recipe_path('train.py')}\nYAMLs: {', '.join(sorted(os.listdir(recipe_path('hparams'))))}")
        return 0
    hparams_file = argv[0]
    if not os.path.exists(hparams_file) and os.path.isfile(recipe_path("hparams", hparams_file)):
        hparams_file = recipe_path("hparams", hparams_file)
    if not os.path.isfile(hparams_file):
        print(
            f"robustdistiller distill: no YAML {argv[0]!r} (neither a file nor a name under hparams/)", file=sys.stderr
        )
        return 2
    command = [sys.executable, recipe_path("train.py"), hparams_file, *argv[1:]]
    return subprocess.call(command, env=child_environment())


def _list_recipes(argv):
    print("distill (train.py + hparams/)")
    for name in list_recipes():
        print(name)
    return 0


def _copy_recipe(argv):
    if len(argv) != 2 or argv[0] in ("-h", "--help"):
        print("usage: robustdistiller copy-recipe NAME FOLDER  (NAME: distill, Dataset/Task or Task; see list-recipes)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        folder = copy_recipe(argv[0], argv[1])
    except (ValueError, FileExistsError) as error:
        print(f"robustdistiller copy-recipe: {error}", file=sys.stderr)
        return 2
    print(f"Copied {argv[0]} to {folder}")
    return 0


COMMANDS = {
    "distill": _distill,
    "export": export_main,
    "report": report_main,
    "demo": demo_main,
    "lr-sweep": lr_sweep_main,
    "list-recipes": _list_recipes,
    "copy-recipe": _copy_recipe,
}


def main(argv=None):
    """Entry point of the ``robustdistiller`` command; returns the exit code.

    Example
    -------
    >>> main(["no-such-command"])
    2
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"robustdistiller: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return command(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
