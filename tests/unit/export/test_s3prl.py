"""Tests of the s3prl ``distiller`` checkpoint import / export (robustdistiller.export.s3prl).

The s3prl checkpoints here are built from the documented key names and shapes (``docs/reference/robustdistiller.md``
"Authors' checkpoint format") with random tensors, saved the way the authors' files are (an optimizer
object whose class lives in a module ``optimizers``, an ``argparse.Namespace`` under ``"Args"``), and read
back without that module. s3prl's computation is re-implemented functionally in this file (from its
``DistillerModel`` description), independently of the module under test.
"""

import argparse
import math
import os
import pickle
import re
import sys
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

from robustdistiller.export.s3prl import (
    InertStub,
    S3prlFormatError,
    format_conv_layers,
    load_s3prl_checkpoint,
    parse_conv_layers,
    restricted_pickle_module,
    student_from_s3prl,
    student_to_s3prl,
)
from robustdistiller.models.student import DistillerStudent, build_student_config, num_parameters

TINY_CONV = "[(24,10,5)] + [(24,3,2)] * 4 + [(24,2,2)] * 2"
TINY = {
    "extractor_mode": "default",
    "extractor_conv_feature_layers": TINY_CONV,
    "feature_grad_mult": 0.1,
    "conv_pos": 16,
    "conv_pos_groups": 4,
    "encoder_layers": 2,
    "encoder_embed_dim": 32,
    "encoder_ffn_embed_dim": 64,
    "encoder_attention_heads": 2,
    "activation_fn": "gelu",
    "layer_norm_first": False,
    "final_dim": 40,
    "out_layer_type": "expand-last",
    "n_tasks": 3,
    "task_emb_type": "expand-last",
    "pred_layer_id": [4, 8, 12],
    "cosine_loss": 1.0,
    "init_teacher_conv_layers": True,
    "init_teacher_encoder_layers": True,
}
DISTILHUBERT = {
    "extractor_mode": "default",
    "extractor_conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    "feature_grad_mult": 0.1,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "encoder_layers": 2,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_norm_first": False,
    "final_dim": 768,
    "out_layer_type": "expand-last",
    "out_layer_inter_dim": -1,
    "n_tasks": 3,
    "task_emb_type": "expand-last",
    "pred_layer_id": [4, 8, 12],
    "cosine_loss": 1.0,
    "init_teacher_conv_layers": True,
    "init_teacher_encoder_layers": True,
}
ARCHITECTURE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "conv_dim",
    "conv_kernel",
    "conv_stride",
    "conv_bias",
    "feat_extract_norm",
    "feat_proj_layer_norm",
    "do_stable_layer_norm",
    "num_conv_pos_embeddings",
    "num_conv_pos_embedding_groups",
    "layer_norm_eps",
)


# ------------------------------------------------------------------------------------------------
# Documented s3prl layout (written from docs/reference/robustdistiller.md, independently of the module under test)
# ------------------------------------------------------------------------------------------------


def conv_spec(cfg):
    """(dim, kernel, stride) list of a test config: always the DistilHuBERT CNN, only the width varies."""
    dim = int(re.match(r"\[\((\d+),10,5\)\]", cfg["extractor_conv_feature_layers"]).group(1))
    return [(dim, 10, 5)] + [(dim, 3, 2)] * 4 + [(dim, 2, 2)] * 2


