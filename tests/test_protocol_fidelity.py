"""Protocol fidelity: every recipe's full-size defaults against s3prl's effective settings.

For each recipe YAML, the training budget that SpeechBrain's ``Brain`` will actually use --
effective batch (``train_dataloader_opts.batch_size`` x ``grad_accumulation_factor``), gradient clipping
(``max_grad_norm``; SpeechBrain's default is 5.0), learning rate, optimizer class (and AdamW's weight
decay) and the number of optimizer updates (``optimizer_step_limit``) -- must equal s3prl's table
(``docs/reference/s3prl_settings.md`` "Step budgets"), or the recipe's README must name the YAML key in a
"Deviations from s3prl" section, with its reason. Where the update budget is set and the size of the
real training set is known, the ``number_of_epochs`` ceiling must be high enough to reach it.

Table-driven: a new recipe adds a row to :data:`S3PRL`; a row whose recipe folder does not exist yet is
skipped, and a recipe YAML without a row fails :func:`test_every_recipe_yaml_has_a_row`. The YAMLs are
read with their references resolved and no object built (no upstream, no data folder needed).
"""

import glob
import os
import pydoc
import re
from dataclasses import dataclass
from typing import Optional, Tuple

import pytest
import torch
from hyperpyyaml import resolve_references
from ruamel.yaml import YAML

from conftest import REPOSITORY_ROOT

RECIPES = os.path.join(REPOSITORY_ROOT, "recipes")
SPEECHBRAIN_DEFAULT_MAX_GRAD_NORM = 5.0  # speechbrain.Brain run_opt_defaults (1.1.2)
TORCH_ADAMW_DEFAULT_WEIGHT_DECAY = 0.01


@dataclass(frozen=True)
class S3prlSettings:
    """One row of docs/reference/s3prl_settings.md "Step budgets"."""

    task: str
    yaml: str  # under recipes/
    optimizer: Optional[type] = torch.optim.Adam  # None: no training (QbE)
    lr: float = 1e-4
    effective_batch: Tuple[int, ...] = (32,)  # the accepted values
    clip: float = 1.0
    updates: int = 200_000
    weight_decay: Optional[float] = None  # checked for AdamW
    train_utterances: Optional[int] = None  # full-size training set, for the epoch-ceiling check
    note: str = ""


