"""The YAML blocks every downstream recipe shares (upstream, test corruption, training corruption) are
identical in every recipe: a fix to one must reach all (a copied block that drifts would give one task
other corrupted audio, or another upstream layer set, than the others)."""

from pathlib import Path
import glob
import os
import re

import pytest

from tests.conftest import REPOSITORY_ROOT

from robustdistiller.downstream.brain import SELECTION_MODES
from robustdistiller.downstream.tasks import TASKS

RECIPE_YAMLS = sorted(glob.glob(os.path.join(REPOSITORY_ROOT, "recipes", "*", "*", "hparams", "*.yaml")))

# Every recipe has these (the upstream block).
REQUIRED_KEYS = (
    "upstream_source",
    "upstream_kind",
    "upstream_include_predictions",
    "upstream_per_utterance_norm",
    "upstream_student_layer0",
    "upstream",
    "upstream_name",
)
# Where a recipe has one of these, it has the same text as in every other recipe.
SHARED_KEYS = REQUIRED_KEYS + (
    "test_musan_subsets",
    "test_noise_folders",
    "test_rir_format",
    "test_rirs_noises_subsets",
    "test_corruption_seed",
    "test_conditions",
    "train_musan_subsets",
    "train_noise_folders",
    "train_rir_format",
    "train_rirs_noises_subsets",
    "train_snr_low",
    "train_snr_high",
    "train_condition_probs",
)


def key_text(yaml_text, key):
    """The raw text of a top-level key (its line and indented continuation), comments removed."""
    match = re.search(rf"^{re.escape(key)}:.*(?:\n[ \t]+.*)*", yaml_text, re.M)
    if match is None:
        return None
    lines = [re.sub(r"\s+#.*$", "", line).rstrip() for line in match.group(0).splitlines()]
    return "\n".join(line for line in lines if line.strip())


def test_every_task_of_the_registry_has_its_recipe_yaml_here():
    assert RECIPE_YAMLS == sorted(task.hparams_file for task in TASKS.values())


@pytest.mark.parametrize("name", list(TASKS))
def test_every_trained_recipe_names_its_checkpoint_selection(name):
    """``selection_metric`` / ``selection_mode``: the Brain's best checkpoint (QbE trains nothing, has none)."""
    with open(TASKS[name].hparams_file, encoding="utf-8") as fin:
        text = fin.read()
    metric, mode = (key_text(text, key) for key in ("selection_metric", "selection_mode"))
    if key_text(text, "opt_class") is None:
        assert metric is None and mode is None, name
        return
    assert re.fullmatch(r"selection_metric: \w+", metric or ""), (name, metric)
    assert mode in {f"selection_mode: {value}" for value in SELECTION_MODES}, (name, mode)


@pytest.mark.parametrize("key", SHARED_KEYS)
def test_shared_blocks_are_identical_in_every_recipe(key):
    texts = {}
    for path in RECIPE_YAMLS:
        text = key_text(Path(path).read_text(encoding="utf-8"), key)
        if text is None:
            assert key not in REQUIRED_KEYS, f"{os.path.relpath(path, REPOSITORY_ROOT)} has no `{key}`"
            continue
        texts.setdefault(text, []).append(os.path.relpath(path, REPOSITORY_ROOT))
    assert len(texts) <= 1, f"`{key}` differs between recipes: " + " | ".join(
        f"{paths}: {text!r}" for text, paths in texts.items()
    )
