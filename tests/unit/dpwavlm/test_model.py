"""DPWavLM model: hard-concrete maths, parameter counts, prune() exactness, .pth format, HF parity.

Tiny random configs on CPU; facts from ``docs/reference/dphubert.md`` "Hard-concrete gates",
"Expected parameter count", "Materialisation", "WavLM attention under pruning", "Checkpoint format",
"Config keys", "Parameter counts", "Uneven test config" and "Export to transformers".
"""

import math
import warnings

import pytest
import torch
import transformers

from robustdistiller.dpwavlm import (
    DPWavLM,
    HardConcrete,
    export_hf_wavlm_padded,
    from_hf_model,
    load_dphubert_checkpoint,
    save_dphubert_checkpoint,
    tiny_config,
    wavlm_base_plus_config,
)

# DPHuBERT's WavLM config keys (docs/reference/dphubert.md "Config keys"), written out independently.
EXPECTED_CONFIG_KEYS = {
    "extractor_mode", "extractor_conv_layer_config", "extractor_conv_bias", "encoder_embed_dim",
    "encoder_projection_dropout", "encoder_pos_conv_kernel", "encoder_pos_conv_groups", "encoder_num_layers",
    "encoder_use_attention", "encoder_use_feed_forward", "encoder_total_num_heads", "encoder_remaining_heads",
    "encoder_num_buckets", "encoder_max_distance", "encoder_attention_dropout", "encoder_ff_interm_features",
    "encoder_ff_interm_dropout", "encoder_dropout", "encoder_layer_norm_first", "encoder_layer_drop",
    "aux_num_out", "normalize_waveform", "extractor_prune_conv_channels", "encoder_prune_attention_heads",
    "encoder_prune_attention_layer", "encoder_prune_feed_forward_intermediate",
    "encoder_prune_feed_forward_layer",
}  # fmt: skip

GATES = dict(
    extractor_prune_conv_channels=True,
    encoder_prune_attention_heads=True,
    encoder_prune_feed_forward_intermediate=True,
)
E, HEADS, HEAD_DIM, BUCKETS = 32, 4, 8, 32


def numel(model):
    return sum(p.numel() for p in model.parameters())


