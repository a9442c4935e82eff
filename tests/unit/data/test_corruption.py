"""Tests of the per-utterance corruption pipeline (robustdistiller/data/corruption.py)."""

import logging
import math
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile
import torch
import torchaudio
from hyperpyyaml import load_hyperpyyaml
from speechbrain.augment.time_domain import AddNoise, AddReverb

from robustdistiller.data import corruption
from robustdistiller.data.corruption import (
    CONDITIONS,
    Corruptor,
    CorruptedUtterance,
    NoisePool,
    PooledAddReverb,
    clean_gain_for_snr,
    condition_names,
)

SAMPLE_RATE = 16000
REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


# --------------------------------------------------------------------------------------------------
# Fixture data: speech-like clean signal, noise and RIR files, SpeechBrain CSVs.
# --------------------------------------------------------------------------------------------------


def speech_like(num_samples, seed=0):
    """Harmonic tones (gliding pitch) at a syllable rate, with fricative-like noise in between."""
    rng = np.random.default_rng(seed)
    time = np.arange(num_samples) / SAMPLE_RATE
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * time + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * time)) ** 2
    fricative = np.diff(rng.standard_normal(num_samples + 1)) * (2 - envelope)
    signal = 0.1 * envelope * voiced + 0.01 * fricative
    return torch.from_numpy(signal.astype(np.float32))


def write_csv(path, wav_paths):
    with open(path, "w") as csv_file:
        csv_file.write("ID,duration,wav,wav_format,wav_opts\n")
        for index, wav_path in enumerate(wav_paths):
            csv_file.write(f"item{index},1.0,{wav_path},wav,\n")
    return str(path)


def decaying_rir(num_samples, direct_index, seed, decay_s=0.08, rate=SAMPLE_RATE, drr_db=3.0):
    """Exponentially decaying noise tail after a unit direct path (direct-to-reverberant ratio ~drr_db)."""
    rng = np.random.default_rng(seed)
    time = np.arange(num_samples) / rate
    tail_amplitude = math.sqrt(10 ** (-drr_db / 10) / (decay_s * rate / 2))
    rir = tail_amplitude * rng.standard_normal(num_samples) * np.exp(-(time - time[direct_index]) / decay_s)
    rir[:direct_index] *= 0.05
    rir[direct_index] = 1.0
    return rir


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corruption")
    rng = np.random.default_rng(0)
    files = {}
    # Brown-ish noise, 3 s mono 16 kHz (longer than the utterances).
    brown = np.cumsum(rng.standard_normal(3 * SAMPLE_RATE))
    brown = 0.2 * (brown - brown.mean()) / np.abs(brown).max()
    files["long"] = folder / "long_brown.wav"
    soundfile.write(files["long"], brown, SAMPLE_RATE)
    # Stereo 44.1 kHz: left = tone + other, right = tone - other; the channel mean is the 440 Hz tone.
    time = np.arange(int(2 * 44100)) / 44100
    tone, other = 0.3 * np.sin(2 * np.pi * 440 * time), 0.3 * np.sin(2 * np.pi * 3000 * time)
    files["stereo"] = folder / "stereo_44k.wav"
    soundfile.write(files["stereo"], np.stack([tone + other, tone - other], axis=1), 44100)
    # Short white noise (0.2 s) to be tiled.
    files["short"] = folder / "short.wav"
    soundfile.write(files["short"], 0.1 * rng.standard_normal(3200), SAMPLE_RATE)
    # Not audio, and silent.
    files["bad"] = folder / "not_audio.wav"
    files["bad"].write_text("this is not a wav file")
    files["silent"] = folder / "silent.wav"
    soundfile.write(files["silent"], np.zeros(SAMPLE_RATE), SAMPLE_RATE)
    # RIRs: mono 16 kHz, 4-channel 8 kHz, and a 1.5 s one (longer than the utterances).
    files["rir"] = folder / "rir_mono.wav"
    soundfile.write(files["rir"], decaying_rir(4800, 40, seed=1), SAMPLE_RATE)
    files["rir4"] = folder / "rir_4ch_8k.wav"
    rir4 = np.stack([decaying_rir(2400, 10 + 7 * c, seed=10 + c, rate=8000) for c in range(4)], 1)
    soundfile.write(files["rir4"], rir4 * 0.5, 8000)
    files["rir_long"] = folder / "rir_long.wav"
    soundfile.write(files["rir_long"], decaying_rir(24000, 300, seed=3, decay_s=0.4), SAMPLE_RATE)

    csvs = {
        "noise": write_csv(folder / "noise.csv", [files[k] for k in ("long", "stereo", "short")]),
        "noise_with_bad": write_csv(folder / "noise_bad.csv", [files["bad"], files["long"]]),
        "noise_with_silent": write_csv(folder / "noise_silent.csv", [files["silent"], files["short"]]),
        "all_bad": write_csv(folder / "all_bad.csv", [files["bad"], files["silent"], "missing.wav"]),
        "stereo": write_csv(folder / "stereo.csv", [files["stereo"]]),
        "short": write_csv(folder / "short.csv", [files["short"]]),
        "long": write_csv(folder / "long.csv", [files["long"]]),
        "rir": write_csv(folder / "rir.csv", [files["rir"], files["rir4"]]),
        "rir_mono": write_csv(folder / "rir_mono.csv", [files["rir"]]),
        "rir4": write_csv(folder / "rir4.csv", [files["rir4"]]),
        "rir_long": write_csv(folder / "rir_long.csv", [files["rir_long"]]),
    }
    return {"folder": folder, "files": files, "csv": csvs}


