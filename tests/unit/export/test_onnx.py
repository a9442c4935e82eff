"""ONNX export of a trained tiny student (fp32 and int8): parity with PyTorch, the torch-free runtime, the
``onnx`` upstream kind, a KS fixture run with int8 against fp32, and the export's refusals."""

from pathlib import Path
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import soundfile
import torch

from tests.conftest import REPOSITORY_ROOT, corruption_overrides, run_recipe_script

from robustdistiller.export.cli import main
from robustdistiller.export.errors import ExportError
from robustdistiller.export.folder import read_manifest
from robustdistiller.export.loading import load_student
from robustdistiller.export.student_folder import export_student
from robustdistiller.export.verify import parity_batch
from robustdistiller.export.onnx import UntraceableStudentError, export_fp32, verify_onnx
from robustdistiller.models.student import DistillerStudent, build_student_config

# --int8 is the static int8 of the whole student (test_onnx_quantization.py derives its floor 0.98 on a random tiny
# student); this floor, measured on the trained tiny student, is the earlier one of the MatMul-only file
INT8_COSINE_FLOOR = 0.97
# int8 KS accuracy within 10 points of fp32 under each condition (72 test clips: one clip is 1.4 points;
# measured with 4 epochs: clean 0.222 / 0.222, snr5 0.153 / 0.167)
KS_MARGIN = 0.1


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """The trained tiny student exported by the command line with --onnx --int8 (int8 of the whole student)."""
    folder = str(tmp_path_factory.mktemp("onnx_export") / "exported")
    assert main([trained_run, folder, "--onnx", "--int8"]) == 0
    student, _ = load_student(trained_run)
    return {
        "folder": folder,
        "student": student,
        "fp32": os.path.join(folder, "onnx", "encoder.onnx"),
        "int8": os.path.join(folder, "onnx", "encoder_int8.onnx"),
        "run": trained_run,
    }


def real_length_batch():
    """A padded batch of three speech-like utterances of 2.3, 1.6 and 0.45 s."""
    return parity_batch(seconds=(2.3, 1.6, 0.45), seed=3)


def test_manifest_and_model_card_record_the_onnx_files_and_their_parity(exported):
    folder = exported["folder"]
    manifest = read_manifest(folder)
    for name in ("onnx/encoder.onnx", "onnx/encoder_int8.onnx"):
        assert name in manifest["files"] and manifest["files"][name]["bytes"] == os.path.getsize(
            os.path.join(folder, name)
        )
    card = Path(os.path.join(folder, "README.md")).read_text(encoding="utf-8")
    assert "ONNX fp32 vs PyTorch" in card and "max abs diff" in card
    assert "| hidden_2 |" in card and "int8 vs fp32 cosine similarity" in card
    # int8 weights throughout (the per-channel scales and the graph weigh more at this tiny size)
    assert os.path.getsize(exported["int8"]) < 0.75 * os.path.getsize(exported["fp32"])


def test_fp32_parity_on_valid_frames_and_int8_cosine_floor(exported):
    result = verify_onnx(exported["student"], exported["fp32"], exported["int8"], batch=real_length_batch())
    print(result["fp32_max_abs_diff"], result["int8_cosine"])
    assert result["frame_lengths_equal"]
    assert result["fp32_max_abs_diff"] <= 1e-4
    assert len(result["int8_cosine"]) == 1 + 3 + 3  # projection, 3 hidden states, 3 predictions
    assert result["int8_min_cosine"] >= INT8_COSINE_FLOOR, result["int8_cosine"]


