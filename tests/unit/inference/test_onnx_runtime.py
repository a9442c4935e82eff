"""``OnnxEncoder`` on an export folder: the fp32 file by default, the int8 file by option, and a missing or
damaged file named (a tiny random student exported with ``--onnx --int8``, as in tests/unit/export/test_onnx.py)."""

import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from robustdistiller.downstream.upstream import FrozenUpstream
from robustdistiller.export.errors import ExportError
from robustdistiller.export.layout import ONNX_FILES
from robustdistiller.export.student_folder import export_student
from robustdistiller.inference import onnx_runtime
from robustdistiller.inference.onnx_runtime import FP32_FILE, INT8_FILE, ONNX_FOLDER, OnnxEncoder
from robustdistiller.models.student import DistillerStudent, build_student_config


@pytest.fixture(scope="module")
def export_folder(tmp_path_factory):
    """An export folder of a tiny random student with ``onnx/encoder.onnx`` and ``onnx/encoder_int8.onnx``."""
    config = build_student_config(
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=[32] * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    student = DistillerStudent(config, per_utterance_norm=True).eval()
    folder = str(tmp_path_factory.mktemp("onnx_runtime") / "exported")
    export_student(student, folder, onnx=True, int8=True)
    return folder


def test_an_export_folder_gives_its_fp32_file_and_the_int8_file_on_request(export_folder, tmp_path):
    assert ONNX_FILES == (f"{ONNX_FOLDER}/{FP32_FILE}", f"{ONNX_FOLDER}/{INT8_FILE}")  # one set of names
    fp32 = OnnxEncoder(export_folder)
    assert fp32.path == os.path.join(export_folder, "onnx", "encoder.onnx") and not fp32.quantized
    int8 = OnnxEncoder(export_folder, precision="int8")
    assert int8.path == os.path.join(export_folder, "onnx", "encoder_int8.onnx") and int8.quantized
    assert OnnxEncoder(os.path.join(export_folder, "onnx"), precision="int8").path == int8.path  # the subfolder
    wav = np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    reference, quantized = fp32.encode_batch(wav).hidden_states, int8.encode_batch(wav).hidden_states
    assert reference.shape == quantized.shape
    with pytest.raises(ValueError, match=r"encoder_int8\.onnx' is the int8 encoder, not fp32"):
        OnnxEncoder(int8.path, precision="fp32")
    with pytest.raises(ValueError, match="precision must be one of"):
        OnnxEncoder(export_folder, precision="fp16")
    # the module copied out on its own (no torch, nothing else of robustdistiller) takes the folder too
    shutil.copy(onnx_runtime.__file__, tmp_path / "onnx_runtime.py")
    script = textwrap.dedent(f"""
        import sys
        from onnx_runtime import OnnxEncoder
        encoder = OnnxEncoder({export_folder!r}, precision="int8")
        assert encoder.quantized and encoder.path.endswith("encoder_int8.onnx"), encoder.path
        loaded = [name for name in sys.modules if name.split(".")[0] in ("torch", "robustdistiller")]
        assert not loaded, loaded
    """)
    environment = dict(os.environ, PYTHONPATH=str(tmp_path))
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=environment, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr[-3000:]


def test_a_folder_without_the_asked_file_names_what_it_holds(export_folder, tmp_path):
    fp32_only = tmp_path / "fp32_only"
    (fp32_only / "onnx").mkdir(parents=True)
    shutil.copy(os.path.join(export_folder, "onnx", "encoder.onnx"), fp32_only / "onnx")
    message = f"'{fp32_only}' holds onnx/encoder.onnx but no encoder_int8.onnx: export with --int8"
    with pytest.raises(FileNotFoundError, match=re.escape(message)):
        OnnxEncoder(str(fp32_only), precision="int8")
    assert OnnxEncoder(str(fp32_only)).path == str(fp32_only / "onnx" / "encoder.onnx")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(f"'{empty}' holds no ONNX encoder")):
        OnnxEncoder(str(empty))
    with pytest.raises(FileNotFoundError, match="missing.onnx' does not exist"):
        OnnxEncoder(str(tmp_path / "missing.onnx"))
    with pytest.raises(ExportError, match=re.escape(f"'{empty}' holds no ONNX encoder")):  # the recipes' kind
        FrozenUpstream(str(empty), kind="onnx")


def test_a_truncated_onnx_file_is_named(export_folder, tmp_path):
    damaged = tmp_path / "damaged"
    (damaged / "onnx").mkdir(parents=True)
    source = os.path.join(export_folder, "onnx", "encoder.onnx")
    with open(source, "rb") as whole, open(damaged / "onnx" / "encoder.onnx", "wb") as part:
        part.write(whole.read(os.path.getsize(source) // 3))
    path = str(damaged / "onnx" / "encoder.onnx")
    for given in (str(damaged), path):
        with pytest.raises(ValueError, match=re.escape(f"'{path}'") + r" \([\d,]+ bytes\) is not a valid ONNX model"):
            OnnxEncoder(given)
