"""The masking task family (SE, SS): STFT masks from upstream features, the NPSM target, PIT, SI-SDR.

SUPERB's speech enhancement and source separation heads (s3prl ``enhancement_stft`` and
``separation_stft``, the "v1" recipes behind the SUPERB-SG numbers; ``docs/reference/superb_tasks.md`` "SE", "SS"):

* :class:`MaskEstimator` (s3prl's ``SepRNN``): weighted-sum features -> 3-layer BiLSTM (896 per
  direction, dropout 0.5 between layers and after) -> one ``Linear(1792 -> 257)`` per source -> ReLU, a
  mask per source over the noisy STFT magnitude. The STFT is n_fft 512, Hann window 512, **hop = the
  upstream rate (320)**, centered, so feature frames and STFT frames pair one to one
  (:func:`match_frames` pads or trims the few edge frames);
* the **NPSM** target (phase-sensitive, non-negative): ``|S| * relu(cos(angle(Y) - angle(S)))``
  (:func:`npsm_target`), and :func:`pit_mask_loss`: the MSE of ``mask * |Y|`` to it, summed over time and
  frequency, divided by the utterance's frame count, minimised over the permutations of the sources
  per utterance (uPIT; trivial for one source), divided by ``sources x utterances``;
* reconstruction (:func:`reconstruct`): the masks on the noisy *complex* STFT (noisy phase), inverse
  STFT at the input's length, then s3prl's suppression of the end-of-signal impulse
  (:func:`suppress_end_impulse`);
* :func:`si_sdr`: s3prl's metric (asteroid 0.4.4's ``get_metrics``, which requires ``pb_bss_eval>=0.0.2``,
  whose ``si_sdr`` is used): scale-invariant SDR of the **zero-mean** signals, with pb_bss_eval's
  epsilon 1e-8 (:data:`SI_SDR_EPS`); :func:`best_permutation`: the assignment of
  estimates to sources with the highest mean SI-SDR (asteroid/s3prl choose it by mir_eval's SIR, which
  almost always agrees and is far slower);
* :class:`MaskingBrain`: the Brain of both recipes, with per-utterance metrics of the output and of the
  condition's own input (absolute values and improvements).

The smaller "v2" head (hidden 256, sigmoid mask, magnitude target with L1, window 400 / hop 160 with
features repeated x2 in time), which the distillation enhancement head copies, is the same module with
other options (``activation``, ``target``, ``distance``, ``feature_repeat``, the STFT keys).
"""

import itertools
import logging
import os

import numpy as np
import speechbrain as sb
import torch
import torch.nn as nn

from robustdistiller.downstream.brain import DownstreamBrain
from robustdistiller.models.enhancement import stft_complex
from robustdistiller.distill.enhancement_quality import speech_quality

logger = logging.getLogger(__name__)

N_FFT = 512
WIN_LENGTH = 512
HOP_LENGTH = 320
"""SUPERB v1 STFT: 32 ms window and FFT, hop = the 20 ms upstream frame."""


