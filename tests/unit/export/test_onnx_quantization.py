"""int8 of the whole student (static QDQ) against the MatMul-only file: accuracy floor, graph content, metadata, CLI.

The accuracy floor. Static int8 rounds each quantised activation to 1/255 of its calibrated range and each weight
to 1/127 of its channel's largest magnitude: one rounding adds uniform noise of rms ``step / sqrt(12)``, i.e. a
noise-to-signal ratio ``q = (range / rms) / (255 sqrt(12))`` for an activation whose range is ``range / rms``
times its rms, and costs ``q**2 / 2`` of cosine similarity. The tiny student's graph has about 40 quantised
tensors (7 convolutions, the projection, 2 layers of 6 matrix products, the heads, each with its input and
weight); with ``range / rms = 25`` for all of them (speech activations after GELU are peaky; 25 is a generous
bound) the noise adds up to ``40 * (25 / 883)**2 / 2 = 0.016`` of cosine, hence the floor 0.98. Measured on this
tiny random student: lowest layer 0.9979 (0.9954 with the first CNN layer in int8 too); a quantisation with wrong scales or without calibration
falls far below (0.5-0.9).
"""

import os

import numpy as np
import onnx
import pytest
import torch

from robustdistiller.export.cli import main
from robustdistiller.export.onnx import export_onnx, verify_onnx
from robustdistiller.export.onnx_quantization import first_conv_nodes, quantize_static_int8
from robustdistiller.export.verify import parity_batch
from robustdistiller.inference.onnx_runtime import OnnxEncoder
from robustdistiller.models.student import DistillerStudent, build_student_config
from robustdistiller.models.teacher import load_ssl_model

INT8_ALL_COSINE_FLOOR = 0.98  # from the rounding-noise model of the module docstring


@pytest.fixture(scope="module")
def tiny_student(tiny_teacher_folder):
    torch.manual_seed(0)
    config = build_student_config(load_ssl_model(tiny_teacher_folder).config)
    return DistillerStudent(config, per_utterance_norm=True).eval()


@pytest.fixture(scope="module")
def int8_files(tiny_student, tmp_path_factory):
    folders = {mode: str(tmp_path_factory.mktemp(f"int8_{mode}")) for mode in ("all", "matmul")}
    return {mode: export_onnx(tiny_student, folder, int8=mode) for mode, folder in folders.items()}


def operator_counts(path):
    counts = {}
    for node in onnx.load(path).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_int8_all_quantises_the_cnn_and_keeps_the_cosine_floor_on_speech(tiny_student, int8_files):
    paths = int8_files["all"]
    counts = operator_counts(paths["int8"])
    # QDQ: a DequantizeLinear in front of every Conv and MatMul input; the dynamic file has ConvInteger nowhere
    assert counts.get("QuantizeLinear", 0) > 0 and counts.get("DequantizeLinear", 0) >= 2 * counts["Conv"]
    assert "MatMulInteger" not in counts and "DynamicQuantizeLinear" not in counts
    matmul_counts = operator_counts(int8_files["matmul"]["int8"])
    assert "QuantizeLinear" not in matmul_counts and matmul_counts.get("MatMulInteger", 0) > 0
    batch = parity_batch(seconds=(2.3, 1.6, 0.45), seed=3)  # other seeds than the calibration's
    result = verify_onnx(tiny_student, paths["fp32"], paths["int8"], batch=batch)
    print(result["int8_cosine"])
    assert result["fp32_max_abs_diff"] <= 1e-4
    assert result["int8_min_cosine"] >= INT8_ALL_COSINE_FLOOR, result["int8_cosine"]
    # the CNN weights are int8 too: smaller than the MatMul-only file (at full size a quarter of fp32 against half;
    # here the per-channel scales and the graph's own size weigh more)
    print({path: os.path.getsize(path) for path in (paths["fp32"], paths["int8"], int8_files["matmul"]["int8"])})
    assert os.path.getsize(paths["int8"]) < os.path.getsize(int8_files["matmul"]["int8"])


def test_the_runtime_reports_how_the_file_was_quantised_and_frames_match_fp32(int8_files):
    folder_all = os.path.dirname(int8_files["all"]["int8"])
    encoder = OnnxEncoder(folder_all, precision="int8")
    assert encoder.quantized and encoder.quantization == "static int8 QDQ (Conv, MatMul, Gemm, first Conv fp32)"
    matmul = OnnxEncoder(int8_files["matmul"]["int8"])
    assert matmul.quantization == "dynamic int8 (MatMul, Gemm)"
    assert OnnxEncoder(folder_all).quantization is None
    batch = parity_batch(seconds=(1.2, 0.5), seed=5)
    fp32 = OnnxEncoder(folder_all).encode_batch(batch["wavs"].numpy(), batch["wav_lens"].numpy())
    int8 = encoder.encode_batch(batch["wavs"].numpy(), batch["wav_lens"].numpy())
    np.testing.assert_array_equal(int8.frame_mask, fp32.frame_mask)


def test_the_first_convolution_stays_fp32_unless_asked(int8_files, tmp_path):
    fp32_path = int8_files["all"]["fp32"]
    excluded = first_conv_nodes(onnx.load(fp32_path))
    op_types = {node.name: node.op_type for node in onnx.load(fp32_path).graph.node}
    assert op_types[excluded[0]] == "Conv" and "Conv" not in [op_types[name] for name in excluded[1:]]
    target = str(tmp_path / "first_int8.onnx")
    quantize_static_int8(fp32_path, target, exclude_first_conv=False)
    for path, first_weight_quantised in ((int8_files["all"]["int8"], False), (target, True)):
        model = onnx.load(path)
        first_conv = next(node for node in model.graph.node if node.op_type == "Conv")
        producers = {output: node.op_type for node in model.graph.node for output in node.output}
        # an fp32 weight is a plain initialiser, an int8 one the output of a DequantizeLinear
        assert (producers.get(first_conv.input[1]) == "DequantizeLinear") == first_weight_quantised, path
    quantization = {entry.key: entry.value for entry in onnx.load(target).metadata_props}["quantization"]
    assert quantization == "static int8 QDQ (Conv, MatMul, Gemm)"


def test_cli_int8_modes_and_refusal(tiny_student, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path / "any"), str(tmp_path / "out"), "--int8", "conv"])
    assert "invalid choice: 'conv'" in capsys.readouterr().err