S3PRL = [
    S3prlSettings("KS", "SpeechCommands/KS/hparams/superb_ks.yaml", train_utterances=51_424,
                  note="1,607 steps per epoch at batch 32"),
    S3prlSettings("IC", "FluentSpeechCommands/IC/hparams/superb_ic.yaml", train_utterances=23_132),
    S3prlSettings("ER", "IEMOCAP/ER/hparams/superb_er.yaml", updates=30_000, train_utterances=3_400,
                  note="4 x 8; the smallest fold trains on ~3,400 utterances"),
    S3prlSettings("SID", "VoxCeleb1/SID/hparams/superb_sid.yaml", train_utterances=138_361, note="8 x 4"),
    S3prlSettings("ASV", "VoxCeleb1/ASV/hparams/superb_asv.yaml", optimizer=torch.optim.AdamW,
                  effective_batch=(50,), clip=1000.0, weight_decay=TORCH_ADAMW_DEFAULT_WEIGHT_DECAY,
                  train_utterances=143_000, note="10 x 5; 1,171 training speakers after 40 held out"),
    S3prlSettings("PR", "LibriSpeech/PR/hparams/superb_pr.yaml", lr=1e-2, updates=100_000,
                  train_utterances=28_539, note="16 x 2, bucketed"),
    S3prlSettings("ASR", "LibriSpeech/ASR/hparams/superb_asr.yaml", effective_batch=(32, 16),
                  train_utterances=28_539, note="32 nominal, 16 by s3prl's HALF_BATCHSIZE_TIME quirk"),
    S3prlSettings("SF", "SNIPS/SF/hparams/superb_sf.yaml"),
    S3prlSettings("QbE", "QUESST14/QbE/hparams/superb_qbe.yaml", optimizer=None, note="no training"),
    S3prlSettings("SD", "LibriMix/SD/hparams/superb_sd.yaml", updates=30_000, note="8 x 4"),
    S3prlSettings("SE", "VoiceBank/SE/hparams/superb_se.yaml", optimizer=torch.optim.AdamW, effective_batch=(8,),
                  updates=150_000, weight_decay=0.0, note="s3prl's AdamW: weight decay 0"),
    S3prlSettings("SS", "LibriMix/SS/hparams/superb_ss.yaml", optimizer=torch.optim.AdamW, effective_batch=(8,),
                  updates=150_000, weight_decay=0.0, note="s3prl's AdamW: weight decay 0"),
]

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
        optimizer = pydoc.locate(tag[len("!name:"):])
        keywords = dict(opt_class) if hasattr(opt_class, "items") else {}
    batch = options.get("train_dataloader_opts", {}).get("batch_size", options.get("batch_size"))
    accumulation = options.get("grad_accumulation_factor", 1) or 1
    return {
        "optimizer": optimizer,
        "lr": keywords.get("lr", options.get("lr")),
        "weight_decay": keywords.get("weight_decay",
                                     TORCH_ADAMW_DEFAULT_WEIGHT_DECAY if optimizer is torch.optim.AdamW else None),
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
    lines = open(readme_path, encoding="utf-8").read().splitlines()
    for start, line in enumerate(lines):
        heading = re.match(r"^(#+)\s+(.*)", line)
        if heading and "deviations from s3prl" in heading.group(2).lower():
            level = len(heading.group(1))
            body = []
            for other in lines[start + 1:]:
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
        reachable = int(settings["epochs"]) * (row.train_utterances // int(settings["batch"])) // int(
            settings["accumulation"])
        if reachable < row.updates:
            found["epoch ceiling"] = (f"{settings['epochs']} epochs = ~{reachable} updates", row.updates)
    return found


ROWS = {row.task: row for row in S3PRL}


@pytest.mark.parametrize("task", list(ROWS))
def test_training_budget_matches_s3prl_or_is_documented(task):
    row = ROWS[task]
    yaml_path = os.path.join(RECIPES, row.yaml)
    recipe_folder = os.path.dirname(os.path.dirname(yaml_path))
    if not os.path.isdir(recipe_folder):
        pytest.skip(f"recipes/{os.path.relpath(recipe_folder, RECIPES)} does not exist yet")
    assert os.path.isfile(yaml_path), f"{row.task}: expected the recipe YAML {yaml_path}"
    options = load_plain_options(yaml_path)
    if row.optimizer is None:
        assert "opt_class" not in options, f"{row.task} trains nothing in s3prl, but {yaml_path} sets opt_class"
        return
    settings = effective_settings(options)
    section = deviations_section(os.path.join(recipe_folder, "README.md"))
    undocumented = {quantity: values for quantity, values in mismatches(row, settings).items()
                    if not documented(section, quantity)}
    assert not undocumented, (
        f"{row.yaml} differs from s3prl ({row.note or 'docs/reference/s3prl_settings.md, Step budgets'}) in "
        + "; ".join(f"{quantity}: ours {ours}, s3prl {theirs}" for quantity, (ours, theirs) in undocumented.items())
        + f". Fix the YAML, or name the key ({', '.join(k for q in undocumented for k in DEVIATION_KEYS[q])}) "
        f"with the reason in a '## Deviations from s3prl' section of {os.path.join(recipe_folder, 'README.md')}"
    )


def test_every_recipe_yaml_has_a_row():
    known = {os.path.normpath(row.yaml) for row in S3PRL}
    found = {os.path.relpath(path, RECIPES)
             for path in glob.glob(os.path.join(RECIPES, "*", "*", "hparams", "superb_*.yaml"))}
    assert found, "no recipe YAML found under recipes/*/*/hparams/"
    assert not found - known, (
        f"recipe YAMLs without a row in S3PRL (tests/test_protocol_fidelity.py): {sorted(found - known)}"
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
    row = S3prlSettings("SID", "x", train_utterances=138_361)
    # s3prl's SID is 8 x 4, clip 1: the pre-fix SID YAML, caught twice; 12 epochs of batch 8 x 1 reach 200k
    assert set(mismatches(row, settings)) == {"effective batch", "clipping"}
    settings.update({"accumulation": 4, "effective batch": 32, "clipping": 1.0})
    assert set(mismatches(row, settings)) == {"epoch ceiling"}  # 12 epochs of 8 x 4: ~51.9k updates
    settings["epochs"] = 50
    assert mismatches(row, settings) == {}
    settings["optimizer"] = torch.optim.AdamW
    assert set(mismatches(S3prlSettings("ASV", "x", optimizer=torch.optim.AdamW, effective_batch=(32,),
                                        weight_decay=0.0), settings)) == {"weight decay"}

    readme = tmp_path / "README.md"
    readme.write_text("# T\n\n## Deviations from s3prl\n\n- `max_grad_norm`: 5.0, because the head is tiny and "
                      "converges either way (measured).\n- `lr`\n\n## Other\n- `opt_class`: a long reason that "
                      "does not count, outside the section.\n")
    section = deviations_section(str(readme))
    assert documented(section, "clipping")
    assert not documented(section, "learning rate")  # named without a reason
    assert not documented(section, "optimizer")  # outside the section
