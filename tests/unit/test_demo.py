"""robustdistiller/demo.py: the demo's enhancement head is sized to its student, and its time summary."""

import os
import re

from transformers import AutoConfig

from robustdistiller.demo import demo_enhancement_overrides, format_step_times
from robustdistiller.models.enhancement import EnhancementHead

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DISTILL_YAML = os.path.join(REPOSITORY_ROOT, "hparams", "distill.yaml")


def yaml_top_level_values(path):
    """``key -> value text`` of the top-level ``key: value`` lines of a recipe YAML (comments dropped)."""
    with open(path, encoding="utf-8") as fin:
        return {
            match.group(1): match.group(2).split("#")[0].strip()
            for match in re.finditer(r"^(\w+):(.*)$", fin.read(), flags=re.MULTILINE)
        }


def parameter_count(module):
    return sum(parameter.numel() for parameter in module.parameters())


def test_demo_head_is_sized_to_the_student_not_the_full_size_recipe(tiny_teacher_folder):
    teacher_config = AutoConfig.from_pretrained(tiny_teacher_folder)
    overrides = demo_enhancement_overrides(teacher_config)
    recipe = yaml_top_level_values(DISTILL_YAML)
    # Every override is a key of the real recipe (a misspelt one would leave the full-size head in place),
    # and the recipe's head reads the sizing keys.
    assert set(overrides) <= set(recipe), set(overrides) - set(recipe)
    with open(DISTILL_YAML, encoding="utf-8") as fin:
        text = fin.read()
    assert "hidden_size: !ref <enhancement_hidden_size>" in text
    assert "num_layers: !ref <enhancement_layers>" in text
    # The head reads the student's CNN features and is as wide as the student.
    assert overrides["enhancement_input_size"] == teacher_config.conv_dim[-1]
    assert overrides["enhancement_hidden_size"] == teacher_config.hidden_size
    assert overrides["enhancement_hidden_size"] < int(recipe["enhancement_hidden_size"])
    demo_head = EnhancementHead(
        input_size=overrides["enhancement_input_size"],
        hidden_size=overrides["enhancement_hidden_size"],
        num_layers=overrides["enhancement_layers"],
    )
    full_size_head = EnhancementHead(
        input_size=overrides["enhancement_input_size"],
        hidden_size=int(recipe["enhancement_hidden_size"]),
        num_layers=int(recipe["enhancement_layers"]),
    )
    # Tiny teacher (CNN 32, hidden 64): 0.28M against 3.9M parameters.
    assert parameter_count(demo_head) * 10 < parameter_count(full_size_head)
    # Monitoring is kept, on fewer utterances than the recipe's.
    assert 0 < overrides["quality_utterances"] < int(recipe["quality_utterances"])


def test_format_step_times_lists_each_step_and_the_total():
    text = format_step_times({"training RobustDistiller": 90.4, "cross-task report": 59.8})
    lines = text.splitlines()
    assert lines[0] == "Time per step (wall clock):"
    assert re.fullmatch(r"\s+training RobustDistiller\s+90 s", lines[1])
    assert re.fullmatch(r"\s+cross-task report\s+60 s", lines[2])
    assert re.fullmatch(r"\s+total\s+150 s \(2\.5 min\)", lines[3])
