"""Export of a trained student and its reloading: SpeechBrain interface, foreign_class, transformers.

The issue's acceptance check: a student trained by the real recipe is exported, re-loaded in fresh
processes with no network (``foreign_class`` and ``transformers`` without this package on the path),
and every loader gives the trained module's features (max abs difference < 1e-4, padded batches
included); ours -> s3prl -> ours is exact.
"""

from pathlib import Path
import json
import os

import pytest
import soundfile
import torch
import torchaudio
from transformers import HubertModel

from robustdistiller.export.cli import main
from robustdistiller.export.errors import ExportError
from robustdistiller.export.loading import load_student, locate_checkpoint
from robustdistiller.export.student_folder import export_student
from robustdistiller.export.verify import parity_batch, reference_features, verify_export
from robustdistiller.inference.interface import EncoderInterface, ModelSourceError, ssl_hidden_states


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """(folder, student) of the trained run, exported with the s3prl file."""
    folder = str(tmp_path_factory.mktemp("exported") / "student")
    export_student(trained_run, folder, s3prl=True)
    student, _ = load_student(trained_run)
    return folder, student


@pytest.fixture(scope="module")
def interface(exported, tmp_path_factory):
    folder, _ = exported
    return EncoderInterface.from_hparams(source=folder, savedir=str(tmp_path_factory.mktemp("savedir")))


def test_fresh_processes_load_identical_features_six_ways(exported):
    folder, student = exported
    results = verify_export(folder, student)  # raises above 1e-4
    assert set(results) == {
        "speechbrain_interface",
        "foreign_class",
        "transformers",
        "speechbrain_hubert",
        "transformers_padding_safe",
        "speechbrain_lobe",
    }
    for loader, result in results.items():
        assert result["hidden_states"] < 1e-4, loader
    # the padding-safe pair (padded batch at once) to 1e-5, as one utterance at a time
    assert results["transformers_padding_safe"]["hidden_states"] < 1e-5
    assert results["speechbrain_lobe"]["hidden_states"] < 1e-5
    assert results["transformers_padding_safe"]["standalone"] and results["speechbrain_lobe"]["standalone"]
    assert results["speechbrain_interface"]["predictions"] < 1e-4
    assert results["foreign_class"]["predictions"] < 1e-4
    # foreign_class and the HF loaders ran with no robustdistiller module imported
    assert results["foreign_class"]["standalone"] and results["transformers"]["standalone"]
    assert not results["speechbrain_interface"]["standalone"]


def test_every_export_ships_the_padding_safe_class(exported):
    folder, _ = exported
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as fin:
        config = json.load(fin)
    assert config["auto_map"] == {"AutoModel": "modeling_robustdistiller.PaddingSafeHubertModel"}
    assert os.path.isfile(os.path.join(folder, "modeling_robustdistiller.py"))
    with open(os.path.join(folder, "export_manifest.json"), encoding="utf-8") as fin:
        assert "modeling_robustdistiller.py" in json.dumps(json.load(fin))


def test_padded_batch_matches_single_utterances_in_every_loader(exported, interface):
    folder, student = exported
    batch = parity_batch(seconds=(1.2, 0.5))
    reference = reference_features(student, batch)
    out = interface.encode_batch(batch["wavs"], batch["wav_lens"])
    short_frames = int(out.frame_mask[1].sum())
    assert short_frames == reference["hidden_states"][1].shape[1] < out.frame_mask.shape[1]
    torch.testing.assert_close(out.hidden_states[1, :, :short_frames], reference["hidden_states"][1], atol=1e-4, rtol=0)
    # the HF model on the same padded batch, with the per-utterance CNN norm the student trained with
    model = HubertModel.from_pretrained(folder).eval()
    lengths = batch["lengths"]
    with torch.no_grad():
        hidden, frame_mask = ssl_hidden_states(model, batch["wavs"], batch["wav_lens"], per_utterance_norm=True)
        plain, _ = ssl_hidden_states(model, batch["wavs"], batch["wav_lens"], per_utterance_norm=False)
        single = model(batch["wavs"][1:, : lengths[1]], output_hidden_states=True).hidden_states
    for layer in range(len(hidden)):
        torch.testing.assert_close(hidden[layer][1, :short_frames], single[layer][0], atol=1e-4, rtol=0)
    # without it the padded item drifts: the reason the model card and interface care
    assert (plain[-1][1, :short_frames] - single[-1][0]).abs().max() > 1e-3
    assert frame_mask.sum(dim=1).tolist() == [f.shape[1] for f in reference["hidden_states"]]


