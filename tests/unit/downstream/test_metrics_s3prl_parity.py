"""Metrics as s3prl 0.4.18 computes them, against reference values written here from the definitions.

* SE / SS SI-SDR: s3prl calls asteroid 0.4.4's ``get_metrics``, which requires ``pb_bss_eval>=0.0.2``;
  its ``si_sdr`` makes both signals zero-mean, then projects with an epsilon of 1e-8 in the reference
  energy, the residual energy and the ratio;
* PR / ASR / SF greedy CTC decoding: one function; by default s3prl 0.4.18's rule (merge repeats, then
  drop the blank and the end-of-sentence token), with s3prl's pre-2022 rule as an option; the other
  special tokens stay in hypotheses (they count as errors), as in s3prl.

(QbE's min-max floor is tested in ``tests/unit/downstream/test_qbe.py``.)
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from robustdistiller.downstream.ctc import (
    CTC_DECODING_RULES,
    CTCBrain,
    character_vocabulary,
    check_ctc_decoding,
    greedy_ctc_decode,
    phone_vocabulary,
)
from robustdistiller.downstream.separation import SI_SDR_EPS, si_sdr, utterance_scores
from robustdistiller.downstream.slot_filling import SlotTextEncoder, ctc_vocabulary, tokens_to_text
from robustdistiller.runs.options import OptionError

EPS = 1e-8  # pb_bss_eval 0.0.2's EPS


def reference_si_sdr(estimate, reference):
    """The definition, with plain Python sums in float64: zero-mean signals, then the eps-guarded projection."""
    estimate = [float(value) for value in estimate]
    reference = [float(value) for value in reference]
    estimate_mean, reference_mean = math.fsum(estimate) / len(estimate), math.fsum(reference) / len(reference)
    e = [value - estimate_mean for value in estimate]
    r = [value - reference_mean for value in reference]
    scale = math.fsum(a * b for a, b in zip(r, e)) / (math.fsum(b * b for b in r) + EPS)
    projection = [scale * b for b in r]
    residual = [a - p for a, p in zip(e, projection)]
    ratio = math.fsum(p * p for p in projection) / (math.fsum(x * x for x in residual) + EPS)
    return 10 * math.log10(ratio + EPS)


# ------------------------------------------------------------------------------- SI-SDR ---


def test_si_sdr_removes_the_mean_minimal_case():
    reference = [1.0, -1.0, 1.0, -1.0]
    estimate = [value + 1.0 for value in reference]
    # zero-mean: the estimate is the reference; only the eps bounds the ratio: |r|^2 = 4, a = 4 / (4 + eps)
    scale = 4.0 / (4.0 + EPS)
    expected = 10 * math.log10(4.0 * scale**2 / (4.0 * (1.0 - scale) ** 2 + EPS) + EPS)
    assert expected == pytest.approx(86.02, abs=0.01)  # what s3prl reports for this pair
    assert si_sdr(estimate, reference) == pytest.approx(expected, rel=1e-9)
    assert SI_SDR_EPS == EPS
    # without the mean removal (the old formula) the same pair is 0 dB: far from it
    assert si_sdr(estimate, reference) > 80.0


def test_si_sdr_equals_the_definition_and_ignores_dc_offsets():
    rng = np.random.default_rng(0)
    time = np.arange(16000) / 16000
    speech = np.sin(2 * np.pi * 220 * time) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * time))
    for noise_level in (0.03, 0.3, 1.0):  # about 20, 10 and 0 dB
        estimate = 0.7 * speech + noise_level * speech.std() * rng.standard_normal(speech.size)
        expected = reference_si_sdr(estimate, speech)
        assert si_sdr(estimate, speech) == pytest.approx(expected, rel=1e-9, abs=1e-9)
        # a DC offset of 1 % of the peak in the estimate, the reference or both changes nothing
        offset = 0.01 * np.abs(speech).max()
        for shifted_estimate, shifted_reference in (
            (estimate + offset, speech),
            (estimate, speech - offset),
            (estimate + offset, speech + 3 * offset),
        ):
            assert si_sdr(shifted_estimate, shifted_reference) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # scale invariance of the estimate; a silent reference is finite (-80 dB: the eps)
    estimate = speech + 0.1 * rng.standard_normal(speech.size)
    assert si_sdr(3.0 * estimate, speech) == pytest.approx(si_sdr(estimate, speech), rel=1e-9)
    assert si_sdr(estimate, np.zeros_like(speech)) == pytest.approx(10 * math.log10(EPS))
    with pytest.raises(ValueError, match="length"):
        si_sdr(speech[:-1], speech)


def test_masking_metrics_use_the_zero_mean_si_sdr():
    rng = np.random.default_rng(1)
    references = rng.standard_normal((8000, 2))
    mixture = references.sum(axis=1)
    estimates = references + 0.1 * rng.standard_normal(references.shape)
    scores = utterance_scores(estimates, references, mixture)
    # an offset on the estimates and on the input changes neither SI-SDR nor the improvement
    shifted = utterance_scores(estimates + 0.5, references, mixture + 0.5)
    assert shifted == pytest.approx(scores, rel=1e-9)
    expected = np.mean([reference_si_sdr(estimates[:, index], references[:, index]) for index in range(2)])
    assert scores["SI_SDR"] == pytest.approx(expected, rel=1e-9)
    assert scores["SI_SDR_input"] == pytest.approx(
        np.mean([reference_si_sdr(mixture, references[:, index]) for index in range(2)]), rel=1e-9
    )


# ----------------------------------------------------------------------- CTC decoding ---


def one_hot(frame_ids, vocab_size):
    """Logits ``[1, F, V]`` whose arg-max per frame is ``frame_ids``."""
    logits = torch.full((1, len(frame_ids), vocab_size), -5.0)
    logits[0, torch.arange(len(frame_ids)), torch.tensor(frame_ids)] = 5.0
    return logits


def decode_tokens(vocabulary, tokens, rule="standard"):
    """Greedy decoding of frames whose arg-maxes are ``tokens``, as token strings."""
    frames = [vocabulary.index[token] for token in tokens]
    (ids,) = greedy_ctc_decode(one_hot(frames, len(vocabulary)), dropped_indices=vocabulary.dropped_indices, rule=rule)
    return vocabulary.decode(ids)


def s3prl_0_4_18_decode(frames, dropped):
    """s3prl 0.4.18: merge consecutive repeats (groupby), then filter the dropped ids."""
    merged = [frames[0]] + [b for a, b in zip(frames, frames[1:]) if a != b] if frames else []
    return [index for index in merged if index not in dropped]


def s3prl_pre2022_decode(frames, dropped):
    """s3prl before May 2022: filter the dropped ids, then merge consecutive repeats."""
    kept = [index for index in frames if index not in dropped]
    return [kept[0]] + [b for a, b in zip(kept, kept[1:]) if a != b] if kept else []


@pytest.mark.parametrize(
    "rule, reference", [("standard", s3prl_0_4_18_decode), ("s3prl_pre2022", s3prl_pre2022_decode)]
)
def test_greedy_decoding_equals_both_s3prl_rules_on_random_frames(rule, reference):
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        length = int(torch.randint(0, 12, (1,), generator=generator))
        frames = torch.randint(0, 4, (length,), generator=generator).tolist()
        logits = one_hot(frames, 4) if frames else torch.zeros(1, 0, 4)
        assert greedy_ctc_decode(logits, dropped_indices=[0, 1], rule=rule) == [reference(frames, {0, 1})]


def test_hello_is_decoded_hello_by_default_in_sf_pr_and_asr():
    sf = ctc_vocabulary(SlotTextEncoder(["city"]))
    frames = ["<pad>", "H", "E", "L", "<pad>", "L", "O", "<eos>"]
    assert tokens_to_text(decode_tokens(sf, frames)) == "HELLO"
    assert tokens_to_text(decode_tokens(sf, frames, "s3prl_pre2022")) == "HELO"
    asr = character_vocabulary()
    frames = ["<s>", "H", "E", "L", "<s>", "L", "O", "|", "</s>"]
    assert decode_tokens(asr, frames) == list("HELLO|")
    assert decode_tokens(asr, frames, "s3prl_pre2022") == list("HELO|")
    pr = phone_vocabulary()
    frames = ["<pad>", "HH", "AH0", "L", "<pad>", "L", "OW1", "<eos>"]
    assert decode_tokens(pr, frames) == ["HH", "AH0", "L", "L", "OW1"]


def test_special_tokens_stay_in_pr_and_asr_hypotheses_as_in_s3prl():
    pr = phone_vocabulary()
    assert decode_tokens(pr, ["SIL", "<pad>", "<unk>", "AA1", "SPN", "<eos>"]) == ["SIL", "<unk>", "AA1", "SPN"]
    asr = character_vocabulary()
    assert decode_tokens(asr, ["<pad>", "A", "<s>", "<unk>", "|", "</s>"]) == ["<pad>", "A", "<unk>", "|"]


class RecordingBrain(CTCBrain):
    """A CTC Brain that records the decoded hypotheses instead of scoring them."""

    def init_metrics(self, stage):
        self.recorded = []

    def append_metrics(self, ids, hypotheses, references):
        self.recorded += [(hypothesis, reference) for hypothesis, reference in zip(hypotheses, references)]


@pytest.mark.parametrize(
    "hparams, expected",
    [({}, "HELLO"), ({"ctc_decoding": "standard"}, "HELLO"), ({"ctc_decoding": "s3prl_pre2022"}, "HELO")],
)
def test_the_ctc_brain_decodes_with_the_ctc_decoding_option(hparams, expected):
    import speechbrain as sb

    vocabulary = ctc_vocabulary(SlotTextEncoder(["city"]))
    brain = RecordingBrain(
        vocabulary, modules={"head": torch.nn.Linear(2, 2)}, hparams=hparams, run_opts={"device": "cpu"}
    )
    brain.hypotheses = []
    brain.init_metrics(sb.Stage.TEST)
    frames = [vocabulary.index[token] for token in ["<pad>", "H", "E", "L", "<pad>", "L", "O", "<eos>"]]
    log_probs = torch.log_softmax(one_hot(frames, len(vocabulary)), dim=-1)
    target = torch.tensor([[vocabulary.index[character] for character in "HELLO"] + [vocabulary.index["<eos>"]]])
    batch = SimpleNamespace(id=["u1"], tokens=(target, torch.ones(1)))
    brain.compute_objectives((log_probs, torch.tensor([len(frames)])), batch, sb.Stage.TEST)
    ((hypothesis, reference),) = brain.recorded
    assert tokens_to_text(hypothesis) == expected and tokens_to_text(reference) == "HELLO"


def test_a_wrong_ctc_decoding_is_refused_with_the_option_named():
    assert CTC_DECODING_RULES == ("standard", "s3prl_pre2022")
    assert check_ctc_decoding("s3prl_pre2022") == "s3prl_pre2022"
    with pytest.raises(OptionError, match="ctc_decoding.*standard.*s3prl_pre2022.*'pre2022'"):
        RecordingBrain(
            phone_vocabulary(),
            modules={"head": torch.nn.Linear(2, 2)},
            hparams={"ctc_decoding": "pre2022"},
            run_opts={"device": "cpu"},
        )
