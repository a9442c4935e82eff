"""Tests of the frozen teacher and of teacher loading (all offline, random-weight models)."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import HubertModel, Wav2Vec2Model, WavLMModel
from transformers.utils import logging as transformers_logging

from robustdistiller.downstream.upstream import FrozenUpstream
from robustdistiller.models.teacher import (
    FrozenTeacher,
    TeacherPrecisionError,
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


# The tiny teacher's positional convolution (64 channels, 16 groups: 4 channels per group, kernel 16) is
# the shape oneDNN computes wrongly in bf16 on CPUs with AMX (fewer than 16 channels per group, kernel 16
# or more: relative L1 error about 1.1; docs/distillation.md, "Teacher precision self-check"). Tests about
# bf16 *precision* use 4 groups (16 channels per group), which that fault does not reach, so they hold on
# every x86-64 CPU;
# the self-check tests below are the ones that meet the fault.
PRECISION_SAFE = dict(num_conv_pos_embedding_groups=4)


def bf16_available():
    """Whether CPU autocast runs a grouped Conv1d in bf16 here."""
    conv = torch.nn.Conv1d(8, 8, 3, groups=2)
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return conv(torch.randn(1, 8, 16)).dtype == torch.bfloat16
    except RuntimeError:
        return False


needs_bf16 = pytest.mark.skipif(not bf16_available(), reason="bf16 autocast is unavailable on this CPU")


@pytest.fixture(scope="module")
def precision_teacher_folder(tmp_path_factory):
    """The tiny teacher with a positional convolution of 16 channels per group (``PRECISION_SAFE``)."""
    folder = str(tmp_path_factory.mktemp("teacher16"))
    return save_random_teacher(folder, model_type="wavlm", seed=0, **PRECISION_SAFE)


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


def test_no_network_fails_at_once_without_the_hub_clients_retries(tmp_path, monkeypatch):
    """Without HF_HUB_OFFLINE but with no network: one quick probe, one clear error, no download attempted."""
    import socket

    import transformers

    import robustdistiller.inference.interface as interface

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(interface, "_hub_probe_results", {})
    probes = []

    def no_network(address, timeout=None):
        probes.append((address, timeout))
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    loads = []
    original = transformers.AutoModel.from_pretrained

    def recording_from_pretrained(source, **kwargs):
        loads.append(kwargs.get("local_files_only", False))
        if not kwargs.get("local_files_only"):
            raise AssertionError("a download was attempted")
        return original(source, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", recording_from_pretrained)
    source = "robustdistiller-tests/no-such-model"
    with pytest.raises(TeacherSourceError) as error:
        load_ssl_model(source, cache_dir=str(tmp_path))
    message = str(error.value)
    assert source in message and "(huggingface.co:443) is not reachable" in message and "--teacher_source" in message
    assert loads == [True] and probes == [(("huggingface.co", 443), interface.HUB_PROBE_TIMEOUT)]


def test_writing_and_loading_a_small_model_shows_no_transformers_bars(tmp_path, capfd):
    """No 'Writing model shards' / 'Loading weights' bars for our saves and loads; bars and warnings stay on."""
    verbosity = transformers_logging.get_verbosity()
    folder = save_random_teacher(str(tmp_path / "teacher"), model_type="wavlm")
    FrozenTeacher(folder)
    FrozenUpstream(folder, kind="hf")
    captured = capfd.readouterr()
    output = captured.out + captured.err
    assert "shards" not in output and "Loading weights" not in output and "it/s]" not in output, output
    assert transformers_logging.is_progress_bar_enabled()  # restored for everything else
    assert transformers_logging.get_verbosity() == verbosity  # warnings are not silenced


def _forbid_network(monkeypatch):
    """No socket may be opened and no download attempted: ``from_pretrained`` only with ``local_files_only``."""
    import socket

    import transformers

    def no_socket(*arguments, **keywords):
        raise AssertionError(f"a network connection was attempted: {arguments}")

    monkeypatch.setattr(socket, "create_connection", no_socket)
    original = transformers.AutoModel.from_pretrained
    loads = []

    def local_only(source, **kwargs):
        loads.append(kwargs.get("local_files_only", False))
        if not kwargs.get("local_files_only"):
            raise AssertionError("a download was attempted")
        return original(source, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", local_only)
    return loads


def test_offline_hub_id_fails_at_once_without_any_network_call(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 and an id that is not cached: one clear error naming id and option, no probe, no retry."""
    import robustdistiller.inference.interface as interface

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(interface, "_hub_probe_results", {})
    loads = _forbid_network(monkeypatch)
    source = "robustdistiller-tests/no-such-model"
    with pytest.raises(TeacherSourceError) as error:
        load_ssl_model(source, cache_dir=str(tmp_path))
    message = str(error.value)
    assert message.startswith(f"Teacher source '{source}' is neither a local folder nor a cached hub model")
    assert "HF_HUB_OFFLINE" in message and "--teacher_source=" in message and "pass its folder" in message
    assert loads == [True] and interface._hub_probe_results == {}  # the cache only, no connectivity probe


