"""Objective quality of the enhancement head's output: PESQ (wide band), STOI and SI-SNR.

The head predicts a mask over the noisy STFT magnitude (:mod:`robustdistiller.models.enhancement`). Applied to
the noisy *complex* STFT (so the noisy phase is kept) and inverted with the same STFT settings, it
gives an enhanced waveform, scored against the enhancement target: ``reference_sig`` of
:func:`robustdistiller.data.pipeline.make_distillation_dataset`, the clean speech at the gain it has inside
the noisy signal. The SI-SNR of the noisy input itself (``si_snr_noisy``) is reported alongside, so the
improvement is visible. The authors monitored these three numbers during training.

- :func:`enhanced_waveforms`: mask x noisy STFT -> inverse STFT, one waveform per utterance;
- :func:`si_snr`, :func:`speech_quality`: the metrics of one utterance (``None`` when it cannot be
  scored: too short, silent reference, PESQ finds no utterance...; a warning names it and why);
- :class:`QualityMeans`: their means over utterances, with the counts of scored and skipped ones;
- :func:`enhance_batch`: the student's features -> head -> enhanced waveforms, exactly as in training;
- :func:`evaluate_enhancement_quality`: all of it over a dataset or a loader.
"""

import logging
import math
import warnings

import speechbrain as sb
import torch

from robustdistiller.data.corruption import SILENCE_RMS
from robustdistiller.models.enhancement import HOP_LENGTH, N_FFT, WIN_LENGTH, EnhancementOutput, stft_complex
from robustdistiller.inference.interface import absolute_lengths

logger = logging.getLogger(__name__)

PESQ_SAMPLE_RATE = 16000
"""Wide-band PESQ (ITU-T P.862.2) is defined at 16 kHz; other rates are resampled for it."""
MIN_SECONDS = 0.25
"""Shortest scored utterance: PESQ needs at least 1/4 s."""
QUALITY_KEYS = ("pesq", "stoi", "si_snr", "si_snr_noisy")
"""Metrics averaged by :class:`QualityMeans`."""


def _unwrap(module):
    """The module inside a DDP / DataParallel wrapper (the module itself otherwise)."""
    return getattr(module, "module", module)


def sample_lengths(wav_lens, num_samples, batch_size=None):
    """Valid samples per item on the host, as the student counts them (:func:`absolute_lengths`).

    Arguments
    ---------
    wav_lens : torch.Tensor or None
        ``[B]`` relative lengths; None means every item is full length.
    num_samples : int
        Padded length ``T``.
    batch_size : int, optional
        ``B``, needed only when ``wav_lens`` is None.

    Returns
    -------
    torch.Tensor
        ``[B]`` long (CPU).

    Example
    -------
    >>> sample_lengths(torch.tensor([1.0, 0.5]), 16000).tolist()
    [16000, 8000]
    >>> sample_lengths(None, 100, batch_size=2).tolist()
    [100, 100]
    """
    if wav_lens is None:
        return torch.full((batch_size,), num_samples, dtype=torch.long)
    return absolute_lengths(wav_lens.detach().cpu(), num_samples)