def make_corruptor(data, condition_probs=None, file_noise_prob=0.7, seed=1234, noise_csv="noise"):
    file_noise = AddNoise(noise_funct=NoisePool(data["csv"][noise_csv]), snr_low=0, snr_high=20)
    white_noise = AddNoise(snr_low=0, snr_high=20)
    reverb = PooledAddReverb(data["csv"]["rir"])
    return Corruptor(file_noise, white_noise, reverb, condition_probs, file_noise_prob, seed)


def measured_snr(noisy, reference):
    noise = (noisy - reference).double()
    return 10 * math.log10(reference.double().pow(2).mean() / noise.pow(2).mean())


def expected_reverb(clean, rir):
    """Linear convolution aligned on the (positive) direct path, cropped, avg-amplitude rescaled."""
    direct = int(np.argmax(np.abs(rir)))
    rir = rir * np.sign(rir[direct])
    full = np.convolve(clean.numpy().astype(np.float64), rir)
    aligned = full[direct : direct + len(clean)]
    return aligned * np.abs(clean.numpy()).mean() / np.abs(aligned).mean()


# --------------------------------------------------------------------------------------------------
# SNR and reference.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["file", "white"])
def test_snr_and_reference_match_drawn_snr(data, source):
    corruptor = make_corruptor(data, {"noise": 1.0}, file_noise_prob=1.0 if source == "file" else 0.0)
    clean = speech_like(SAMPLE_RATE)
    errors, snrs = [], []
    for index in range(60):
        out = corruptor(clean, key=f"utt{index}")
        assert out.condition == "noise" and out.noise_source == source
        assert 0.0 <= out.snr <= 20.0
        gain = 1 - 1 / (10 ** (out.snr / 20) + 1)
        assert torch.equal(out.reference, clean * clean_gain_for_snr(out.snr))
        torch.testing.assert_close(out.reference, clean * gain, rtol=1e-6, atol=1e-7)
        errors.append(measured_snr(out.noisy, out.reference) - out.snr)
        snrs.append(out.snr)
    errors = np.abs(errors)
    assert errors.max() < 0.5, errors.max()
    assert errors.mean() < 0.01
    assert min(snrs) < 3 and max(snrs) > 17  # the whole [0, 20] range is drawn


def test_forced_snr_and_condition_are_honoured(data):
    corruptor = make_corruptor(data)
    clean = speech_like(SAMPLE_RATE, seed=2)
    for snr in (0.0, 5.0, 10.0, 20.0):
        for index in range(4):
            out = corruptor(clean, key=f"eval{index}", condition="noise", snr=snr)
            assert out.condition == "noise" and out.snr == snr
            assert abs(measured_snr(out.noisy, out.reference) - snr) < 0.05
    for condition in CONDITIONS:
        for index in range(5):
            out = corruptor(clean, key=f"k{index}", condition=condition)
            assert out.condition == condition
            assert (out.noise_source is None) == ("noise" not in condition)
            assert math.isnan(out.snr) == ("noise" not in condition)
    clean_out = corruptor(clean, key="x", condition="clean")
    assert torch.equal(clean_out.noisy, clean) and torch.equal(clean_out.reference, clean)
    reverb_out = corruptor(clean, key="x", condition="reverb")
    assert torch.equal(reverb_out.reference, clean) and not torch.equal(reverb_out.noisy, clean)
    both = corruptor(clean, key="x", condition="noise_reverb", snr=5.0)
    assert torch.equal(both.reference, clean * clean_gain_for_snr(5.0))
    with pytest.raises(ValueError, match="no noise"):
        corruptor(clean, key="x", condition="reverb", snr=5.0)
    with pytest.raises(ValueError, match="Unknown condition"):
        corruptor(clean, key="x", condition="babble")


