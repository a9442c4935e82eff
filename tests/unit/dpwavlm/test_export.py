"""DPWavLM after training: DPHuBERT ``.pth`` files through ``load_student`` / ``FrozenUpstream``, and the export.

Tiny compact models (random gates, then ``prune()``), CPU. The downstream recipe run on a trained DPWavLM is in
``tests/unit/dpwavlm/test_stages.py`` (it needs the tiny training run).
"""

from pathlib import Path
import json
import os
import shutil

import pytest
import torch
import transformers

from robustdistiller.downstream.upstream import FrozenUpstream, upstream_name
from robustdistiller.dpwavlm import DPWavLM, load_dphubert_checkpoint, save_dphubert_checkpoint
from robustdistiller.dpwavlm.encoder import DPWavLMEncoder
from robustdistiller.dpwavlm.export import export_dpwavlm, speech_like_probes
from robustdistiller.dpwavlm.interface import DPWavLMInterface
from robustdistiller.dpwavlm.stages import FINAL_FILE, PRUNED_FILE, SUMMARY_FILE
from robustdistiller.export.cli import main as export_main
from robustdistiller.export.errors import ExportError
from robustdistiller.export.layout import DPWAVLM_EXPORT_FILE
from robustdistiller.export.loading import load_student, locate_checkpoint
from robustdistiller.export.student_folder import export_student
from robustdistiller.models.student import num_parameters
from tests.unit.dpwavlm.test_model import diarizen_like_config, force, gated_model

SUMMARY = {
    "teacher_source": "microsoft/wavlm-base-plus",
    "teacher_num_params": 400_000,
    "student_input": "noisy",
    "enhancement_weight": 2.0,
    "stage1": {
        "steps": 12,
        "target_sparsity": 0.3,
        "expected_sparsity": 0.31,
        "initial_expected_sparsity": 0.09,
        "gated_student_num_params": 390_000,
    },
    "stage2": {"steps": 2},
}


LAYERS = 6  # gated_model's 0-head layer is 3, its 0-unit FFN 5


def compact_model(last_conv_on=True, seed=0):
    """A pruned tiny DPWavLM with uneven widths (a 0-head layer, a 0-unit FFN)."""
    model = gated_model(num_layers=LAYERS, seed=seed, last_conv_on=last_conv_on)
    model.prune()
    return model.eval()


def write_run(folder, model, summary=SUMMARY, name=FINAL_FILE):
    """A DPWavLM output folder as ``train.py hparams/robust_dpwavlm.yaml`` leaves it."""
    os.makedirs(folder, exist_ok=True)
    projections = torch.nn.ModuleList(torch.nn.Linear(model.hidden_size, model.hidden_size) for _ in range(2))
    path = save_dphubert_checkpoint(os.path.join(folder, name), model, projections)
    with open(os.path.join(folder, SUMMARY_FILE), "w") as fout:
        json.dump(summary, fout)
    return str(path)


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(5)
    wavs = torch.randn(2, 4000, generator=generator)
    wavs[1, 2600:] = 0.0
    return wavs, torch.tensor([1.0, 0.65])


@pytest.fixture(scope="module")
def exact_run(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("dpwavlm_exact") / "run")
    model = compact_model(last_conv_on=True)
    return folder, write_run(folder, model), model


@pytest.fixture(scope="module")
def inexact_run(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("dpwavlm_inexact") / "run")
    model = compact_model(last_conv_on=False, seed=1)
    return folder, write_run(folder, model), model


def test_load_student_gives_dphubert_states(exact_run, batch):
    """Layer 0 = projection output (DPHuBERT), hidden_states[0] = encoder input, layers 1..L as the model's."""
    folder, path, model = exact_run
    encoder, info = load_student(path)
    assert isinstance(encoder, DPWavLMEncoder) and info["format"] == "dphubert"
    assert info["step"] == 14 and info["training"]["stage1"]["target_sparsity"] == 0.3
    wavs, wav_lens = batch
    with torch.no_grad():
        output = encoder(wavs[:1], wav_lens[:1])
        reference, _ = model.extract_features(wavs[:1])
    assert output.predictions is None and len(output.hidden_states) == LAYERS + 1
    assert torch.allclose(output.projection, reference[0], atol=1e-6)
    for ours, theirs in zip(output.hidden_states[1:], reference[1:]):
        assert torch.allclose(ours, theirs, atol=1e-5)
    transformer = model.encoder.transformer
    with torch.no_grad():
        encoder_input = transformer.layer_norm(reference[0] + transformer.pos_conv_embed(reference[0]))
    assert torch.allclose(output.hidden_states[0], encoder_input, atol=1e-5)
    # the output folder and the file are the same student
    assert locate_checkpoint(folder) == (path, "dphubert")


