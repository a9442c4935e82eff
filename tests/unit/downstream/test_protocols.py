"""Test-protocol presets: their facts (checked against the peers' code, docs/test_protocols.md), the
per-utterance seeded draws, the order of each chain, the SNRs they give and the selection of conditions."""

import math
import os

import numpy as np
import pytest
import soundfile
import torch

from robustdistiller.data import distortions
from robustdistiller.data.audio import load_audio
from robustdistiller.downstream import protocol
from robustdistiller.downstream.protocols import (
    PRESET_NAMES,
    ProtocolCorruptor,
    load_preset,
    preset_test_conditions,
    select_preset_conditions,
)
from robustdistiller.runs.options import OptionError

SAMPLE_RATE = 16000


def write_list(folder, name, seconds, count, severities=None):
    """A noise / RIR list (``ID,duration,wav,wav_format,wav_opts[,rt60,severity]``) of random files."""
    rng = np.random.default_rng(len(name))
    rows = ["ID,duration,wav,wav_format,wav_opts" + (",rt60,severity" if severities else "")]
    for index in range(count):
        path = os.path.join(folder, f"{name}_{index}.wav")
        samples = rng.standard_normal(int(seconds * SAMPLE_RATE)) * 0.1
        if severities:  # an exponentially decaying RIR
            samples *= np.exp(-np.arange(samples.size) / (0.05 * SAMPLE_RATE))
        soundfile.write(path, samples.astype(np.float32), SAMPLE_RATE)
        extra = f",0.3,{severities[index]}" if severities else ""
        rows.append(f"{name}_{index},{seconds},{path},wav,{extra}")
    csv_path = os.path.join(folder, f"{name}.csv")
    with open(csv_path, "w", encoding="utf-8") as fout:
        fout.write("\n".join(rows) + "\n")
    return csv_path


@pytest.fixture(scope="module")
def huang_lists(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("huang_sources"))
    return {
        "musan": write_list(folder, "musan", 2.0, 3),
        "wham_tt": write_list(folder, "wham", 0.5, 2),  # shorter than the speech: repeated
        "fsd50k_eval": write_list(folder, "fsd", 2.0, 2),
        "dns_noise": write_list(folder, "dns_noise", 2.0, 2),
        "dns_rirs": write_list(folder, "dns_rir", 0.3, 2, severities=[0, 0]),
    }


def speech(seconds=1.0):
    time = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * torch.sin(2 * math.pi * 220 * time) * (1 + torch.sin(2 * math.pi * 3 * time))).float()


def snr_db(clean, noisy):
    return 10 * math.log10(clean.double().pow(2).sum().item() / (noisy - clean).double().pow(2).sum().item())


def test_every_preset_loads_and_an_unknown_name_names_the_option():
    assert PRESET_NAMES == ("robustdistiller", "huang2022", "srb")
    for name in PRESET_NAMES:
        preset = load_preset(name)
        assert preset["name"] == name
        assert set(preset) >= {"reference", "exact", "disjoint_from_distillation", "sources", "conditions"}
    with pytest.raises(OptionError, match="test_protocol"):
        load_preset("srb2024")
    with pytest.raises(OptionError, match="test_protocol"):
        protocol.build_corruptors({"test_protocol": "nope", "save_folder": "/nonexistent", "test_conditions": {}})


def test_huang2022_holds_the_facts_of_their_code():
    """distortions.py: SNR random.choice(range(10, 20)); pitch randint(-500, 500); room scale randint(0, 101)."""
    conditions = load_preset("huang2022")["conditions"]
    additive, non_additive = conditions["2dis"]["chain"]
    assert additive["sources"] == ["musan", "gaussian", "wham_tt"] and additive["snr"] == {"integers": [10, 19]}
    choices = {choice["step"]: choice for choice in non_additive["choices"]}
    assert choices["sox_reverb"] == {
        "step": "sox_reverb",
        "reverberance": 50,
        "hf_damping": 50,
        "room_scale": {"integers": [0, 100]},
    }
    assert choices["pitch_shift"]["cents"] == {"integers": [-500, 499]}
    assert [step["step"] for step in conditions["dns"]["chain"]] == ["rir", "noise"]  # add_distortion: RIR first
    assert load_preset("huang2022")["sources"]["musan"]["subsets"] == ["music", "speech", "noise"]


def test_srb_has_seven_additive_conditions_at_four_snrs_and_two_rir_families_in_four_bins():
    conditions = preset_test_conditions(load_preset("srb"))
    assert len(conditions) == 1 + 7 * 4 + 2 * 4
    assert conditions["music_snr0"] == {"condition": "music", "snr": 0}
    assert conditions["real_rir_bin3"] == {"condition": "real_rir/3"}