def test_normalizing_add_noise_keeps_reference_consistent(data):
    loud_noise = AddNoise(snr_low=0, snr_high=0, normalize=True)
    corruptor = Corruptor(None, loud_noise, None, {"noise": 1.0})
    clean = speech_like(4000) * 12  # peaks above 1: AddNoise would normalise
    out = corruptor(clean, key="a")
    assert out.noisy.abs().max() <= 1.0 + 1e-6
    assert abs(measured_snr(out.noisy, out.reference) - 0.0) < 0.05
    assert loud_noise.snr_low == 0 and loud_noise.normalize is True  # restored


# --------------------------------------------------------------------------------------------------
# Reproducibility and drawing.
# --------------------------------------------------------------------------------------------------


def test_same_key_and_epoch_reproduce_and_others_differ(data):
    corruptor = make_corruptor(data, {"noise_reverb": 1.0})
    clean = speech_like(8000)
    first = corruptor(clean, key="utt-a")
    for index in range(5):  # other calls in between do not matter
        corruptor(clean, key=f"other{index}")
    torch.manual_seed(99)  # nor does the caller's RNG
    again = corruptor(clean, key="utt-a")
    assert torch.equal(first.noisy, again.noisy) and first.snr == again.snr
    assert not torch.equal(first.noisy, corruptor(clean, key="utt-b").noisy)
    corruptor.set_epoch(1)
    assert not torch.equal(first.noisy, corruptor(clean, key="utt-a").noisy)
    corruptor.set_epoch(0)
    assert torch.equal(first.noisy, corruptor(clean, key="utt-a").noisy)
    assert make_corruptor(data, {"noise_reverb": 1.0}, seed=7).item_seed("utt-a") != corruptor.item_seed("utt-a")


def test_caller_rng_state_untouched(data):
    corruptor = make_corruptor(data)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    corruptor(speech_like(4000), key="z", condition="noise_reverb")
    assert torch.equal(torch.rand(3), expected)


def test_reproducible_in_another_process(data):
    keys = ["p0", "p1", "p2", "p3"]
    clean = speech_like(8000, seed=4)
    output_path = data["folder"] / "other_process.pt"
    script = textwrap.dedent(
        f"""
        import torch
        from speechbrain.augment.time_domain import AddNoise
        from robustdistiller.data.corruption import Corruptor, NoisePool, PooledAddReverb
        corruptor = Corruptor(
            AddNoise(noise_funct=NoisePool({data["csv"]["noise"]!r}), snr_low=0, snr_high=20),
            AddNoise(snr_low=0, snr_high=20), PooledAddReverb({data["csv"]["rir"]!r}))
        corruptor.set_epoch(3)
        clean = torch.load({str(data["folder"] / "clean.pt")!r})
        torch.save([corruptor(clean, key=k).noisy for k in {keys!r}], {str(output_path)!r})
        """
    )
    torch.save(clean, data["folder"] / "clean.pt")
    subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, check=True, timeout=120)
    corruptor = make_corruptor(data)
    corruptor.set_epoch(3)
    for key, other in zip(keys, torch.load(output_path)):
        assert torch.equal(corruptor(clean, key=key).noisy, other)


def test_condition_and_source_frequencies(data):
    corruptor = make_corruptor(data, noise_csv="short")
    clean = speech_like(800)
    num_draws = 2000
    outputs = [corruptor(clean, key=index) for index in range(num_draws)]
    for condition in CONDITIONS:
        count = sum(out.condition == condition for out in outputs)
        tolerance = 4.5 * math.sqrt(num_draws * 0.25 * 0.75)
        assert abs(count - num_draws * 0.25) < tolerance, (condition, count)
    noisy = [out for out in outputs if out.noise_source is not None]
    assert all("noise" in out.condition for out in noisy)
    file_count = sum(out.noise_source == "file" for out in noisy)
    assert abs(file_count - 0.7 * len(noisy)) < 4.5 * math.sqrt(len(noisy) * 0.21)
    snrs = np.array([out.snr for out in noisy])
    assert abs(snrs.mean() - 10) < 1.0 and snrs.min() >= 0 and snrs.max() <= 20