def test_per_utterance_norm_makes_padding_irrelevant(exact_run, batch):
    _, path, _ = exact_run
    wavs, wav_lens = batch
    valid = int(round(float(wav_lens[1]) * wavs.shape[1]))
    for per_utterance_norm, should_match in ((True, True), (False, False)):
        encoder, _ = load_student(path, per_utterance_norm=per_utterance_norm)
        with torch.no_grad():
            padded = encoder(wavs, wav_lens)
            single = encoder(wavs[1:, :valid])
        frames = int(padded.frame_mask[1].sum())
        assert frames == single.projection.shape[1]
        difference = max(
            float((a[1, :frames] - b[0]).abs().max()) for a, b in zip(padded.hidden_states, single.hidden_states)
        )
        assert (difference < 1e-4) == should_match, (per_utterance_norm, difference)


def test_frozen_upstream_reads_dphubert_files(exact_run, tmp_path, batch):
    folder, path, model = exact_run
    upstream = FrozenUpstream(path)
    assert (
        upstream.kind == "student" and upstream.num_layers == LAYERS + 1 and upstream.hidden_size == model.hidden_size
    )
    assert upstream.include_predictions is False  # no prediction heads
    features, frame_mask = upstream(*batch)
    assert features.shape[:2] == (2, LAYERS + 1) and frame_mask.shape == (2, features.shape[2])
    with torch.no_grad():
        reference, _ = model.extract_features(batch[0][:1])
    frames = reference[0].shape[1]
    assert torch.allclose(features[0, 0, :frames], reference[0][0], atol=1e-5)  # layer 0 = projection
    assert torch.allclose(features[0, -1, :frames], reference[-1][0], atol=1e-5)
    # the fingerprint names the weights, not the path: a copy elsewhere is the same upstream
    copy = str(tmp_path / "copy.pth")
    shutil.copyfile(path, copy)
    assert FrozenUpstream(copy).identity()["fingerprint"] == upstream.identity()["fingerprint"]
    assert FrozenUpstream(folder).identity()["fingerprint"] == upstream.identity()["fingerprint"]
    assert upstream_name(path) == "run-final"


def test_released_style_uneven_file_loads(tmp_path, batch):
    """A DiariZen-like uneven config (a layer without attention, a layer without FFN) under a released name."""
    torch.manual_seed(3)
    model = DPWavLM(diarizen_like_config()).eval()
    path = str(save_dphubert_checkpoint(tmp_path / "RDDPWavLM-sp0.75.pth", model))
    upstream = FrozenUpstream(path)
    features, frame_mask = upstream(*batch)
    assert upstream.num_layers == 6 and torch.isfinite(features).all()
    assert upstream_name(path) == "RDDPWavLM-sp0.75"


def test_unfinished_run_and_bad_files_are_named(tmp_path, exact_run):
    _, _, model = exact_run
    folder = str(tmp_path / "unfinished")
    write_run(folder, model, name=PRUNED_FILE)
    with pytest.raises(ExportError, match=f"stage 2 has not finished.*{PRUNED_FILE}"):
        load_student(folder)
    with pytest.raises(ExportError, match="stage 2 has not finished"):  # not taken for a Hugging Face folder
        FrozenUpstream(folder)
    encoder, _ = load_student(os.path.join(folder, PRUNED_FILE))  # the stage-1 model, when asked for
    assert encoder.num_layers == LAYERS
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ExportError, match="broken.pth"):
        FrozenUpstream(str(broken), kind="student")
    not_dphubert = tmp_path / "other.pth"
    torch.save({"model": {}}, not_dphubert)
    with pytest.raises(ExportError, match="missing key 'state_dict'"):
        load_student(str(not_dphubert))