def documented_keys(cfg):
    """``{s3prl key: shape}`` of DistillerModel for ``cfg``.

    As listed in docs/reference/robustdistiller.md "Authors' checkpoint format".
    """
    layers = conv_spec(cfg)
    D, FF, K = cfg["encoder_embed_dim"], cfg["encoder_ffn_embed_dim"], cfg["n_tasks"]
    T = cfg["final_dim"]
    inter = cfg.get("out_layer_inter_dim", -1)
    inner = inter if inter > 0 else D
    keys = {}
    in_dim = 1
    for i, (dim, kernel, _) in enumerate(layers):
        keys[f"feature_extractor.conv_layers.{i}.0.weight"] = (dim, in_dim, kernel)
        in_dim = dim
    keys["feature_extractor.conv_layers.0.2.weight"] = (layers[0][0],)
    keys["feature_extractor.conv_layers.0.2.bias"] = (layers[0][0],)
    if layers[-1][0] != D:
        keys["post_extract_proj.weight"] = (D, layers[-1][0])
        keys["post_extract_proj.bias"] = (D,)
    keys["encoder.pos_conv.0.weight_g"] = (1, 1, cfg["conv_pos"])
    keys["encoder.pos_conv.0.weight_v"] = (D, D // cfg["conv_pos_groups"], cfg["conv_pos"])
    keys["encoder.pos_conv.0.bias"] = (D,)
    for i in range(cfg["encoder_layers"]):
        prefix = f"encoder.layers.{i}."
        for proj in ("q", "k", "v", "out"):
            keys[prefix + f"self_attn.{proj}_proj.weight"] = (D, D)
            keys[prefix + f"self_attn.{proj}_proj.bias"] = (D,)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            keys[prefix + norm + ".weight"] = (D,)
            keys[prefix + norm + ".bias"] = (D,)
        keys[prefix + "fc1.weight"] = (FF, D)
        keys[prefix + "fc1.bias"] = (FF,)
        keys[prefix + "fc2.weight"] = (D, FF)
        keys[prefix + "fc2.bias"] = (D,)
    keys["encoder.layer_norm.weight"] = (D,)
    keys["encoder.layer_norm.bias"] = (D,)
    keys["output_layer.0.weight"] = (inner * K, D)
    keys["output_layer.0.bias"] = (inner * K,)
    if K > 1:
        keys["output_layer.2.weight"] = (K, inner, T)
        keys["output_layer.2.bias"] = (1, 1, K, T)
    else:
        keys["output_layer.2.layer.weight"] = (T, inner)
        keys["output_layer.2.layer.bias"] = (T,)
    return keys


def random_s3prl_state(cfg, seed=0):
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in documented_keys(cfg).items():
        value = torch.randn(shape, generator=generator) * 0.2
        if key.endswith("weight_g") or (key.endswith(".weight") and ("norm" in key or ".0.2." in key)):
            value = value.abs() + 0.5  # norm gains and weight-norm magnitudes
        state[key] = value
    return state


class _ImportRecorder:
    """A meta-path finder that records (and never satisfies) imports of the given module names."""

    def __init__(self, names):
        self.names = set(names)
        self.attempts = []

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            self.attempts.append(name)
        return None


def save_authors_style(path, state, distiller_cfg, legacy=False, extra=None, step=12345):
    """torch.save like s3prl's pre-training runner: Optimizer from a module 'optimizers', Namespace Args."""
    fake = types.ModuleType("optimizers")

    class Optimizer:
        def __init__(self, lr):
            self.lr = lr
            self.state = {"step": torch.tensor(3.0)}

    Optimizer.__module__ = "optimizers"
    Optimizer.__qualname__ = "Optimizer"
    fake.Optimizer = Optimizer
    sys.modules["optimizers"] = fake
    try:
        checkpoint = {
            "Distiller": dict(state),
            "Config": {"distiller": dict(distiller_cfg), "runner": {"total_steps": 200000}},
            "Optimizer": Optimizer(2e-4),
            "Step": step,
            "Args": argparse.Namespace(seed=1337, config="pretrain/distiller/config.yaml"),
        }
        checkpoint.update(extra or {})
        torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy)
    finally:
        del sys.modules["optimizers"]


# ------------------------------------------------------------------------------------------------
# Independent functional re-implementation of s3prl's DistillerModel forward
# ------------------------------------------------------------------------------------------------


def reference_output_layer(state, hidden, num_targets, final_dim):
    """s3prl's output layer: Linear, GELU, SplitLinear, then reshape(B, T, K, final).permute(0, 2, 1, 3)."""
    batch, frames, _ = hidden.shape
    x = F.gelu(F.linear(hidden, state["output_layer.0.weight"], state["output_layer.0.bias"]))
    if num_targets == 1:
        out = F.linear(x, state["output_layer.2.layer.weight"], state["output_layer.2.layer.bias"])
    else:
        weight = state["output_layer.2.weight"]
        inter = weight.shape[1]
        x = x.reshape(batch, frames, num_targets, 1, inter)
        out = torch.einsum("...klm,kmn->...kln", x, weight).squeeze(3)
        out = out + state["output_layer.2.bias"]
        out = out.reshape(batch, frames, -1)
    return out.reshape(batch, frames, num_targets, final_dim).permute(0, 2, 1, 3)


