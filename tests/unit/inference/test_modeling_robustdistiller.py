"""The padding-safe transformers class and SpeechBrain lobe shipped in every export (modeling_robustdistiller.py).

A plain ``HubertModel`` changes a short utterance's features when it is padded into a batch (its first CNN
GroupNorm sees the padding); the export's class and lobe give the utterance's own features to 1e-5.
"""

import os
import shutil
import sys

import pytest
import torch
import transformers.dynamic_module_utils
from hyperpyyaml import load_hyperpyyaml
from transformers import AutoModel, HubertConfig, HubertModel

import robustdistiller.inference.modeling_robustdistiller as modeling
from robustdistiller.export.layout import AUTO_MAP, MODELING_FILE
from robustdistiller.inference.modeling_robustdistiller import PaddingSafeHubertModel, RobustDistillerSSL

LENGTHS = (16000, 6000)  # the short item is 62 % padding


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny random HuBERT saved as an export's transformers files (config with auto_map + modeling file)."""
    torch.manual_seed(0)
    config = HubertConfig(
        hidden_size=32,
        num_attention_heads=2,
        num_hidden_layers=2,
        intermediate_size=64,
        conv_dim=[32] * 7,
        conv_bias=False,
        feat_extract_norm="group",
        num_conv_pos_embedding_groups=4,
    )
    model = HubertModel(config)
    with torch.no_grad():  # a non-trivial GroupNorm affine, so a wrong copy of it would show
        norm = model.feature_extractor.conv_layers[0].layer_norm
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.2, 0.2)
    model.config.auto_map = dict(AUTO_MAP)
    path = tmp_path_factory.mktemp("export")
    model.save_pretrained(path)
    shutil.copyfile(modeling.__file__, os.path.join(path, MODELING_FILE))
    return str(path)


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    wavs = torch.zeros(len(LENGTHS), max(LENGTHS))
    for index, length in enumerate(LENGTHS):
        wavs[index, :length] = 0.1 * torch.randn(length, generator=generator)
    mask = (torch.arange(wavs.shape[1])[None, :] < torch.tensor(LENGTHS)[:, None]).long()
    return wavs, mask


def _alone(model, wav):
    with torch.no_grad():
        return torch.stack(model(wav[None], output_hidden_states=True).hidden_states)[:, 0]