def test_upstream_hub_id_error_names_upstream_source(tmp_path, monkeypatch):
    """The same fast failure from a downstream recipe's upstream names `upstream_source`, not the teacher."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _forbid_network(monkeypatch)
    source = "robustdistiller-tests/no-such-upstream"
    with pytest.raises(TeacherSourceError) as error:
        FrozenUpstream(source, kind="hf", cache_dir=str(tmp_path))
    message = str(error.value)
    assert message.startswith(f"Upstream source '{source}' is neither a local folder")
    assert "--upstream_source=" in message and "teacher" not in message.lower()


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


def _frame_cosines(reference, candidate, layer_index):
    mask = reference.frame_mask
    return torch.nn.functional.cosine_similarity(
        reference.layers[:, layer_index][mask].double(), candidate.layers[:, layer_index][mask].double(), dim=-1
    )


@needs_bf16
@pytest.mark.parametrize("per_utterance_norm", [False, True])
def test_bf16_precision_is_close_to_fp32(precision_teacher_folder, per_utterance_norm):
    """bf16 targets: fp32 dtype, not bit-equal, close. Measured on this batch (tiny teacher with 16
    channels per positional-conv group, CPU with AVX-512 BF16 and no AMX): per frame cosine min 0.9998
    (both norms), mean 0.9999, relative L1 0.010-0.013 per layer; the bounds (0.995, 0.999, 0.05) leave
    >= 10x margin on 1 - cosine and 4x on L1. (With the default 4 channels per group: min 0.9992 / 0.9997
    here, 0.921 / 0.917 on a CPU with AMX: the oneDNN fault the self-check below catches.)"""
    wavs, wav_lens = padded_batch([24000, 16000, 9000], seed=4)
    fp32 = FrozenTeacher(precision_teacher_folder, per_utterance_norm=per_utterance_norm)
    bf16 = FrozenTeacher(precision_teacher_folder, per_utterance_norm=per_utterance_norm, precision="bf16")
    assert fp32.precision == "fp32" and bf16.precision == "bf16"
    reference, output = fp32(wavs, wav_lens), bf16(wavs, wav_lens)
    assert output.layers.dtype == torch.float32
    assert output.layers.shape == reference.layers.shape
    assert torch.equal(output.frame_mask, reference.frame_mask)
    assert not torch.equal(output.layers, reference.layers)
    for index in range(len(bf16.target_layers)):
        cosines = _frame_cosines(reference, output, index)
        assert float(cosines.min()) > 0.995 and float(cosines.mean()) > 0.999, (index, cosines.min())
        valid = reference.frame_mask
        difference = (output.layers[:, index][valid] - reference.layers[:, index][valid]).abs().mean()
        assert float(difference / reference.layers[:, index][valid].abs().mean()) < 0.05
    assert all(parameter.dtype == torch.float32 for parameter in bf16.parameters())
    assert all(buffer.dtype == torch.float32 for buffer in bf16.buffers() if buffer.is_floating_point())


def test_precision_overrides_outer_autocast(tiny_teacher_folder):
    """The teacher's precision, not the caller's autocast, decides: fp32 stays exact, bf16 is bf16."""
    wavs, wav_lens = padded_batch([16000, 8000], seed=5)
    teacher = FrozenTeacher(tiny_teacher_folder, precision="bf16")
    bf16 = teacher(wavs, wav_lens)
    teacher.precision = "fp32"
    fp32 = teacher(wavs, wav_lens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(teacher(wavs, wav_lens).layers, fp32.layers)
        teacher.precision = "bf16"
        assert torch.equal(teacher(wavs, wav_lens).layers, bf16.layers)
    assert not torch.equal(bf16.layers, fp32.layers)
    # the first CNN conv's fp32 hook is removed after the forward
    assert not teacher.model.feature_extractor.conv_layers[0].conv._forward_hooks


@pytest.mark.parametrize("precision", ["fp64", "bfloat16", "FP32", None])
def test_invalid_precision_names_the_option(tiny_teacher_folder, precision):
    with pytest.raises(ValueError, match="teacher_precision") as error:
        FrozenTeacher(tiny_teacher_folder, precision=precision)
    assert all(value in str(error.value) for value in ("fp32", "bf16", "fp16"))
    teacher = FrozenTeacher(tiny_teacher_folder)
    with pytest.raises(ValueError, match="teacher_precision"):
        teacher.precision = precision
    assert teacher.precision == "fp32"


def test_fp16_needs_cuda(tiny_teacher_folder):
    teacher = FrozenTeacher(tiny_teacher_folder, precision="fp16")  # the device is only known at forward
    assert all(parameter.dtype == torch.float32 for parameter in teacher.parameters())
    with pytest.raises(ValueError, match="teacher_precision='fp16' needs CUDA") as error:
        teacher(torch.randn(1, 8000))
    assert "cpu" in str(error.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_on_cuda(precision_teacher_folder, precision):
    wavs, wav_lens = padded_batch([16000, 9000], seed=6)
    reference = FrozenTeacher(precision_teacher_folder).cuda()(wavs.cuda(), wav_lens.cuda())
    teacher = FrozenTeacher(precision_teacher_folder, precision=precision).cuda()
    output = teacher(wavs.cuda(), wav_lens.cuda())
    assert output.layers.dtype == torch.float32
    assert all(parameter.dtype == torch.float32 for parameter in teacher.parameters())
    for index in range(len(teacher.target_layers)):
        assert float(_frame_cosines(reference, output, index).min()) > 0.995


@needs_bf16
def test_bf16_with_layer_norm_cnn():
    """A LayerNorm CNN (every conv layer normalised, no GroupNorm) also runs under bf16 (16 channels
    per positional-conv group, see ``PRECISION_SAFE``)."""
    torch.manual_seed(0)
    model = WavLMModel(random_teacher_config("wavlm", feat_extract_norm="layer", conv_bias=True, **PRECISION_SAFE))
    wavs, wav_lens = padded_batch([16000, 9000], seed=7)
    reference = FrozenTeacher(model, per_utterance_norm=True)(wavs, wav_lens)
    output = FrozenTeacher(model, per_utterance_norm=True, precision="bf16")(wavs, wav_lens)
    assert output.layers.dtype == torch.float32 and not torch.equal(output.layers, reference.layers)
    for index in range(3):
        assert float(_frame_cosines(reference, output, index).min()) > 0.995


# ------------------------------------------------------------- precision self-check -----
def inject_bf16_fault(model, kind="garbage"):
    """Makes ``model``'s positional convolution wrong in bf16 only, as oneDNN's AMX kernel is.

    ``"garbage"``: each group's output lands in the next group's channels (same statistics, wrong
    values: relative L1 error 1.4; the real fault's is 1.05-1.12, a healthy bf16 conv's 0.003);
    ``"nan"``: not finite (as an fp16 overflow). fp32 outputs are left alone. Returns the hook handle.
    """
    conv = model.encoder.pos_conv_embed.conv
    shift = conv.out_channels // conv.groups

    def faulty_kernel(module, args, output):
        if output.dtype != torch.bfloat16:
            return None
        if kind == "nan":
            return torch.full_like(output, float("nan"))
        return torch.roll(output, shifts=shift, dims=1)

    return conv.register_forward_hook(faulty_kernel)


def layer_cosines(teacher, wavs, wav_lens):
    """``{layer: (min, mean)}`` per-frame cosine of ``teacher``'s targets with its fp32 targets, by hand."""
    precision = teacher.precision
    output = teacher(wavs, wav_lens)
    teacher.precision = "fp32"
    reference = teacher(wavs, wav_lens)
    teacher.precision = precision
    result = {}
    for index, layer in enumerate(teacher.target_layers):
        cosines = _frame_cosines(reference, output, index)
        result[layer] = (float(cosines.min()), float(cosines.mean()))
    return result


