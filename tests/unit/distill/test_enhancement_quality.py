"""Tests of the enhancement quality metrics: inverse STFT, SI-SNR, PESQ, STOI, skipping, evaluation."""

import csv
import logging
import math
import os

import numpy as np
import pytest
import soundfile
import speechbrain as sb
import torch
from speechbrain.augment.time_domain import AddNoise

from robustdistiller.data.corruption import Corruptor
from robustdistiller.data.pipeline import make_distillation_dataset
from robustdistiller.models.enhancement import EnhancementHead, stft_complex, stft_magnitude
from robustdistiller.distill.enhancement_quality import (
    QualityMeans,
    enhance_batch,
    enhanced_waveforms,
    evaluate_enhancement_quality,
    si_snr,
    speech_quality,
)
from robustdistiller.distill.evaluation import evaluate_conditions
from robustdistiller.testing.synthesis import synthesize_speech
from robustdistiller.models.student import DistillerStudent, build_student_config
from robustdistiller.models.teacher import FrozenTeacher, random_teacher_config

QUALITY_KEYS = {"pesq", "stoi", "si_snr", "si_snr_noisy", "num_scored", "num_skipped"}


@pytest.fixture(scope="module")
def speech():
    """Two synthetic English utterances (eSpeak NG), 16 kHz float32 numpy arrays."""
    requests = [
        {
            "text": "the quiet garden was green in the summer evening",
            "voice": "en-us+m3",
            "rate": 160,
            "pitch": 50,
            "range": 50,
        },
        {"text": "she said the river is far from the city", "voice": "en+f3", "rate": 170, "pitch": 60, "range": 60},
    ]
    return synthesize_speech(requests)


def noisy_at_snr(clean, snr, seed=0):
    noise = np.random.default_rng(seed).standard_normal(len(clean)).astype(np.float32)
    noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2)) / 10 ** (snr / 20)
    return clean + noise


def numpy_si_snr(estimate, reference):
    estimate = estimate.astype(np.float64) - estimate.mean()
    reference = reference.astype(np.float64) - reference.mean()
    target = np.dot(estimate, reference) / np.dot(reference, reference) * reference
    return 10 * np.log10(np.sum(target**2) / np.sum((estimate - target) ** 2))


def identity_head(input_size):
    """A head whose mask is exactly 1 (sigmoid(30) == 1 in float32)."""
    torch.manual_seed(0)
    head = EnhancementHead(input_size=input_size, hidden_size=8, num_layers=1)
    with torch.no_grad():
        head.output_layer.weight.zero_()
        head.output_layer.bias.fill_(30.0)
    return head


def tiny_student():
    torch.manual_seed(0)
    return DistillerStudent(build_student_config(random_teacher_config("wavlm")))


def test_stft_complex_is_the_magnitude_with_phase():
    wavs = torch.randn(2, 8000)
    spectrum = stft_complex(wavs)
    assert spectrum.shape == (2, 51, 257) and spectrum.is_complex()
    assert torch.equal(spectrum.abs(), stft_magnitude(wavs))


def test_all_ones_mask_reconstructs_the_noisy_waveform():
    lengths = [16000, 9600, 4000]
    noisy = torch.zeros(3, 16000)
    for index, length in enumerate(lengths):
        noisy[index, :length] = 0.3 * torch.randn(length)
    wav_lens = torch.tensor(lengths, dtype=torch.float) / 16000
    # the head's mask has 2F <= S frames; the missing trailing frames repeat the last one
    waveforms = enhanced_waveforms(torch.ones(3, 98, 257), noisy, wav_lens)
    assert [len(waveform) for waveform in waveforms] == lengths
    for index, length in enumerate(lengths):
        assert float((waveforms[index] - noisy[index, :length]).abs().max()) < 1e-4
    halved = enhanced_waveforms(torch.full((3, 98, 257), 0.5), noisy, wav_lens)
    assert torch.allclose(halved[2], 0.5 * noisy[2, :4000], atol=1e-4)


