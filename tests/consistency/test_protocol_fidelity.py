"""Protocol fidelity: every recipe's full-size defaults against s3prl's effective settings.

For each task of the registry (:data:`robustdistiller.downstream.tasks.TASKS`), the training budget that
SpeechBrain's ``Brain`` will actually use with the recipe's YAML -- effective batch
(``train_dataloader_opts.batch_size`` x ``grad_accumulation_factor``), gradient clipping (``max_grad_norm``;
SpeechBrain's default is 5.0), learning rate, optimizer class (and AdamW's weight decay) and the number of
optimizer updates (``optimizer_step_limit``) -- must equal the row's s3prl budget
(:class:`~robustdistiller.downstream.tasks.S3prlBudget`, ``docs/reference/s3prl_settings.md`` "Step budgets"),
or the recipe's README must name the YAML key in a "Deviations from s3prl" section, with its reason. Where
the update budget is set and the size of the real training set is known, the ``number_of_epochs`` ceiling
must be high enough to reach it.

Registry-driven: a new task adds its row to ``TASKS``; every recipe folder and YAML must have a row, and every
row a recipe (:func:`test_registry_and_recipe_folders_agree`). The YAMLs are read with their references
resolved and no object built (no upstream, no data folder needed).
"""

from pathlib import Path
import glob
import os
import pydoc
import re

import pytest
import torch
from hyperpyyaml import resolve_references
from ruamel.yaml import YAML

from robustdistiller.downstream.tasks import (
    METRIC_SCALES,
    RECIPES_ROOT,
    TASKS,
    TORCH_ADAMW_DEFAULT_WEIGHT_DECAY,
    S3prlBudget,
)

SPEECHBRAIN_DEFAULT_MAX_GRAD_NORM = 5.0  # speechbrain.Brain run_opt_defaults (1.1.2)


# The YAML keys a README names to document a deviation of each quantity.
DEVIATION_KEYS = {
    "effective batch": ("batch_size", "grad_accumulation_factor", "train_dataloader_opts"),
    "clipping": ("max_grad_norm",),
    "learning rate": ("lr",),
    "optimizer": ("opt_class",),
    "weight decay": ("opt_class", "weight_decay"),
    "updates": ("number_of_updates", "optimizer_step_limit", "number_of_epochs"),
    "epoch ceiling": ("number_of_epochs",),
}

PLACEHOLDER = re.compile(r"^(\w+):\s*!PLACEHOLDER", re.MULTILINE)


def load_plain_options(yaml_path):
    """The YAML's values with references resolved and every ``!PLACEHOLDER`` filled by a dummy; no object built."""
    with open(yaml_path, encoding="utf-8") as fin:
        text = fin.read()
    overrides = {name: f"/nonexistent/{name}" for name in PLACEHOLDER.findall(text)}
    overrides["upstream_source"] = "microsoft/wavlm-base-plus"  # only named, never loaded
    with open(yaml_path, encoding="utf-8") as fin:
        return YAML().load(resolve_references(fin, overrides))


def tag_of(node):
    tag = getattr(node, "tag", None)
    return getattr(tag, "value", tag)


def effective_settings(options):
    """What ``speechbrain.Brain`` trains with, from a recipe's plain options."""
    opt_class = options.get("opt_class")
    optimizer, keywords = None, {}
    if opt_class is not None:
        tag = tag_of(opt_class)
        assert tag and tag.startswith("!name:"), f"opt_class should be a !name: partial, got {tag!r}"
        optimizer = pydoc.locate(tag[len("!name:") :])
        keywords = dict(opt_class) if hasattr(opt_class, "items") else {}
    batch = options.get("train_dataloader_opts", {}).get("batch_size", options.get("batch_size"))
    accumulation = options.get("grad_accumulation_factor", 1) or 1
    return {
        "optimizer": optimizer,
        "lr": keywords.get("lr", options.get("lr")),
        "weight_decay": keywords.get(
            "weight_decay", TORCH_ADAMW_DEFAULT_WEIGHT_DECAY if optimizer is torch.optim.AdamW else None
        ),
        "batch": batch,
        "accumulation": accumulation,
        "effective batch": None if batch is None else int(batch) * int(accumulation),
        "clipping": float(options.get("max_grad_norm", SPEECHBRAIN_DEFAULT_MAX_GRAD_NORM)),
        "updates": options.get("optimizer_step_limit"),
        "epochs": options.get("number_of_epochs"),
    }