def reference_forward(state, cfg, wav):
    """Hidden states after each transformer layer and the predictions, as s3prl computes them (eval)."""
    x = wav[:, None]
    for i, (dim, kernel, stride) in enumerate(conv_spec(cfg)):
        x = F.conv1d(x, state[f"feature_extractor.conv_layers.{i}.0.weight"], stride=stride)
        if i == 0:
            x = F.group_norm(
                x,
                dim,
                state["feature_extractor.conv_layers.0.2.weight"],
                state["feature_extractor.conv_layers.0.2.bias"],
                eps=1e-5,
            )
        x = F.gelu(x)
    x = x.transpose(1, 2)
    if "post_extract_proj.weight" in state:
        x = F.linear(x, state["post_extract_proj.weight"], state["post_extract_proj.bias"])
    g, v = state["encoder.pos_conv.0.weight_g"], state["encoder.pos_conv.0.weight_v"]
    weight = g * v / v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()
    kernel = cfg["conv_pos"]
    conv = F.conv1d(
        x.transpose(1, 2), weight, state["encoder.pos_conv.0.bias"], padding=kernel // 2, groups=cfg["conv_pos_groups"]
    )
    if kernel % 2 == 0:
        conv = conv[:, :, :-1]
    x = x + F.gelu(conv).transpose(1, 2)
    D = cfg["encoder_embed_dim"]
    x = F.layer_norm(x, (D,), state["encoder.layer_norm.weight"], state["encoder.layer_norm.bias"], 1e-5)
    heads = cfg["encoder_attention_heads"]
    head_dim = D // heads
    hiddens = []
    for i in range(cfg["encoder_layers"]):
        p = f"encoder.layers.{i}."
        batch, frames, _ = x.shape

        def split(t):
            return t.reshape(batch, frames, heads, head_dim).transpose(1, 2)

        q = split(F.linear(x, state[p + "self_attn.q_proj.weight"], state[p + "self_attn.q_proj.bias"]))
        k = split(F.linear(x, state[p + "self_attn.k_proj.weight"], state[p + "self_attn.k_proj.bias"]))
        v_ = split(F.linear(x, state[p + "self_attn.v_proj.weight"], state[p + "self_attn.v_proj.bias"]))
        attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1) @ v_
        attention = attention.transpose(1, 2).reshape(batch, frames, D)
        attention = F.linear(attention, state[p + "self_attn.out_proj.weight"], state[p + "self_attn.out_proj.bias"])
        x = F.layer_norm(
            x + attention, (D,), state[p + "self_attn_layer_norm.weight"], state[p + "self_attn_layer_norm.bias"], 1e-5
        )
        ffn = F.linear(
            F.gelu(F.linear(x, state[p + "fc1.weight"], state[p + "fc1.bias"])),
            state[p + "fc2.weight"],
            state[p + "fc2.bias"],
        )
        x = F.layer_norm(x + ffn, (D,), state[p + "final_layer_norm.weight"], state[p + "final_layer_norm.bias"], 1e-5)
        hiddens.append(x)
    predictions = reference_output_layer(state, x, cfg["n_tasks"], cfg["final_dim"])
    return hiddens, predictions


# ------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ------------------------------------------------------------------------------------------------


@pytest.fixture()
def recorder():
    finder = _ImportRecorder({"optimizers", "evil_payload_module"})
    sys.meta_path.insert(0, finder)
    yield finder
    sys.meta_path.remove(finder)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("s3prl") / "tiny.ckpt")
    state = random_s3prl_state(TINY, seed=1)
    save_authors_style(path, state, TINY)
    return path, state


def tiny_student(seed=0, num_targets=3, conv_dim=24, **kwargs):
    torch.manual_seed(seed)
    config = build_student_config(
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=[conv_dim] * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    targets = (4, 8, 12)[:num_targets] if num_targets <= 3 else tuple(range(1, num_targets + 1))
    student = DistillerStudent(config, target_layers=targets, **kwargs)
    with torch.no_grad():  # non-trivial norms and biases, so a swapped mapping cannot go unnoticed
        for name, param in student.named_parameters():
            if name.endswith("bias") or "norm" in name or "original0" in name:
                param.add_(torch.rand_like(param))
    return student.eval()


def shapes_of(state):
    return {key: tuple(value.shape) for key, value in state.items()}


# ------------------------------------------------------------------------------------------------
# Loading the authors' format
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True])
def test_loads_authors_checkpoint_without_the_optimizers_module(tmp_path, recorder, caplog, legacy):
    path = str(tmp_path / "authors.ckpt")
    state = random_s3prl_state(TINY, seed=2)
    save_authors_style(path, state, TINY, legacy=legacy)
    assert "optimizers" not in sys.modules
    # the plain safe loader refuses this file (docs/reference/robustdistiller.md "Authors' checkpoint format")
    with pytest.raises(pickle.UnpicklingError, match=r"Unsupported global: GLOBAL optimizers\.Optimizer"):
        torch.load(path, weights_only=True)

    with caplog.at_level("INFO", logger="robustdistiller.export.s3prl"):
        checkpoint = load_s3prl_checkpoint(path)
    assert recorder.attempts == [] and "optimizers" not in sys.modules
    optimizer = checkpoint["Optimizer"]
    assert isinstance(optimizer, InertStub)
    assert (optimizer.stub_module, optimizer.stub_name) == ("optimizers", "Optimizer")
    assert optimizer.stub_state["lr"] == 2e-4
    assert torch.equal(optimizer.stub_state["state"]["step"], torch.tensor(3.0))
    args = checkpoint["Args"]
    assert isinstance(args, InertStub) and args.stub_state == {"seed": 1337, "config": "pretrain/distiller/config.yaml"}
    assert checkpoint["Step"] == 12345 and checkpoint["Config"]["runner"] == {"total_steps": 200000}
    assert set(checkpoint["Distiller"]) == set(state)
    for key, value in state.items():
        assert torch.equal(checkpoint["Distiller"][key], value), key
    assert "optimizers.Optimizer" in caplog.text and "argparse.Namespace" in caplog.text

    student, info = student_from_s3prl(checkpoint)
    assert info["step"] == 12345
    assert info["stubbed"] == ["argparse.Namespace", "optimizers.Optimizer"]
    assert info["args"] == {"seed": 1337, "config": "pretrain/distiller/config.yaml"}
    assert info["config"] == TINY and info["config"] is not TINY
    assert not student.training
    assert student.target_layers == (4, 8, 12)
    assert student.feature_grad_mult == 0.1