def test_custom_probabilities_and_validation(data):
    corruptor = make_corruptor(data, {"clean": 0.1, "reverb": 0.9})
    conditions = [corruptor(speech_like(800), key=i).condition for i in range(200)]
    assert set(conditions) <= {"clean", "reverb"} and conditions.count("reverb") > 150
    with pytest.raises(ValueError, match="sum to 1"):
        make_corruptor(data, {"clean": 0.5, "noise": 0.6})
    with pytest.raises(ValueError, match="Unknown condition"):
        make_corruptor(data, {"clean": 0.5, "babble": 0.5})
    with pytest.raises(ValueError, match="reverb is None"):
        Corruptor(None, AddNoise(snr_low=0, snr_high=20), None)
    with pytest.raises(ValueError, match="both file_noise and white_noise are None"):
        Corruptor(None, None, PooledAddReverb(data["csv"]["rir"]))
    reverb_only = Corruptor(None, None, PooledAddReverb(data["csv"]["rir"]), {"reverb": 1.0})
    with pytest.raises(ValueError, match="needs noise"):
        reverb_only(speech_like(800), key=0, condition="noise")
    assert condition_names() == CONDITIONS == ("clean", "noise", "reverb", "noise_reverb")


def test_silent_clean_is_returned_uncorrupted(data, caplog):
    corruptor = make_corruptor(data, {"noise": 0.5, "noise_reverb": 0.5})
    silent = torch.zeros(4000)
    with caplog.at_level(logging.DEBUG, logger="robustdistiller.data.corruption"):
        out = corruptor(silent, key="silence")
    assert isinstance(out, CorruptedUtterance)
    assert out.condition == "clean" and math.isnan(out.snr) and out.noise_source is None
    assert torch.isfinite(out.noisy).all() and torch.equal(out.noisy, silent)
    assert out.noisy.dtype == torch.float32 and out.noisy.shape == silent.shape
    assert "silent" in caplog.text


# --------------------------------------------------------------------------------------------------
# Noise pool.
# --------------------------------------------------------------------------------------------------


def test_stereo_44k_noise_is_averaged_and_resampled(data):
    noise = NoisePool(data["csv"]["stereo"])(torch.zeros(2, SAMPLE_RATE))
    assert noise.shape == (2, SAMPLE_RATE) and noise.dtype == torch.float32
    spectrum = torch.fft.rfft(noise[0]).abs()  # 1 Hz bins
    assert abs(int(spectrum.argmax()) - 440) <= 1  # 440 Hz at 16 kHz: resampled
    assert spectrum[2990:3010].max() < 0.01 * spectrum.max()  # channel difference cancelled: mean
    assert not torch.equal(noise[0], noise[1])  # independent random offsets


def test_short_noise_is_tiled(data):
    noise = NoisePool(data["csv"]["short"])(torch.zeros(1, 10000))[0]
    assert noise.shape == (10000,)
    torch.testing.assert_close(noise[:6800], noise[3200:10000])  # period = the file's 3200 samples
    assert noise.pow(2).mean() > 1e-4


def test_long_noise_reads_only_a_segment(data, monkeypatch):
    reads = []
    original = corruption.load_audio

    def recording_load_audio(path, *args, **kwargs):
        reads.append((kwargs.get("start"), kwargs.get("stop")))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(corruption, "load_audio", recording_load_audio)
    pool = NoisePool(data["csv"]["long"])
    noises = [pool(torch.zeros(1, 8000))[0] for _ in range(5)]
    assert all((stop - start) == 8000 for start, stop in reads)
    assert len({start for start, _ in reads}) > 1  # random offsets
    long_noise = torch.from_numpy(soundfile.read(data["files"]["long"], dtype="float32")[0])
    start = reads[0][0]
    torch.testing.assert_close(noises[0], long_noise[start : start + 8000])