@needs_bf16
def test_precision_self_check_accepts_healthy_bf16_and_logs(precision_teacher_folder, caplog):
    wavs, wav_lens = padded_batch([24000, 16000, 9000], seed=8)
    teacher = FrozenTeacher(precision_teacher_folder, per_utterance_norm=True, precision="bf16")
    assert teacher.precision_min_cosine == 0.99  # the YAMLs' teacher_precision_min_cosine
    with caplog.at_level("INFO", logger="robustdistiller.models.teacher"):
        cosines = teacher.check_precision(wavs, wav_lens)
    expected = layer_cosines(teacher, wavs, wav_lens)
    assert sorted(cosines) == [4, 8, 12]
    for layer, (low, mean) in cosines.items():
        assert low == pytest.approx(expected[layer][0], abs=1e-12)
        assert mean == pytest.approx(expected[layer][1], abs=1e-12)
        assert 0.999 < low <= mean <= 1.0 + 1e-12  # healthy bf16: 1 - cosine ~1e-4
    message = " ".join(record.getMessage() for record in caplog.records)
    assert "bf16 vs fp32" in message and "layer 4" in message and "layer 12" in message and "0.99" in message
    assert teacher.precision == "bf16"  # restored after the fp32 pass
    # fp32: nothing to compare, no forward at all
    teacher.precision = "fp32"
    calls = []
    handle = teacher.model.register_forward_hook(lambda *args: calls.append(1))
    assert teacher.check_precision(wavs, wav_lens) == {} and not calls
    handle.remove()


