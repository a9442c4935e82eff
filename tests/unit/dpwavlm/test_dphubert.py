"""DPHuBERT: the prunable model with a HuBERT teacher (DPHuBERT's HuBERT config, plain attention).

Counts at HuBERT Base shapes, parity with ``transformers.HubertModel``, gated-eval = materialised, the
``.pth`` round trip with DPHuBERT's HuBERT config keys, the padded ``HubertModel`` copy, and one tiny run of
``train.py hparams/dpwavlm.yaml`` (the plain, non-robust recipe) with a HuBERT teacher.
"""

from pathlib import Path
import json
import os
import subprocess
import sys

import pytest
import torch
import transformers

from tests.conftest import REPOSITORY_ROOT, as_command_line, tiny_overrides
from robustdistiller.downstream.upstream import FrozenUpstream
from robustdistiller.dpwavlm import (
    DPHUBERT_HUBERT_CONFIG_KEYS,
    DPWavLM,
    export_hf_wavlm_padded,
    from_hf_model,
    hubert_base_config,
    load_dphubert_checkpoint,
    save_dphubert_checkpoint,
    tiny_hubert_config,
)
from robustdistiller.dpwavlm.encoder import DPWavLMEncoder
from robustdistiller.export.student_folder import export_student
from robustdistiller.models.student import num_parameters
from robustdistiller.models.teacher import save_random_teacher

GATES = dict(
    extractor_prune_conv_channels=True,
    encoder_prune_attention_heads=True,
    encoder_prune_feed_forward_intermediate=True,
)
HUBERT_BASE_NUM_PARAMS = 94_371_456  # docs/reference/dphubert.md "Parameter counts" (no relative-position parameters)


@pytest.fixture(scope="module")
def hubert_folder(tmp_path_factory):
    return save_random_teacher(str(tmp_path_factory.mktemp("hubert")), model_type="hubert", tiny=True, seed=0)


@pytest.fixture(scope="module")
def wav():
    return torch.randn(1, 4000, generator=torch.Generator().manual_seed(2))


def gated_hubert(seed=0, num_layers=4):
    """Tiny gated HuBERT with random gates, the last conv layer's forced on (exact materialisation)."""
    torch.manual_seed(seed)
    model = DPWavLM(tiny_hubert_config(num_layers=num_layers, **GATES))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in model.gate_modules().values():
            gate.log_alpha.copy_(torch.randn(gate.n_in, generator=generator) * 3.0 + 1.0)
        model.feature_extractor.conv_layers[-1].hard_concrete.log_alpha.fill_(50.0)
        model.encoder.transformer.layers[0].attention.hard_concrete_for_heads.log_alpha.fill_(50.0)
    return model.eval()


def test_counts_at_hubert_base_shapes():
    """Integer equality of the expected count with the real count; HuBERT has no uncounted extras."""
    model = DPWavLM(hubert_base_config())
    assert num_parameters(model) == HUBERT_BASE_NUM_PARAMS == int(model.expected_num_params())
    assert model.num_params_extras() == 0
    gated = DPWavLM(hubert_base_config(**GATES))
    with torch.no_grad():
        for gate in gated.gate_modules().values():
            gate.log_alpha.fill_(50.0)
    assert int(round(float(gated.expected_num_params().detach()))) == HUBERT_BASE_NUM_PARAMS
    assert not any("gru_rel_pos" in name or "rel_attn_embed" in name for name in gated.state_dict())


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
def test_from_hf_hubert_matches_transformers(hubert_folder, wav):
    model = from_hf_model(hubert_folder).eval()
    assert model.is_hubert and set(model.config) == set(DPHUBERT_HUBERT_CONFIG_KEYS)
    hf_model = transformers.HubertModel.from_pretrained(hubert_folder).eval()
    with torch.no_grad():
        ours = DPWavLMEncoder(model)(wav)
        theirs = hf_model(wav, output_hidden_states=True).hidden_states
    assert len(ours.hidden_states) == len(theirs) == 13
    for a, b in zip(ours.hidden_states, theirs):  # index 0: HF's encoder input
        assert torch.allclose(a, b, atol=1e-5)


def test_gated_eval_equals_materialised_and_counts(wav):
    model = gated_hubert()
    with torch.no_grad():
        before, _ = model.extract_features(wav)
        kept = model.gated_unit_counts()
        config = model.prune()
        after, _ = model.extract_features(wav)
    for a, b in zip(before, after):
        assert torch.allclose(a, b, atol=1e-5)
    assert config["encoder_num_heads"] == kept["heads"]
    assert config["encoder_ff_interm_features"] == kept["ffn"]
    assert 0 < sum(kept["heads"]) < 16 and 0 < sum(kept["ffn"]) < 4 * 48
    # no WavLM extras: after prune() the real count is the formula, exactly
    assert num_parameters(model) == int(model.expected_num_params())


