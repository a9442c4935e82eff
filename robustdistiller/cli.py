"""The ``robustdistiller`` command (installed by ``pip install .``): one command, one sub-command per tool.

``robustdistiller distill hparams/distill.yaml --data_folder=...`` runs the distillation recipe (the root
``train.py``, found by :func:`robustdistiller.recipe_files.recipe_root` in a checkout or in the installed wheel);
``export``, ``report``, ``demo`` and ``lr-sweep`` are the ``python -m`` tools of the same names;
``list-recipes`` and ``copy-recipe`` show the recipes and copy one out for copy-and-modify.
Everything after a tool's name goes to it unchanged (``robustdistiller export --help`` is the export's help).
"""

import argparse
import os
import subprocess
import sys

from robustdistiller import child_environment
from robustdistiller.demo import main as demo_main
from robustdistiller.downstream.lr_sweep import main as lr_sweep_main
from robustdistiller.export.cli import main as export_main
from robustdistiller.recipe_files import copy_recipe, list_recipes, recipe_path
from robustdistiller.report.__main__ import main as report_main

COMMANDS_HELP = """commands:
  distill YAML [--key=value ...]   distil a student: the root train.py on YAML (a path, or a name under hparams/:
                                   distill.yaml, distilhubert.yaml, dpwavlm.yaml, robust_dpwavlm.yaml)
  export SOURCE OUTPUT [...]       export a trained student (python -m robustdistiller.export)
  report SPEC.yaml [...]           cross-task robustness report (python -m robustdistiller.report)
  demo [--output FOLDER]           the distillation demo on generated data (make demo)
  lr-sweep RECIPE YAML [...]       downstream learning-rate sweep (python -m robustdistiller.downstream.lr_sweep)
  list-recipes                     the recipes copy-recipe knows (distill, Dataset/Task)
  copy-recipe NAME FOLDER          copy a recipe out to modify it: distill (train.py + hparams/) or Dataset/Task

'robustdistiller COMMAND --help' explains each command."""


def _distill(argv):
    """Runs the root ``train.py`` on a YAML in the current folder (outputs go where the YAML says)."""
    parser = argparse.ArgumentParser(
        prog="robustdistiller distill",
        usage="robustdistiller distill [-h] hparams_file [--key=value ...]",
        description="Distil a student: runs the recipe's train.py on a YAML, in the current folder; "
        "every --key=value after the YAML overrides that option of the YAML.",
        epilog=f"train.py: {recipe_path('train.py')}; YAMLs under hparams/: "
        f"{', '.join(sorted(os.listdir(recipe_path('hparams'))))}",
        allow_abbrev=False,
    )
    parser.add_argument("hparams_file", help="the YAML: a path, or a file name under the recipe's hparams/")
    arguments, overrides = parser.parse_known_args(argv)  # the overrides, in their order
    hparams_file = arguments.hparams_file
    if not os.path.exists(hparams_file) and os.path.isfile(recipe_path("hparams", hparams_file)):
        hparams_file = recipe_path("hparams", hparams_file)
    if not os.path.isfile(hparams_file):
        parser.error(
            f"no YAML {arguments.hparams_file!r}: neither a file nor a name under {recipe_path('hparams')} "
            f"({', '.join(sorted(os.listdir(recipe_path('hparams'))))})"
        )
    command = [sys.executable, recipe_path("train.py"), hparams_file, *overrides]
    return subprocess.call(command, env=child_environment())


def _list_recipes(argv):
    """Prints the recipe names that ``copy-recipe`` takes."""
    argparse.ArgumentParser(prog="robustdistiller list-recipes", description=_list_recipes.__doc__).parse_args(argv)
    print("distill (train.py + hparams/)")
    for name in list_recipes():
        print(name)
    return 0


def _copy_recipe(argv):
    """Copies a recipe out to a new folder, to modify it (never overwrites)."""
    parser = argparse.ArgumentParser(prog="robustdistiller copy-recipe", description=_copy_recipe.__doc__)
    parser.add_argument("name", help="distill (train.py + hparams/), Dataset/Task or Task (see list-recipes)")
    parser.add_argument("folder", help="where to copy it: a new or empty folder")
    arguments = parser.parse_args(argv)
    try:
        folder = copy_recipe(arguments.name, arguments.folder)
    except (ValueError, FileExistsError) as error:
        print(f"robustdistiller copy-recipe: {error}", file=sys.stderr)
        return 2
    print(f"Copied {arguments.name} to {folder}")
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


def build_parser():
    """The top-level parser: a command name, and the rest of the line for that command.

    Example
    -------
    >>> build_parser().parse_args(["export", "--help"]).arguments
    ['--help']
    """
    parser = argparse.ArgumentParser(
        prog="robustdistiller",
        usage="robustdistiller COMMAND [ARGUMENTS...]",
        description="Noise-robust distillation of self-supervised speech models: recipes and tools.",
        epilog=COMMANDS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help="one of the commands below")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="the command's own arguments")
    return parser


def main(argv=None):
    """Entry point of the ``robustdistiller`` command; returns the exit code.

    Example
    -------
    >>> main(["list-recipes"])  # doctest: +ELLIPSIS
    distill (train.py + hparams/)
    ...
    0
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    arguments = parser.parse_args(argv)
    program_name = sys.argv[0]
    sys.argv[0] = f"robustdistiller {arguments.command}"  # the prog the tool's own argparse shows in its usage
    try:
        return COMMANDS[arguments.command](arguments.arguments) or 0
    finally:
        sys.argv[0] = program_name


if __name__ == "__main__":
    sys.exit(main())