def test_bad_and_silent_noise_files_are_skipped_with_a_warning(data, caplog):
    for csv_key, bad_file in (("noise_with_bad", "bad"), ("noise_with_silent", "silent")):
        pool = NoisePool(data["csv"][csv_key])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="robustdistiller.data.corruption"):
            noises = [pool(torch.zeros(1, 4000)) for _ in range(20)]
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1  # logged once, then excluded
        assert str(data["files"][bad_file]) in warnings[0].getMessage()
        assert all(noise.pow(2).mean() > 1e-6 for noise in noises)


def test_all_bad_pool_and_bad_csvs_raise_naming_the_csv(data, tmp_path):
    pool = NoisePool(data["csv"]["all_bad"])
    with pytest.raises(RuntimeError, match="all_bad.csv"):
        pool(torch.zeros(1, 4000))
    with pytest.raises(RuntimeError, match="all_bad.csv"):
        PooledAddReverb(data["csv"]["all_bad"])(torch.zeros(1, 4000) + 0.1)
    # The CSV is read at first use (a YAML declares the pools before preparation writes them).
    missing_pool = NoisePool(str(tmp_path / "nowhere.csv"))
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        missing_pool(torch.zeros(1, 4000))
    empty = write_csv(tmp_path / "empty.csv", [])
    with pytest.raises(ValueError, match="empty.csv"):
        NoisePool(empty)(torch.zeros(1, 4000))
    with pytest.raises(ValueError, match="empty.csv"):
        PooledAddReverb(empty)(torch.zeros(1, 4000) + 0.1)


def test_file_noise_skips_bad_file_inside_corruptor(data, caplog):
    corruptor = make_corruptor(data, {"noise": 1.0}, file_noise_prob=1.0, noise_csv="noise_with_bad")
    clean = speech_like(4000)
    with caplog.at_level(logging.WARNING, logger="robustdistiller.data.corruption"):
        outs = [corruptor(clean, key=i) for i in range(10)]
    assert "not_audio.wav" in caplog.text
    for out in outs:
        assert abs(measured_snr(out.noisy, out.reference) - out.snr) < 0.05


# --------------------------------------------------------------------------------------------------
# Reverberation.
# --------------------------------------------------------------------------------------------------


def xcorr_peak_lag(reverbed, clean, max_lag=400):
    """Lag maximising sum_n reverbed[n + lag] * clean[n] (positive: reverbed is late)."""
    num_samples = len(clean)
    lags = list(range(-max_lag, max_lag + 1))
    values = [
        float(
            torch.dot(
                reverbed[max(lag, 0) : num_samples + min(lag, 0)],
                clean[max(-lag, 0) : num_samples - max(lag, 0)],
            )
        )
        for lag in lags
    ]
    return lags[int(np.argmax(values))]