def test_pth_round_trip_with_hubert_keys(tmp_path, wav):
    model = gated_hubert(seed=1)
    model.prune()
    path = save_dphubert_checkpoint(tmp_path / "dphubert.pth", model)
    raw = torch.load(path, weights_only=True)
    assert set(raw["config"]) == set(DPHUBERT_HUBERT_CONFIG_KEYS)
    assert "encoder_remaining_heads" not in raw["config"]  # DPHuBERT's own dispatch reads this as HuBERT
    loaded, _ = load_dphubert_checkpoint(path)  # strict
    with torch.no_grad():
        ours, _ = model.extract_features(wav)
        theirs, _ = loaded.eval().extract_features(wav)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    # an uneven file with an attention-free layer and an FFN-free one
    uneven = DPWavLM(
        tiny_hubert_config(
            num_layers=3,
            encoder_use_attention=[True, False, True],
            encoder_num_heads=[2, 0, 3],
            encoder_use_feed_forward=[True, True, False],
            encoder_ff_interm_features=[9, 30, 0],
        )
    ).eval()
    path = save_dphubert_checkpoint(tmp_path / "uneven.pth", uneven)
    upstream = FrozenUpstream(str(path))
    features, _ = upstream(wav)
    assert upstream.num_layers == 4 and torch.isfinite(features).all()


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
def test_padded_hubert_model_copy_is_exact(tmp_path, wav):
    model = gated_hubert(seed=2)
    model.prune()
    error = export_hf_wavlm_padded(model, tmp_path / "hf")
    hf_model = transformers.HubertModel.from_pretrained(str(tmp_path / "hf")).eval()
    assert hf_model.config.num_attention_heads == 4 and error < 1e-5
    with torch.no_grad():
        ours, _ = model.extract_features(wav)
        theirs = hf_model(wav, output_hidden_states=True).hidden_states
    for a, b in zip(ours[1:], theirs[1:]):
        assert torch.allclose(a, b, atol=1e-5)


def test_plain_recipe_with_a_hubert_teacher(mini_corpus, hubert_folder, tmp_path):
    """``train.py hparams/dpwavlm.yaml`` (no corruption, no head) with a HuBERT teacher: both stages, export."""
    output = str(tmp_path / "run")
    overrides = tiny_overrides(
        mini_corpus,
        hubert_folder,
        output,
        min_samples=400,
        batching="fixed",
        grad_accumulation_factor=1,
        stage1_steps=4,
        stage1_warmup_steps=1,
        stage2_steps=2,
        stage2_warmup_steps=1,
        target_sparsity=0.3,
        sparsity_warmup_steps=0,
        log_alpha_lr=0.5,
        lambda_lr=100.0,
        stage1_lr=0.001,
        stage2_lr=0.001,
    )
    for key in ("musan_folder", "urbansound_folder", "rir_folder", "rirs_noises_subsets", "enhancement_input_size"):
        overrides.pop(key)  # the plain recipe has no corruption and no enhancement head
    command = [
        sys.executable,
        os.path.join(REPOSITORY_ROOT, "train.py"),
        os.path.join(REPOSITORY_ROOT, "hparams", "dpwavlm.yaml"),
        "--precision=fp32",
    ]
    environment = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    completed = subprocess.run(
        command + as_command_line(overrides),
        cwd=REPOSITORY_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-6000:]
    summary = json.loads(Path(os.path.join(output, "dpwavlm_summary.json")).read_text())
    assert summary["recipe"] == "DPHuBERT" and summary["stage2"]["steps"] == 2
    assert summary["stage1"]["expected_sparsity"] > summary["stage1"]["initial_expected_sparsity"]
    assert not os.path.exists(os.path.join(output, "final_enhancement_head.pt"))
    model, checkpoint = load_dphubert_checkpoint(os.path.join(output, "final.pth"))
    assert model.is_hubert and "encoder_num_heads" in checkpoint["config"]
    upstream = FrozenUpstream(output)
    assert upstream.num_layers == 13
    result = export_student(output, str(tmp_path / "export"))
    card = Path(os.path.join(tmp_path / "export", "README.md")).read_text()
    assert "# DPHuBERT: a structured-pruned HuBERT" in card
    assert result["hf_copy"]["written"] == result["hf_copy"]["exact"]
