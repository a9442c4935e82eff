"""The peers' distortions: SNRs, pitch, band-reject attenuation and reverb measured; parity with sox."""

import json
import math
import os
import shutil
import subprocess

import numpy as np
import pytest
import soundfile
import torch

from robustdistiller.data.distortions import (
    add_gaussian_noise,
    apply_rir,
    band_reject,
    draw_huang_band,
    mix_at_snr,
    noise_segment,
    pitch_shift,
    sox_band_reject_taps,
    sox_reverb,
    sox_reverb_settings,
)
from robustdistiller.data.room_acoustics import rt60

SAMPLE_RATE = 16000
REFERENCE_FOLDER = os.path.join(os.path.dirname(__file__), "sox_reference")
needs_sox = pytest.mark.skipif(shutil.which("sox") is None, reason="the sox binary is not installed")


def speech_like(num_samples=SAMPLE_RATE, seed=0):
    """Harmonics under a syllable-rate envelope, with silent stretches (valid samples differ from all)."""
    time = np.arange(num_samples) / SAMPLE_RATE
    harmonics = sum(np.sin(2 * np.pi * 140 * k * time + k) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 3 * time), 0, None)
    return torch.from_numpy((0.3 * harmonics * envelope).astype(np.float32))


def measured_snr_db(clean, noisy):
    clean64, noise64 = clean.double(), noisy.double() - clean.double()
    return 10 * math.log10(clean64.pow(2).sum().item() / noise64.pow(2).sum().item())


def tone(frequency, num_samples=SAMPLE_RATE):
    return torch.sin(2 * math.pi * frequency * torch.arange(num_samples, dtype=torch.float64) / SAMPLE_RATE).float()


def level_db(signal, reference):
    return 20 * math.log10(signal.double().pow(2).mean().sqrt().item() / reference.double().pow(2).mean().sqrt().item())


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 19.0, 30.0])
def test_gaussian_noise_has_the_snr_over_the_utterance_and_on_its_valid_samples(snr_db):
    clean = speech_like()
    noisy = add_gaussian_noise(clean, snr_db, torch.Generator().manual_seed(3))
    assert noisy.shape == clean.shape and noisy.dtype == torch.float32
    # Float32 storage of the sum bounds the error far below 1e-3 dB at these SNRs.
    assert measured_snr_db(clean, noisy) == pytest.approx(snr_db, abs=1e-3)
    # On the valid (non-silent) samples only, white noise gives the SNR within 0.5 dB + the silent share.
    valid = clean.abs() > 0
    valid_share_db = 10 * math.log10(valid.float().mean().item())
    measured_valid = measured_snr_db(clean[valid], noisy[valid])
    assert measured_valid == pytest.approx(snr_db - valid_share_db, abs=0.5)