def test_padded_batch_equals_single_utterances_and_short_items_get_no_frame(exported):
    from robustdistiller.inference.onnx_runtime import OnnxEncoder

    encoder = OnnxEncoder(exported["fp32"])
    batch = real_length_batch()
    wavs, lengths = batch["wavs"].numpy(), batch["lengths"].tolist()
    padded = encoder.encode_batch(wavs, batch["wav_lens"].numpy())
    for index, length in enumerate(lengths):
        single = encoder.encode_batch(wavs[index, :length])
        frames = single.hidden_states.shape[2]
        assert padded.frame_mask[index].sum() == frames
        assert np.abs(padded.hidden_states[index, :, :frames] - single.hidden_states[0]).max() < 1e-4
    with_short = encoder.encode_batch(
        np.stack([wavs[0], np.r_[wavs[0, :300], np.zeros(wavs.shape[1] - 300)]]), [1.0, 300 / wavs.shape[1]]
    )
    assert with_short.frame_mask[1].sum() == 0 and np.isfinite(with_short.hidden_states).all()
    with pytest.raises(ValueError, match="fewer than the 400 samples"):
        encoder.encode_batch(np.zeros(300, dtype=np.float32))


def test_runtime_works_without_torch_and_handles_rates_and_channels(exported, tmp_path):
    batch = parity_batch(seconds=(1.5,), seed=5)
    mono = batch["wavs"][0].numpy()
    soundfile.write(str(tmp_path / "mono16k.wav"), mono, 16000)
    # the same signal at 44.1 kHz, in two channels of different gain (their mean is the signal)
    from scipy.signal import resample_poly

    at_44k = resample_poly(mono, 441, 160)
    soundfile.write(str(tmp_path / "stereo44k.wav"), np.stack([0.5 * at_44k, 1.5 * at_44k], axis=1), 44100)
    guard = tmp_path / "no_torch"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(
        textwrap.dedent("""
        import sys

        class NoTorch:  # every import of torch (and of what needs it) fails
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this process")

        sys.meta_path.insert(0, NoTorch())
    """)
    )
    script = textwrap.dedent(f"""
        import sys, numpy as np
        try:
            import torch
            raise SystemExit("torch is importable")
        except ImportError:
            pass
        from robustdistiller.inference.onnx_runtime import OnnxEncoder
        encoder = OnnxEncoder({exported["int8"]!r})
        out = {{name: encoder.encode_file({str(tmp_path)!r} + "/" + name + ".wav").hidden_states[0]
               for name in ("mono16k", "stereo44k")}}
        np.savez({str(tmp_path / "out.npz")!r}, **out, modules=np.array(sorted(sys.modules)))
    """)
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(guard), REPOSITORY_ROOT]))
    completed = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    assert not any(name.startswith("torch") for name in out["modules"])
    reference, resampled = out["mono16k"], out["stereo44k"]
    assert resampled.shape == reference.shape  # 1.5 s at 44.1 kHz -> 24000 samples -> the same frames
    cosine = (reference * resampled).sum() / np.linalg.norm(reference) / np.linalg.norm(resampled)
    assert cosine > 0.99, cosine


def test_onnx_upstream_kind_gives_the_student_kinds_layers(exported):
    from robustdistiller.downstream.upstream import FrozenUpstream

    student_kind = FrozenUpstream(exported["run"], kind="student")
    onnx_kind = FrozenUpstream(exported["fp32"])  # auto: a .onnx file
    assert onnx_kind.kind == "onnx" and onnx_kind.num_layers == student_kind.num_layers == 6
    identity = onnx_kind.identity()
    assert identity["kind"] == "onnx" and identity["include_predictions"] and len(identity["fingerprint"]) == 16
    batch = real_length_batch()
    expected, mask = student_kind(batch["wavs"], batch["wav_lens"])
    actual, onnx_mask = onnx_kind(batch["wavs"], batch["wav_lens"])
    assert torch.equal(mask, onnx_mask) and actual.shape == expected.shape
    assert (actual - expected)[mask[:, None, :, None].expand_as(actual)].abs().max() <= 1e-4
    int8 = FrozenUpstream(exported["folder"], kind="onnx")  # a folder: its onnx/encoder.onnx
    assert int8.identity()["fingerprint"] == identity["fingerprint"]