def test_features_are_the_trained_weights_not_a_fresh_model(exported, interface):
    folder, student = exported
    wav = parity_batch(seconds=(0.8,))["wavs"]
    out = interface.encode_batch(wav)
    fresh = HubertModel(student.config).eval()
    with torch.no_grad():
        fresh_hidden = fresh(wav, output_hidden_states=True).hidden_states[-1]
    assert (out.hidden_states[0, -1] - fresh_hidden[0]).abs().max() > 1e-2
    with torch.no_grad():
        predictions = student(wav).predictions
    torch.testing.assert_close(out.predictions, predictions, atol=1e-4, rtol=0)


def test_encode_file_resamples_and_downmixes(exported, interface, tmp_path):
    signal = parity_batch(seconds=(1.0,))["wavs"][0]
    mono_path = tmp_path / "mono16k.wav"
    soundfile.write(mono_path, signal.numpy(), 16000, subtype="FLOAT")
    torch.testing.assert_close(
        interface.encode_file(str(mono_path)).hidden_states, interface.encode_batch(signal).hidden_states
    )
    # stereo at 44.1 kHz: the interface averages the channels and resamples to 16 kHz
    upsampled = torchaudio.functional.resample(signal, 16000, 44100)
    stereo = torch.stack([upsampled, 0.5 * upsampled], dim=1)
    stereo_path = tmp_path / "stereo44k.wav"
    soundfile.write(stereo_path, stereo.numpy(), 44100, subtype="FLOAT")
    from_file = interface.encode_file(str(stereo_path))
    expected = interface.encode_batch(torchaudio.functional.resample(0.75 * upsampled, 44100, 16000))
    assert from_file.hidden_states.shape == expected.hidden_states.shape
    torch.testing.assert_close(from_file.hidden_states, expected.hidden_states, atol=1e-4, rtol=0)
    # the same through encode_batch's own sample_rate and channel handling
    batch_out = interface.encode_batch(stereo.unsqueeze(0), sample_rate=44100)
    torch.testing.assert_close(batch_out.hidden_states, expected.hidden_states, atol=1e-4, rtol=0)
    # and close to the original 16 kHz signal (resampling round trip only)
    original = interface.encode_batch(0.75 * signal).hidden_states
    frames = min(original.shape[2], from_file.hidden_states.shape[2])
    relative = (original[..., :frames, :] - from_file.hidden_states[..., :frames, :]).norm() / original.norm()
    assert relative < 0.05


def test_every_checkpoint_form_loads_the_same_student(trained_run, exported):
    folder, student = exported
    reference = student.state_dict()
    checkpoint_folder, kind = locate_checkpoint(trained_run)
    assert kind == "speechbrain" and os.path.basename(checkpoint_folder).startswith("CKPT+")
    sources = [
        trained_run,
        os.path.join(trained_run, "save"),
        checkpoint_folder,
        os.path.join(checkpoint_folder, "student.ckpt"),
        folder,
        os.path.join(folder, "s3prl_distiller.ckpt"),
    ]
    for source in sources:
        loaded, info = load_student(source)
        state = loaded.state_dict()
        for name, tensor in reference.items():
            if name != "_extra_state":
                assert torch.equal(state[name], tensor), (source, name)
        assert loaded.target_layers == student.target_layers
        assert info["step"] == 4, source