def test_every_mapped_tensor_equals_its_source(tiny_checkpoint):
    path, state = tiny_checkpoint
    student, info = student_from_s3prl(path)
    backbone = student.backbone
    layer1 = backbone.encoder.layers[1]
    pos_conv = backbone.encoder.pos_conv_embed.conv.parametrizations.weight
    group_norm = backbone.feature_extractor.conv_layers[0].layer_norm
    pairs = {
        "feature_extractor.conv_layers.0.0.weight": backbone.feature_extractor.conv_layers[0].conv.weight,
        "feature_extractor.conv_layers.6.0.weight": backbone.feature_extractor.conv_layers[6].conv.weight,
        "feature_extractor.conv_layers.0.2.weight": group_norm.weight,
        "feature_extractor.conv_layers.0.2.bias": group_norm.bias,
        "post_extract_proj.weight": backbone.feature_projection.projection.weight,
        "post_extract_proj.bias": backbone.feature_projection.projection.bias,
        "encoder.pos_conv.0.weight_g": pos_conv.original0,
        "encoder.pos_conv.0.weight_v": pos_conv.original1,
        "encoder.pos_conv.0.bias": backbone.encoder.pos_conv_embed.conv.bias,
        "encoder.layer_norm.weight": backbone.encoder.layer_norm.weight,
        "encoder.layers.1.self_attn.q_proj.weight": layer1.attention.q_proj.weight,
        "encoder.layers.1.self_attn.k_proj.bias": layer1.attention.k_proj.bias,
        "encoder.layers.1.self_attn.v_proj.weight": layer1.attention.v_proj.weight,
        "encoder.layers.1.self_attn.out_proj.weight": layer1.attention.out_proj.weight,
        "encoder.layers.1.self_attn_layer_norm.weight": layer1.layer_norm.weight,
        "encoder.layers.1.fc1.weight": layer1.feed_forward.intermediate_dense.weight,
        "encoder.layers.1.fc2.bias": layer1.feed_forward.output_dense.bias,
        "encoder.layers.1.final_layer_norm.bias": layer1.final_layer_norm.bias,
        "output_layer.0.weight": student.prediction_heads.expand.weight,
        "output_layer.2.weight": student.prediction_heads.split_weight,
    }
    for key, param in pairs.items():
        assert torch.equal(param, state[key]), key
    assert torch.equal(student.prediction_heads.split_bias, state["output_layer.2.bias"][0, 0])
    # tensors are copies, not views of the checkpoint
    assert student.prediction_heads.split_weight.data_ptr() != state["output_layer.2.weight"].data_ptr()
    assert info["identity_projection"] is False


