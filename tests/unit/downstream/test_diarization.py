"""SD task family (robustdistiller.downstream.diarization): the DER scorer (hand-written cases, a brute-force
reference, parity with pyannote.metrics), PIT BCE, frame labels, the median filter, decoding, RTTM round trips."""

from pathlib import Path
import itertools
import os

import numpy as np
import pytest
import torch

from robustdistiller.downstream.der import (
    best_setting,
    constant_baseline,
    decode_segments,
    diarization_error,
    median_filter,
    read_rttm,
    score_grid,
    write_rttm,
)
from robustdistiller.downstream.diarization import frame_accuracy_counts, frame_labels, match_frames, pit_bce_loss


def der(reference, hypothesis):
    return diarization_error({"f": reference}, {"f": hypothesis})


# ------------------------------------------------------------------------------------ scorer ---


@pytest.mark.parametrize(
    "reference, hypothesis, expected",
    [
        # perfect, with the speakers named differently
        ({"A": [(0, 1)], "B": [(1, 3)]}, {"x": [(1, 3)], "y": [(0, 1)]}, (0, 0, 0)),
        # half of A missed
        ({"A": [(0, 2)]}, {"x": [(0, 1)]}, (50, 0, 0)),
        # a second speaker that does not exist: false alarm over 1 s of 2
        ({"A": [(0, 2)]}, {"x": [(0, 2)], "y": [(1, 2)]}, (0, 50, 0)),
        # one system speaker covers two reference speakers in turn: 1 s of 2 confused
        ({"A": [(0, 1)], "B": [(1, 2)]}, {"x": [(0, 2)]}, (0, 0, 50)),
        # overlap scored: both speak 0-2, system hears one -> 2 s of 4 missed
        ({"A": [(0, 2)], "B": [(0, 2)]}, {"x": [(0, 2)]}, (50, 0, 0)),
        # a speaker swap: either mapping matches 2 s of the 4 reference speaker seconds -> 2 s confused
        ({"A": [(0, 3)], "B": [(3, 4)]}, {"x": [(0, 2), (3, 4)], "y": [(2, 3)]}, (0, 0, 50)),
        # no system output at all
        ({"A": [(0.5, 1.0)]}, {}, (100, 0, 0)),
    ],
)
def test_der_of_hand_written_cases(reference, hypothesis, expected):
    scored = der(reference, hypothesis)
    assert (scored["miss"], scored["false_alarm"], scored["confusion"]) == pytest.approx(expected, abs=1e-9)
    assert scored["DER"] == pytest.approx(sum(expected), abs=1e-9)


def test_der_sums_times_over_files_and_is_exact_on_the_millisecond_grid():
    references = {"a": {"A": [(0.0, 1.234)]}, "b": {"B": [(0.0, 1.0)], "C": [(0.5, 2.0)]}}
    hypotheses = {"a": {"s": [(0.0, 1.0)]}, "b": {"t": [(0.0, 2.0)]}}
    scored = diarization_error(references, hypotheses)
    # a: 0.234 s missed; b: 0.5 s missed (overlap 0.5-1.0) and 0.5 s confused (t maps to C, 1.5 s overlap)
    assert scored["total_s"] == pytest.approx(1.234 + 1.0 + 1.5)
    assert scored["missed_s"] == pytest.approx(0.234 + 0.5) and scored["false_alarm_s"] == pytest.approx(0.0)
    assert scored["confusion_s"] == pytest.approx(0.5)
    assert scored["DER"] == pytest.approx(100 * (0.734 + 0.5) / 3.734)


def brute_force_der(reference, hypothesis, step=0.01):
    """Frame-by-frame DER over every one-to-one speaker mapping (the smallest error wins)."""
    end = max(e for turns in (*reference.values(), *hypothesis.values()) for _, e in turns)
    times = (np.arange(int(round(end / step))) + 0.5) * step

    def active(turns):
        return np.array([any(s <= t < e for s, e in turns) for t in times])

    ref = {speaker: active(turns) for speaker, turns in reference.items()}
    hyp = {speaker: active(turns) for speaker, turns in hypothesis.items()}
    n_ref = sum(ref.values()) if ref else np.zeros(len(times))
    n_hyp = sum(hyp.values()) if hyp else np.zeros(len(times))
    missed = np.maximum(n_ref - n_hyp, 0).sum()
    false_alarm = np.maximum(n_hyp - n_ref, 0).sum()
    best = None
    refs, hyps = list(ref), list(hyp)
    for size in range(min(len(refs), len(hyps)) + 1):
        for chosen_refs in itertools.combinations(refs, size):
            for chosen_hyps in itertools.permutations(hyps, size):
                correct = sum((ref[r] & hyp[h]).astype(int) for r, h in zip(chosen_refs, chosen_hyps))
                confusion = (np.minimum(n_ref, n_hyp) - correct).sum()
                best = confusion if best is None else min(best, confusion)
    return 100 * (missed + false_alarm + best) / n_ref.sum()


