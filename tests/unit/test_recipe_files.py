"""robustdistiller/recipe_files.py: where train.py, hparams/ and recipes/ are, and copying a recipe out."""

import os

import pytest

from tests.conftest import REPOSITORY_ROOT

from robustdistiller import recipe_files


def _recipe_layout(folder):
    """The three entries recipe_root looks for, empty."""
    (folder / "hparams").mkdir(parents=True)
    (folder / "recipes").mkdir()
    (folder / "train.py").write_text("", encoding="utf-8")
    return folder


def test_the_checkout_root_first_then_the_copy_shipped_in_the_package(tmp_path, monkeypatch):
    assert recipe_files.recipe_root() == REPOSITORY_ROOT  # the tests run from a checkout
    package_folder = tmp_path / "site" / "robustdistiller"
    package_folder.mkdir(parents=True)
    monkeypatch.setattr(recipe_files, "PACKAGE_PARENT", str(tmp_path / "site"))
    monkeypatch.setattr(recipe_files, "PACKAGE_FOLDER", str(package_folder))
    with pytest.raises(FileNotFoundError, match=r"train.py, hparams, recipes.*site.*_recipes"):
        recipe_files.recipe_root()
    shipped = _recipe_layout(package_folder / "_recipes")
    assert recipe_files.recipe_root() == str(shipped)
    _recipe_layout(tmp_path / "site")  # a checkout wins over a shipped copy
    assert recipe_files.recipe_root() == str(tmp_path / "site")


def test_copy_recipe_copies_distill_and_a_task_by_either_name(tmp_path):
    distill = recipe_files.copy_recipe("distill", str(tmp_path / "distill"))
    assert sorted(os.listdir(distill)) == ["hparams", "train.py"]
    assert sorted(os.listdir(os.path.join(distill, "hparams"))) == sorted(
        os.listdir(os.path.join(REPOSITORY_ROOT, "hparams"))
    )
    (tmp_path / "empty").mkdir()  # an empty folder is a valid destination
    for name, destination in (("SpeechCommands/KS", "ks_full_name"), ("KS", "empty")):
        folder = recipe_files.copy_recipe(name, str(tmp_path / destination))
        with (
            open(os.path.join(folder, "train.py"), encoding="utf-8") as fin,
            open(
                os.path.join(REPOSITORY_ROOT, "recipes", "SpeechCommands", "KS", "train.py"), encoding="utf-8"
            ) as reference,
        ):
            assert fin.read() == reference.read()
        assert not [name for _, _, files in os.walk(folder) for name in files if name.endswith(".pyc")]


def test_copy_recipe_never_overwrites_and_names_the_known_recipes(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep", encoding="utf-8")
    (tmp_path / "a_file").write_text("keep", encoding="utf-8")
    for destination in ("mine", "a_file"):
        with pytest.raises(FileExistsError, match=f"{destination} exists and is not an empty folder"):
            recipe_files.copy_recipe("KS", str(tmp_path / destination))
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]
    assert (tmp_path / "mine" / "notes.txt").read_text(encoding="utf-8") == "keep"
    assert (tmp_path / "a_file").read_text(encoding="utf-8") == "keep"
    with pytest.raises(ValueError, match=r"'XX' is not a recipe; known: distill, .*SpeechCommands/KS"):
        recipe_files.copy_recipe("XX", str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_list_recipes_is_every_recipe_folder_with_a_train_script():
    expected = sorted(
        f"{dataset}/{task}"
        for dataset in os.listdir(os.path.join(REPOSITORY_ROOT, "recipes"))
        if os.path.isdir(os.path.join(REPOSITORY_ROOT, "recipes", dataset))
        for task in os.listdir(os.path.join(REPOSITORY_ROOT, "recipes", dataset))
        if os.path.isfile(os.path.join(REPOSITORY_ROOT, "recipes", dataset, task, "train.py"))
    )
    assert recipe_files.list_recipes() == expected