def test_hidden_states_and_predictions_match_reference_s3prl_forward(tiny_checkpoint):
    path, state = tiny_checkpoint
    student, _ = student_from_s3prl(path)
    wav = torch.randn(2, 8000, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = student(wav)
        hiddens, predictions = reference_forward(state, TINY, wav)
    assert len(out.hidden_states) == 3
    for ours, reference in zip(out.hidden_states[1:], hiddens):
        torch.testing.assert_close(ours, reference, atol=2e-5, rtol=1e-5)
    assert out.predictions.shape == (2, 3, 24, 40)
    torch.testing.assert_close(out.predictions, predictions, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("num_targets", [3, 1])
def test_prediction_heads_match_s3prl_output_layer(num_targets):
    cfg = dict(TINY, n_tasks=num_targets, pred_layer_id=[4, 8, 12][:num_targets], out_layer_inter_dim=20)
    state = random_s3prl_state(cfg, seed=4)
    student, _ = student_from_s3prl({"Distiller": state, "Config": {"distiller": cfg}, "Step": 1})
    if num_targets == 1:
        assert torch.equal(student.prediction_heads.split_weight[0], state["output_layer.2.layer.weight"].t())
        assert torch.equal(student.prediction_heads.split_bias[0], state["output_layer.2.layer.bias"])
    hidden = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = student.prediction_heads(hidden)
    reference = reference_output_layer(state, hidden, num_targets, 40)
    assert ours.shape == reference.shape == (2, num_targets, 7, 40)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)
    assert reference.abs().mean() > 0.1  # a meaningful comparison, not two near-zero tensors


def test_full_size_distilhubert(tmp_path, recorder):
    path = str(tmp_path / "distilhubert.ckpt")
    state = random_s3prl_state(DISTILHUBERT, seed=6)
    save_authors_style(path, state, DISTILHUBERT)
    student, info = student_from_s3prl(path)
    assert recorder.attempts == []
    assert num_parameters(student) == 27_034_752
    assert num_parameters(student.backbone) == 23_491_200
    assert torch.equal(
        student.backbone.encoder.pos_conv_embed.conv.parametrizations.weight.original1,
        state["encoder.pos_conv.0.weight_v"],
    )
    assert torch.equal(student.prediction_heads.split_weight, state["output_layer.2.weight"])
    exported = student_to_s3prl(student)["Distiller"]
    # shapes exactly as listed in docs/reference/robustdistiller.md "Authors' checkpoint format"
    literal = {
        "feature_extractor.conv_layers.0.0.weight": (512, 1, 10),
        "feature_extractor.conv_layers.4.0.weight": (512, 512, 3),
        "feature_extractor.conv_layers.6.0.weight": (512, 512, 2),
        "feature_extractor.conv_layers.0.2.weight": (512,),
        "post_extract_proj.weight": (768, 512),
        "encoder.pos_conv.0.weight_g": (1, 1, 128),
        "encoder.pos_conv.0.weight_v": (768, 48, 128),
        "encoder.pos_conv.0.bias": (768,),
        "encoder.layers.1.fc1.weight": (3072, 768),
        "encoder.layers.1.fc2.weight": (768, 3072),
        "output_layer.0.weight": (768 * 3, 768),
        "output_layer.2.weight": (3, 768, 768),
        "output_layer.2.bias": (1, 1, 3, 768),
    }
    for key, shape in literal.items():
        assert tuple(exported[key].shape) == shape, key
    assert shapes_of(exported) == documented_keys(DISTILHUBERT)
    for key, value in state.items():
        assert torch.equal(exported[key], value), key


# ------------------------------------------------------------------------------------------------
# Security
# ------------------------------------------------------------------------------------------------


class _ShellPayload:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _EvalPayload:
    def __init__(self, source):
        self.source = source

    def __reduce__(self):
        return eval, (self.source,)


@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_pickles_are_inert(tmp_path, recorder, legacy):
    touched = tmp_path / "touched_by_system"
    evaluated = tmp_path / "created_by_eval"
    path = str(tmp_path / "malicious.ckpt")
    state = random_s3prl_state(TINY, seed=7)
    evil = types.ModuleType("evil_payload_module")

    def run():  # pragma: no cover - must never run
        raise AssertionError("executed")

    run.__module__, run.__qualname__ = "evil_payload_module", "run"
    evil.run = run
    sys.modules["evil_payload_module"] = evil
    try:
        save_authors_style(
            path,
            state,
            TINY,
            legacy=legacy,
            extra={
                "system": _ShellPayload(f"touch {touched}"),
                "eval": _EvalPayload(f"open({str(evaluated)!r}, 'w').close()"),
                "module_function": run,
            },
        )
    finally:
        del sys.modules["evil_payload_module"]

    checkpoint = load_s3prl_checkpoint(path)
    assert not touched.exists() and not evaluated.exists()
    assert recorder.attempts == []
    assert "evil_payload_module" not in sys.modules and "optimizers" not in sys.modules
    system = checkpoint["system"]
    assert isinstance(system, InertStub)
    assert system.stub_name == "system" and system.stub_module in ("posix", "nt")
    assert system.stub_args == (f"touch {touched}",)
    assert isinstance(checkpoint["eval"], InertStub)
    assert (checkpoint["eval"].stub_module, checkpoint["eval"].stub_name) == ("builtins", "eval")
    assert checkpoint["eval"].stub_args == (f"open({str(evaluated)!r}, 'w').close()",)
    function = checkpoint["module_function"]
    assert isinstance(function, type) and issubclass(function, InertStub)
    assert function.qualified_name() == "evil_payload_module.run"

    student, info = student_from_s3prl(checkpoint)  # the model itself still loads
    assert {"builtins.eval", "evil_payload_module.run", "optimizers.Optimizer"} <= set(info["stubbed"])
    assert not touched.exists() and not evaluated.exists()

    # control: the eval payload is real, an unrestricted load does run it
    sys.modules["optimizers"] = types.ModuleType("optimizers")
    sys.modules["optimizers"].Optimizer = type("Optimizer", (), {})
    sys.modules["evil_payload_module"] = evil
    try:
        pickle_path = str(tmp_path / "eval_only.pt")
        torch.save({"eval": _EvalPayload(f"open({str(evaluated)!r}, 'w').close()")}, pickle_path)
        torch.load(pickle_path, weights_only=False)
    finally:
        del sys.modules["optimizers"], sys.modules["evil_payload_module"]
    assert evaluated.exists()


def test_only_allowlisted_torch_globals_are_real(tmp_path):
    written = tmp_path / "written_by_torch_save"
    # protocol-0 pickle calling torch.save(1, path) through the global 'torch save'
    payload = b"ctorch\nsave\n(I1\nV" + str(written).encode() + b"\ntR."
    module = restricted_pickle_module()
    result = module.loads(payload)
    assert isinstance(result, InertStub) and result.qualified_name() == "torch.save"
    assert result.stub_args == (1, str(written)) and not written.exists()
    assert module.stubbed == ["torch.save"]
    assert module.loads(b"ctorch\nfloat16\n.") is torch.float16
    assert module.loads(b"c__builtin__\nset\n((lI1\natR.") == {1}
    pickle.loads(payload)  # control: the unrestricted unpickler runs it
    assert written.exists()


def test_missing_and_non_torch_files_are_refused(tmp_path):
    missing = str(tmp_path / "nowhere.ckpt")
    with pytest.raises(S3prlFormatError, match="nowhere.ckpt"):
        load_s3prl_checkpoint(missing)
    with pytest.raises(S3prlFormatError, match="nowhere.ckpt"):
        student_from_s3prl(missing)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(S3prlFormatError, match="notes.txt"):
        load_s3prl_checkpoint(str(text))
    tensor_only = str(tmp_path / "tensor.pt")
    torch.save(torch.zeros(2), tensor_only)
    with pytest.raises(S3prlFormatError, match="tensor.pt"):
        load_s3prl_checkpoint(tensor_only)


# ------------------------------------------------------------------------------------------------
# Refusals
# ------------------------------------------------------------------------------------------------


def _checkpoint(cfg=None, state=None):
    cfg = dict(TINY if cfg is None else cfg)
    return {
        "Distiller": random_s3prl_state(cfg, seed=8) if state is None else state,
        "Config": {"distiller": cfg},
        "Step": 0,
    }


def test_missing_unexpected_and_misshaped_keys_are_named():
    checkpoint = _checkpoint()
    del checkpoint["Distiller"]["encoder.layers.1.fc2.bias"]
    with pytest.raises(S3prlFormatError, match=r"missing keys: encoder\.layers\.1\.fc2\.bias"):
        student_from_s3prl(checkpoint)

    checkpoint = _checkpoint()
    checkpoint["Distiller"]["encoder.layers.2.fc1.weight"] = torch.zeros(64, 32)
    with pytest.raises(S3prlFormatError, match=r"unexpected keys: encoder\.layers\.2\.fc1\.weight"):
        student_from_s3prl(checkpoint)

    checkpoint = _checkpoint()
    checkpoint["Distiller"]["encoder.layers.0.fc1.weight"] = torch.zeros(65, 32)
    with pytest.raises(S3prlFormatError) as error:
        student_from_s3prl(checkpoint)
    assert "encoder.layers.0.fc1.weight" in str(error.value)
    assert "(65, 32)" in str(error.value) and "(64, 32)" in str(error.value)

    checkpoint = _checkpoint()
    checkpoint["Distiller"]["output_layer.2.bias"] = torch.zeros(3, 40)
    with pytest.raises(S3prlFormatError, match=r"output_layer\.2\.bias.*\(3, 40\).*\(1, 1, 3, 40\)"):
        student_from_s3prl(checkpoint)


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("layer_norm_first", True, "layer_norm_first"),
        ("out_layer_type", "none", "out_layer_type='none'"),
        ("task_emb_type", "add", "task_emb_type='add'"),
        ("extractor_mode", "layer_norm", "extractor_mode='layer_norm'"),
        ("attention_type", "sparse", "attention_type='sparse'"),
        ("n_tasks", 2, "n_tasks=2"),
        ("encoder_layers", 0, "encoder_layers=0"),
        ("extractor_conv_feature_layers", "[(24,10,5)] + [(24,3,2)] * 4 + [(24,2,", "extractor_conv_feature_layers"),
        ("encoder_embed_dim", "wide", "encoder_embed_dim"),
    ],
)
def test_unmappable_configs_are_refused(field, value, expected):
    cfg = dict(TINY, **{field: value})
    with pytest.raises(S3prlFormatError) as error:
        student_from_s3prl(_checkpoint(cfg, state=random_s3prl_state(TINY)))
    assert expected in str(error.value)


