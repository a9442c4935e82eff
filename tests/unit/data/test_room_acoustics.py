"""RT60 by Schroeder integration on synthetic RIRs of known RT60; Sabine's formula; SRB's severity bins."""

import math

import numpy as np
import pytest
import torch

from robustdistiller.data.room_acoustics import rt60, sabine_rt60, severity_bins, severity_edges

SAMPLE_RATE = 16000


def decaying(rt60_seconds, seconds, noise_seed=None):
    """An RIR whose energy falls by 60 dB in ``rt60_seconds``: ``exp(-6.9078 t / RT60)`` amplitude."""
    time = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    envelope = np.exp(-3 * math.log(10) * time / rt60_seconds)
    if noise_seed is None:
        return envelope
    return envelope * np.random.default_rng(noise_seed).standard_normal(len(time))


@pytest.mark.parametrize("method", ["T20", "T30"])
@pytest.mark.parametrize("rt60_seconds", [0.25, 0.6, 1.2])
def test_rt60_of_an_exponential_decay_is_exact(rt60_seconds, method):
    # The decay curve of a pure exponential is the same exponential (the tail lost at 3 x RT60 is
    # 180 dB down), so the fit is exact up to rounding.
    assert rt60(decaying(rt60_seconds, 3 * rt60_seconds), SAMPLE_RATE, method) == pytest.approx(rt60_seconds, rel=1e-6)


@pytest.mark.parametrize("rt60_seconds", [0.3, 0.8])
def test_rt60_of_exponentially_decaying_noise(rt60_seconds):
    # Gaussian noise under the envelope: the backward integral averages over ~RT60 x rate samples, so
    # the fitted slope's relative error is a few percent at most; 5 % is the bound used.
    response = decaying(rt60_seconds, 2 * rt60_seconds, noise_seed=11)
    response[0] = 4.0  # the direct sound, where the decay curve starts
    assert rt60(torch.from_numpy(response).float(), SAMPLE_RATE) == pytest.approx(rt60_seconds, rel=0.05)


def test_rt60_starts_at_the_direct_sound():
    response = np.concatenate([np.zeros(800), decaying(0.4, 1.2)])
    assert rt60(response, SAMPLE_RATE) == pytest.approx(0.4, rel=1e-6)


def test_rt60_says_when_the_response_does_not_decay_enough():
    with pytest.raises(ValueError, match="not a straight line"):
        rt60(decaying(2.0, 0.5), SAMPLE_RATE)
    floor = decaying(0.5, 1.5) + 1e-2 * np.random.default_rng(2).standard_normal(24000)  # floor at -40 dB
    with pytest.raises(ValueError, match="noise floor"):
        rt60(floor, SAMPLE_RATE)
    with pytest.raises(ValueError, match="non-silent"):
        rt60(np.zeros(100), SAMPLE_RATE)
    with pytest.raises(ValueError, match="method"):
        rt60(decaying(0.3, 1.0), SAMPLE_RATE, method="T60")


def test_sabine_rt60_is_the_formula_srb_uses():
    length, width, height, absorption = 8.0, 6.0, 3.0, 0.3
    surface = 2 * (length * width + length * height + width * height)
    expected = 0.161 * length * width * height / (surface * absorption)
    assert sabine_rt60(length, width, height, absorption) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="absorption"):
        sabine_rt60(8.0, 6.0, 3.0, 0.0)


def test_severity_bins_follow_srb_for_rt60_and_srmr():
    rt60_values = [0.1, 0.2, 0.35, 0.5, 0.55, 0.9]
    edges = severity_edges(rt60_values)
    assert edges.tolist() == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])
    assert severity_bins(rt60_values) == [0, 1, 2, 2, 3, 4]
    srmr_values = [12.0, 11.0, 7.0, 4.0]  # SRMR falls as reverberation grows: edges 12, 10, 8, 6, 4
    assert severity_bins(srmr_values, higher_is_worse=False) == [0, 1, 3, 4]