@needs_bf16
@pytest.mark.parametrize("kind", ["garbage", "nan"])
def test_precision_self_check_refuses_a_faulty_bf16_kernel(tiny_teacher_folder, kind):
    """The guard against oneDNN's bf16 grouped-conv fault, with the fault injected so that it fails on any
    CPU without the guard; the default tiny teacher (4 channels per group) also meets the real fault on
    CPUs with AMX. Faulty targets: per-frame cosine min 0.88 ("garbage"), far below the 0.99 bound."""
    wavs, wav_lens = padded_batch([24000, 16000, 9000], seed=4)
    teacher = FrozenTeacher(tiny_teacher_folder, precision="bf16")
    handle = inject_bf16_fault(teacher.model, kind)
    try:
        expected = layer_cosines(teacher, wavs, wav_lens)
        with pytest.raises(TeacherPrecisionError) as error:
            teacher.check_precision(wavs, wav_lens)
    finally:
        handle.remove()
    message = str(error.value)
    assert "teacher_precision='bf16'" in message and "teacher_precision_min_cosine=0.99" in message
    assert "teacher_precision: fp32" in message and "grouped Conv1d" in message
    for layer, (low, mean) in expected.items():
        assert not low >= 0.99  # the definition: below the bound (or NaN)
        assert f"layer {layer}: min {low:.4f} (mean {mean:.4f})" in message
    assert teacher.precision == "bf16"
    # -1 accepts anything (the documented way to override the guard)
    teacher.precision_min_cosine = -1.0
    if kind == "garbage":
        handle = inject_bf16_fault(teacher.model, kind)
        try:
            assert sorted(teacher.check_precision(wavs, wav_lens)) == [4, 8, 12]
        finally:
            handle.remove()


@needs_bf16
def test_a_run_with_a_faulty_bf16_teacher_is_refused_at_its_first_batch(
    mini_corpus, precision_teacher_folder, tmp_path
):
    """The Brain runs the self-check on its first batch, before any optimizer step."""
    from tests.recipes.test_distillation import build_brain, first_batch

    hparams, brain, train_data = build_brain(
        mini_corpus, precision_teacher_folder, str(tmp_path / "run"), teacher_precision="bf16"
    )
    assert hparams["teacher"].precision_min_cosine == 0.99
    batch = first_batch(train_data, size=2)
    handle = inject_bf16_fault(hparams["teacher"].model)
    try:
        with pytest.raises(TeacherPrecisionError, match="teacher_precision_min_cosine"):
            brain.fit_batch(batch)
    finally:
        handle.remove()
    assert brain.optimizer_step == 0
    brain.fit_batch(batch)  # the same run on a healthy kernel passes the check and trains
    assert brain.optimizer_step == 1


@pytest.mark.parametrize("bound", [1.5, -2, "high", None, True, float("nan")])
def test_invalid_precision_min_cosine_names_the_option(tiny_teacher_folder, bound):
    with pytest.raises(ValueError, match="teacher_precision_min_cosine") as error:
        FrozenTeacher(tiny_teacher_folder, precision="bf16", precision_min_cosine=bound)
    assert "[-1, 1]" in str(error.value)
    teacher = FrozenTeacher(tiny_teacher_folder, precision="bf16", precision_min_cosine=-1)
    with pytest.raises(ValueError, match="teacher_precision_min_cosine"):
        teacher.precision_min_cosine = bound
    assert teacher.precision_min_cosine == -1.0
