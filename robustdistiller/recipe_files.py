"""Where the recipe files are: ``train.py``, ``hparams/`` and ``recipes/``, in a checkout or an installed wheel.

In a checkout (or an editable install) they sit at the repository root, next to the package. A wheel has no
repository root: the build (``setup.py``) ships a copy of them inside the package, under ``_recipes/``. Code that
runs a recipe or reads a recipe YAML asks :func:`recipe_root` instead of assuming the checkout layout, and
``robustdistiller copy-recipe`` (:func:`copy_recipe`) copies a recipe folder out for copy-and-modify.
"""

import os
import shutil

from robustdistiller import PACKAGE_PARENT

PACKAGE_FOLDER = os.path.dirname(os.path.abspath(__file__))
SHIPPED_FOLDER_NAME = "_recipes"
"""The folder inside the package that holds the recipe files in a wheel (written by ``setup.py``)."""

RECIPE_FILES = ("train.py", "hparams", "recipes")
"""What :func:`recipe_root` must find: the distillation script, its YAMLs, the downstream recipes."""

IGNORED_NAMES = shutil.ignore_patterns("__pycache__", "*.pyc", "results", "*.egg-info")
"""What copies of recipe folders leave out (run outputs and byte code)."""


def _has_recipe_files(folder):
    return all(os.path.exists(os.path.join(folder, name)) for name in RECIPE_FILES)


def recipe_root():
    """The folder that holds ``train.py``, ``hparams/`` and ``recipes/``.

    The repository root of a checkout when the package runs from one, else the copy a wheel ships in the
    package (``robustdistiller/_recipes``).

    Returns
    -------
    str

    Raises
    ------
    FileNotFoundError
        If neither is there (a broken install), naming both places looked at.

    Example
    -------
    >>> sorted(name for name in os.listdir(recipe_root()) if name in RECIPE_FILES)
    ['hparams', 'recipes', 'train.py']
    """
    for folder in (PACKAGE_PARENT, os.path.join(PACKAGE_FOLDER, SHIPPED_FOLDER_NAME)):
        if _has_recipe_files(folder):
            return folder
    raise FileNotFoundError(
        f"The recipe files ({', '.join(RECIPE_FILES)}) are neither in a checkout ({PACKAGE_PARENT}) nor shipped "
        f"with the installed package ({os.path.join(PACKAGE_FOLDER, SHIPPED_FOLDER_NAME)}): reinstall with "
        "`pip install .` from a checkout, or run from the checkout."
    )


def recipe_path(*parts):
    """A path under :func:`recipe_root`, e.g. ``recipe_path("hparams", "distill.yaml")``.

    Example
    -------
    >>> os.path.isfile(recipe_path("hparams", "distill.yaml"))
    True
    """
    return os.path.join(recipe_root(), *parts)


def list_recipes():
    """The downstream recipes as ``Dataset/Task`` names (folders of ``recipes/`` with a ``train.py``).

    Example
    -------
    >>> "SpeechCommands/KS" in list_recipes()
    True
    """
    recipes_folder = recipe_path("recipes")
    names = []
    for dataset in sorted(os.listdir(recipes_folder)):
        dataset_folder = os.path.join(recipes_folder, dataset)
        if not os.path.isdir(dataset_folder):
            continue
        for task in sorted(os.listdir(dataset_folder)):
            if os.path.isfile(os.path.join(dataset_folder, task, "train.py")):
                names.append(f"{dataset}/{task}")
    return names


def copy_recipe(name, destination):
    """Copies a recipe out for copy-and-modify: ``distill`` (``train.py`` + ``hparams/``) or a ``Dataset/Task``.

    Arguments
    ---------
    name : str
        ``distill``, a downstream recipe as listed by :func:`list_recipes` (``SpeechCommands/KS``), or just
        its task when that is unique (``KS``).
    destination : str
        A folder that does not exist yet or is empty; never overwritten.

    Returns
    -------
    str
        The destination folder.

    Raises
    ------
    ValueError
        For an unknown recipe name (the known ones are listed).
    FileExistsError
        If ``destination`` exists and is not an empty folder.

    Example
    -------
    >>> import tempfile
    >>> folder = copy_recipe("KS", os.path.join(tempfile.mkdtemp(), "my_ks"))
    >>> sorted(os.listdir(folder))[:2]
    ['README.md', 'hparams']
    """
    source = _recipe_source(name)
    if os.path.exists(destination) and (not os.path.isdir(destination) or os.listdir(destination)):
        raise FileExistsError(
            f"{destination} exists and is not an empty folder; nothing was copied (give a new folder)."
        )
    os.makedirs(destination, exist_ok=True)
    if source == "distill":
        shutil.copy2(recipe_path("train.py"), os.path.join(destination, "train.py"))
        shutil.copytree(recipe_path("hparams"), os.path.join(destination, "hparams"), ignore=IGNORED_NAMES)
    else:
        shutil.copytree(source, destination, ignore=IGNORED_NAMES, dirs_exist_ok=True)
    return destination


def _recipe_source(name):
    """The folder of recipe ``name`` (or ``"distill"``); a clear error listing the known names."""
    if name == "distill":
        return name
    known = list_recipes()
    matches = [recipe for recipe in known if name in (recipe, recipe.split("/")[1])]
    if len(matches) != 1:
        reason = "is ambiguous" if matches else "is not a recipe"
        raise ValueError(f"Recipe {name!r} {reason}; known: distill, {', '.join(known)}.")
    return recipe_path("recipes", *matches[0].split("/"))