def test_export_exact_copy_loads_everywhere(exact_run, tmp_path, batch):
    folder, path, model = exact_run
    output = str(tmp_path / "export")
    result = export_student(folder, output)
    assert result["hf_copy"]["written"] and result["hf_copy"]["exact"]
    assert {
        DPWAVLM_EXPORT_FILE,
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "README.md",
        "hyperparams.yaml",
        "encoder.ckpt",
        SUMMARY_FILE,
        "export_manifest.json",
    } == set(result["files"])
    # the canonical file is the source, byte for byte
    assert Path(os.path.join(output, DPWAVLM_EXPORT_FILE)).read_bytes() == Path(path).read_bytes()
    # transformers copy: layers 1..L equal ours; its hidden_states[0] is the encoder input
    hf_model = transformers.WavLMModel.from_pretrained(output).eval()
    encoder, _ = load_student(output)
    wav = batch[0][:1]
    with torch.no_grad():
        theirs = hf_model(wav, output_hidden_states=True).hidden_states
        ours = encoder(wav)
    assert len(theirs) == LAYERS + 1
    for a, b in zip(ours.hidden_states, theirs):
        assert torch.allclose(a, b, atol=1e-5)
    assert num_parameters(hf_model) > num_parameters(model)  # HF counts the zero padding
    # the export folder is a DPWavLM upstream (not the HF copy): same fingerprint as the run's file
    upstream = FrozenUpstream(output)
    assert (
        upstream.kind == "student"
        and upstream.identity()["fingerprint"] == FrozenUpstream(path).identity()["fingerprint"]
    )
    # SpeechBrain's pretrained interface: the same states as the upstream (layer 0 = projection output)
    interface = DPWavLMInterface.from_hparams(source=output, savedir=str(tmp_path / "sb_cache"))
    encoded = interface.encode_batch(*batch)
    features, frame_mask = upstream(*batch)
    assert interface.num_layers == LAYERS and encoded.predictions is None
    assert torch.equal(encoded.frame_mask, frame_mask)
    assert torch.allclose(encoded.hidden_states, features, atol=1e-6)
    card = Path(os.path.join(output, "README.md")).read_text()
    assert f"{num_parameters(model):,}" in card and "RobustDistiller + DPWavLM" in card
    assert "| 4 | 0 of 4 |" in card and "| 6 | " in card  # the 0-head layer 4 (1-based) is listed
    assert "target 0.3; expected sparsity at the end of stage 1 0.3100" in card
    assert "WavLMModel.from_pretrained" in card
    # a second export needs --overwrite, and then replaces the earlier one
    with pytest.raises(ExportError, match="not empty"):
        export_student(path, output)
    assert export_student(path, output, overwrite=True)["hf_copy"]["written"]


def copy_error_by_hand(model, hf_model, waveforms):
    """(max abs, pooled relative L2) of hidden states 1..L, HF copy vs model, one waveform at a time."""
    max_abs, difference, reference = 0.0, 0.0, 0.0
    with torch.no_grad():
        for wav in waveforms:
            ours, _ = model.eval().extract_features(wav[None])
            theirs = hf_model.eval()(wav[None], output_hidden_states=True).hidden_states
            assert len(theirs) == len(ours)
            for a, b in zip(ours[1:], theirs[1:]):
                max_abs = max(max_abs, float((a - b).abs().max()))
                difference += float((a - b).double().pow(2).sum())
                reference += float(a.double().pow(2).sum())
    return max_abs, (difference / reference) ** 0.5


def test_speech_like_probes_are_the_mini_corpus_voices():
    waveforms, description = speech_like_probes()
    assert len(waveforms) == 4 and "eSpeak NG" in description and "robustdistiller.testing.mini_corpus" in description
    for wav in waveforms:
        assert wav.dtype == torch.float32 and wav.dim() == 1 and wav.numel() > 16000  # sentences, > 1 s
        assert 0.1 < float(wav.abs().max()) < 1.0 and float(wav.std()) > 0.01  # speech level, not silence
    again, _ = speech_like_probes.__wrapped__()  # synthesised anew: deterministic
    assert all(torch.equal(a, b) for a, b in zip(waveforms, again))


