"""Tests of the DistilHuBERT student: sizes, frame counts, HF parity, gradient multiplier, teacher init."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import HubertModel, WavLMConfig, WavLMModel

from robustdistiller.distill.losses import lengths_to_mask
from robustdistiller.models.student import (
    DistillerStudent,
    PredictionHeads,
    absolute_lengths,
    _canonical_name,
    build_student_config,
    num_parameters,
    per_utterance_cnn_norm,
)
from robustdistiller.models.teacher import random_teacher_config

TINY = dict(
    hidden_size=64,
    num_attention_heads=4,
    intermediate_size=128,
    conv_dim=[64] * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=16,
)
NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def tiny_student(seed=0, **kwargs):
    torch.manual_seed(seed)
    overrides = kwargs.pop("overrides", {})
    return DistillerStudent(build_student_config(**TINY, **overrides), **kwargs)


def padded_batch(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    wavs = torch.zeros(len(lengths), max(lengths))
    for index, length in enumerate(lengths):
        wavs[index, :length] = 0.1 * torch.randn(length, generator=generator)
    wav_lens = torch.tensor(lengths, dtype=torch.float) / max(lengths)
    return wavs, wav_lens


def relative_error(value, reference):
    return float((value - reference).norm() / reference.norm())


@pytest.fixture(scope="module")
def full_student():
    torch.manual_seed(0)
    return DistillerStudent(build_student_config())


@pytest.fixture(scope="module")
def tiny_wavlm():
    torch.manual_seed(1)
    return WavLMModel(random_teacher_config("wavlm")).eval()


def test_default_parameter_counts(full_student):
    assert num_parameters(full_student.backbone) == 23_491_200
    assert num_parameters(full_student.prediction_heads) == 3_543_552
    assert num_parameters(full_student) == 27_034_752
    assert isinstance(full_student.backbone, HubertModel)
    assert full_student.prediction_heads.split_weight.shape == (3, 768, 768)
    assert full_student.prediction_heads.split_bias.shape == (3, 768)


def test_config_from_full_size_wavlm_config():
    config = build_student_config(WavLMConfig())
    assert config.num_hidden_layers == 2
    assert config.feat_proj_layer_norm is False and config.conv_bias is False
    assert config.feat_extract_norm == "group" and config.do_stable_layer_norm is False
    assert config.mask_time_prob == 0 and config.mask_feature_prob == 0 and config.layerdrop == 0
    assert config.hidden_dropout == config.attention_dropout == config.activation_dropout == 0.1
    assert num_parameters(HubertModel(config)) == 23_491_200


def test_config_copies_teacher_architecture():
    teacher_config = random_teacher_config("wavlm", layer_norm_eps=1e-6)
    config = build_student_config(teacher_config, num_layers=3, hidden_dropout=0.2)
    assert config.hidden_size == 64 and config.num_attention_heads == 4
    assert config.intermediate_size == 128 and list(config.conv_dim) == [32] * 7
    assert list(config.conv_kernel) == [10, 3, 3, 3, 3, 2, 2]
    assert list(config.conv_stride) == [5, 2, 2, 2, 2, 2, 2]
    assert config.num_conv_pos_embeddings == 16 and config.num_conv_pos_embedding_groups == 16
    assert config.layer_norm_eps == 1e-6
    assert config.num_hidden_layers == 3 and config.hidden_dropout == 0.2


@pytest.mark.parametrize("num_samples", [400, 719, 720, 1000, 16000, 16319, 16320, 24123])
def test_frame_counts_match_hf_wavlm(num_samples, tiny_wavlm):
    student = tiny_student().eval()
    wavs = torch.randn(1, num_samples)
    with torch.no_grad():
        teacher_frames = tiny_wavlm(wavs).last_hidden_state.shape[1]
        output = student(wavs)
    assert output.cnn_features.shape[1] == teacher_frames
    assert output.predictions.shape[2] == teacher_frames
    assert int(student.num_frames(num_samples)) == teacher_frames
    if num_samples == 16000:
        assert teacher_frames == 49


def test_forward_shapes_and_frame_mask():
    student = tiny_student(target_layers=(4, 8, 12)).eval()
    wavs, wav_lens = padded_batch([16000, 8000, 4000])
    output = student(wavs, wav_lens)
    assert output.cnn_features.shape == (3, 49, 64)
    assert len(output.hidden_states) == 3
    assert all(hidden.shape == (3, 49, 64) for hidden in output.hidden_states)
    assert output.predictions.shape == (3, 3, 49, 64)
    assert output.frame_mask.dtype == torch.bool
    assert output.frame_mask.sum(dim=1).tolist() == [49, 24, 12]
    assert student(wavs).frame_mask.all()


def test_forward_matches_hf_backbone_in_eval():
    student = tiny_student().eval()
    wavs, wav_lens = padded_batch([16000, 11000, 6000])
    sample_mask = lengths_to_mask(absolute_lengths(wav_lens, wavs.shape[1]), wavs.shape[1])
    with torch.no_grad():
        output = student(wavs, wav_lens)
        reference = student.backbone(wavs, attention_mask=sample_mask.long(), output_hidden_states=True)
    assert len(reference.hidden_states) == len(output.hidden_states)
    for ours, theirs in zip(output.hidden_states, reference.hidden_states):
        assert torch.equal(ours[output.frame_mask], theirs[output.frame_mask])
    assert torch.equal(output.hidden_states[-1], reference.last_hidden_state)


def test_forward_matches_hf_backbone_in_train_mode_without_dropout():
    student = tiny_student(overrides=NO_DROPOUT).train()
    wavs, wav_lens = padded_batch([16000, 9000])
    sample_mask = lengths_to_mask(absolute_lengths(wav_lens, wavs.shape[1]), wavs.shape[1])
    output = student(wavs, wav_lens)
    reference = student.backbone(wavs, attention_mask=sample_mask.long())
    assert torch.allclose(output.hidden_states[-1], reference.last_hidden_state, atol=1e-6)


def test_feature_grad_mult_scales_cnn_gradient_only():
    wavs, wav_lens = padded_batch([16000, 12000])
    gradients, outputs = {}, {}
    for mult in (1.0, 0.1):
        student = tiny_student(seed=3, feature_grad_mult=mult).eval()
        output = student(wavs, wav_lens)
        (output.predictions.square().mean() + output.cnn_features.mean()).backward()
        gradients[mult] = {name: p.grad.clone() for name, p in student.named_parameters()}
        outputs[mult] = output
    assert torch.equal(outputs[1.0].cnn_features, outputs[0.1].cnn_features)
    assert torch.equal(outputs[1.0].predictions, outputs[0.1].predictions)
    cnn_names = [name for name in gradients[1.0] if ".feature_extractor." in name]
    assert len(cnn_names) == 9  # 7 convs + GroupNorm weight/bias
    for name, full_gradient in gradients[1.0].items():
        if name in cnn_names:
            # the cnn_features.mean() term reaches the CNN through the multiplier as well
            assert torch.allclose(gradients[0.1][name], 0.1 * full_gradient, rtol=1e-4, atol=1e-9), name
        else:
            assert torch.equal(gradients[0.1][name], full_gradient), name


def test_prediction_heads_match_per_head_linear_layers():
    torch.manual_seed(0)
    heads = PredictionHeads(hidden_size=16, num_targets=3, target_size=8)
    hidden = torch.randn(2, 5, 16)
    predictions = heads(hidden)
    assert predictions.shape == (2, 3, 5, 8)
    expanded = torch.nn.functional.gelu(heads.expand(hidden))
    for k in range(3):
        chunk = expanded[..., k * 8 : (k + 1) * 8]
        expected = chunk @ heads.split_weight[k] + heads.split_bias[k]
        assert torch.allclose(predictions[:, k], expected, atol=1e-6)


def _save_hubert(tmp_path, **overrides):
    from robustdistiller.models.teacher import load_ssl_model, save_random_teacher

    return load_ssl_model(save_random_teacher(str(tmp_path), model_type="hubert", seed=5, **overrides)).eval()


def test_init_from_wavlm_teacher_copies_and_drops(tiny_teacher_folder):
    from robustdistiller.models.teacher import load_ssl_model

    teacher = load_ssl_model(tiny_teacher_folder)
    student = DistillerStudent(build_student_config(teacher.config))
    report = student.init_from_teacher(teacher)
    teacher_params = dict(teacher.named_parameters())
    student_params = dict(student.backbone.named_parameters())
    assert sorted(report["copied"]) == sorted(set(student_params) - set(ENCODER_LAYER_NORM))
    assert report["kept_default"] == list(ENCODER_LAYER_NORM)
    for name in report["copied"]:
        assert torch.equal(student_params[name], teacher_params[name]), name
    dropped = set(report["dropped"])
    assert set(ENCODER_LAYER_NORM) <= dropped  # the teacher's encoder LayerNorm is not used
    assert "encoder.layers.0.attention.rel_attn_embed.weight" in dropped
    for layer in (0, 1):
        for suffix in ("gru_rel_pos_const", "gru_rel_pos_linear.weight", "gru_rel_pos_linear.bias"):
            assert f"encoder.layers.{layer}.attention.{suffix}" in dropped
    assert {"feature_projection.layer_norm.weight", "feature_projection.layer_norm.bias"} <= dropped
    assert "encoder.layers.2.attention.q_proj.weight" in dropped
    assert not any(name.startswith(("encoder.layers.0.attention.q", "encoder.pos_conv")) for name in dropped)
    assert len(report["copied"]) + len(dropped) == len(teacher_params)
    # the weight-normed positional conv gives the same effective kernel
    student_conv = student.backbone.encoder.pos_conv_embed.conv
    teacher_conv = teacher.encoder.pos_conv_embed.conv
    assert torch.equal(student_conv.weight, teacher_conv.weight)


ENCODER_LAYER_NORM = ("encoder.layer_norm.weight", "encoder.layer_norm.bias")


def _teacher_with_random_encoder_layer_norm(seed=7):
    """A tiny WavLM whose encoder LayerNorm is random (not the default ones/zeros)."""
    torch.manual_seed(seed)
    teacher = WavLMModel(random_teacher_config("wavlm")).eval()
    with torch.no_grad():
        teacher.encoder.layer_norm.weight.uniform_(0.5, 1.5)
        teacher.encoder.layer_norm.bias.normal_(0.0, 0.3)
    assert not torch.equal(teacher.encoder.layer_norm.weight, torch.ones_like(teacher.encoder.layer_norm.weight))
    return teacher


def _perturbed_student(teacher):
    """A student whose every parameter (encoder LayerNorm included) differs from any init."""
    torch.manual_seed(11)
    student = DistillerStudent(build_student_config(teacher.config))
    with torch.no_grad():
        for param in student.parameters():
            param.add_(torch.randn_like(param) * 0.1 + 0.05)
    return student


@pytest.mark.parametrize("copy_encoder_layer_norm", [False, True])
def test_init_encoder_layer_norm_default_or_copied(copy_encoder_layer_norm):
    teacher = _teacher_with_random_encoder_layer_norm()
    student = _perturbed_student(teacher)
    heads_before = {name: p.clone() for name, p in student.prediction_heads.named_parameters()}
    report = student.init_from_teacher(teacher, copy_encoder_layer_norm=copy_encoder_layer_norm)
    teacher_params = {_canonical_name(n): p for n, p in teacher.named_parameters()}
    student_params = dict(student.backbone.named_parameters())
    weight, bias = (student_params[name] for name in ENCODER_LAYER_NORM)
    if copy_encoder_layer_norm:
        assert report["kept_default"] == []
        assert set(ENCODER_LAYER_NORM) <= set(report["copied"])
        assert not set(ENCODER_LAYER_NORM) & set(report["dropped"])
        assert torch.equal(weight, teacher.encoder.layer_norm.weight)
        assert torch.equal(bias, teacher.encoder.layer_norm.bias)
    else:
        # set explicitly: the perturbed student's values are gone
        assert report["kept_default"] == list(ENCODER_LAYER_NORM)
        assert not set(ENCODER_LAYER_NORM) & set(report["copied"])
        assert set(ENCODER_LAYER_NORM) <= set(report["dropped"])
        assert torch.equal(weight, torch.ones_like(weight)) and torch.equal(bias, torch.zeros_like(bias))
    # everything else is copied bit-exactly, and every student tensor is accounted for once
    assert sorted(report["copied"] + report["kept_default"]) == sorted(student_params)
    assert len(report["copied"]) == len(student_params) - (0 if copy_encoder_layer_norm else 2)
    for name in report["copied"]:
        assert torch.equal(student_params[name], teacher_params[_canonical_name(name)]), name
    assert len(report["copied"]) + len(report["dropped"]) == len(teacher_params)
    assert {"encoder.layers.2.attention.q_proj.weight", "feature_projection.layer_norm.weight"} <= set(
        report["dropped"]
    )
    for name, param in student.prediction_heads.named_parameters():
        assert torch.equal(param, heads_before[name]), name  # heads untouched


def test_init_default_encoder_layer_norm_is_a_plain_normalisation():
    """Default init: hidden state 0 is a plain (unscaled, unshifted) LayerNorm of projection + pos conv."""
    teacher = _teacher_with_random_encoder_layer_norm()
    wavs = torch.randn(1, 8000)
    outputs = {}
    for copy in (False, True):
        student = DistillerStudent(build_student_config(teacher.config)).eval()
        student.init_from_teacher(teacher, copy_encoder_layer_norm=copy)
        with torch.no_grad():
            outputs[copy] = student(wavs).hidden_states
    assert not torch.allclose(outputs[False][0], outputs[True][0])
    with torch.no_grad():
        encoder = teacher.encoder
        student = DistillerStudent(build_student_config(teacher.config)).eval()
        student.init_from_teacher(teacher)
        features, mask = student.extract_cnn_features(wavs)
        projected = student.backbone.feature_projection(features)
        pre_norm = projected + encoder.pos_conv_embed(projected)
        expected = torch.nn.functional.layer_norm(pre_norm, pre_norm.shape[-1:], eps=encoder.layer_norm.eps)
    assert torch.allclose(outputs[False][0], expected, atol=1e-6)


def test_init_from_hubert_teacher_reproduces_first_layers(tmp_path):
    from robustdistiller.models.teacher import FrozenTeacher

    # the student has no LayerNorm before its projection: a HuBERT teacher without one is identical
    teacher = FrozenTeacher(_save_hubert(tmp_path, feat_proj_layer_norm=False), target_layers=(1, 2))
    student = DistillerStudent(build_student_config(teacher.config), target_layers=(1, 2))
    student.init_from_teacher(teacher)
    student.eval()
    wavs, wav_lens = padded_batch([16000, 10000])
    with torch.no_grad():
        student_output = student(wavs, wav_lens)
    teacher_output = teacher(wavs, wav_lens)
    assert torch.equal(student_output.frame_mask, teacher_output.frame_mask)
    mask = student_output.frame_mask
    for index, layer in enumerate((1, 2)):
        assert torch.allclose(
            student_output.hidden_states[layer][mask], teacher_output.layers[:, index][mask], atol=1e-6
        )


def test_init_handles_legacy_weight_norm_names(tmp_path):
    teacher = _save_hubert(tmp_path)
    conv = teacher.encoder.pos_conv_embed.conv
    torch.nn.utils.parametrize.remove_parametrizations(conv, "weight")
    with pytest.warns(FutureWarning):
        torch.nn.utils.weight_norm(conv, name="weight", dim=2)
    assert "encoder.pos_conv_embed.conv.weight_g" in dict(teacher.named_parameters())
    student = DistillerStudent(build_student_config(teacher.config))
    report = student.init_from_teacher(teacher)
    assert "encoder.pos_conv_embed.conv.parametrizations.weight.original1" in report["copied"]
    with torch.no_grad():
        expected = torch._weight_norm(conv.weight_v, conv.weight_g, 2)
    assert torch.allclose(student.backbone.encoder.pos_conv_embed.conv.weight, expected)


def test_init_shape_mismatch_names_parameter(tiny_teacher_folder, full_student):
    from robustdistiller.models.teacher import load_ssl_model

    teacher = load_ssl_model(tiny_teacher_folder)
    with pytest.raises(ValueError, match=r"feature_extractor\.conv_layers\.0\.conv\.weight"):
        full_student.init_from_teacher(teacher)


def test_padding_what_holds():
    """Plain HF computation: the unpadded item matches; short items differ (first-layer GroupNorm)."""
    lengths = [24000, 12000, 6000]
    wavs, wav_lens = padded_batch(lengths)
    plain = tiny_student().eval()
    exact = tiny_student(per_utterance_norm=True).eval()
    layer_norm_cnn = tiny_student(overrides={"feat_extract_norm": "layer"}).eval()
    with torch.no_grad():
        batch = {
            name: model(wavs, wav_lens)
            for name, model in [("plain", plain), ("exact", exact), ("layer", layer_norm_cnn)]
        }
        for index, length in enumerate(lengths):
            single_input = wavs[index : index + 1, :length]
            for name, model in [("plain", plain), ("exact", exact), ("layer", layer_norm_cnn)]:
                single = model(single_input)
                frames = single.frame_mask.shape[1]
                assert int(batch[name].frame_mask[index].sum()) == frames
                padded_hidden = batch[name].hidden_states[-1][index, :frames]
                error = relative_error(padded_hidden, single.hidden_states[-1][0])
                padded_cnn = batch[name].cnn_features[index, :frames]
                cnn_error = relative_error(padded_cnn, single.cnn_features[0])
                if name != "plain" or index == 0:
                    assert error < 1e-4 and cnn_error < 1e-4, (name, index, error)
                else:
                    assert error > 1e-3, "documented GroupNorm padding effect vanished?"


def test_per_utterance_norm_is_a_no_op_without_padding():
    wavs = torch.randn(2, 8000)
    plain = tiny_student().eval()
    with torch.no_grad():
        reference = plain.backbone.feature_extractor(wavs)
        with per_utterance_cnn_norm(plain.backbone.feature_extractor, torch.tensor([8000, 8000])):
            masked = plain.backbone.feature_extractor(wavs)
    assert torch.allclose(masked, reference, atol=1e-5)


def test_train_mode_with_input_gradient_and_bf16_autocast():
    student = tiny_student().train()
    wavs, wav_lens = padded_batch([8000, 6000])
    wavs.requires_grad_(True)
    student(wavs, wav_lens).predictions.sum().backward()
    assert wavs.grad is not None and wavs.grad[1, 6000:].abs().sum() == 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = student(wavs.detach(), wav_lens)
    assert torch.isfinite(output.predictions.float()).all()