def enhanced_waveforms(
    mask,
    noisy_wavs,
    wav_lens=None,
    valid_frames=None,
    n_fft=N_FFT,
    win_length=WIN_LENGTH,
    hop_length=HOP_LENGTH,
):
    """Applies the head's mask to the noisy complex STFT (noisy phase) and inverts it, per utterance.

    Each utterance is transformed on its own valid samples, so padding never leaks in. The head's
    mask covers ``min(2F, S)`` frames (1 to 3 fewer than the ``S`` frames of the STFT, see
    :mod:`robustdistiller.models.enhancement`): the missing trailing frames repeat its last valid frame.

    Arguments
    ---------
    mask : torch.Tensor or EnhancementOutput
        ``[B, M, n_fft // 2 + 1]`` mask in [0, 1] (or the head's output, whose ``mask`` is used).
    noisy_wavs : torch.Tensor
        ``[B, T]`` the waveforms the student heard.
    wav_lens : torch.Tensor, optional
        ``[B]`` relative lengths (None: all full).
    valid_frames : torch.Tensor, optional
        ``[B]`` valid mask frames per item (:meth:`EnhancementHead.valid_frames`); by default
        ``min(M, S_i)``.
    n_fft, win_length, hop_length : int
        STFT parameters; they must be those of the head (the defaults are).

    Returns
    -------
    list of torch.Tensor
        ``B`` float32 waveforms ``[L_i]``, trimmed to their valid lengths. An item too short for the
        centered STFT (``L_i <= n_fft // 2``) is returned unchanged (:func:`speech_quality` skips it).

    Example
    -------
    >>> noisy = torch.randn(2, 16000)
    >>> ones = torch.ones(2, 98, 257)
    >>> waves = enhanced_waveforms(ones, noisy, torch.tensor([1.0, 0.5]))
    >>> [tuple(wave.shape) for wave in waves]
    [(16000,), (8000,)]
    >>> bool((waves[1] - noisy[1, :8000]).abs().max() < 1e-4)
    True
    """
    if isinstance(mask, EnhancementOutput):
        mask = mask.mask
    mask = mask.detach().float()
    batch_size, num_samples = noisy_wavs.shape
    lengths = sample_lengths(wav_lens, num_samples, batch_size)
    window = torch.hann_window(win_length, device=noisy_wavs.device, dtype=torch.float32)
    waveforms = []
    for index in range(batch_size):
        length = int(lengths[index])
        noisy = noisy_wavs[index, :length].detach().float()
        if length <= n_fft // 2:
            waveforms.append(noisy.clone())
            continue
        spectrum = stft_complex(noisy[None], n_fft, win_length, hop_length)[0]  # [S, K]
        num_frames = spectrum.shape[0]
        frames = min(mask.shape[1], num_frames)
        if valid_frames is not None:
            frames = min(frames, int(valid_frames[index]))
        frames = max(frames, 1)
        item_mask = mask[index, :frames].to(spectrum.device)
        if frames < num_frames:
            item_mask = torch.cat([item_mask, item_mask[-1:].expand(num_frames - frames, -1)])
        with torch.autocast(device_type=noisy.device.type, enabled=False):
            waveform = torch.istft(
                (spectrum * item_mask).transpose(0, 1),
                n_fft=n_fft,
                hop_length=hop_length,
                win_length=win_length,
                window=window,
                center=True,
                length=length,
            )
        waveforms.append(waveform)
    return waveforms


def si_snr(estimate, reference):
    """Scale-invariant signal-to-noise ratio in dB (both signals made zero-mean first).

    Uses SpeechBrain's :func:`speechbrain.nnet.losses.cal_si_snr` (shape ``[T, B, C]``, returns the
    *negative* SI-SNR and scales the estimate in place, hence the copy), in float64. Its epsilons
    cap identical signals at about 100 dB (depending on their energy) and floor the ratio at -80 dB.

    Arguments
    ---------
    estimate, reference : torch.Tensor or numpy.ndarray
        ``[T]`` waveforms of the same length.

    Returns
    -------
    float

    Example
    -------
    >>> clean = torch.sin(torch.arange(16000) * 0.05)
    >>> round(si_snr(clean + 0.1 * torch.cos(torch.arange(16000) * 0.3), clean), 2)
    20.0
    >>> si_snr(3.0 * clean, clean) > 80
    True
    """
    from speechbrain.nnet.losses import cal_si_snr

    estimate = torch.as_tensor(estimate).detach().to("cpu", torch.float64).reshape(-1)
    reference = torch.as_tensor(reference).detach().to("cpu", torch.float64).reshape(-1)
    if estimate.shape != reference.shape:
        raise ValueError(f"si_snr needs equal lengths, got {estimate.numel()} and {reference.numel()}.")
    return float(-cal_si_snr(reference[:, None, None], estimate[:, None, None].clone()))