def test_malicious_conv_layer_string_is_never_evaluated(tmp_path):
    marker = tmp_path / "conv_string_ran"
    for text in (
        f"__import__('os').system('touch {marker}')",
        "[(24,10,5)] * 10**9",
        "[(24,10,5)] * 99999999999",
        "[x for x in (1,)]",
        "[(24.0,10,5)]",
        "[(True,10,5)]",
    ):
        cfg = dict(TINY, extractor_conv_feature_layers=text)
        with pytest.raises(S3prlFormatError, match="extractor_conv_feature_layers"):
            student_from_s3prl(_checkpoint(cfg, state=random_s3prl_state(TINY)))
    assert not marker.exists()
    layers = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == layers
    assert parse_conv_layers(format_conv_layers([(8, 4, 2), (16, 3, 1), (16, 3, 1)])) == [
        (8, 4, 2),
        (16, 3, 1),
        (16, 3, 1),
    ]
    assert parse_conv_layers("2 * [(4, 3, 2)]") == [(4, 3, 2), (4, 3, 2)]


def test_missing_sections_are_refused():
    with pytest.raises(S3prlFormatError, match="'Distiller'"):
        student_from_s3prl({"Config": {"distiller": TINY}})
    with pytest.raises(S3prlFormatError, match="'Config'"):
        student_from_s3prl({"Distiller": {}})
    with pytest.raises(S3prlFormatError, match="'distiller'"):
        student_from_s3prl({"Distiller": {}, "Config": {"runner": {}}})


