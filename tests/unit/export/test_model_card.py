"""The export's model card as the Hugging Face Hub reads it, and the exported files' permissions.

The card is parsed by ``huggingface_hub`` itself (``ModelCard.load``, ``model_index_to_eval_results``): front matter
present (license, library, tags, pipeline tag, base model, datasets), no local absolute path anywhere in it, and a
``model-index`` from a cross-task report's ``report.json`` (``--results``). Every exported file is readable by others.
"""

import json
import os
import re
import stat

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from robustdistiller.dpwavlm.export import export_dpwavlm
from robustdistiller.export.cli import main
from robustdistiller.export.errors import ExportError
from robustdistiller.export.model_card import model_card
from robustdistiller.export.student_folder import export_student
from robustdistiller.models.student import DistillerStudent, build_student_config
from tests.unit.dpwavlm.test_export import SUMMARY, compact_model, write_run

TINY = dict(
    hidden_size=32,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=[24] * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
)


def tiny_student():
    torch.manual_seed(0)
    return DistillerStudent(build_student_config(**TINY), target_layers=(2, 4)).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An export of an in-memory student, and an export of that export (a local absolute source)."""
    root = tmp_path_factory.mktemp("card")
    first = str(root / "first_export")
    export_student(tiny_student(), first)
    second = str(root / "second_export")
    export_student(first, second)
    return first, second


def card_text(folder):
    with open(os.path.join(folder, "README.md"), encoding="utf-8") as fin:
        return fin.read()


def test_front_matter_is_parsed_by_huggingface_hub(exported):
    card = ModelCard.load(os.path.join(exported[1], "README.md"))
    data = card.data.to_dict()
    assert data, "the model card has no Hub front matter"
    assert data["license"] == "apache-2.0"
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "feature-extraction"
    for tag in ("speech", "self-supervised-learning", "knowledge-distillation", "robustness"):
        assert tag in data["tags"], tag
    assert "base_model" not in data  # no teacher recorded with an in-memory student
    assert card.text.lstrip().startswith("# Distilled speech encoder")


def test_card_holds_no_local_absolute_path(exported):
    first, second = exported
    text = card_text(second)
    assert first not in text and os.path.dirname(first) not in text
    assert "`first_export`" in text  # the source is named by its folder's base name
    assert not re.search(r"(/tmp/|/home/|/root/|/work/)", text), "a local absolute path in the model card"


def test_teacher_is_the_base_model_only_when_it_came_from_the_hub(tmp_path):
    student = tiny_student()
    metadata = {"per_utterance_norm": False}
    training = {"teacher_source": "microsoft/wavlm-base-plus", "train_splits": ["train-clean-100"]}
    info = {"source": str(tmp_path / "run"), "format": "student", "training": training}
    card = ModelCard(model_card(student, info, metadata, True, False))
    assert card.data.base_model == "microsoft/wavlm-base-plus"
    assert card.data.datasets == ["librispeech_asr"]

    teacher = tmp_path / "my_teacher"
    teacher.mkdir()
    training = {"teacher_source": str(teacher), "train_splits": ["my_recordings"], "data_folder": str(tmp_path)}
    info = {"source": str(tmp_path / "run"), "format": "student", "training": training}
    text = model_card(student, info, metadata, True, False)
    card = ModelCard(text)
    assert card.data.base_model is None and card.data.datasets is None
    assert "`my_teacher`" in text and str(tmp_path) not in text


def write_report(path, upstream_source, name="ours"):
    """A small ``report.json`` as ``python -m robustdistiller.report`` writes it (two tasks, two upstreams)."""

    def cell(values, source):
        return {"status": "ok", "values": values, "upstream": {"source": source, "source_path": source}}

    report = {
        "spec": "spec.yaml",
        "upstreams": [name, "teacher"],
        "tasks": {
            "KS": {
                "metric": "accuracy",
                "higher_is_better": True,
                "scale": "fraction",
                "conditions": ["clean", "babble_5dB"],
                "recipe": "SpeechCommands/KS",
                "cells": {
                    name: cell({"clean": 0.9, "babble_5dB": 0.75}, upstream_source),
                    "teacher": cell({"clean": 0.95, "babble_5dB": 0.8}, "microsoft/wavlm-base-plus"),
                },
            },
            "ASR": {
                "metric": "WER",
                "higher_is_better": False,
                "scale": "percent",
                "conditions": ["clean", "babble_5dB"],
                "recipe": "LibriSpeech/ASR",
                "cells": {
                    name: cell({"clean": 12.5, "babble_5dB": None}, upstream_source),
                    "teacher": {"status": "missing", "values": {}},
                },
            },
        },
    }
    with open(path, "w", encoding="utf-8") as fout:
        json.dump(report, fout)
    return str(path)


def test_model_index_from_a_report(exported, tmp_path):
    first, _ = exported
    report = write_report(tmp_path / "report.json", first)
    folder = str(tmp_path / "with_results")
    assert main([first, folder, "--results", report]) == 0
    card = ModelCard.load(os.path.join(folder, "README.md"))
    model_name, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert model_name
    found = {
        (result.dataset_type, result.dataset_config, result.metric_type): result.metric_value for result in results
    }
    assert found == {
        ("speech_commands", "clean", "accuracy"): 90.0,
        ("speech_commands", "babble_5dB", "accuracy"): 75.0,
        ("librispeech_asr", "clean", "wer"): 12.5,
    }
    assert {result.task_type for result in results} == {"audio-classification", "automatic-speech-recognition"}


def test_report_without_this_model_says_so(exported, tmp_path, capsys):
    first, _ = exported
    report = write_report(tmp_path / "report.json", "/elsewhere/other_student")
    folder = tmp_path / "refused"
    with pytest.raises(ExportError, match="no entry for this model.*ours.*--results-upstream"):
        export_student(first, str(folder), results=report)
    assert not folder.exists()  # nothing written
    assert main([first, str(folder), "--results", report]) == 1
    assert "no entry for this model" in capsys.readouterr().err
    with pytest.raises(ExportError, match="no entry for upstream 'student'"):
        export_student(first, str(folder), results=report, results_upstream="student")
    # naming the upstream picks it
    export_student(first, str(folder), results=report, results_upstream="ours")
    _, results = model_index_to_eval_results(ModelCard.load(str(folder / "README.md")).data.to_dict()["model-index"])
    assert len(results) == 3


def test_exported_files_are_readable_by_others(tmp_path):
    previous = os.umask(0o022)
    try:
        folder = tmp_path / "shared"
        export_student(tiny_student(), str(folder))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in folder.iterdir()}
    assert "model.safetensors" in modes
    assert {name: mode for name, mode in modes.items() if mode != 0o644} == {}


def test_dpwavlm_card_has_the_same_front_matter(tmp_path):
    run = str(tmp_path / "dpwavlm_run")
    path = write_run(run, compact_model(last_conv_on=True))
    report = write_report(tmp_path / "report.json", run, name="dpwavlm")
    folder = tmp_path / "dpwavlm_export"
    export_dpwavlm(path, str(folder), results=str(report))
    text = card_text(str(folder))
    card = ModelCard(text)
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0" and data["pipeline_tag"] == "feature-extraction"
    assert data["base_model"] == SUMMARY["teacher_source"]
    assert "knowledge-distillation" in data["tags"] and "wavlm" in data["tags"]
    assert len(model_index_to_eval_results(data["model-index"])[1]) == 3
    assert str(tmp_path) not in text
