"""DPWavLM in ONNX: parity on an uneven compact model (attention-free, bias-only and FFN-free layers, pruned CNN
channels), int8, the torch-free runtime, the ``onnx`` upstream kind and the export command line."""

import os

import numpy as np
import pytest
import torch

from robustdistiller.downstream.upstream import FrozenUpstream
from robustdistiller.dpwavlm import DPWavLM, save_dphubert_checkpoint, tiny_config
from robustdistiller.export.cli import main
from robustdistiller.export.dpwavlm_onnx import export_dpwavlm_onnx
from robustdistiller.export.folder import read_manifest
from robustdistiller.export.verify import parity_batch
from robustdistiller.inference.onnx_runtime import OnnxEncoder

# the rounding-noise model of test_onnx_quantization.py (about 40 quantised tensors here too); measured: 0.9976
INT8_ALL_COSINE_FLOOR = 0.98


def uneven_config():
    """Uneven heads and FFN widths, an attention-free layer (2), a bias-only attention (3: no head left), an
    FFN-free layer (3) and pruned CNN channels (9, 16, 13, 11 of 16)."""
    return tiny_config(
        num_layers=5,
        extractor_conv_layer_config=[(9, 10, 5), (16, 3, 2), (13, 3, 2), (11, 2, 2)],
        encoder_use_attention=[True, True, False, True, True],
        encoder_remaining_heads=[[1, 2], [0, 3], [], [], [0, 1, 3]],
        encoder_use_feed_forward=[True, True, True, False, True],
        encoder_ff_interm_features=[40, 7, 23, 0, 12],
    )


@pytest.fixture(scope="module")
def uneven_model():
    torch.manual_seed(3)
    model = DPWavLM(uneven_config()).eval()
    with torch.no_grad():  # a CNN channel scale that is not all ones (what pruning gated CNN channels leaves)
        model.feature_extractor.dummy_weight.copy_(torch.linspace(0.5, 1.5, 11))
    return model


@pytest.fixture(scope="module")
def uneven_export(uneven_model, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("dpwavlm_onnx"))
    batch = parity_batch(seconds=(2.3, 1.6, 0.45), seed=3)
    return export_dpwavlm_onnx(uneven_model, folder, int8="all", batch=batch)


def test_uneven_dpwavlm_fp32_parity_and_int8_floor(uneven_model, uneven_export):
    assert uneven_model.encoder.transformer.layers[2].attention is None
    assert uneven_model.encoder.transformer.layers[3].attention.num_heads == 0
    assert uneven_model.encoder.transformer.layers[3].feed_forward is None
    parity = uneven_export["parity"]
    print(parity["fp32_max_abs_diff"], parity["int8_cosine"])
    assert parity["frame_lengths_equal"] and parity["fp32_max_abs_diff"] <= 1e-4
    assert len(parity["int8_cosine"]) == 1 + 6  # projection, encoder input and 5 layers; no predictions
    assert parity["int8_min_cosine"] >= INT8_ALL_COSINE_FLOOR, parity["int8_cosine"]


def test_runtime_and_onnx_upstream_kind_match_the_pytorch_dpwavlm(uneven_model, uneven_export, tmp_path):
    folder = os.path.dirname(uneven_export["fp32"])
    encoder = OnnxEncoder(folder)
    assert encoder.model_type == "dpwavlm" and not encoder.has_predictions and encoder.num_layers == 5
    batch = parity_batch(seconds=(1.4, 0.6), seed=7)
    output = encoder.encode_batch(batch["wavs"].numpy(), batch["wav_lens"].numpy())
    assert output.predictions is None and output.hidden_states.shape[1] == 6
    # the onnx kind gives the layers of the student kind on the same model (its .pth), valid frames
    path = str(save_dphubert_checkpoint(tmp_path / "uneven.pth", uneven_model))
    reference, reference_mask = FrozenUpstream(path)(batch["wavs"], batch["wav_lens"])
    upstream = FrozenUpstream(folder, kind="onnx")
    features, frame_mask = upstream(batch["wavs"], batch["wav_lens"])
    assert not upstream.include_predictions and "dpwavlm" in upstream.identity()["description"]
    assert torch.equal(frame_mask, reference_mask) and features.shape == reference.shape
    valid = frame_mask[:, None, :, None].expand_as(features)
    np.testing.assert_allclose(features[valid].numpy(), reference[valid].numpy(), atol=1e-4)


def test_export_command_writes_and_checks_the_dpwavlm_onnx_files(uneven_model, tmp_path, capsys):
    path = str(save_dphubert_checkpoint(tmp_path / "uneven.pth", uneven_model))
    output = str(tmp_path / "export")
    assert main([path, output, "--int8", "matmul"]) == 0
    printed = capsys.readouterr().out
    assert "ONNX fp32 vs PyTorch" in printed and "int8 vs fp32 cosine similarity" in printed
    files = read_manifest(output)["files"]
    assert "onnx/encoder.onnx" in files and "onnx/encoder_int8.onnx" in files and "dpwavlm.pth" in files
    assert OnnxEncoder(output, precision="int8").quantization == "dynamic int8 (MatMul, Gemm)"