def test_2dis_draws_cover_their_ranges_and_are_seeded_per_utterance(huang_lists):
    corruptor = ProtocolCorruptor(load_preset("huang2022"), huang_lists, seed=3)
    draws = [corruptor.draw(f"2dis/utt{index}", "2dis", num_samples=SAMPLE_RATE) for index in range(300)]
    assert draws[7] == corruptor.draw("2dis/utt7", "2dis", num_samples=SAMPLE_RATE)
    assert draws[7] != ProtocolCorruptor(load_preset("huang2022"), huang_lists, seed=4).draw(
        "2dis/utt7", "2dis", num_samples=SAMPLE_RATE
    )
    additive = [draw["steps"][0] for draw in draws]
    other = [draw["steps"][1] for draw in draws]
    assert {step["snr"] for step in additive} == {float(snr) for snr in range(10, 20)}
    assert {step["source"] for step in additive} == {"musan", "gaussian", "wham_tt"}
    assert {step["step"] for step in other} == {"sox_reverb", "pitch_shift", "band_reject"}
    cents = [step["cents"] for step in other if step["step"] == "pitch_shift"]
    scales = [step["room_scale"] for step in other if step["step"] == "sox_reverb"]
    assert all(-500 <= value <= 499 and value == int(value) for value in cents)
    assert all(0 <= value <= 100 and value == int(value) for value in scales)


def test_additive_conditions_reach_their_snr_and_pair_across_snrs(huang_lists):
    corruptor = ProtocolCorruptor(load_preset("huang2022"), huang_lists, seed=0)
    clean = speech()
    out = corruptor(clean, "fsd50k/utt", "fsd50k")
    assert out.noise_source == "fsd50k_eval" and 10 <= out.snr <= 19
    assert abs(snr_db(clean, out.noisy) - out.snr) < 1e-3  # float32 samples: far below 0.01 dB
    srb = ProtocolCorruptor(load_preset("srb"), {}, seed=0)
    noise = {snr: srb(clean, "gnoise/utt", "gnoise", snr=snr).noisy - clean for snr in (30, 0)}
    for snr in (30, 0):
        assert abs(snr_db(clean, clean + noise[snr]) - snr) < 1e-3
    # paired: the same noise, scaled by 10^(30/20) between 0 dB and 30 dB
    assert torch.allclose(noise[0], noise[30] * 10**1.5, rtol=1e-4, atol=1e-6)


def test_dns_convolves_the_rir_then_adds_the_noise(huang_lists):
    corruptor = ProtocolCorruptor(load_preset("huang2022"), huang_lists, seed=1)
    clean = speech()
    draws = corruptor.draw("dns/utt", "dns", num_samples=clean.shape[0])
    rir_step, noise_step = draws["steps"]
    reverberant = distortions.apply_rir(
        clean, load_audio(rir_step["file"]), SAMPLE_RATE, "huang", rir_snr_db=rir_step["rir_snr"]
    )
    noise = load_audio(noise_step["file"])[noise_step["offset"] : noise_step["offset"] + clean.shape[0]]
    expected = distortions.mix_at_snr(reverberant, noise, noise_step["snr"])
    assert torch.allclose(corruptor(clean, "dns/utt", "dns").noisy, expected, atol=1e-6)
    assert 10 <= rir_step["rir_snr"] <= 19


def test_conditions_without_their_source_or_bin_are_skipped(huang_lists, caplog):
    preset = load_preset("huang2022")
    lists = {**huang_lists, "wham_tt": None}
    kept = select_preset_conditions(preset, preset_test_conditions(preset), lists)
    assert list(kept) == ["clean", "dns", "fsd50k"]
    assert "test_wham_folder" in caplog.text
    srb = load_preset("srb")
    lists = {name: None for name in srb["sources"]}
    lists["rirs_noises_simulated"] = huang_lists["dns_rirs"]  # every RIR of severity 0: no bin
    assert list(select_preset_conditions(srb, preset_test_conditions(srb), lists)) == [
        "clean",
        "gnoise_snr30",
        "gnoise_snr20",
        "gnoise_snr10",
        "gnoise_snr0",
    ]


def test_a_silent_utterance_is_left_alone_and_a_missing_condition_is_an_error(huang_lists):
    corruptor = ProtocolCorruptor(load_preset("huang2022"), huang_lists)
    silent = torch.zeros(800)
    assert torch.equal(corruptor(silent, "fsd50k/u", "fsd50k").noisy, silent)
    with pytest.raises(ValueError, match="pass one of"):
        corruptor(speech(), "u")
    with pytest.raises(ValueError, match="Unknown condition"):
        corruptor(speech(), "u", "reverb")