def _skip(utterance_id, reason):
    logger.warning("Enhancement quality: utterance %s skipped: %s.", utterance_id, reason)


def speech_quality(enhanced, clean, sample_rate=16000, utterance_id=None, min_seconds=MIN_SECONDS):
    """PESQ (wide band), STOI and SI-SNR of one enhanced utterance against its clean reference.

    Utterances that cannot be scored are skipped, with one warning naming ``utterance_id`` and the
    reason: shorter than ``min_seconds``, silent reference (RMS below
    :data:`robustdistiller.data.corruption.SILENCE_RMS`), non-finite samples, an error of PESQ (e.g. no
    utterance detected) or too few non-silent frames for STOI.

    Arguments
    ---------
    enhanced, clean : torch.Tensor or numpy.ndarray
        ``[T]`` waveforms of the same length (``clean``: the enhancement target ``reference_sig``).
    sample_rate : int
        Their sampling rate (PESQ runs at 16 kHz, resampled if needed; STOI resamples to 10 kHz).
    utterance_id : str, optional
        Named in the warning of a skipped utterance.
    min_seconds : float
        Shortest scored utterance.

    Returns
    -------
    dict or None
        ``{"pesq", "stoi", "si_snr"}`` floats, or None for a skipped utterance.

    Example
    -------
    >>> time = torch.arange(16000) / 16000
    >>> clean = torch.sin(2 * math.pi * 220 * time) * (torch.sin(2 * math.pi * 3 * time) > 0)
    >>> scores = speech_quality(clean, clean, utterance_id="tone")
    >>> round(scores["pesq"], 2), round(scores["stoi"], 2)
    (4.64, 1.0)
    >>> speech_quality(torch.zeros(16000), torch.zeros(16000), utterance_id="silent") is None
    True
    """
    from pesq import PesqError, pesq
    from pystoi import stoi

    enhanced = torch.as_tensor(enhanced).detach().to("cpu", torch.float64).reshape(-1)
    clean = torch.as_tensor(clean).detach().to("cpu", torch.float64).reshape(-1)
    if enhanced.shape != clean.shape:
        raise ValueError(f"speech_quality needs equal lengths, got {enhanced.numel()} and {clean.numel()}.")
    duration = clean.numel() / sample_rate
    if duration < min_seconds:
        _skip(utterance_id, f"{duration:.3f} s is shorter than {min_seconds} s")
        return None
    if not (torch.isfinite(enhanced).all() and torch.isfinite(clean).all()):
        _skip(utterance_id, "non-finite samples")
        return None
    if float(clean.square().mean().sqrt()) < SILENCE_RMS:
        _skip(utterance_id, "the clean reference is silent")
        return None
    if sample_rate == PESQ_SAMPLE_RATE:
        pesq_clean, pesq_enhanced = clean.numpy(), enhanced.numpy()
    else:
        import torchaudio

        pesq_clean, pesq_enhanced = (
            torchaudio.functional.resample(signal, sample_rate, PESQ_SAMPLE_RATE).numpy()
            for signal in (clean, enhanced)
        )
    try:
        pesq_score = float(pesq(PESQ_SAMPLE_RATE, pesq_clean, pesq_enhanced, "wb"))
    except PesqError as error:
        message = error.args[0].decode() if error.args and isinstance(error.args[0], bytes) else str(error)
        _skip(utterance_id, f"PESQ failed ({type(error).__name__}: {message})")
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stoi_score = float(stoi(clean.numpy(), enhanced.numpy(), sample_rate, extended=False))
    if any("Not enough STFT frames" in str(warning.message) for warning in caught):
        _skip(utterance_id, "too few non-silent frames for STOI")
        return None
    return {"pesq": pesq_score, "stoi": stoi_score, "si_snr": si_snr(enhanced, clean)}