class MaskEstimator(nn.Module):
    """s3prl's ``SepRNN``: a (Bi)LSTM over features and one mask per source.

    Arguments
    ---------
    input_size : int
        Feature size ``D``.
    num_sources : int
        Masks predicted (1 for SE, 2 for SS).
    num_bins : int
        STFT bins ``n_fft // 2 + 1``.
    hidden_size : int
        LSTM size per direction (SUPERB: 896).
    num_layers : int
        LSTM layers (SUPERB: 3).
    dropout : float
        Between LSTM layers and after the last one (SUPERB: 0.5).
    bidirectional : bool
        BiLSTM (SUPERB) or a causal LSTM.
    activation : str
        ``relu`` (SUPERB: unbounded mask) or ``sigmoid`` (v2).

    Example
    -------
    >>> head = MaskEstimator(16, num_sources=2, num_bins=9, hidden_size=8, num_layers=1).eval()
    >>> head(torch.randn(3, 20, 16), torch.tensor([20, 15, 7])).shape
    torch.Size([3, 20, 9, 2])
    """

    def __init__(
        self,
        input_size,
        num_sources=1,
        num_bins=N_FFT // 2 + 1,
        hidden_size=896,
        num_layers=3,
        dropout=0.5,
        bidirectional=True,
        activation="relu",
    ):
        super().__init__()
        if activation not in ("relu", "sigmoid"):
            raise ValueError(f"MaskEstimator activation must be 'relu' or 'sigmoid', got {activation!r}.")
        self.lstm = nn.LSTM(
            input_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=bidirectional,
        )
        self.dropout = nn.Dropout(dropout)
        directions = 2 if bidirectional else 1
        self.outputs = nn.ModuleList(nn.Linear(directions * hidden_size, num_bins) for _ in range(num_sources))
        self.activation = torch.relu if activation == "relu" else torch.sigmoid

    def forward(self, features, lengths):
        """``features [B, F, D]``, ``lengths [B]`` (frames) -> masks ``[B, F, bins, sources]`` (0 past the end)."""
        packed = nn.utils.rnn.pack_padded_sequence(
            features, lengths.cpu().long().clamp(min=1), batch_first=True, enforce_sorted=False
        )
        hidden, _ = self.lstm(packed)
        hidden, _ = nn.utils.rnn.pad_packed_sequence(hidden, batch_first=True, total_length=features.shape[1])
        hidden = self.dropout(hidden)
        masks = torch.stack([self.activation(output(hidden)) for output in self.outputs], dim=-1)
        valid = torch.arange(features.shape[1], device=features.device)[None, :] < lengths.to(features.device)[:, None]
        return masks * valid[:, :, None, None]


def match_frames(features, num_frames, repeat=1):
    """Feature frames paired with STFT frames: each repeated ``repeat`` times, then zero-padded or trimmed.

    With hop = the upstream rate the two differ by a couple of frames at the edges (centered STFT:
    ``T // hop + 1`` frames; the CNN: ``(T - 400) // 320 + 1``), as in s3prl.

    Example
    -------
    >>> match_frames(torch.ones(2, 49, 3), 51).shape, match_frames(torch.ones(2, 49, 3), 101, repeat=2).shape
    (torch.Size([2, 51, 3]), torch.Size([2, 101, 3]))
    """
    if repeat > 1:
        features = features.repeat_interleave(repeat, dim=1)
    if features.shape[1] >= num_frames:
        return features[:, :num_frames]
    return nn.functional.pad(features, (0, 0, 0, num_frames - features.shape[1]))


def stft_frames(num_samples, hop_length=HOP_LENGTH):
    """Centered STFT frames of ``num_samples`` samples (int or tensor): ``num_samples // hop + 1``."""
    return num_samples // hop_length + 1


def npsm_target(source_spectrum, noisy_spectrum):
    """Phase-sensitive non-negative target ``|S| * relu(cos(angle(Y) - angle(S)))`` (complex STFTs in).

    Example
    -------
    >>> clean = torch.tensor([2.0 + 0j, 1j, -1.0 + 0j])
    >>> npsm_target(clean, torch.tensor([1.0 + 0j, 1.0 + 0j, 1.0 + 0j]))
    tensor([2., 0., 0.])
    """
    return source_spectrum.abs() * torch.relu(torch.cos(noisy_spectrum.angle() - source_spectrum.angle()))