def test_identity_head_through_the_student_reconstructs_the_noisy_waveform():
    student = tiny_student().eval()
    head = identity_head(student.config.conv_dim[-1]).eval()
    noisy = torch.zeros(2, 12000)
    noisy[0] = 0.2 * torch.randn(12000)
    noisy[1, :7000] = 0.2 * torch.randn(7000)
    wav_lens = torch.tensor([1.0, 7000 / 12000])
    with torch.no_grad():
        for enhancement_input in ("cnn", "last_hidden"):
            if enhancement_input == "last_hidden":
                head = identity_head(student.config.hidden_size).eval()
            waveforms = enhance_batch(head, student(noisy, wav_lens), noisy, wav_lens, enhancement_input)
            assert [len(waveform) for waveform in waveforms] == [12000, 7000]
            assert float((waveforms[1] - noisy[1, :7000]).abs().max()) < 1e-4


def test_si_snr_matches_numpy_and_its_extremes(speech):
    clean = speech[0]
    noisy = noisy_at_snr(clean, 5.0) + 0.3  # a DC offset: zero-mean first
    assert si_snr(torch.from_numpy(noisy), torch.from_numpy(clean)) == pytest.approx(
        numpy_si_snr(noisy, clean), abs=1e-6
    )
    assert si_snr(noisy, clean) == pytest.approx(5.0, abs=0.3)
    assert si_snr(-2.5 * clean + 1.0, clean) > 80  # scale (even negative) and offset invariant
    independent = np.random.default_rng(1).standard_normal(len(clean))
    assert si_snr(independent, clean) < -20
    # SpeechBrain adds 1e-8 to the power ratio before the log: ~0.08 dB at -62 dB, nothing near 0 dB
    assert si_snr(independent, clean) == pytest.approx(numpy_si_snr(independent, clean), abs=0.1)
    with pytest.raises(ValueError):
        si_snr(clean[:-1], clean)