def reference_count(config, conv, heads, ffn):
    """Plain evaluation of the count formula (section 1.3) at given unit counts."""
    embed, total, prev = config["encoder_embed_dim"], 0, 1
    for i, (channels, (_, kernel, _)) in enumerate(zip(conv, config["extractor_conv_layer_config"])):
        total += prev * channels * kernel + (2 * channels if i == 0 else 0)
        prev = channels
    total += prev + 2 * prev + (prev + 1) * embed
    k, g = config["encoder_pos_conv_kernel"], config["encoder_pos_conv_groups"]
    total += k + embed * (embed // g) * k + embed + 2 * embed
    d = embed // config["encoder_total_num_heads"][0]
    for h, f in zip(heads, ffn):
        total += 4 * embed + 3 * (embed + 1) * h * d + (h * d + 1) * embed + (embed + 1) * f + (f + 1) * embed
    return total


def set_gates(model, seed=0, scale=3.0):
    """Random log_alpha everywhere (a 'trained' state with many kept and many pruned units)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in model.gate_modules().values():
            gate.log_alpha.copy_(torch.randn(gate.n_in, generator=generator) * scale + 1.0)


def force(gate, value):
    with torch.no_grad():
        gate.log_alpha.fill_(value)


def gated_model(num_layers=12, seed=0, last_conv_on=True):
    """Tiny gated model with a 0-head layer (3) and a 0-unit FFN (5), gates in eval mode."""
    torch.manual_seed(seed)
    model = DPWavLM(tiny_config(num_layers=num_layers, **GATES))
    set_gates(model, seed)
    layers = model.encoder.transformer.layers
    force(layers[3].attention.hard_concrete_for_heads, -50.0)
    force(layers[5].feed_forward.hard_concrete_for_intermediate, -50.0)
    force(layers[0].attention.hard_concrete_for_heads, 50.0)
    if last_conv_on:
        force(model.feature_extractor.conv_layers[-1].hard_concrete, 50.0)
    return model.eval()


@pytest.fixture(scope="module")
def wav():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 4000, generator=generator), torch.tensor([4000, 3100])


# ---------------------------------------------------------------- 1. HardConcrete


def test_hard_concrete_l0_closed_form_and_init():
    assert HardConcrete(3).bias == pytest.approx((2 / 3) * math.log(11), abs=1e-12)
    torch.manual_seed(0)
    assert float(HardConcrete(20000, init_mean=0.01).log_alpha.detach().mean()) == pytest.approx(4.595, abs=2e-3)
    assert float(HardConcrete(20000, init_mean=0.5).log_alpha.detach().mean()) == pytest.approx(0.0, abs=2e-3)
    gate = HardConcrete(50)
    with torch.no_grad():
        gate.log_alpha.normal_(0.0, 3.0)
    expected = sum(1 / (1 + math.exp(-(a + (2 / 3) * math.log(11)))) for a in gate.log_alpha.tolist())
    assert float(gate.l0_norm().detach()) == pytest.approx(expected, rel=1e-6)
    gate.l0_norm().backward()  # differentiable
    assert gate.log_alpha.grad is not None


def test_hard_concrete_training_samples_have_exact_zeros_and_ones():
    torch.manual_seed(0)
    gate = HardConcrete(4000, init_mean=0.5).train()
    z = gate()
    assert z.min() >= 0 and z.max() <= 1
    assert (z == 0).any() and (z == 1).any() and ((z > 0) & (z < 1)).any()
    assert not torch.equal(z, gate())  # a fresh sample per call
    # P(z > 0) = sigmoid(log_alpha + bias) = 0.832 at log_alpha = 0
    assert float((z > 0).float().mean()) == pytest.approx(1 / (1 + math.exp(-(2 / 3) * math.log(11))), abs=0.03)


def test_hard_concrete_eval_mask_and_cache():
    torch.manual_seed(0)
    gate = HardConcrete(40)
    with torch.no_grad():
        gate.log_alpha.normal_(0.0, 2.0)
    gate.eval()
    mask = gate()
    num_zeros = round(40 - float(gate.l0_norm().detach()))
    assert int((mask == 0).sum()) == num_zeros and gate.kept_count() == 40 - num_zeros
    soft = torch.sigmoid(0.8 * gate.log_alpha.detach() / (2 / 3))
    kept = mask != 0
    assert torch.allclose(mask[kept], soft[kept])
    assert soft[~kept].max() <= soft[kept].min()  # the smallest ones are zeroed
    assert gate() is mask  # cached
    with torch.no_grad():
        gate.log_alpha.add_(5.0)
    assert gate() is mask  # still cached in eval
    gate.train()
    gate.eval()
    assert int((gate() == 0).sum()) == round(40 - float(gate.l0_norm().detach())) < num_zeros


# ---------------------------------------------------------------- 2-3. parameter counts


def test_expected_count_with_full_gates_equals_ungated_numel():
    torch.manual_seed(0)
    ungated = DPWavLM(tiny_config(num_layers=3))
    gated = DPWavLM(tiny_config(num_layers=3, **GATES))
    for gate in gated.gate_modules().values():
        force(gate, 50.0)
    extras = BUCKETS * HEADS + 3 * (8 * HEAD_DIM + 8 + HEADS)
    assert gated.num_params_extras() == ungated.num_params_extras() == extras
    assert gated.expected_num_params().item() == numel(ungated) - extras
    assert ungated.expected_num_params().item() == numel(ungated) - extras
    assert numel(gated) - numel(ungated) == 4 * 16 + 3 * HEADS + 3 * 48  # the log_alphas
    expected = gated.expected_num_params()
    expected.backward()
    assert all(g.log_alpha.grad is not None for g in gated.gate_modules().values())


def test_counts_at_wavlm_base_plus_shapes():
    with torch.device("meta"):
        ungated = DPWavLM(wavlm_base_plus_config())
        gated = DPWavLM(wavlm_base_plus_config(**GATES))
    assert numel(ungated) == 94_381_680
    assert numel(gated) - numel(ungated) == 40_592 == 7 * 512 + 12 * 12 + 12 * 3072
    assert ungated.num_params_extras() == 10_224
    assert ungated.expected_num_params().item() == 94_371_456
    for gate in gated.gate_modules().values():  # real log_alphas on the meta-shaped gated model
        gate.log_alpha = torch.nn.Parameter(torch.full((gate.n_in,), 50.0))
    assert gated.expected_num_params().item() == 94_371_456 == numel(ungated) - 10_224
    config = wavlm_base_plus_config()
    full = reference_count(config, [512] * 7, [12] * 12, [3072] * 12)
    assert full == 94_371_456
    assert full - reference_count(config, [512] * 7, [11] + [12] * 11, [3072] * 12) == 196_800  # one head
    assert full - reference_count(config, [512] * 7, [12] * 12, [3071] + [3072] * 11) == 1_537  # one FFN unit


def test_numel_after_prune_equals_formula_at_kept_counts():
    model = gated_model(last_conv_on=False)
    counts = model.gated_unit_counts()
    assert counts["heads"][3] == 0 and counts["ffn"][5] == 0 and counts["heads"][0] == HEADS
    assert counts["conv"][-1] < 16 and any(0 < h < HEADS for h in counts["heads"])
    config = model.prune()
    assert config["encoder_use_attention"][3] is False and config["encoder_remaining_heads"][3] == []
    assert config["encoder_use_feed_forward"][5] is False and config["encoder_ff_interm_features"][5] == 0
    assert [c[0] for c in config["extractor_conv_layer_config"]] == counts["conv"]
    assert [len(h) for h in config["encoder_remaining_heads"]] == counts["heads"]
    kept_att = sum(config["encoder_use_attention"])
    extras = BUCKETS * HEADS + kept_att * (8 * HEAD_DIM + 8 + HEADS)
    removed = (12 - kept_att) + (12 - sum(config["encoder_use_feed_forward"]))
    formula = reference_count(config, counts["conv"], counts["heads"], counts["ffn"])
    assert numel(model) == formula + extras - E * removed
    assert not model.gate_modules()


# ---------------------------------------------------------------- 4. gated eval == materialised


def test_gated_eval_equals_materialised(wav):
    model = gated_model()
    with torch.no_grad():
        before, lengths = model.extract_features(*wav)
    model.prune(keep_bias_branches=True)
    with torch.no_grad():
        after, lengths_after = model.extract_features(*wav)
    assert len(before) == len(after) == 13 and torch.equal(lengths, lengths_after)
    for layer, (a, b) in enumerate(zip(before, after)):
        assert torch.allclose(a, b, atol=1e-5), f"hidden state {layer}: {float((a - b).abs().max())}"


def test_removed_branch_loses_its_bias_as_documented(wav):
    model = gated_model()
    with torch.no_grad():
        before, _ = model.extract_features(*wav)
    model.prune()  # DPHuBERT semantics: modules removed, their output bias lost
    with torch.no_grad():
        after, _ = model.extract_features(*wav)
    diffs = [float((a - b).abs().max()) for a, b in zip(before, after)]
    assert max(diffs[:4]) < 1e-5  # up to layer 3 (hidden state index 3)
    assert min(diffs[4:]) > 1e-3  # from the first 0-head layer on


def test_pruning_last_conv_channels_is_inexact_only_from_the_projection(wav):
    model = gated_model(last_conv_on=False)
    with torch.no_grad():
        before, _, features = model.extract_features(*wav, return_cnn_features=True)
    kept = model.last_conv_kept_index()
    assert torch.equal(kept, model.feature_extractor.conv_layers[-1].hard_concrete().nonzero().squeeze(-1))
    assert 0 < len(kept) < 16
    model.prune(keep_bias_branches=True)
    with torch.no_grad():
        features_after, _ = model.feature_extractor(*wav)
        after, _ = model.extract_features(*wav)
    assert torch.allclose(features[..., kept], features_after, atol=1e-6)  # extractor exact on kept channels
    assert float((before[0] - after[0]).abs().max()) > 1e-2  # LayerNorm statistics over fewer channels


def test_whole_layer_gates(wav):
    flags = dict(GATES, encoder_prune_attention_layer=True, encoder_prune_feed_forward_layer=True)
    torch.manual_seed(0)
    model = DPWavLM(tiny_config(num_layers=6, **flags))
    assert numel(model) - numel(DPWavLM(tiny_config(num_layers=6, **GATES))) == 2 * 6
    for gate in model.gate_modules().values():
        force(gate, 50.0)
    assert model.expected_num_params().item() == numel(DPWavLM(tiny_config(num_layers=6))) - model.num_params_extras()
    set_gates(model, seed=2)
    layers = model.encoder.transformer.layers
    force(model.feature_extractor.conv_layers[-1].hard_concrete, 50.0)
    force(layers[0].attention.hard_concrete_for_heads, 50.0)
    force(layers[0].attention.hard_concrete_for_layer, 50.0)
    force(layers[4].attention.hard_concrete_for_layer, -50.0)  # whole attention block off
    force(layers[2].feed_forward.hard_concrete_for_layer, -50.0)  # whole FFN block off
    force(layers[1].feed_forward.hard_concrete_for_layer, 1.0)  # kept with soft value sigmoid(1.2)
    model.eval()
    assert float(layers[1].feed_forward.hard_concrete_for_layer()) == pytest.approx(1 / (1 + math.exp(-1.2)))
    with torch.no_grad():
        before, _ = model.extract_features(*wav)
    config = model.prune()
    assert config["encoder_use_attention"][4] is False and config["encoder_remaining_heads"][4] == []
    assert config["encoder_use_feed_forward"][2] is False
    with torch.no_grad():
        after, _ = model.extract_features(*wav)
    for a, b in zip(before, after):
        assert torch.allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------- 5. .pth format


def diarizen_like_config():
    """Scaled-down DiariZen WAVLM_BASE_S80_MD shape (section 6): uneven everything, removed attention."""
    return tiny_config(
        num_layers=5,
        extractor_conv_layer_config=[(9, 10, 5), (16, 3, 2), (13, 3, 2), (11, 2, 2)],
        encoder_use_attention=[True, True, False, True, True],
        encoder_remaining_heads=[[1, 2], [0, 3], [], [2], [0, 1, 3]],
        encoder_use_feed_forward=[True, True, True, False, True],
        encoder_ff_interm_features=[40, 7, 23, 0, 12],
    )


@pytest.mark.parametrize("kind", ["gated", "pruned", "diarizen"])
def test_pth_round_trip(tmp_path, wav, kind):
    if kind == "diarizen":
        torch.manual_seed(3)
        model = DPWavLM(diarizen_like_config()).eval()
    else:
        model = gated_model()
        if kind == "pruned":
            model.prune()
    projs = torch.nn.ModuleList(torch.nn.Linear(E, E) for _ in range(2))
    path = save_dphubert_checkpoint(tmp_path / "model.pth", model, projs)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict", "config", "distill_linear_projs"}
    assert set(raw["config"]) == EXPECTED_CONFIG_KEYS
    assert list(raw["distill_linear_projs"]) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    loaded, _ = load_dphubert_checkpoint(path)  # strict=True inside
    loaded.eval()
    with torch.no_grad():
        ours, _ = model.extract_features(*wav)
        theirs, _ = loaded.extract_features(*wav)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    if kind == "diarizen":
        assert loaded.encoder.transformer.layers[2].attention is None
        assert loaded.encoder.transformer.layers[3].feed_forward is None
        assert loaded.encoder.transformer.layers[4].attention.q_proj.weight.shape == (3 * HEAD_DIM, E)


def test_key_names_are_dphubert_torchaudio_names():
    names = set(DPWavLM(tiny_config(num_layers=2, **GATES)).state_dict())
    for key in (
        "feature_extractor.conv_layers.0.conv.weight",
        "feature_extractor.conv_layers.0.layer_norm.weight",
        "feature_extractor.conv_layers.3.hard_concrete.log_alpha",
        "feature_extractor.dummy_weight",
        "encoder.feature_projection.layer_norm.bias",
        "encoder.feature_projection.projection.weight",
        "encoder.transformer.pos_conv_embed.conv.weight_g",
        "encoder.transformer.pos_conv_embed.conv.weight_v",
        "encoder.transformer.pos_conv_embed.conv.bias",
        "encoder.transformer.layer_norm.weight",
        "encoder.transformer.layers.0.attention.rel_attn_embed.weight",
        "encoder.transformer.layers.1.attention.gru_rel_pos_linear.weight",
        "encoder.transformer.layers.1.attention.gru_rel_pos_const",
        "encoder.transformer.layers.1.attention.hard_concrete_for_heads.log_alpha",
        "encoder.transformer.layers.1.attention.out_proj.bias",
        "encoder.transformer.layers.1.feed_forward.hard_concrete_for_intermediate.log_alpha",
        "encoder.transformer.layers.1.feed_forward.output_dense.weight",
        "encoder.transformer.layers.1.final_layer_norm.weight",
    ):
        assert key in names, key
    assert "encoder.transformer.layers.1.attention.rel_attn_embed.weight" not in names
    assert DPWavLM(tiny_config()).feature_extractor.dummy_weight.requires_grad is False


# ---------------------------------------------------------------- 8. HF parity and export


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    config = transformers.WavLMConfig(
        hidden_size=E, num_hidden_layers=12, num_attention_heads=HEADS, intermediate_size=48,
        conv_dim=(16, 16, 16, 16), conv_kernel=(10, 3, 3, 2), conv_stride=(5, 2, 2, 2),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, num_buckets=BUCKETS,
        max_bucket_distance=64, mask_time_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.WavLMModel(config).eval()
    with torch.no_grad():  # make the position bias and its gates matter
        for name, param in model.named_parameters():
            if "rel_attn_embed" in name or "gru_rel_pos" in name:
                param.normal_(0.0, 0.5)
    folder = tmp_path_factory.mktemp("hf_wavlm")
    model.save_pretrained(str(folder))
    return folder, model


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
def test_from_hf_model_matches_transformers(hf_folder, wav):
    folder, hf_model = hf_folder
    model = from_hf_model(folder).eval()
    waves, lengths = wav
    captured = {}
    hook = hf_model.feature_projection.register_forward_hook(lambda m, i, o: captured.update(x=o[0]))
    mask = (torch.arange(waves.shape[1])[None, :] < lengths[:, None]).long()
    with torch.no_grad():
        theirs = hf_model(waves, attention_mask=mask, output_hidden_states=True).hidden_states
        ours, frames = model.extract_features(waves, lengths)
    hook.remove()
    assert len(ours) == len(theirs) == 13
    valid = torch.arange(ours[0].shape[1])[None, :] < frames[:, None]
    assert torch.allclose(ours[0][valid], captured["x"][valid], atol=1e-6)
    assert (ours[0][~valid] == 0).all()  # padded frames zeroed
    for a, b in zip(ours[1:], theirs[1:]):
        assert torch.allclose(a[valid], b[valid], atol=1e-5)
    gated = from_hf_model(folder, **GATES)
    assert len(gated.gate_modules()) == 4 + 12 + 12


def test_padded_hf_export_equals_module(hf_folder, tmp_path, wav):
    folder, _ = hf_folder
    model = from_hf_model(folder, **GATES).eval()
    set_gates(model, seed=4)
    layers = model.encoder.transformer.layers
    force(layers[0].attention.hard_concrete_for_heads, 50.0)
    force(layers[6].attention.hard_concrete_for_heads, -50.0)
    force(layers[2].feed_forward.hard_concrete_for_intermediate, -50.0)
    force(model.feature_extractor.conv_layers[-1].hard_concrete, 50.0)
    config = model.prune()
    assert config["encoder_remaining_heads"][6] == [] and min(map(len, config["encoder_remaining_heads"])) == 0
    error = export_hf_wavlm_padded(model, tmp_path / "hf")
    assert error < 1e-5
    hf_model = transformers.WavLMModel.from_pretrained(str(tmp_path / "hf")).eval()
    assert list(hf_model.config.conv_dim) == [c[0] for c in config["extractor_conv_layer_config"]]
    with torch.no_grad():
        theirs = hf_model(wav[0], output_hidden_states=True).hidden_states
        ours, _ = model.extract_features(wav[0])
    for a, b in zip(ours[1:], theirs[1:]):
        assert torch.allclose(a, b, atol=1e-5)

    with torch.no_grad():
        model.feature_extractor.dummy_weight.mul_(0.5)
    with pytest.raises(ValueError, match="measured max abs error"):
        export_hf_wavlm_padded(model, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        error = export_hf_wavlm_padded(model, tmp_path / "warned", on_inexact="warn")
    assert error > 1e-3 and any("dummy_weight" in str(w.message) for w in caught)


def test_layer0_without_heads_drops_the_position_bias(hf_folder, tmp_path, wav, caplog):
    """Section 2 'layer-0 trap': DPHuBERT semantics, no crash with lengths; HF export stays exact."""
    folder, _ = hf_folder
    model = from_hf_model(folder, encoder_prune_attention_heads=True).eval()
    for gate in model.gate_modules().values():
        force(gate, 50.0)
    force(model.encoder.transformer.layers[0].attention.hard_concrete_for_heads, -50.0)
    with caplog.at_level("WARNING"):
        config = model.prune()
    assert config["encoder_use_attention"][0] is False and "position bias" in caplog.text
    with torch.no_grad():
        hidden, _ = model.extract_features(*wav)  # lengths given: no crash
    assert all(torch.isfinite(h).all() for h in hidden)
    assert export_hf_wavlm_padded(model, tmp_path / "hf") < 1e-5  # zero rel_attn_embed == no bias


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"config": tiny_config()}, bad)
    with pytest.raises(ValueError, match="bad.pth.*state_dict"):
        load_dphubert_checkpoint(bad)
    model = DPWavLM(tiny_config(num_layers=2))
    path = save_dphubert_checkpoint(tmp_path / "extra.pth", model)
    raw = torch.load(path, weights_only=True)
    raw["config"]["some_future_key"] = 1
    torch.save(raw, path)
    assert load_dphubert_checkpoint(path)[0].num_layers == 2
    with pytest.raises(ValueError, match="missing keys.*encoder_num_layers"):
        DPWavLM({k: v for k, v in tiny_config().items() if k != "encoder_num_layers"})


def test_from_hf_model_reads_old_weight_norm_names(hf_folder, tmp_path, wav):
    """Released HF WavLM files (e.g. microsoft/wavlm-base-plus) store pos-conv weight_g / weight_v."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder, hf_model = hf_folder
    old = tmp_path / "old_names"
    shutil.copytree(folder, old)
    state = load_file(str(old / "model.safetensors"))
    old_names = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}
    renamed = {}
    for key, value in state.items():
        for new_name, old_name in old_names.items():
            key = key.replace(new_name, old_name)
        renamed[key] = value
    assert "encoder.pos_conv_embed.conv.weight_g" in renamed
    save_file(renamed, str(old / "model.safetensors"), metadata={"format": "pt"})
    with torch.no_grad():
        ours, _ = from_hf_model(old).eval().extract_features(wav[0])
        reference, _ = from_hf_model(folder).eval().extract_features(wav[0])
    assert all(torch.equal(a, b) for a, b in zip(ours, reference))
    del state["encoder.layer_norm.weight"]
    save_file(state, str(old / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="encoder.layer_norm.weight"):
        from_hf_model(old)