@pytest.mark.parametrize("rir_key,num_samples", [("rir", 16000), ("rir_long", 8000), ("rir_long", 3000)])
def test_reverb_is_aligned_linear_and_same_length(data, rir_key, num_samples):
    rir = soundfile.read(data["files"][rir_key])[0]
    assert rir_key != "rir_long" or len(rir) > num_samples  # RIR longer than the utterance
    reverb = PooledAddReverb(data["csv"]["rir_mono" if rir_key == "rir" else "rir_long"])
    clean = speech_like(num_samples, seed=5)
    reverbed = reverb(clean.unsqueeze(0))[0]
    assert reverbed.shape == clean.shape and torch.isfinite(reverbed).all()
    assert xcorr_peak_lag(reverbed, clean) == 0
    expected = torch.from_numpy(expected_reverb(clean, rir)).float()
    torch.testing.assert_close(reverbed, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(reverbed.abs().mean(), clean.abs().mean())  # AddReverb's rescaling


def test_speechbrain_addreverb_wraps_around_but_ours_does_not(data):
    """Documents why forward is overridden: SpeechBrain's FFT convolution is circular."""
    clean = torch.zeros(1, 8000)
    clean[0, 7000:7100] = speech_like(100) * 10  # energy only near the end
    ours = PooledAddReverb(data["csv"]["rir_long"])(clean)[0]
    theirs = AddReverb(data["csv"]["rir_long"])(clean)[0]
    assert ours[:6700].abs().max() < 1e-4  # nothing before the signal start (less the pre-direct part)
    assert theirs[:6700].abs().max() > 1e-3  # the tail wrapped around to the start


def test_multichannel_rir_uses_one_random_channel(data):
    rir4 = soundfile.read(data["files"]["rir4"])[0]
    clean = speech_like(6000, seed=6)
    candidates = []
    for channel in range(4):
        channel_16k = torch.from_numpy(rir4[:, channel]).float()
        channel_16k = torchaudio.functional.resample(channel_16k, 8000, SAMPLE_RATE).double().numpy()
        candidates.append(torch.from_numpy(expected_reverb(clean, channel_16k)).float())
    reverb = PooledAddReverb(data["csv"]["rir4"])
    chosen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        reverbed = reverb(clean.unsqueeze(0))[0]
        errors = [float((reverbed - candidate).abs().max()) for candidate in candidates]
        best = int(np.argmin(errors))
        assert errors[best] < 1e-4 and sorted(errors)[1] > 1e-2, errors
        chosen.add(best)
    assert len(chosen) >= 3


def test_reverb_rir_scale_factor(data):
    clean = speech_like(4000)
    dilated = PooledAddReverb(data["csv"]["rir_mono"], rir_scale_factor=1.5)(clean.unsqueeze(0))[0]
    # The dilated direct path falls between samples: aligned within one sample.
    assert dilated.shape == clean.shape and abs(xcorr_peak_lag(dilated, clean)) <= 1


# --------------------------------------------------------------------------------------------------
# Workers, pickling, YAML.
# --------------------------------------------------------------------------------------------------


class CorruptedDataset(torch.utils.data.Dataset):
    def __init__(self, corruptor, clean_wavs):
        self.corruptor, self.clean_wavs = corruptor, clean_wavs

    def __len__(self):
        return len(self.clean_wavs)

    def __getitem__(self, index):
        out = self.corruptor(self.clean_wavs[index], key=f"utt{index}")
        return out.noisy, out.reference, CONDITIONS.index(out.condition)


def test_pickles_and_matches_across_dataloader_workers(data):
    corruptor = make_corruptor(data)
    clean_wavs = [speech_like(4000 + 100 * i, seed=i) for i in range(12)]
    clone = pickle.loads(pickle.dumps(corruptor))
    assert torch.equal(clone(clean_wavs[0], key="utt0").noisy, corruptor(clean_wavs[0], key="utt0").noisy)

    def run(num_workers):
        loader = torch.utils.data.DataLoader(
            CorruptedDataset(corruptor, clean_wavs), batch_size=None, num_workers=num_workers
        )
        return list(loader)

    serial, parallel = run(0), run(2)
    assert len({condition for _, _, condition in serial}) > 1
    for (noisy_a, ref_a, cond_a), (noisy_b, ref_b, cond_b) in zip(serial, parallel):
        assert cond_a == cond_b and torch.equal(noisy_a, noisy_b) and torch.equal(ref_a, ref_b)


def test_adders_built_from_hyperpyyaml(data):
    yaml_text = f"""
    noise_csv: {data["csv"]["noise"]}
    rir_csv: {data["csv"]["rir"]}
    file_noise: !new:speechbrain.augment.time_domain.AddNoise
        noise_funct: !new:robustdistiller.data.corruption.NoisePool
            csv_file: !ref <noise_csv>
            sample_rate: 16000
        snr_low: 0
        snr_high: 20
    white_noise: !new:speechbrain.augment.time_domain.AddNoise
        snr_low: 0
        snr_high: 20
    reverb: !new:robustdistiller.data.corruption.PooledAddReverb
        csv_file: !ref <rir_csv>
        sample_rate: 16000
    corruptor: !new:robustdistiller.data.corruption.Corruptor
        file_noise: !ref <file_noise>
        white_noise: !ref <white_noise>
        reverb: !ref <reverb>
        condition_probs:
            clean: 0.25
            noise: 0.25
            reverb: 0.25
            noise_reverb: 0.25
        file_noise_prob: 0.7
        seed: 1234
    """
    hparams = load_hyperpyyaml(textwrap.dedent(yaml_text))
    assert isinstance(hparams["file_noise"].noise_funct, NoisePool)
    assert isinstance(hparams["reverb"], AddReverb)
    corruptor = hparams["corruptor"]
    clean = speech_like(8000)
    out = corruptor(clean, key="yaml", condition="noise_reverb", snr=10.0)
    assert out.noisy.shape == clean.shape and torch.isfinite(out.noisy).all()
    reference = make_corruptor(data)(clean, key="yaml", condition="noise_reverb", snr=10.0)
    assert torch.equal(out.noisy, reference.noisy)