def test_parametrizations_naming_of_the_pos_conv_is_accepted():
    checkpoint = _checkpoint()
    state = checkpoint["Distiller"]
    g, v = state.pop("encoder.pos_conv.0.weight_g"), state.pop("encoder.pos_conv.0.weight_v")
    state["encoder.pos_conv.0.parametrizations.weight.original0"] = g
    state["encoder.pos_conv.0.parametrizations.weight.original1"] = v
    student, _ = student_from_s3prl(checkpoint)
    weight = student.backbone.encoder.pos_conv_embed.conv.parametrizations.weight
    assert torch.equal(weight.original0, g) and torch.equal(weight.original1, v)
    state["encoder.pos_conv.0.weight_g"] = g  # both namings at once is ambiguous
    with pytest.raises(S3prlFormatError, match="weight_g"):
        student_from_s3prl(checkpoint)


def test_training_fields_are_mapped():
    cfg = dict(
        TINY,
        dropout=0.2,
        attention_dropout=0.05,
        activation_dropout=0.3,
        encoder_layerdrop=0.1,
        activation_fn="relu",
        feature_grad_mult=0.5,
    )
    student, _ = student_from_s3prl(_checkpoint(cfg, state=random_s3prl_state(TINY)))
    config = student.config
    assert (config.hidden_dropout, config.attention_dropout, config.activation_dropout, config.layerdrop) == (
        0.2,
        0.05,
        0.3,
        0.1,
    )
    assert config.hidden_act == "relu" and student.feature_grad_mult == 0.5
    exported = student_to_s3prl(student)["Config"]["distiller"]
    assert {
        key: exported[key]
        for key in (
            "dropout",
            "attention_dropout",
            "activation_dropout",
            "encoder_layerdrop",
            "activation_fn",
            "feature_grad_mult",
        )
    } == {
        "dropout": 0.2,
        "attention_dropout": 0.05,
        "activation_dropout": 0.3,
        "encoder_layerdrop": 0.1,
        "activation_fn": "relu",
        "feature_grad_mult": 0.5,
    }


@pytest.mark.parametrize("activation", ["gelu", "relu", "tanh", "linear", "gelu_accurate", "gelu_fast"])
def test_activations_compute_what_fairseq_computes(activation):
    fairseq = {
        "gelu": F.gelu,
        "relu": F.relu,
        "tanh": torch.tanh,
        "linear": lambda x: x,
        "gelu_accurate": lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    }
    fairseq["gelu_fast"] = fairseq["gelu_accurate"]  # fairseq's deprecated alias
    checkpoint = _checkpoint(dict(TINY, activation_fn=activation), state=random_s3prl_state(TINY))
    student, _ = student_from_s3prl(checkpoint)
    x = torch.linspace(-4, 4, 101)
    ours = student.backbone.encoder.layers[0].feed_forward.intermediate_act_fn(x)
    torch.testing.assert_close(ours, fairseq[activation](x), atol=1e-6, rtol=0)


def test_s3prl_defaults_apply_to_absent_fields():
    cfg = {key: value for key, value in TINY.items() if key not in ("pred_layer_id", "feature_grad_mult")}
    student, info = student_from_s3prl(_checkpoint(cfg, state=random_s3prl_state(TINY)))
    assert student.target_layers == (1, 2, 3)  # s3prl: range(1, n_tasks + 1)
    assert student.feature_grad_mult == 1.0
    assert info["resolved_config"]["dropout"] == 0.1 and student.config.hidden_dropout == 0.1


# ------------------------------------------------------------------------------------------------
# Export and round trip
# ------------------------------------------------------------------------------------------------