def test_export_inexact_copy_policy(inexact_run, tmp_path):
    folder, path, model = inexact_run
    dummy = model.feature_extractor.dummy_weight
    assert not torch.equal(dummy, torch.ones_like(dummy))  # the last conv layer was pruned
    skipped = export_dpwavlm(path, str(tmp_path / "skip"))
    assert not skipped["hf_copy"]["written"] and skipped["hf_copy"]["max_abs_error"] > 1e-4
    assert "config.json" not in skipped["files"]
    card = Path(os.path.join(tmp_path / "skip", "README.md")).read_text()
    assert "not written: max abs difference" in card and "speech-like utterances" in card
    assert "the CNN channels were gated" in card
    with pytest.raises(ExportError, match="would differ from the model by .*speech-like.*--hf-inexact=warn"):
        export_dpwavlm(path, str(tmp_path / "refuse"), hf_inexact="refuse")
    assert not os.path.exists(tmp_path / "refuse")  # nothing left behind
    with pytest.warns(UserWarning, match="dummy_weight is not all ones"):
        warned = export_dpwavlm(path, str(tmp_path / "warn"), hf_inexact="warn")
    assert warned["hf_copy"]["written"] and "config.json" in warned["files"]
    assert "**inexact**" in Path(os.path.join(tmp_path / "warn", "README.md")).read_text()
    # the reported error is the written copy's on the speech-like probes, computed here by hand
    max_abs, relative = copy_error_by_hand(
        model, transformers.WavLMModel.from_pretrained(str(tmp_path / "warn")), speech_like_probes()[0]
    )
    for report in (skipped["hf_copy"], warned["hf_copy"]):
        assert report["max_abs_error"] == pytest.approx(max_abs, rel=1e-6)
        assert report["relative_error"] == pytest.approx(relative, rel=1e-6)


def test_gated_cnn_without_a_pruned_channel_is_inexact(tmp_path):
    """DPHuBERT's prune() scales dummy_weight by the last conv layer's soft mask whenever that layer has gates,
    even if it removes no channel: here every channel is kept at the gates' initial log_alpha (mask 0.996)."""
    gated = gated_model(num_layers=LAYERS, seed=2)
    last = gated.feature_extractor.conv_layers[-1]
    force(last.hard_concrete, 4.595)  # log(0.99 / 0.01): DPHuBERT's initial conv-channel gate
    channels = last.conv.out_channels
    gated.prune()
    model = gated.eval()
    assert last.conv.out_channels == channels  # the last CNN layer is unpruned...
    dummy = model.feature_extractor.dummy_weight
    assert float(dummy.max()) < 1.0  # ...but its channels were gated
    path = write_run(str(tmp_path / "run"), model)
    result = export_dpwavlm(path, str(tmp_path / "export"))
    report = result["hf_copy"]
    assert not report["exact"] and not report["written"]
    card = Path(os.path.join(tmp_path / "export", "README.md")).read_text()
    assert "the CNN channels were gated" in card and "was pruned" not in card
    assert f"max abs difference {report['max_abs_error']:.2g}" in card and report["probe"] in card
    with pytest.warns(UserWarning, match="dummy_weight is not all ones"):
        export_dpwavlm(path, str(tmp_path / "warn"), hf_inexact="warn")
    max_abs, relative = copy_error_by_hand(
        model, transformers.WavLMModel.from_pretrained(str(tmp_path / "warn")), speech_like_probes()[0]
    )
    assert report["max_abs_error"] == pytest.approx(max_abs, rel=1e-6) and max_abs > 1e-4  # not exact
    assert report["relative_error"] == pytest.approx(relative, rel=1e-6)


def test_export_refuses_gated_files_and_options_that_do_not_apply(tmp_path, exact_run, capsys):
    gated = gated_model(num_layers=LAYERS)
    path = str(save_dphubert_checkpoint(tmp_path / "gated.pth", gated))
    with pytest.raises(ExportError, match="still has pruning gates"):
        export_dpwavlm(path, str(tmp_path / "out"))
    _, final, _ = exact_run
    with pytest.raises(ExportError, match="--s3prl applies to DistilHuBERT-layout"):  # --onnx: test_onnx_dpwavlm.py
        export_student(final, str(tmp_path / "s3prl"), s3prl=True)
    assert export_main([final, str(tmp_path / "cli")]) == 0
    assert "transformers copy: written" in capsys.readouterr().out
    model, _ = load_dphubert_checkpoint(os.path.join(tmp_path / "cli", DPWAVLM_EXPORT_FILE))
    assert num_parameters(model) == num_parameters(exact_run[2])