def pit_mask_loss(masks, noisy_magnitude, targets, frame_lengths, distance="mse"):
    """uPIT mask loss: per utterance the best source permutation; s3prl's normalisation.

    Arguments
    ---------
    masks : torch.Tensor
        ``[B, F, bins, S]``.
    noisy_magnitude : torch.Tensor
        ``[B, F, bins]``.
    targets : torch.Tensor
        ``[B, F, bins, S]`` (e.g. :func:`npsm_target` of each source).
    frame_lengths : torch.Tensor
        ``[B]`` valid STFT frames.
    distance : str
        ``mse`` (squared error, SUPERB) or ``l1``.

    Returns
    -------
    torch.Tensor
        Scalar: ``sum_b min_perm sum_s (sum_{t<len_b, f} d(mask * |Y|, target)) / len_b``, divided by
        ``S * B``.

    Example
    -------
    >>> targets = torch.rand(2, 5, 3, 2)
    >>> masks = targets.flip(-1)              # the right masks, in the other source order
    >>> float(pit_mask_loss(masks, torch.ones(2, 5, 3), targets, torch.tensor([5, 3])))
    0.0
    """
    estimates = masks * noisy_magnitude.unsqueeze(-1)
    valid = torch.arange(masks.shape[1], device=masks.device)[None, :] < frame_lengths.to(masks.device)[:, None]
    num_sources = masks.shape[-1]
    per_permutation = []
    for permutation in itertools.permutations(range(num_sources)):
        difference = estimates[..., list(permutation)] - targets
        error = difference.square() if distance == "mse" else difference.abs()
        error = (error * valid[:, :, None, None]).sum(dim=(1, 2, 3))  # [B], summed over the sources
        per_permutation.append(error / frame_lengths.to(error).clamp(min=1))
    best = torch.stack(per_permutation, dim=1).min(dim=1).values
    return best.sum() / (num_sources * masks.shape[0])


def reconstruct(masks, noisy_spectrum, num_samples, n_fft=N_FFT, win_length=WIN_LENGTH, hop_length=HOP_LENGTH):
    """Masked noisy complex STFT -> waveforms ``[B, T, S]`` (inverse STFT at ``num_samples``).

    Arguments
    ---------
    masks : torch.Tensor
        ``[B, F, bins, S]``.
    noisy_spectrum : torch.Tensor
        ``[B, F, bins]`` complex (:func:`robustdistiller.models.enhancement.stft_complex`).
    num_samples : int
        Length of the padded batch.

    Example
    -------
    >>> wavs = torch.randn(2, 16000)
    >>> spectrum = stft_complex(wavs, N_FFT, WIN_LENGTH, HOP_LENGTH)
    >>> torch.allclose(reconstruct(torch.ones(*spectrum.shape, 1), spectrum, 16000)[..., 0], wavs, atol=1e-4)
    True
    """
    batch, frames, bins, num_sources = masks.shape
    masked = (
        (masks.float() * noisy_spectrum.unsqueeze(-1)).permute(0, 3, 2, 1).reshape(batch * num_sources, bins, frames)
    )
    window = torch.hann_window(win_length, device=masks.device)
    waveforms = torch.istft(
        masked,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=window,
        center=True,
        length=num_samples,
    )
    return waveforms.reshape(batch, num_sources, num_samples).transpose(1, 2)


SI_SDR_EPS = 1e-8
"""pb_bss_eval's ``EPS`` (0.0.2, ``evaluation/module_si_sdr.py``), added to the reference energy, to the
residual energy and to the ratio: an estimate equal to its reference (the input of a clean condition)
gets a finite ``10 log10(|r|^2 / 1e-8)`` (about 80 dB plus the reference energy in dB) instead of
infinity, and a silent reference gets -80 dB, so ``results.json`` stays strict JSON."""