def assert_same_student(a, b):
    state_a, state_b = a.state_dict(), b.state_dict()
    assert set(state_a) == set(state_b)
    for key in state_a:
        if key == "_extra_state":
            continue
        assert state_a[key].dtype == state_b[key].dtype and torch.equal(state_a[key], state_b[key]), key
    config_a, config_b = state_a["_extra_state"]["config"], state_b["_extra_state"]["config"]
    for field in ARCHITECTURE_FIELDS:
        value_a, value_b = config_a[field], config_b[field]
        assert (list(value_a) if isinstance(value_a, tuple) else value_a) == (
            list(value_b) if isinstance(value_b, tuple) else value_b
        ), field
    for field in ("hidden_dropout", "attention_dropout", "activation_dropout", "layerdrop"):
        assert config_a[field] == config_b[field], field
    for field in ("target_layers", "target_size", "head_inner_size", "feature_grad_mult"):
        assert state_a["_extra_state"][field] == state_b["_extra_state"][field], field
    wav = torch.randn(2, 6000, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        out_a, out_b = a.eval()(wav, torch.tensor([1.0, 0.7])), b.eval()(wav, torch.tensor([1.0, 0.7]))
    for hidden_a, hidden_b in zip(out_a.hidden_states, out_b.hidden_states):
        assert torch.equal(hidden_a, hidden_b)
    assert torch.equal(out_a.predictions, out_b.predictions)
    assert out_a.predictions.abs().mean() > 0


@pytest.mark.parametrize(
    "num_targets, conv_dim, head_options",
    [(3, 24, {}), (3, 24, {"target_size": 40, "head_inner_size": 20}), (1, 24, {"target_size": 40}), (2, 32, {})],
    ids=["k3", "k3-sizes", "k1", "no-projection"],
)
def test_round_trip_is_exact(tmp_path, num_targets, conv_dim, head_options):
    student = tiny_student(seed=10, num_targets=num_targets, conv_dim=conv_dim, **head_options)
    if conv_dim == 32:  # s3prl has no post_extract_proj: representable only as the identity
        projection = student.backbone.feature_projection.projection
        with torch.no_grad():
            projection.weight.copy_(torch.eye(32))
            projection.bias.zero_()
    path = str(tmp_path / "nested" / "exported.ckpt")
    exported = student_to_s3prl(
        student, path=path, step=4321, args=argparse.Namespace(seed=7, tags=("a", "b"), out=tmp_path)
    )

    plain = torch.load(path, weights_only=True)
    assert set(plain) == {"Distiller", "Config", "Step", "Args"}
    assert plain["Step"] == 4321
    assert plain["Args"] == {"seed": 7, "tags": ["a", "b"], "out": str(tmp_path)}
    distiller = plain["Config"]["distiller"]
    assert distiller["n_tasks"] == num_targets and distiller["pred_layer_id"] == [4, 8, 12][:num_targets]
    assert distiller["feature_grad_mult"] == 0.1 and distiller["cosine_loss"] == 1.0
    assert distiller["loss_type"] == "l1" and distiller["init_teacher_conv_layers"] is True
    assert distiller["init_teacher_encoder_layers"] is True
    assert distiller["final_dim"] == head_options.get("target_size", 32)
    inner = head_options.get("head_inner_size", head_options.get("target_size", 32))
    assert distiller["out_layer_inter_dim"] == inner
    conv = TINY_CONV.replace("24", str(conv_dim))
    assert distiller["extractor_conv_feature_layers"] == conv
    cfg = dict(
        TINY,
        n_tasks=num_targets,
        final_dim=distiller["final_dim"],
        out_layer_inter_dim=distiller["out_layer_inter_dim"],
        extractor_conv_feature_layers=conv,
    )
    assert shapes_of(plain["Distiller"]) == documented_keys(cfg)
    assert shapes_of(exported["Distiller"]) == documented_keys(cfg)
    assert ("post_extract_proj.weight" in plain["Distiller"]) == (conv_dim != 32)

    restored, info = student_from_s3prl(path)
    assert info["step"] == 4321 and info["stubbed"] == []
    assert_same_student(student, restored)
    # and back again: the second export equals the first
    again = student_to_s3prl(restored, step=4321)["Distiller"]
    assert set(again) == set(plain["Distiller"])
    for key, value in plain["Distiller"].items():
        assert torch.equal(again[key], value), key


def test_exported_predictions_match_reference_output_layer():
    student = tiny_student(seed=11, num_targets=3, target_size=40, head_inner_size=20)
    state = student_to_s3prl(student)["Distiller"]
    hidden = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        ours = student.prediction_heads(hidden)
    torch.testing.assert_close(ours, reference_output_layer(state, hidden, 3, 40), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"feat_extract_norm": "layer"}, "feat_extract_norm='layer'"),
        ({"conv_bias": True}, "conv_bias=True"),
        ({"feat_proj_layer_norm": True}, "feat_proj_layer_norm=True"),
        ({"do_stable_layer_norm": True}, "do_stable_layer_norm=True"),
        ({"hidden_act": "silu"}, "hidden_act='silu'"),
        ({"layer_norm_eps": 1e-6}, "layer_norm_eps"),
        ({"mask_time_prob": 0.05}, "masked_spec_embed"),
    ],
)
def test_export_refuses_students_s3prl_cannot_represent(override, expected):
    torch.manual_seed(0)
    config = build_student_config(
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=[24] * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        **override,
    )
    with pytest.raises(S3prlFormatError) as error:
        student_to_s3prl(DistillerStudent(config))
    assert expected in str(error.value)


def test_export_refuses_a_non_identity_projection_without_s3prl_counterpart(tmp_path):
    student = tiny_student(seed=13, conv_dim=32)  # last conv dim == hidden size: s3prl has no projection
    with pytest.raises(S3prlFormatError, match="post_extract_proj") as error:
        student_to_s3prl(student, path=str(tmp_path / "x.ckpt"))
    assert "feature_projection.projection" in str(error.value)
    assert not (tmp_path / "x.ckpt").exists()


def test_import_without_projection_sets_a_frozen_identity():
    cfg = dict(TINY, extractor_conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2")
    state = random_s3prl_state(cfg, seed=14)
    assert "post_extract_proj.weight" not in state
    student, info = student_from_s3prl(_checkpoint(cfg, state=state))
    projection = student.backbone.feature_projection.projection
    assert info["identity_projection"] is True
    assert torch.equal(projection.weight, torch.eye(32)) and torch.equal(projection.bias, torch.zeros(32))
    assert not projection.weight.requires_grad
    wav = torch.randn(1, 4000, generator=torch.Generator().manual_seed(15))
    with torch.no_grad():
        hiddens, predictions = reference_forward(state, cfg, wav)
        out = student(wav)
    torch.testing.assert_close(out.hidden_states[-1], hiddens[-1], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(out.predictions, predictions, atol=2e-5, rtol=1e-5)
