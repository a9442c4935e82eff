"""Build hook: a wheel ships the recipe files (``train.py``, ``hparams/``, ``recipes/``) inside the package.

The repository root keeps the only copy (users run ``python train.py hparams/distill.yaml`` there); the build
copies it to ``robustdistiller/_recipes/`` of the wheel, where :func:`robustdistiller.recipe_files.recipe_root`
finds it when there is no checkout. Everything else is in ``pyproject.toml``.
"""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

RECIPE_FILES = ("train.py", "hparams", "recipes")  # robustdistiller.recipe_files.RECIPE_FILES (not importable here)


class BuildPyWithRecipes(build_py):
    """``build_py`` that also copies the recipe files into ``robustdistiller/_recipes`` of the build."""

    def run(self):
        super().run()
        root = os.path.dirname(os.path.abspath(__file__))
        target = os.path.join(self.build_lib, "robustdistiller", "_recipes")
        ignored = shutil.ignore_patterns("__pycache__", "*.pyc", "results")
        for name in RECIPE_FILES:
            source = os.path.join(root, name)
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(target, name), ignore=ignored, dirs_exist_ok=True)
            else:
                os.makedirs(target, exist_ok=True)
                shutil.copy2(source, os.path.join(target, name))


setup(cmdclass={"build_py": BuildPyWithRecipes})