class QualityMeans:
    """Means of :func:`speech_quality` (plus the noisy input's SI-SNR) over utterances.

    Arguments
    ---------
    max_utterances : int, optional
        Score at most this many utterances (scored or skipped); None: no limit.
    sample_rate : int
        Sampling rate of the waveforms.
    min_seconds : float
        Shortest scored utterance.

    Example
    -------
    >>> time = torch.arange(16000) / 16000
    >>> clean = torch.sin(2 * math.pi * 220 * time) * (torch.sin(2 * math.pi * 3 * time) > 0)
    >>> means = QualityMeans(max_utterances=2)
    >>> means.update(["a", "b"], [clean, clean[:800]], [clean, clean[:800]], [clean, clean[:800]])
    >>> summary = means.summary()
    >>> summary["num_scored"], summary["num_skipped"], means.remaining
    (1, 1, 0)
    """

    def __init__(self, max_utterances=None, sample_rate=16000, min_seconds=MIN_SECONDS):
        self.max_utterances = max_utterances
        self.sample_rate = sample_rate
        self.min_seconds = min_seconds
        self.totals = {key: 0.0 for key in QUALITY_KEYS}
        self.num_scored = 0
        self.num_skipped = 0

    @property
    def remaining(self):
        """How many more utterances to score (None: no limit)."""
        if self.max_utterances is None:
            return None
        return max(self.max_utterances - self.num_scored - self.num_skipped, 0)

    def update(self, utterance_ids, enhanced, references, noisy):
        """Scores utterances (at most :attr:`remaining` of them, the first ones).

        Arguments
        ---------
        utterance_ids : list of str
        enhanced, references, noisy : list of torch.Tensor
            ``[L_i]`` enhanced, reference (clean target) and noisy waveforms, valid samples only.
        """
        count = len(utterance_ids) if self.remaining is None else min(len(utterance_ids), self.remaining)
        for index in range(count):
            scores = speech_quality(
                enhanced[index], references[index], self.sample_rate, utterance_ids[index], self.min_seconds
            )
            if scores is None:
                self.num_skipped += 1
                continue
            scores["si_snr_noisy"] = si_snr(noisy[index], references[index])
            for key in QUALITY_KEYS:
                self.totals[key] += scores[key]
            self.num_scored += 1

    def update_batch(self, utterance_ids, enhanced, reference_wavs, noisy_wavs, wav_lens=None):
        """:meth:`update` from padded ``[B, T]`` reference and noisy batches (split by ``wav_lens``)."""
        references = valid_waveforms(reference_wavs, wav_lens)
        self.update(list(utterance_ids), enhanced, references, valid_waveforms(noisy_wavs, wav_lens))

    def summary(self):
        """``{"pesq", "stoi", "si_snr", "si_snr_noisy"}`` means (NaN when none scored), ``num_scored``,
        ``num_skipped``."""
        means = {key: self.totals[key] / self.num_scored if self.num_scored else math.nan for key in QUALITY_KEYS}
        return {**means, "num_scored": self.num_scored, "num_skipped": self.num_skipped}


def enhance_batch(enhancement_head, student_output, noisy_wavs, wav_lens=None, enhancement_input="cnn"):
    """Enhanced waveforms of a batch from the student's output, the head called as in training.

    Mirrors :meth:`robustdistiller.distill.brain.DistillationBrain.compute_forward`: features are
    ``student_output.cnn_features`` (``enhancement_input="cnn"``) or ``hidden_states[-1]``, and the
    head gets ``feature_mask=student_output.frame_mask``. Runs in the head's current mode (call it
    under ``torch.no_grad()`` in eval mode).

    Arguments
    ---------
    enhancement_head : robustdistiller.models.enhancement.EnhancementHead
        The head (possibly DDP-wrapped).
    student_output : robustdistiller.models.student.StudentOutput
        The student's output on ``noisy_wavs``.
    noisy_wavs : torch.Tensor
        ``[B, T]``.
    wav_lens : torch.Tensor, optional
        ``[B]`` relative lengths.
    enhancement_input : str
        ``"cnn"`` or ``"last_hidden"``.

    Returns
    -------
    list of torch.Tensor
        ``B`` enhanced waveforms trimmed to their valid lengths (see :func:`enhanced_waveforms`).
    """
    if enhancement_input == "cnn":
        features = student_output.cnn_features
    else:
        features = student_output.hidden_states[-1]
    output = enhancement_head(features, noisy_wavs, wav_lens, feature_mask=student_output.frame_mask)
    head = _unwrap(enhancement_head)
    valid_frames = head.valid_frames(noisy_wavs, wav_lens, feature_mask=student_output.frame_mask)
    return enhanced_waveforms(
        output.mask, noisy_wavs, wav_lens, valid_frames, head.n_fft, head.win_length, head.hop_length
    )


