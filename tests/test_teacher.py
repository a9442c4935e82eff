"""Tests of the frozen teacher and of teacher loading (all offline, random-weight models)."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import HubertModel, Wav2Vec2Model, WavLMModel

from robustdistiller.teacher import (
    FrozenTeacher,
    TeacherSourceError,
    load_ssl_model,
    random_teacher_config,
    save_random_teacher,
)


def padded_batch(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    wavs = torch.zeros(len(lengths), max(lengths))
    for index, length in enumerate(lengths):
        wavs[index, :length] = 0.1 * torch.randn(length, generator=generator)
    return wavs, torch.tensor(lengths, dtype=torch.float) / max(lengths)


@pytest.fixture(scope="module")
def teacher(tiny_teacher_folder):
    return FrozenTeacher(tiny_teacher_folder)


@pytest.mark.parametrize(
    "model_type, model_class",
    [("wavlm", WavLMModel), ("hubert", HubertModel), ("wav2vec2", Wav2Vec2Model)],
)
def test_save_and_load_random_teacher(tmp_path, model_type, model_class):
    folder = save_random_teacher(str(tmp_path), model_type=model_type)
    model = load_ssl_model(folder)
    assert type(model) is model_class
    assert model.config.num_hidden_layers == 12 and model.config.hidden_size == 64
    assert model.config.feat_extract_norm == "group"
    with open(os.path.join(folder, "preprocessor_config.json")) as stream:
        preprocessor = json.load(stream)
    assert preprocessor["do_normalize"] is False
    assert preprocessor["return_attention_mask"] is True
    assert preprocessor["sampling_rate"] == 16000
    assert "random" in save_random_teacher.__doc__.lower()


def test_random_teacher_is_seeded(tmp_path):
    first = load_ssl_model(save_random_teacher(str(tmp_path / "a"), "hubert", seed=1))
    again = load_ssl_model(save_random_teacher(str(tmp_path / "b"), "hubert", seed=1))
    other = load_ssl_model(save_random_teacher(str(tmp_path / "c"), "hubert", seed=2))
    name = "encoder.layers.3.attention.q_proj.weight"
    assert torch.equal(dict(first.named_parameters())[name], dict(again.named_parameters())[name])
    assert not torch.equal(dict(first.named_parameters())[name], dict(other.named_parameters())[name])


def test_full_size_config_is_base_architecture():
    config = random_teacher_config("wavlm", tiny=False)
    assert (config.hidden_size, config.num_hidden_layers, config.intermediate_size) == (768, 12, 3072)
    assert sum(p.numel() for p in WavLMModel(config).parameters()) == 94_381_936


@pytest.mark.parametrize("source", ["/nonexistent/teacher/folder", "./missing_teacher", "~/no/such/teacher"])
def test_missing_folder_raises_teacher_source_error(source):
    with pytest.raises(TeacherSourceError, match="not a folder") as error:
        load_ssl_model(source)
    assert source in str(error.value)


def test_unreachable_hub_id_raises_teacher_source_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = "robustdistiller-tests/no-such-model"
    with pytest.raises(TeacherSourceError) as error:
        load_ssl_model(source, cache_dir=str(tmp_path))
    message = str(error.value)
    assert source in message and "neither a local folder" in message and "HF_HUB_OFFLINE" in message


def test_folder_without_model_raises_teacher_source_error(tmp_path):
    with pytest.raises(TeacherSourceError, match=str(tmp_path)):
        load_ssl_model(str(tmp_path))


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
def test_outputs_are_the_target_hidden_states(teacher):
    wavs, wav_lens = padded_batch([16000, 9000])
    output = teacher(wavs, wav_lens)
    assert output.layers.shape == (2, 3, 49, 64)
    assert output.layers.dtype == torch.float32
    assert output.frame_mask.sum(dim=1).tolist() == [49, 27]
    sample_mask = (torch.arange(16000)[None] < torch.tensor([[16000], [9000]])).long()
    with torch.no_grad():
        hidden_states = teacher.model(wavs, attention_mask=sample_mask, output_hidden_states=True).hidden_states
    assert len(hidden_states) == 13
    for index, layer in enumerate((4, 8, 12)):
        assert torch.equal(output.layers[:, index], hidden_states[layer])
    assert teacher(wavs).frame_mask.all()


def test_frozen_and_stays_in_eval_mode(teacher):
    parent = torch.nn.ModuleDict({"teacher": teacher, "head": torch.nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training
    assert not teacher.training
    assert not any(module.training for module in teacher.modules())
    assert teacher.config.layerdrop > 0 and teacher.config.hidden_dropout > 0  # would matter in train mode
    assert not any(p.requires_grad for p in teacher.parameters())
    wavs, wav_lens = padded_batch([16000, 12000], seed=1)
    wavs.requires_grad_(True)
    first = teacher(wavs, wav_lens)
    second = teacher(wavs, wav_lens)
    assert torch.equal(first.layers, second.layers)
    assert not first.layers.requires_grad and first.layers.grad_fn is None


def test_fp32_under_bf16_autocast(teacher):
    wavs, wav_lens = padded_batch([16000, 8000], seed=2)
    reference = teacher(wavs, wav_lens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = teacher(wavs.to(torch.bfloat16), wav_lens)
        autocast_output = teacher(wavs, wav_lens)
    assert output.layers.dtype == torch.float32
    assert torch.equal(autocast_output.layers, reference.layers)
    assert torch.allclose(output.layers, reference.layers, atol=0.05)  # input rounded to bf16 only


@pytest.mark.parametrize("target_layers", [(4, 13), (-1,), ()])
def test_invalid_target_layers(tiny_teacher_folder, target_layers):
    with pytest.raises(ValueError, match="layer"):
        FrozenTeacher(tiny_teacher_folder, target_layers=target_layers)


def test_accepts_built_model_and_layer_zero():
    torch.manual_seed(0)
    model = HubertModel(random_teacher_config("hubert"))
    teacher = FrozenTeacher(model, target_layers=(0, 12))
    assert teacher.model is model and not model.training
    assert teacher(torch.randn(1, 8000)).layers.shape == (1, 2, 24, 64)


def test_padding_what_holds(tiny_teacher_folder, teacher):
    """Valid frames of a padded batch vs the same utterances alone (see student.py's docstring)."""
    lengths = [24000, 12000, 6000]
    wavs, wav_lens = padded_batch(lengths, seed=3)
    exact = FrozenTeacher(tiny_teacher_folder, per_utterance_norm=True)
    torch.manual_seed(0)
    layer_norm_cnn = FrozenTeacher(
        WavLMModel(random_teacher_config("wavlm", feat_extract_norm="layer", conv_bias=True))
    )
    for name, model in [("plain", teacher), ("exact", exact), ("layer", layer_norm_cnn)]:
        batch = model(wavs, wav_lens)
        for index, length in enumerate(lengths):
            single = model(wavs[index : index + 1, :length])
            frames = single.layers.shape[2]
            assert int(batch.frame_mask[index].sum()) == frames
            padded = batch.layers[index, :, :frames]
            error = float((padded - single.layers[0]).norm() / single.layers[0].norm())
            if name != "plain" or index == 0:
                assert error < 1e-4, (name, index, error)
            else:
                assert error > 1e-3, "documented GroupNorm padding effect vanished?"