def random_turns(rng, speakers, duration=3.0, step=0.01):
    turns = {}
    for speaker in speakers:
        edges = np.sort(rng.choice(int(duration / step), size=2 * int(rng.integers(1, 4)), replace=False)) * step
        turns[speaker] = [(round(float(s), 2), round(float(e), 2)) for s, e in zip(edges[::2], edges[1::2])]
    return turns


def test_der_equals_a_brute_force_mapping_search_on_random_cases():
    rng = np.random.default_rng(0)
    for _ in range(25):
        reference = random_turns(rng, ["A", "B", "C"][: int(rng.integers(1, 4))])
        hypothesis = random_turns(rng, ["x", "y", "z"][: int(rng.integers(1, 4))])
        assert der(reference, hypothesis)["DER"] == pytest.approx(brute_force_der(reference, hypothesis), abs=1e-6)


def test_der_matches_pyannote_metrics():
    metrics = pytest.importorskip("pyannote.metrics.diarization")
    from pyannote.core import Annotation, Segment

    def annotation(turns):
        result = Annotation()
        for speaker, speaker_turns in turns.items():
            for index, (start, end) in enumerate(speaker_turns):
                result[Segment(start, end), f"{speaker}{index}"] = speaker
        return result

    rng = np.random.default_rng(1)
    cases = [
        ({"A": [(0.0, 2.0)], "B": [(1.0, 3.0)]}, {"x": [(0.0, 1.0)], "y": [(1.0, 3.0)], "z": [(3.0, 4.0)]}),
        ({"A": [(0.0, 3.0)], "B": [(3.0, 4.0)]}, {"x": [(0.0, 2.0), (3.0, 4.0)], "y": [(2.0, 3.0)]}),
    ]
    cases += [
        (random_turns(rng, ["A", "B"]), random_turns(rng, ["x", "y", "z"][: int(rng.integers(1, 4))]))
        for _ in range(20)
    ]
    for reference, hypothesis in cases:
        scorer = metrics.DiarizationErrorRate(collar=0.0, skip_overlap=False)
        details = scorer(annotation(reference), annotation(hypothesis), detailed=True)
        ours = der(reference, hypothesis)
        assert ours["DER"] == pytest.approx(100 * details["diarization error rate"], abs=1e-6)
        assert ours["missed_s"] == pytest.approx(details["missed detection"], abs=1e-6)
        assert ours["false_alarm_s"] == pytest.approx(details["false alarm"], abs=1e-6)
        assert ours["confusion_s"] == pytest.approx(details["confusion"], abs=1e-6)


def test_always_active_baseline():
    scored = constant_baseline({"f": {"A": [(0.0, 1.0)], "B": [(1.0, 4.0)]}}, {"f": 4.0})
    assert scored["false_alarm"] == pytest.approx(100 * 4 / 4) and scored["miss"] == 0 and scored["confusion"] == 0


# -------------------------------------------------------------------------------------- loss ---


def manual_pit_bce(logits, labels, lengths):
    total = 0.0
    for index, length in enumerate(lengths):
        candidates = []
        for permutation in ([0, 1], [1, 0]):
            target = labels[index, :length][:, permutation]
            probability = torch.sigmoid(logits[index, :length])
            bce = -(target * torch.log(probability) + (1 - target) * torch.log(1 - probability))
            candidates.append(bce.mean(dim=-1).sum())
        total += min(candidates)
    return total / sum(lengths)