def si_sdr(estimate, reference):
    """Scale-invariant SDR in dB as s3prl 0.4.18 reports it: pb_bss_eval's ``si_sdr``, zero-mean signals.

    s3prl's SE and SS call asteroid 0.4.4's ``get_metrics``, which requires ``pb_bss_eval>=0.0.2``; its
    ``si_sdr`` removes the mean of both signals first (only pb_bss_eval 0.0.1 did not). With ``e`` and
    ``r`` the zero-mean estimate and reference and ``eps`` = :data:`SI_SDR_EPS`::

        a = <e, r> / (<r, r> + eps)
        SI-SDR = 10 log10(|a r|^2 / (|e - a r|^2 + eps) + eps)

    computed in float64.

    Example
    -------
    >>> reference = np.sin(np.arange(8000) * 0.05)
    >>> round(si_sdr(2.0 * reference + 0.1 * np.cos(np.arange(8000) * 0.3), reference), 2)
    26.02
    >>> round(si_sdr(reference + 1.0, reference), 2)  # a DC offset is removed with the mean
    116.02
    >>> round(si_sdr([2.0, 0.0, 2.0, 0.0], [1.0, -1.0, 1.0, -1.0]), 2)  # the reference plus 1: 10 log10(4 / 1e-8)
    86.02
    """
    estimate = np.asarray(estimate, dtype=np.float64).reshape(-1)
    reference = np.asarray(reference, dtype=np.float64).reshape(-1)
    if estimate.shape != reference.shape or estimate.size == 0:
        raise ValueError(
            f"si_sdr needs two signals of one non-zero length, got {estimate.size} and {reference.size} samples."
        )
    estimate = estimate - estimate.mean()
    reference = reference - reference.mean()
    scale = np.dot(reference, estimate) / (np.dot(reference, reference) + SI_SDR_EPS)
    projection = scale * reference
    noise = estimate - projection
    ratio = np.dot(projection, projection) / (np.dot(noise, noise) + SI_SDR_EPS)
    return float(10 * np.log10(ratio + SI_SDR_EPS))


def suppress_end_impulse(waveform, window_size=WIN_LENGTH, min_tail=2048):
    """s3prl's ``postprocess`` of a reconstructed waveform: zeroes the inverse STFT's end-of-signal impulse.

    With a 512-sample window and hop 320, the last ``len % 320 - 256`` samples (when positive) lie in no
    analysis window's centre region and the masked inverse STFT can blow up there. Among the last
    ``window_size`` non-zero samples, everything from the first sample louder than the peak of all the
    samples before them is zeroed (only when those samples end within ``min_tail`` of the end).

    Example
    -------
    >>> waveform = np.concatenate([np.sin(np.arange(4000) * 0.1), [0.5, 30.0, -20.0]])
    >>> processed = suppress_end_impulse(waveform)
    >>> float(np.abs(processed[-2:]).max()), bool(np.array_equal(processed[:4001], waveform[:4001]))
    (0.0, True)
    """
    waveform = np.asarray(waveform)
    nonzero = np.nonzero(waveform)[0]
    if nonzero.size == 0:
        return waveform
    end = int(nonzero.max()) + 1
    start = end - window_size
    if end < waveform.shape[0] - min_tail or start <= 0:
        return waveform
    louder = np.nonzero(np.abs(waveform[start:end]) > np.max(np.abs(waveform[:start])))[0]
    if louder.size == 0:
        return waveform
    processed = waveform.copy()
    processed[start + int(louder.min()) :] = 0
    return processed


def best_permutation(estimates, references):
    """The order of ``estimates`` (``[T, S]``) that maximises the mean SI-SDR to ``references`` (``[T, S]``).

    Returns
    -------
    (tuple of int, list of float)
        The permutation (estimate index per reference) and the SI-SDR of each reference.

    Example
    -------
    >>> references = np.stack([np.sin(np.arange(800) * 0.05), np.cos(np.arange(800) * 0.31)], axis=1)
    >>> best_permutation(references[:, ::-1] + 0.01, references)[0]
    (1, 0)
    """
    num_sources = references.shape[1]
    best = None
    for permutation in itertools.permutations(range(num_sources)):
        scores = [si_sdr(estimates[:, permutation[index]], references[:, index]) for index in range(num_sources)]
        if best is None or np.mean(scores) > np.mean(best[1]):
            best = (permutation, scores)
    return best