def test_pesq_and_stoi_rank_clean_above_noisy(speech):
    clean = speech[0]
    perfect = speech_quality(clean, clean, 16000, "clean")
    noisy = speech_quality(noisy_at_snr(clean, 0.0), clean, 16000, "noisy")
    assert 4.4 < perfect["pesq"] <= 4.65 and perfect["stoi"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["si_snr"] > 80
    assert 1.0 <= noisy["pesq"] < perfect["pesq"] - 2.0
    assert 0.0 < noisy["stoi"] < perfect["stoi"] - 0.05
    assert noisy["si_snr"] == pytest.approx(0.0, abs=0.3)


def test_silent_and_short_utterances_are_skipped_and_counted(speech, caplog):
    clean = torch.from_numpy(speech[1])
    caplog.set_level(logging.WARNING, logger="robustdistiller.distill.enhancement_quality")
    assert speech_quality(torch.zeros(16000), torch.zeros(16000), 16000, "silent-1") is None
    assert speech_quality(clean[:1600], clean[:1600], 16000, "short-1") is None
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "silent-1" in messages[0] and "silent" in messages[0].split("skipped")[1]
    assert "short-1" in messages[1] and "shorter than" in messages[1]

    caplog.clear()
    means = QualityMeans(max_utterances=3)
    waveforms = [clean, torch.zeros(16000), clean[:1600], clean]  # the 4th is past the limit
    means.update(["speech", "silent-2", "short-2", "extra"], waveforms, waveforms, waveforms)
    summary = means.summary()
    assert summary["num_scored"] == 1 and summary["num_skipped"] == 2 and means.remaining == 0
    assert summary["pesq"] > 4.4 and summary["si_snr_noisy"] > 80
    assert {"silent-2", "short-2"} == {
        name for record in caplog.records for name in ("silent-2", "short-2") if name in record.getMessage()
    }
    assert math.isnan(QualityMeans().summary()["pesq"])


@pytest.fixture(scope="module")
def utterance_csv(speech, tmp_path_factory):
    """CSV (``ID,duration,wav``) of two speech utterances, a silent one and a 0.1 s one."""
    folder = tmp_path_factory.mktemp("quality")
    waveforms = {
        "spk1-utt1": speech[0],
        "spk2-utt1": speech[1],
        "silent": np.zeros(16000, dtype=np.float32),
        "short": speech[1][4000:5600],
    }
    rows = []
    for name, waveform in waveforms.items():
        path = os.path.join(folder, f"{name}.wav")
        soundfile.write(path, waveform, 16000)
        rows.append({"ID": name, "duration": len(waveform) / 16000, "wav": path})
    csv_path = os.path.join(folder, "utterances.csv")
    with open(csv_path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=["ID", "duration", "wav"])
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


def white_noise_corruptor():
    return Corruptor(None, AddNoise(snr_low=0, snr_high=20), None, {"clean": 0.5, "noise": 0.5})


def test_evaluate_enhancement_quality_on_a_dataset_and_on_batches(utterance_csv, caplog):
    student = tiny_student().train()
    head = identity_head(student.config.conv_dim[-1]).train()
    dataset = make_distillation_dataset(
        utterance_csv,
        white_noise_corruptor(),
        max_crop_samples=40000,
        random_crop=False,
        condition="noise",
        snr=5.0,
    )
    caplog.set_level(logging.WARNING, logger="robustdistiller.distill.enhancement_quality")
    summary = evaluate_enhancement_quality(student, head, dataset, num_utterances=3, batch_size=2)
    assert set(summary) == QUALITY_KEYS
    assert summary["num_scored"] == 2 and summary["num_skipped"] == 1  # the 4th (short) is not reached
    assert any("silent" in record.getMessage() for record in caplog.records)
    # identity mask: the "enhanced" waveform is the noisy one
    assert summary["si_snr"] == pytest.approx(summary["si_snr_noisy"], abs=1e-2)
    assert summary["si_snr_noisy"] == pytest.approx(5.0, abs=0.5)
    assert 1.0 < summary["pesq"] < 4.0 and 0.0 < summary["stoi"] < 1.0
    assert student.training and head.training  # modes restored

    batches = list(sb.dataio.dataloader.make_dataloader(dataset, batch_size=4))
    everything = evaluate_enhancement_quality(student.eval(), head, batches, device="cpu")
    assert everything["num_scored"] == 2 and everything["num_skipped"] == 2
    assert everything["pesq"] == pytest.approx(summary["pesq"], abs=1e-3)
    assert not student.training


def test_evaluate_conditions_adds_quality_per_condition(utterance_csv, tiny_teacher_folder):
    student = tiny_student()
    teacher = FrozenTeacher(tiny_teacher_folder)
    torch.manual_seed(0)
    head = EnhancementHead(input_size=student.config.conv_dim[-1], hidden_size=8, num_layers=1).train()
    conditions = {"clean": {"condition": "clean"}, "snr0": {"condition": "noise", "snr": 0}}
    results = evaluate_conditions(
        student,
        teacher,
        utterance_csv,
        white_noise_corruptor(),
        conditions,
        batch_size=2,
        max_crop_samples=40000,
        enhancement_head=head,
        quality_utterances=4,
    )
    assert head.training
    for name in conditions:
        assert {"distillation_loss", "l1", "cosine_similarity"} | QUALITY_KEYS == set(results[name])
        assert results[name]["num_scored"] == 2 and results[name]["num_skipped"] == 2
        assert all(math.isfinite(results[name][key]) for key in QUALITY_KEYS)
    assert results["clean"]["si_snr_noisy"] > 80
    assert results["snr0"]["si_snr_noisy"] == pytest.approx(0.0, abs=0.5)
    assert results["snr0"]["pesq"] < results["clean"]["pesq"]
    plain = evaluate_conditions(
        student,
        teacher,
        utterance_csv,
        white_noise_corruptor(),
        conditions,
        batch_size=2,
        max_crop_samples=40000,
    )
    assert set(plain["snr0"]) == {"distillation_loss", "l1", "cosine_similarity"}
    assert plain["snr0"]["distillation_loss"] == pytest.approx(results["snr0"]["distillation_loss"], rel=1e-5)


def test_evaluate_conditions_logs_four_significant_digits(utterance_csv, tiny_teacher_folder, caplog):
    import re

    with caplog.at_level(logging.INFO, logger="robustdistiller.distill.evaluation"):
        results = evaluate_conditions(
            tiny_student(),
            FrozenTeacher(tiny_teacher_folder),
            utterance_csv,
            white_noise_corruptor(),
            {"clean": {"condition": "clean"}},
            batch_size=2,
            max_crop_samples=16000,
        )
    (line,) = [record.getMessage() for record in caplog.records if record.getMessage().startswith("test condition")]
    assert line.startswith("test condition clean: distillation_loss=")
    assert not re.search(r"\d{6,}", line), f"more than 4 significant digits in the log line: {line}"
    assert results["clean"]["l1"] != float(f"{results['clean']['l1']:.4g}"), "results keep full precision"