def test_export_refuses_an_existing_folder_and_untraceable_students(exported, tmp_path):
    with pytest.raises(ExportError, match="not empty"):
        export_student(exported["run"], exported["folder"], onnx=True)
    # an unmodified earlier export is replaced with --overwrite (manifest rules), here by a tiny student
    config = build_student_config(
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=[32] * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    student = DistillerStudent(config, per_utterance_norm=True).eval()
    first = export_student(student, str(tmp_path / "again"), onnx=True)
    assert "onnx/encoder.onnx" in first["files"] and first["onnx_parity"]["fp32_max_abs_diff"] <= 1e-4
    assert main([str(tmp_path / "again"), str(tmp_path / "again"), "--onnx"]) == 1  # source == folder
    second = export_student(student, str(tmp_path / "again"), overwrite=True)  # now without ONNX
    assert not os.path.exists(tmp_path / "again" / "onnx")
    assert "onnx/encoder.onnx" not in read_manifest(str(tmp_path / "again"))["files"] and second["onnx_parity"] is None
    with pytest.raises(UntraceableStudentError, match="DistillerStudent"):
        export_fp32(torch.nn.Linear(4, 4), str(tmp_path / "linear.onnx"))
    config.feat_extract_norm = "layer"
    with pytest.raises(UntraceableStudentError, match="feat_extract_norm='layer'"):
        export_fp32(DistillerStudent(config), str(tmp_path / "layer.onnx"))


@pytest.fixture(scope="module")
def speech_commands(tmp_path_factory):
    from robustdistiller.testing.fixtures.speech_commands import generate_speech_commands

    return generate_speech_commands(str(tmp_path_factory.mktemp("speech_commands")), seed=0)


def test_ks_accuracy_with_the_int8_student_is_within_a_margin_of_fp32(exported, speech_commands, mini_corpus, tmp_path):
    """The KS recipe on the upstream kind onnx: the int8 file is the static int8 of the whole student (--int8 all)."""
    assert "static int8 QDQ" in onnx.load(exported["int8"]).metadata_props[-1].value
    accuracies = {}
    for name in ("fp32", "int8"):
        output = str(tmp_path / name)
        overrides = {
            "data_folder": speech_commands["data_folder"],
            "test_folder": speech_commands["test_folder"],
            "upstream_source": exported[name],
            "output_folder": output,
            "lr": 0.01,
            "number_of_epochs": 2,
            "train_dataloader_opts": {"batch_size": 4, "drop_last": True, "num_workers": 0},
            "valid_dataloader_opts": {"batch_size": 8, "num_workers": 0},
            "test_condition_names": ["clean", "snr5"],
            **corruption_overrides(mini_corpus),
        }
        code, log = run_recipe_script("SpeechCommands/KS", "hparams/superb_ks.yaml", overrides)
        assert code == 0, log
        results = json.loads(Path(os.path.join(output, "results.json")).read_text())
        assert results["upstream"]["kind"] == "onnx"
        accuracies[name] = {condition: stats["accuracy"] for condition, stats in results["results"].items()}
    print(accuracies)
    for condition in ("clean", "snr5"):
        assert abs(accuracies["int8"][condition] - accuracies["fp32"][condition]) <= KS_MARGIN, accuracies


def test_int8_quantisation_keeps_onnx_runtime_noise_out_of_the_log(tmp_path, caplog):
    """Issue 22, item 9: ONNX Runtime's per-tensor "Quantization parameters ..." root-logger lines are dropped."""
    import logging

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from robustdistiller.export.onnx import quantize_int8

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 8)).astype("float32"), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
        [weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "a.onnx"))
    caplog.set_level(logging.DEBUG)
    quantize_int8(str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx"), op_types=("MatMul",))
    assert (tmp_path / "b.onnx").is_file()
    noise = [record.getMessage() for record in caplog.records if "Quantization parameters" in record.getMessage()]
    assert not noise, noise
    assert not logging.getLogger().filters  # the filter is removed again
    logging.getLogger().info("Quantization parameters outside the export are not ours to drop")
    assert any("not ours to drop" in record.getMessage() for record in caplog.records)