def test_gaussian_noise_depends_only_on_the_generator():
    clean = speech_like(4000)
    first = add_gaussian_noise(clean, 10.0, torch.Generator().manual_seed(5))
    again = add_gaussian_noise(clean, 10.0, torch.Generator().manual_seed(5))
    other = add_gaussian_noise(clean, 10.0, torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    with pytest.raises(TypeError, match="generator"):
        add_gaussian_noise(clean, 10.0, 5)


def test_mix_at_snr_scales_the_noise_and_keeps_the_speech():
    clean = speech_like(8000)
    noise = torch.from_numpy(np.random.default_rng(1).uniform(-1, 1, 8000).astype(np.float32))
    noisy = mix_at_snr(clean, noise, 5.0)
    residual = (noisy.double() - clean.double()).numpy()
    gain = residual @ noise.double().numpy() / (noise.double().numpy() @ noise.double().numpy())
    np.testing.assert_allclose(residual, gain * noise.double().numpy(), atol=1e-6)  # speech kept as is
    assert measured_snr_db(clean, noisy) == pytest.approx(5.0, abs=1e-3)


def test_mix_at_snr_rejects_what_has_no_snr():
    clean = speech_like(100)
    with pytest.raises(ValueError, match="shape"):
        mix_at_snr(clean, torch.ones(99), 10.0)
    with pytest.raises(ValueError, match="silent"):
        mix_at_snr(clean, torch.zeros(100), 10.0)
    with pytest.raises(ValueError, match=r"\[time\]"):
        mix_at_snr(clean[None], torch.ones(1, 100), 10.0)
    assert torch.equal(mix_at_snr(torch.zeros(100), torch.ones(100), 10.0), torch.zeros(100))


@pytest.mark.parametrize("cents", [-500, -137, 1, 300, 499])
def test_pitch_shift_moves_a_tone_by_the_cents_and_keeps_the_length(cents):
    frequency = 440.0
    shifted = pitch_shift(tone(frequency), SAMPLE_RATE, cents)
    assert shifted.shape == (SAMPLE_RATE,)
    segment = shifted[2000:14000].double().numpy() * np.hanning(12000)  # away from the edges
    padded = 1 << 18
    spectrum = np.abs(np.fft.rfft(segment, padded))
    peak = int(np.argmax(spectrum))
    before, at, after = np.log(spectrum[peak - 1 : peak + 2])
    peak += 0.5 * (before - after) / (before - 2 * at + after)
    measured = peak * SAMPLE_RATE / padded
    bin_width = SAMPLE_RATE / 12000  # the resolution of the 12000-sample analysis
    assert measured == pytest.approx(frequency * 2 ** (cents / 1200), abs=bin_width)


def test_pitch_shift_by_zero_cents_is_the_identity():
    signal = speech_like(1000)
    assert torch.equal(pitch_shift(signal, SAMPLE_RATE, 0), signal)


def test_band_reject_removes_a_tone_in_the_band_and_keeps_tones_outside():
    band = (1000.0, 3000.0)
    taps = sox_band_reject_taps(SAMPLE_RATE, *band)
    middle = slice(len(taps), SAMPLE_RATE - len(taps))  # away from the filter's edge transients
    inside = tone(2000.0)
    assert level_db(band_reject(inside, SAMPLE_RATE, *band)[middle], inside[middle]) <= -40.0
    for frequency in (500.0, 5000.0):
        outside = tone(frequency)
        kept = band_reject(outside, SAMPLE_RATE, *band)
        assert kept.shape == outside.shape
        assert level_db(kept[middle], outside[middle]) == pytest.approx(0.0, abs=1.0)


def test_band_reject_names_a_band_it_cannot_make():
    with pytest.raises(ValueError, match="low_hz < high_hz"):
        band_reject(tone(500.0), SAMPLE_RATE, 3000.0, 1000.0)
    with pytest.raises(ValueError, match="sample_rate/2"):
        band_reject(tone(500.0), SAMPLE_RATE, 1000.0, 9000.0)


def test_huang_band_is_drawn_from_the_generator_within_nyquist():
    bands = [draw_huang_band(SAMPLE_RATE, torch.Generator().manual_seed(seed)) for seed in range(50)]
    assert all(0 <= low <= high <= SAMPLE_RATE / 2 for low, high in bands)
    assert draw_huang_band(SAMPLE_RATE, torch.Generator().manual_seed(7)) == bands[7]
    mel_max = 2595 * math.log10(1 + 8000 / 700)
    widest = max(2595 * math.log10((1 + high / 700) / (1 + low / 700)) for low, high in bands)
    assert widest <= mel_max * 27 * 0.5 / 256 + 1e-9


def impulse_response(sample_rate, seconds, **settings):
    impulse = torch.zeros(int(sample_rate * seconds))
    impulse[0] = 1.0
    return sox_reverb(impulse, sample_rate, wet_only=True, **settings)


def test_reverb_rt60_grows_with_room_scale_and_reverberance():
    rate = 8000
    by_room = [rt60(impulse_response(rate, 3.0, room_scale=scale), rate) for scale in (20.0, 50.0, 100.0)]
    by_reverberance = [rt60(impulse_response(rate, 3.0, reverberance=value), rate) for value in (20.0, 50.0, 70.0)]
    assert by_room[0] < by_room[1] < by_room[2]
    assert by_reverberance[0] < by_reverberance[1] < by_reverberance[2]
    assert 0.05 < by_room[0] and by_reverberance[2] < 10.0


def test_reverb_keeps_the_length_the_dry_signal_and_the_pre_delay():
    signal = speech_like(4000)
    wet = sox_reverb(signal, SAMPLE_RATE, wet_only=True)
    both = sox_reverb(signal, SAMPLE_RATE)
    assert both.shape == signal.shape
    np.testing.assert_allclose(both.numpy(), signal.numpy() + wet.numpy(), atol=1e-6)
    delayed = sox_reverb(signal, SAMPLE_RATE, wet_only=True, pre_delay_ms=10.0)
    np.testing.assert_allclose(delayed[160:].numpy(), wet[:-160].numpy(), atol=1e-7)
    with pytest.raises(ValueError, match="room_scale"):
        sox_reverb(signal, SAMPLE_RATE, room_scale=120.0)


def test_reverb_settings_follow_reverb_c():
    settings = sox_reverb_settings(44100, reverberance=0.0, room_scale=100.0, stereo_depth=100.0)
    assert settings["feedback"] == pytest.approx(0.3, abs=1e-12)  # reverb.c: "minimum feedback" 0.3
    assert sox_reverb_settings(44100, reverberance=100.0)["feedback"] == pytest.approx(0.98, abs=1e-12)
    assert settings["comb_sizes"][0][0] == 1116 and settings["comb_sizes"][1][:2] == (1128, 1176)
    assert sox_reverb_settings(44100, hf_damping=100.0)["hf_damping"] == pytest.approx(0.5)


def stored_reference():
    with open(os.path.join(REFERENCE_FOLDER, "sox_reference.json"), encoding="utf-8") as json_file:
        settings = json.load(json_file)
    return settings, np.load(os.path.join(REFERENCE_FOLDER, "sox_reference.npz"))


# sox works in float32; its outputs were written as 32-bit floats. 1e-5 is ~100 float32 ulps at 0.5.
PARITY_TOLERANCE = 1e-5


def test_reverb_port_matches_the_stored_sox_output():
    settings, arrays = stored_reference()
    signal = torch.from_numpy(arrays["input"])
    for index, (reverberance, damping, room_scale, depth) in enumerate(settings["reverb"]):
        ported = sox_reverb(signal, settings["sample_rate"], reverberance, damping, room_scale, depth)
        np.testing.assert_allclose(ported.numpy(), arrays[f"reverb_{index}"], atol=PARITY_TOLERANCE)


def test_band_reject_port_matches_the_stored_sox_output():
    settings, arrays = stored_reference()
    signal = torch.from_numpy(arrays["input"])
    for index, (low, high) in enumerate(settings["sinc"]):
        ported = band_reject(signal, settings["sample_rate"], low, high)
        np.testing.assert_allclose(ported.numpy(), arrays[f"sinc_{index}"], atol=PARITY_TOLERANCE)


def run_sox(tmp_path, signal, effect):
    input_path, output_path = str(tmp_path / "in.wav"), str(tmp_path / "out.wav")
    soundfile.write(input_path, signal.numpy(), SAMPLE_RATE, subtype="FLOAT")
    subprocess.run(["sox", "-V1", input_path, "-e", "floating-point", "-b", "32", output_path, *effect], check=True)
    return soundfile.read(output_path, dtype="float32")[0]


@needs_sox
@pytest.mark.parametrize("settings", [(50.0, 50.0, 27.0, 100.0), (35.0, 80.0, 90.0, 50.0)])
def test_reverb_port_matches_the_sox_binary(tmp_path, settings):
    signal = speech_like(6000)
    expected = run_sox(tmp_path, signal, ["reverb", *map(str, settings), "channels", "1"])
    np.testing.assert_allclose(sox_reverb(signal, SAMPLE_RATE, *settings).numpy(), expected, atol=PARITY_TOLERANCE)


@needs_sox
def test_band_reject_port_matches_the_sox_binary(tmp_path):
    signal = speech_like(6000)
    expected = run_sox(tmp_path, signal, ["sinc", "-a", "120", "2500-700"])
    np.testing.assert_allclose(band_reject(signal, SAMPLE_RATE, 700.0, 2500.0).numpy(), expected, atol=1e-6)


def test_noise_segment_cuts_long_noise_and_repeats_short_noise():
    noise = torch.arange(10, dtype=torch.float32)
    segment = noise_segment(noise, 4, torch.Generator().manual_seed(0))
    start = int(segment[0])
    assert segment.tolist() == list(range(start, start + 4))
    offsets = {int(noise_segment(noise, 4, torch.Generator().manual_seed(seed))[0]) for seed in range(200)}
    assert offsets == set(range(7))  # every offset 0..len-n is drawn, none beyond
    assert noise_segment(noise, 4, torch.Generator(), offset="start").tolist() == [0, 1, 2, 3]
    short = torch.tensor([1.0, 2.0, 3.0])
    assert noise_segment(short, 7, torch.Generator()).tolist() == [1, 2, 3, 1, 2, 3, 1]
    assert noise_segment(short, 7, torch.Generator(), short_noise="huang").tolist() == [1, 1, 1, 2, 2, 2, 3]


def test_apply_rir_follows_each_convention():
    signal = speech_like(2000)
    rir = torch.from_numpy(np.random.default_rng(4).standard_normal(800).astype(np.float32))
    srb = apply_rir(signal, rir, SAMPLE_RATE, keep_tail=True)
    kept = rir[160:].double().numpy()
    expected = np.convolve(signal.double().numpy(), kept / np.linalg.norm(kept))
    assert srb.shape == (2000 + 640 - 1,)
    np.testing.assert_allclose(srb.numpy(), expected, atol=1e-5)
    assert torch.equal(apply_rir(signal, rir, SAMPLE_RATE), srb[:2000])
    huang = apply_rir(signal, rir, SAMPLE_RATE, convention="huang", rir_snr_db=15.0).double().numpy()
    gain = math.sqrt(signal.double().pow(2).sum().item() / rir.double().pow(2).sum().item() * 10**-1.5)
    np.testing.assert_allclose(
        huang, np.convolve(signal.double().numpy(), gain * rir.double().numpy())[:2000], atol=1e-5
    )
    with pytest.raises(ValueError, match="rir_snr_db"):
        apply_rir(signal, rir, SAMPLE_RATE, convention="huang")