def deviations_section(readme_path):
    """The text of the README's "Deviations from s3prl" section ('' when there is none)."""
    if not os.path.isfile(readme_path):
        return ""
    lines = Path(readme_path).read_text(encoding="utf-8").splitlines()
    for start, line in enumerate(lines):
        heading = re.match(r"^(#+)\s+(.*)", line)
        if heading and "deviations from s3prl" in heading.group(2).lower():
            level = len(heading.group(1))
            body = []
            for other in lines[start + 1 :]:
                deeper = re.match(r"^(#+)\s", other)
                if deeper and len(deeper.group(1)) <= level:
                    break
                body.append(other)
            return "\n".join(body)
    return ""


def documented(section, quantity):
    """Whether a bullet of the section names a key of ``quantity`` in backticks, with a reason after it."""
    for bullet in re.split(r"\n(?=\s*[-*] )", section):
        keys = re.findall(r"`([\w.]+)", bullet)
        if any(key.split(".")[0] in DEVIATION_KEYS[quantity] for key in keys) and len(bullet.strip()) >= 60:
            return True
    return False


def mismatches(row, settings):
    """``{quantity: (ours, s3prl's)}`` of every setting that differs from the row."""
    found = {}
    if settings["optimizer"] is not row.optimizer:
        found["optimizer"] = (settings["optimizer"], row.optimizer)
    if settings["lr"] is None or abs(float(settings["lr"]) - row.lr) > 1e-12:
        found["learning rate"] = (settings["lr"], row.lr)
    if row.weight_decay is not None and settings["weight_decay"] != pytest.approx(row.weight_decay):
        found["weight decay"] = (settings["weight_decay"], row.weight_decay)
    if settings["effective batch"] not in row.effective_batch:
        found["effective batch"] = (f"{settings['batch']} x {settings['accumulation']}", row.effective_batch)
    if settings["clipping"] != pytest.approx(row.clip):
        found["clipping"] = (settings["clipping"], row.clip)
    if settings["updates"] is None or int(settings["updates"]) != row.updates:
        found["updates"] = (settings["updates"], row.updates)
    elif row.train_utterances and settings["epochs"] is not None:
        reachable = (
            int(settings["epochs"]) * (row.train_utterances // int(settings["batch"])) // int(settings["accumulation"])
        )
        if reachable < row.updates:
            found["epoch ceiling"] = (f"{settings['epochs']} epochs = ~{reachable} updates", row.updates)
    return found


@pytest.mark.parametrize("name", list(TASKS))
def test_training_budget_matches_s3prl_or_is_documented(name):
    task = TASKS[name]
    row = task.s3prl
    assert os.path.isfile(task.hparams_file), f"{name}: expected the recipe YAML {task.hparams_file}"
    options = load_plain_options(task.hparams_file)
    if row.optimizer is None:
        assert "opt_class" not in options, f"{name} trains nothing in s3prl, but {task.hparams_file} sets opt_class"
        return
    settings = effective_settings(options)
    readme = os.path.join(task.recipe_folder, "README.md")
    section = deviations_section(readme)
    undocumented = {
        quantity: values for quantity, values in mismatches(row, settings).items() if not documented(section, quantity)
    }
    assert not undocumented, (
        f"{task.recipe}/{task.hparams} differs from s3prl "
        f"({row.note or 'docs/reference/s3prl_settings.md, Step budgets'}) in "
        + "; ".join(f"{quantity}: ours {ours}, s3prl {theirs}" for quantity, (ours, theirs) in undocumented.items())
        + f". Fix the YAML, or name the key ({', '.join(k for q in undocumented for k in DEVIATION_KEYS[q])}) "
        f"with the reason in a '## Deviations from s3prl' section of {readme}"
    )


def test_registry_and_recipe_folders_agree():
    """Every recipe folder and recipe YAML has a registry row, and every row names an existing recipe."""
    rows = {os.path.normpath(os.path.join(task.recipe, task.hparams)): name for name, task in TASKS.items()}
    found = {
        os.path.relpath(path, RECIPES_ROOT)
        for path in glob.glob(os.path.join(RECIPES_ROOT, "*", "*", "hparams", "*.yaml"))
    }
    assert found and len(found) == len(TASKS), sorted(found)
    assert not found - set(rows), (
        f"recipe YAMLs without a row in TASKS (robustdistiller/downstream/tasks.py): {sorted(found - set(rows))}"
    )
    assert not set(rows) - found, f"rows of TASKS whose YAML does not exist: {sorted(set(rows) - found)}"
    folders = {
        os.path.relpath(os.path.dirname(path), RECIPES_ROOT)
        for path in glob.glob(os.path.join(RECIPES_ROOT, "*", "*", "train.py"))
    }
    assert folders == {task.recipe for task in TASKS.values()}
    for name, task in TASKS.items():
        assert task.name == name and os.path.isfile(task.train_script), name
        assert task.primary_metric in METRIC_SCALES, (
            f"{name}: primary metric {task.primary_metric!r} has no scale in METRIC_SCALES"
        )


# ------------------------------------------------------------------ the checker itself -----


def test_checker_reads_speechbrain_defaults_and_catches_each_deviation(tmp_path):
    """The checker on hand-written YAMLs: SpeechBrain's default clip 5.0, accumulation, AdamW's weight decay."""
    yaml_path = tmp_path / "hparams.yaml"
    yaml_path.write_text(
        "data_folder: !PLACEHOLDER\nupstream_source: !PLACEHOLDER\nlr: 0.0001\nbatch_size: 8\n"
        "number_of_updates: 200000\noptimizer_step_limit: !ref <number_of_updates>\nnumber_of_epochs: 12\n"
        "opt_class: !name:torch.optim.Adam\n    lr: !ref <lr>\n"
        "train_dataloader_opts:\n    batch_size: !ref <batch_size>\n"
    )
    settings = effective_settings(load_plain_options(str(yaml_path)))
    assert settings["optimizer"] is torch.optim.Adam and settings["clipping"] == 5.0
    assert settings["effective batch"] == 8 and settings["updates"] == 200000
    row = S3prlBudget(train_utterances=138_361)
    # s3prl's SID is 8 x 4, clip 1: the pre-fix SID YAML, caught twice; 12 epochs of batch 8 x 1 reach 200k
    assert set(mismatches(row, settings)) == {"effective batch", "clipping"}
    settings.update({"accumulation": 4, "effective batch": 32, "clipping": 1.0})
    assert set(mismatches(row, settings)) == {"epoch ceiling"}  # 12 epochs of 8 x 4: ~51.9k updates
    settings["epochs"] = 50
    assert mismatches(row, settings) == {}
    settings["optimizer"] = torch.optim.AdamW
    assert set(
        mismatches(S3prlBudget(optimizer=torch.optim.AdamW, effective_batch=(32,), weight_decay=0.0), settings)
    ) == {"weight decay"}

    readme = tmp_path / "README.md"
    readme.write_text(
        "# T\n\n## Deviations from s3prl\n\n- `max_grad_norm`: 5.0, because the head is tiny and "
        "converges either way (measured).\n- `lr`\n\n## Other\n- `opt_class`: a long reason that "
        "does not count, outside the section.\n"
    )
    section = deviations_section(str(readme))
    assert documented(section, "clipping")
    assert not documented(section, "learning rate")  # named without a reason
    assert not documented(section, "optimizer")  # outside the section