def test_pit_bce_is_permutation_invariant_ignores_padding_and_matches_a_plain_computation():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 2, generator=generator)
    labels = (torch.rand(3, 6, 2, generator=generator) > 0.5).float()
    lengths = torch.tensor([6, 4, 2])
    loss, permuted = pit_bce_loss(logits, labels, lengths)
    assert float(loss) == pytest.approx(float(manual_pit_bce(logits, labels, lengths.tolist())), rel=1e-5)
    swapped, _ = pit_bce_loss(logits, labels.flip(-1), lengths)
    assert float(swapped) == pytest.approx(float(loss), rel=1e-6)
    padded_logits, padded_labels = logits.clone(), labels.clone()
    padded_logits[1, 4:], padded_labels[1, 4:] = 50.0, 0.0  # garbage in the padding
    padded_logits[2, 2:] = -7.0
    assert float(pit_bce_loss(padded_logits, padded_labels, lengths)[0]) == pytest.approx(float(loss), rel=1e-6)
    # the permuted labels are the best permutation of each utterance
    perfect_logits = 30 * (labels.flip(-1) - 0.5)
    zero, best = pit_bce_loss(perfect_logits, labels, lengths)
    assert float(zero) < 1e-6 and torch.equal(best, labels.flip(-1))
    correct, frames = frame_accuracy_counts(perfect_logits, best, lengths)
    assert (correct, frames) == (12.0, 12)


# ------------------------------------------------------------------------ labels, decoding ---


def test_frame_labels_use_rint_at_the_upstream_rate_and_match_frames_repeats_the_last_frame():
    # 0.013 s * 50 = 0.65 -> frame 1; 0.05 s -> 2.5 -> rint (half to even) 2; 0.07 -> 3.5 -> 4
    labels = frame_labels({"a": [(0.013, 0.05)], "b": [(0.07, 9.0)]}, ["a", "b", None], 6)
    assert labels.T.tolist() == [[0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1], [0] * 6]
    features = torch.arange(8.0).reshape(2, 4, 1)
    matched = match_frames(features, torch.tensor([4, 2]), 3)[..., 0]
    assert matched.tolist() == [[0, 1, 2], [4, 5, 5]]


def test_median_filter_is_scipy_medfilt_per_speaker():
    from scipy.signal import medfilt

    activity = (np.random.default_rng(0).random((40, 2)) > 0.5).astype(int)
    filtered = median_filter(activity, 11)
    for column in range(2):
        assert filtered[:, column].tolist() == medfilt(activity[:, column].astype(float), 11).astype(int).tolist()
    assert np.array_equal(median_filter(activity, 1), activity)
    assert median_filter(np.array([[0, 1, 0, 1, 1, 1, 0, 1, 1]]).T, 3)[:, 0].tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 1]


def test_decoding_rttm_round_trip_and_grid(tmp_path):
    posteriors = np.zeros((50, 2))
    posteriors[5:20, 0], posteriors[15:45, 1] = 0.9, 0.65
    turns = decode_segments(posteriors, 0.5, 1, 0.02)
    assert turns == {0: [(0.1, 0.4)], 1: [(0.3, 0.9)]}
    assert decode_segments(posteriors, 0.7, 1, 0.02)[1] == []
    path = str(tmp_path / "sub" / "hyp.rttm")
    write_rttm(path, {"rec1": {"x": turns[0], "y": turns[1]}, "rec0": {"z": [(0.0, 0.25)]}})
    lines = Path(path).read_text().splitlines()
    assert lines[0] == "SPEAKER rec0 1 0.000 0.250 <NA> <NA> z <NA> <NA>" and len(lines) == 3
    assert read_rttm(path) == {"rec0": {"z": [(0.0, 0.25)]}, "rec1": {"x": [(0.1, 0.4)], "y": [(0.3, 0.9)]}}
    bad = tmp_path / "bad.rttm"
    bad.write_text("SPEAKER rec 1 0.0\n")
    with pytest.raises(ValueError, match="bad.rttm line 1"):
        read_rttm(str(bad))
    # the grid: the reference equals the 0.5 decoding, so every threshold <= 0.6 is perfect and 0.7 is not
    grid = score_grid({"rec1": posteriors}, {"rec1": {"A": [(0.1, 0.4)], "B": [(0.3, 0.9)]}})
    assert len(grid) == 10 and grid["t0.5_m1"]["DER"] == 0.0 and grid["t0.7_m1"]["DER"] > 50
    assert best_setting(grid) == "t0.3_m1" and os.path.isfile(path)