def utterance_scores(estimates, references, input_wav, quality=False, utterance_id=None, sample_rate=16000):
    """Per-utterance metrics of the output and of the condition's own input, against the (scaled, dry) sources.

    Arguments
    ---------
    estimates, references : numpy.ndarray
        ``[T, S]`` valid samples.
    input_wav : numpy.ndarray
        ``[T]``: what the upstream heard.
    quality : bool
        Also PESQ (wide band) and STOI, averaged over the sources (slow; ``None`` when an utterance cannot
        be scored, see :func:`~robustdistiller.distill.enhancement_quality.speech_quality`).

    Returns
    -------
    dict
        ``SI_SDR``, ``SI_SDR_input``, ``SI_SDRi`` and, with ``quality``, ``PESQ``, ``PESQ_input``, ``STOI``,
        ``STOI_input`` (omitted when unscored).
    """
    permutation, scores = best_permutation(estimates, references)
    input_scores = [si_sdr(input_wav, references[:, index]) for index in range(references.shape[1])]
    result = {"SI_SDR": float(np.mean(scores)), "SI_SDR_input": float(np.mean(input_scores))}
    result["SI_SDRi"] = result["SI_SDR"] - result["SI_SDR_input"]
    if quality:
        for name, signals in (
            ("", [estimates[:, index] for index in permutation]),
            ("_input", [input_wav] * references.shape[1]),
        ):
            measured = [
                speech_quality(signal, references[:, index], sample_rate, utterance_id)
                for index, signal in enumerate(signals)
            ]
            if all(measure is not None for measure in measured):
                result["PESQ" + name] = float(np.mean([measure["pesq"] for measure in measured]))
                result["STOI" + name] = float(np.mean([measure["stoi"] for measure in measured]))
    return result


def average_scores(scores):
    """Means over utterances of each metric, plus ``<metric>_improvement`` for PESQ and STOI and the counts.

    Example
    -------
    >>> average_scores([{"SI_SDR": 3.0, "PESQ": 2.0, "PESQ_input": 1.5}, {"SI_SDR": 5.0}])["PESQ_improvement"]
    0.5
    """
    means = {}
    for name in sorted({key for score in scores for key in score}):
        values = [score[name] for score in scores if name in score]
        means[name] = float(np.mean(values))
    for name in ("PESQ", "STOI"):
        paired = [
            score[name] - score[f"{name}_input"] for score in scores if name in score and f"{name}_input" in score
        ]
        if paired:
            means[f"{name}_improvement"] = float(np.mean(paired))
            means[f"{name}_scored"] = len(paired)
    means["utterances"] = len(scores)
    return means