def test_s3prl_round_trip_is_exact(exported):
    folder, student = exported
    loaded, info = load_student(os.path.join(folder, "s3prl_distiller.ckpt"))
    assert info["format"] == "s3prl"
    batch = parity_batch()
    loaded.per_utterance_norm = student.per_utterance_norm
    with torch.no_grad():
        expected, actual = student(batch["wavs"], batch["wav_lens"]), loaded(batch["wavs"], batch["wav_lens"])
    for before, after in zip(expected.hidden_states, actual.hidden_states):
        assert torch.equal(before, after)
    assert torch.equal(expected.predictions, actual.predictions)


def test_model_card_and_training_info(exported, trained_run):
    folder, student = exported
    card = Path(os.path.join(folder, "README.md")).read_text(encoding="utf-8")
    for expected in (
        "RobustDistiller",
        "wavlm",
        "train-clean-100",
        "4 of 4 scheduled",
        f"{sum(p.numel() for p in student.backbone.parameters()):,}",
        "EncoderInterface.from_hparams",
        "foreign_class",
        "HubertModel.from_pretrained",
        "distiller_local",
    ):
        assert expected in card, expected


def test_bad_sources_are_named(tmp_path, trained_run):
    with pytest.raises(ExportError, match="does not exist"):
        load_student(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="No student found in .*empty"):
        load_student(str(tmp_path / "empty"))
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(ValueError, match="notes.ckpt"):
        load_student(str(not_a_checkpoint))
    assert main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out").exists()


def test_export_never_overwrites_silently(trained_run, tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "my_notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not empty"):
        export_student(trained_run, str(target))
    export_student(trained_run, str(target), overwrite=True, include_heads=False)
    assert (target / "my_notes.txt").read_text() == "keep me"
    assert not (target / "prediction_split.ckpt").exists()
    loaded = EncoderInterface.from_hparams(source=str(target), savedir=str(tmp_path / "savedir"))
    assert loaded.encode_batch(torch.randn(1, 8000)).predictions is None


def test_hub_ids_fail_fast_offline_with_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="pass its local folder"):
        EncoderInterface.from_hparams(source="no-such-user/no-such-model", savedir=str(tmp_path / "a"))
    with pytest.raises(ExportError, match="download the model elsewhere and pass its local folder"):
        load_student("no-such-user/no-such-model")
    with pytest.raises(ModelSourceError, match="not a folder"):
        EncoderInterface.from_hparams(source=str(tmp_path / "nowhere"), savedir=str(tmp_path / "b"))
    # without the offline flag the same call goes through SpeechBrain's fetching (network on a connected
    # machine); here the hub is unreachable, which must also end in a ModelSourceError
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2")
    with pytest.raises(ModelSourceError, match="Hugging Face hub"):
        EncoderInterface.from_hparams(source="no-such-user/no-such-model", savedir=str(tmp_path / "c"))


def test_command_line_output_names_the_final_folder_once_and_reports_verify_progress(
    trained_run, tmp_path, capsys, caplog, monkeypatch
):
    """Issue 22, item 9: no staging path in the logs or output, "Exported to" once, a line per --verify step."""
    import logging

    import robustdistiller.export.verify as verify_module

    def fake_probe(loader, folder, batch_file, work_folder):  # the fresh processes are tested above
        student, _ = load_student(folder)
        return {**reference_features(student, torch.load(batch_file)), "modules": []}

    monkeypatch.setattr(verify_module, "run_probe", fake_probe)
    caplog.set_level(logging.DEBUG)
    target = tmp_path / "cli_export"
    assert main([trained_run, str(target), "--s3prl", "--verify"]) == 0
    captured = capsys.readouterr()
    output = captured.out
    assert "Writing model shards" not in captured.err  # transformers' bar for a model this size says nothing
    shown = output + "\n".join(record.getMessage() for record in caplog.records if record.levelno >= logging.INFO)
    assert ".export-staging-" not in shown, shown
    assert shown.count("Exported to") + shown.count("Exported the student to") == 1, shown
    assert f"Exported to {target}" in output
    for loader in verify_module.PROBES:
        assert f"loading in a fresh process with {loader} ..." in output, output
    assert output.index("verifying") < output.index("| loader |")