def valid_waveforms(wavs, wav_lens=None):
    """Splits a padded ``[B, T]`` batch into its ``B`` valid waveforms.

    Example
    -------
    >>> [len(wave) for wave in valid_waveforms(torch.zeros(2, 10), torch.tensor([1.0, 0.3]))]
    [10, 3]
    """
    lengths = sample_lengths(wav_lens, wavs.shape[1], wavs.shape[0])
    return [wavs[index, : int(length)] for index, length in enumerate(lengths)]


@torch.no_grad()
def evaluate_enhancement_quality(
    student,
    enhancement_head,
    data,
    enhancement_input="cnn",
    num_utterances=None,
    device=None,
    batch_size=8,
    num_workers=0,
    sample_rate=16000,
    min_seconds=MIN_SECONDS,
):
    """PESQ, STOI and SI-SNR of the head's enhanced waveforms on the first utterances of ``data``.

    The student hears ``noisy_sig``; the head (called as in training, see :func:`enhance_batch`)
    masks its STFT; the result is scored against ``reference_sig``. Both models are put in eval mode
    and their modes restored afterwards; they are not moved (``device`` is where the batches go).

    Arguments
    ---------
    student : robustdistiller.models.student.DistillerStudent
        The student (possibly DDP-wrapped).
    enhancement_head : robustdistiller.models.enhancement.EnhancementHead
        Its enhancement head (possibly DDP-wrapped).
    data : DynamicItemDataset or iterable of PaddedBatch
        A dataset of :func:`robustdistiller.data.pipeline.make_distillation_dataset` (a loader of
        ``batch_size`` is built, in order), or batches with ``id``, ``noisy_sig`` and ``reference_sig``.
    enhancement_input : str
        ``"cnn"`` or ``"last_hidden"``, as in training.
    num_utterances : int, optional
        Score the first ``num_utterances`` utterances (scored + skipped); None: all.
    device : str or torch.device, optional
        Where batches go; default: the student's device.
    batch_size, num_workers : int
        Loader options when ``data`` is a dataset.
    sample_rate : int
        Sampling rate of the data.
    min_seconds : float
        Shortest scored utterance.

    Returns
    -------
    dict
        ``pesq``, ``stoi``, ``si_snr`` (enhanced vs reference), ``si_snr_noisy`` (noisy vs reference):
        means over the scored utterances (NaN when none); ``num_scored``, ``num_skipped``.
    """
    if device is None:
        device = next(student.parameters()).device
    if isinstance(data, torch.utils.data.Dataset):
        data = sb.dataio.dataloader.make_dataloader(data, batch_size=batch_size, num_workers=num_workers)
    means = QualityMeans(num_utterances, sample_rate, min_seconds)
    modes = student.training, enhancement_head.training
    student.eval()
    enhancement_head.eval()
    try:
        for batch in data:
            if means.remaining == 0:
                break
            batch = batch.to(device)
            noisy_wavs, wav_lens = batch.noisy_sig
            reference_wavs, _ = batch.reference_sig
            student_output = student(noisy_wavs, wav_lens)
            enhanced = enhance_batch(enhancement_head, student_output, noisy_wavs, wav_lens, enhancement_input)
            means.update_batch(batch.id, enhanced, reference_wavs, noisy_wavs, wav_lens)
    finally:
        student.train(modes[0])
        enhancement_head.train(modes[1])
    summary = means.summary()
    logger.info("Enhancement quality: %s", summary)
    return summary