class MaskingBrain(DownstreamBrain):
    """SE and SS: features -> :class:`MaskEstimator` -> masked noisy STFT; NPSM (or magnitude) loss with PIT.

    ``modules``: ``weighted_sum`` and ``head`` (:class:`MaskEstimator`). Batches hold ``sig`` (the input
    as heard) and ``sources`` (``[B, T, S]`` targets). YAML keys read: ``n_fft``, ``win_length``,
    ``hop_length``, ``feature_repeat`` (1; 2 with hop 160), ``mask_target`` (``npsm`` | ``magnitude``),
    ``mask_distance`` (``mse`` | ``l1``), ``selection_metric`` / ``selection_mode`` (the best dev checkpoint,
    :attr:`~robustdistiller.downstream.brain.DownstreamBrain.best_checkpoint_key`: ``PESQ`` for SE, ``SI_SDRi``
    for SS, higher is better), ``valid_quality`` / ``test_quality`` (compute
    PESQ and STOI in that stage), ``sample_rate``, ``output_folder``, ``num_saved_examples`` (enhanced /
    separated wavs written per test condition to ``<output_folder>/examples/<condition>/``).

    Dev and test metrics are per utterance (on the valid samples of each), then averaged: for the output
    and for the condition's input against the same targets, and their difference (``SI_SDRi``,
    ``PESQ_improvement``, ``STOI_improvement``).
    """

    selection_hint = "; PESQ/STOI need valid_quality: True."

    def stft(self, wavs):
        """Complex STFT ``[B, F, bins]`` with the recipe's settings."""
        return stft_complex(wavs, self.hparams.n_fft, self.hparams.win_length, self.hparams.hop_length)

    def compute_forward(self, batch, stage):
        """``(masks [B, F, bins, S], noisy_spectrum [B, F, bins], frame_lengths [B])``."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        features, frame_mask = self.encode(wavs, wav_lens)
        noisy_spectrum = self.stft(wavs)
        num_samples = torch.round(wav_lens * wavs.shape[1]).long()
        frame_lengths = stft_frames(num_samples, self.hparams.hop_length).clamp(max=noisy_spectrum.shape[1])
        features = match_frames(features, noisy_spectrum.shape[1], self.hparams.feature_repeat)
        masks = self.modules.head(features, frame_lengths)
        return masks, noisy_spectrum, frame_lengths

    def compute_objectives(self, predictions, batch, stage):
        """The PIT mask loss; outside training, the per-utterance metrics."""
        masks, noisy_spectrum, frame_lengths = predictions
        sources, _ = batch.sources
        sources = sources.to(self.device)
        source_spectra = torch.stack([self.stft(sources[..., index]) for index in range(sources.shape[-1])], dim=-1)
        if self.hparams.mask_target == "npsm":
            targets = npsm_target(source_spectra, noisy_spectrum.unsqueeze(-1))
        else:
            targets = source_spectra.abs()
        loss = pit_mask_loss(masks, noisy_spectrum.abs(), targets, frame_lengths, self.hparams.mask_distance)
        if stage != sb.Stage.TRAIN:
            self.score_batch(batch, masks.detach(), noisy_spectrum, stage)
        return loss

    def score_batch(self, batch, masks, noisy_spectrum, stage):
        """Reconstructs each utterance and appends its metrics."""
        wavs, wav_lens = batch.sig
        estimates = (
            reconstruct(
                masks,
                noisy_spectrum,
                wavs.shape[1],
                self.hparams.n_fft,
                self.hparams.win_length,
                self.hparams.hop_length,
            )
            .cpu()
            .numpy()
        )
        references = batch.sources[0].cpu().numpy()
        inputs = wavs.cpu().numpy()
        quality = self.hparams.valid_quality if stage == sb.Stage.VALID else self.hparams.test_quality
        for index, utterance_id in enumerate(batch.id):
            length = int(round(float(wav_lens[index]) * wavs.shape[1]))
            estimate = np.stack(
                [suppress_end_impulse(estimates[index, :length, source]) for source in range(estimates.shape[2])],
                axis=1,
            )
            self.scores.append(
                utterance_scores(
                    estimate,
                    references[index, :length],
                    inputs[index, :length],
                    quality,
                    utterance_id,
                    self.hparams.sample_rate,
                )
            )
            if stage == sb.Stage.TEST and self.saved_examples < self.hparams.num_saved_examples:
                self.save_example(utterance_id, estimate, inputs[index, :length])

    def save_example(self, utterance_id, estimates, input_wav):
        """Writes ``examples/<condition>/<id>_{input,source<k>}.wav`` (main process only)."""
        if not sb.utils.distributed.if_main_process():
            return
        import soundfile

        folder = os.path.join(self.hparams.output_folder, "examples", getattr(self, "condition", "") or "test")
        os.makedirs(folder, exist_ok=True)
        soundfile.write(os.path.join(folder, f"{utterance_id}_input.wav"), input_wav, self.hparams.sample_rate)
        for index in range(estimates.shape[1]):
            soundfile.write(
                os.path.join(folder, f"{utterance_id}_source{index + 1}.wav"),
                estimates[:, index],
                self.hparams.sample_rate,
            )
        self.saved_examples += 1

    def on_stage_start(self, stage, epoch=None):
        """New per-utterance score lists for dev and test."""
        super().on_stage_start(stage, epoch)
        self.scores, self.saved_examples = [], 0

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs, keeps the best dev checkpoint (:meth:`keep_best_checkpoint`), records the test statistics."""
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        stats = {"loss": stage_loss, **average_scores(self.scores)}
        if stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]},
                train_stats={"loss": self.train_loss},
                valid_stats=stats,
            )
            self.keep_best_checkpoint(stats)
            return
        self.stage_stats = stats
        condition = getattr(self, "condition", "") or "test"
        self.hparams.train_logger.log_stats(stats_meta={"test condition": condition}, test_stats=stats)