def test_padded_batch_gives_each_utterance_its_own_features(folder, batch, monkeypatch, tmp_path):
    # trust_remote_code copies the modeling file into transformers' module cache: a temporary one here (the
    # HF_MODULES_CACHE variable is read when transformers is imported, so the module constant is patched)
    monkeypatch.setattr(transformers.dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    wavs, mask = batch
    safe = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    plain = AutoModel.from_pretrained(folder).eval()  # without trust_remote_code the map is ignored
    assert type(safe).__name__ == "PaddingSafeHubertModel" and type(plain) is HubertModel
    short = _alone(plain, wavs[1, : LENGTHS[1]])
    frames = short.shape[1]
    with torch.no_grad():
        safe_out = torch.stack(safe(wavs, attention_mask=mask, output_hidden_states=True).hidden_states)
        plain_out = torch.stack(plain(wavs, attention_mask=mask, output_hidden_states=True).hidden_states)
    torch.testing.assert_close(safe_out[:, 1, :frames], short, atol=1e-5, rtol=0)
    torch.testing.assert_close(safe_out[:, 0], _alone(plain, wavs[0]), atol=1e-5, rtol=0)
    # the trap it avoids: the plain model's padded item drifts far beyond float error
    assert (plain_out[:, 1, :frames] - short).abs().max() > 1e-2
    # without a mask it is HubertModel exactly
    with torch.no_grad():
        torch.testing.assert_close(safe(wavs).last_hidden_state, plain(wavs).last_hidden_state, atol=0, rtol=0)


def test_lobe_replaces_speechbrain_wrapper_in_a_recipe_yaml(folder, batch):
    yaml = f"""
ssl_model: !new:robustdistiller.inference.modeling_robustdistiller.RobustDistillerSSL
    source: {folder}
    output_all_hiddens: True
    freeze: True
layer_weights: !new:torch.nn.Parameter
    data: !apply:torch.zeros [3]
classifier: !new:torch.nn.Linear
    in_features: 32
    out_features: 4
"""
    hparams = load_hyperpyyaml(yaml)
    lobe, classifier = hparams["ssl_model"], hparams["classifier"]
    assert isinstance(lobe, RobustDistillerSSL)
    wavs, _ = batch
    wav_lens = torch.tensor(LENGTHS, dtype=torch.float) / max(LENGTHS)
    features = lobe(wavs, wav_lens)  # [layers + 1, B, frames, D]
    assert features.shape[:2] == (3, 2) and not features.requires_grad
    short = _alone(lobe.model, wavs[1, : LENGTHS[1]])
    torch.testing.assert_close(features[:, 1, : short.shape[1]], short, atol=1e-5, rtol=0)
    # a weighted sum of the layers, mean-pooled over valid frames, into a linear head: gradients reach the head
    frame_lengths = lobe.model._get_feat_extract_output_lengths(torch.tensor(LENGTHS))
    valid = (torch.arange(features.shape[2])[None, :] < frame_lengths[:, None]).float()
    weights = torch.softmax(hparams["layer_weights"], dim=0)
    mixed = (weights[:, None, None, None] * features).sum(dim=0)
    pooled = (mixed * valid[..., None]).sum(dim=1) / valid.sum(dim=1, keepdim=True)
    loss = torch.nn.functional.cross_entropy(classifier(pooled), torch.tensor([0, 3]))
    loss.backward()
    assert hparams["layer_weights"].grad.abs().sum() > 0 and classifier.weight.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in lobe.parameters())
    lobe.train()
    assert not lobe.model.training  # frozen: stays in eval mode


def test_too_short_item_stays_finite(folder):
    model = PaddingSafeHubertModel.from_pretrained(folder).eval()
    wavs = torch.randn(2, 8000)
    mask = torch.ones(2, 8000, dtype=torch.long)
    mask[1, 300:] = 0  # shorter than the CNN's 400-sample receptive field
    with torch.no_grad():
        out = model(wavs, attention_mask=mask).last_hidden_state
    assert torch.isfinite(out).all()


def test_half_precision_statistics_do_not_overflow(folder):
    """The masked GroupNorm sums in float32: a float16 model on a long padded input matches float32."""
    model = PaddingSafeHubertModel.from_pretrained(folder).eval()
    norm = model.feature_extractor.conv_layers[0].layer_norm
    inputs = 4.0 * torch.randn(2, 32, 64000, generator=torch.Generator().manual_seed(2))
    norm.step_lengths = torch.tensor([64000, 40000])
    try:
        reference = norm(inputs)
        half = norm.half()(inputs.half()).float()
    finally:
        norm.step_lengths = None
        norm.float()
    assert torch.isfinite(half).all()
    # float16 keeps ~3 decimal digits of values of order 1 (after the affine, |y| < ~10)
    torch.testing.assert_close(half, reference, atol=2e-2, rtol=1e-2)


def test_trainable_lobe_passes_gradients_and_keeps_padding_safety(folder, batch):
    wavs, _ = batch
    wav_lens = torch.tensor(LENGTHS, dtype=torch.float) / max(LENGTHS)
    lobe = RobustDistillerSSL(folder, freeze=False, freeze_feature_extractor=True).eval()
    features = lobe(wavs, wav_lens)  # [B, frames, D] (output_all_hiddens False, as SpeechBrain's default)
    assert features.dim() == 3 and features.requires_grad
    features.sum().backward()
    assert lobe.model.encoder.layers[0].attention.q_proj.weight.grad is not None
    assert all(parameter.grad is None for parameter in lobe.model.feature_extractor.parameters())
    short = _alone(lobe.model, wavs[1, : LENGTHS[1]])[-1]
    torch.testing.assert_close(features[1, : short.shape[0]].detach(), short, atol=1e-5, rtol=0)
