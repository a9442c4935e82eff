"""Enhancement head: the student's second task, recovering the clean spectrum from its features.

A BiLSTM reads the student's features (by default the 512-dim CNN output after the 0.1 gradient
multiplier; the last hidden state works too with ``input_size=768``), repeated x2 in time so that its
20 ms frames match the 10 ms STFT hop, and predicts a sigmoid mask over the noisy STFT magnitude
(n_fft 512, 400-sample Hann window, hop 160, centered). The loss compares ``mask * |STFT(noisy)|`` with
``|STFT(clean)|`` (see :func:`robustdistiller.distill.losses.enhancement_loss`).
Facts: ``docs/reference/robustdistiller.md`` "Enhancement head".

Frame alignment: for ``T`` samples the CNN gives ``F = floor((T - 400) / 320) + 1`` frames and the
centered STFT ``S = T // 160 + 1``, so ``2F`` is ``S - 3`` or ``S - 1`` (e.g. 98 vs 101 for 1 s); both axes
are explicitly trimmed to ``min(2F, S)``, dropping the trailing frames.
"""

import logging
from typing import NamedTuple

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)


N_FFT = 512
"""FFT size of the masked STFT (32 ms at 16 kHz)."""
WIN_LENGTH = 400
"""Hann window length (25 ms)."""
HOP_LENGTH = 160
"""Hop (10 ms)."""


def stft_complex(wavs, n_fft=N_FFT, win_length=WIN_LENGTH, hop_length=HOP_LENGTH):
    """Complex centered short-time Fourier transform (Hann window), computed in fp32, time-major.

    Arguments
    ---------
    wavs : torch.Tensor
        ``[B, T]`` waveforms.
    n_fft, win_length, hop_length : int
        STFT parameters (32 ms / 25 ms / 10 ms at 16 kHz).

    Returns
    -------
    torch.Tensor
        ``[B, S, n_fft // 2 + 1]`` complex, ``S = T // hop_length + 1``; its ``abs()`` is
        :func:`stft_magnitude` and its ``angle()`` the phase kept when the mask is applied.

    Example
    -------
    >>> spectrum = stft_complex(torch.randn(2, 16000))
    >>> spectrum.shape, spectrum.dtype
    (torch.Size([2, 101, 257]), torch.complex64)
    """
    window = torch.hann_window(win_length, device=wavs.device, dtype=torch.float32)
    with torch.autocast(device_type=wavs.device.type, enabled=False):
        spectrum = torch.stft(
            wavs.float(),
            n_fft=n_fft,
            hop_length=hop_length,
            win_length=win_length,
            window=window,
            center=True,
            return_complex=True,
        )
    return spectrum.transpose(1, 2)


def stft_magnitude(wavs, n_fft=N_FFT, win_length=WIN_LENGTH, hop_length=HOP_LENGTH):
    """Magnitude of the centered short-time Fourier transform (Hann window), computed in fp32.

    Arguments
    ---------
    wavs : torch.Tensor
        ``[B, T]`` waveforms.
    n_fft, win_length, hop_length : int
        STFT parameters (32 ms / 25 ms / 10 ms at 16 kHz).

    Returns
    -------
    torch.Tensor
        ``[B, S, n_fft // 2 + 1]`` with ``S = T // hop_length + 1``.

    Example
    -------
    >>> stft_magnitude(torch.randn(2, 16000)).shape
    torch.Size([2, 101, 257])
    """
    return stft_complex(wavs, n_fft, win_length, hop_length).abs()


def num_stft_frames(num_samples, hop_length=160):
    """Number of centered STFT frames for ``num_samples`` samples: ``num_samples // hop_length + 1``.

    Arguments
    ---------
    num_samples : int or torch.Tensor
    hop_length : int

    Returns
    -------
    int or torch.Tensor

    Example
    -------
    >>> num_stft_frames(16000), num_stft_frames(torch.tensor([16000, 8000]))
    (101, tensor([101,  51]))
    """
    return num_samples // hop_length + 1


class EnhancementOutput(NamedTuple):
    """What :meth:`EnhancementHead.forward` returns; all ``[B, S, n_fft // 2 + 1]``, frame-aligned."""

    mask: torch.Tensor
    enhanced_magnitude: torch.Tensor
    noisy_magnitude: torch.Tensor


class EnhancementHead(nn.Module):
    """BiLSTM mask estimator over the noisy STFT magnitude.

    Arguments
    ---------
    input_size : int
        Feature size ``C`` (512 for CNN features, 768 for the last hidden state).
    hidden_size : int
        LSTM size per direction.
    num_layers : int
        LSTM layers.
    dropout : float
        Dropout between LSTM layers and before the output layer.
    n_fft, win_length, hop_length : int
        STFT parameters of the masked spectrum.
    upsample : int
        Repetition of each feature frame in time (20 ms -> 10 ms).

    Example
    -------
    >>> head = EnhancementHead(input_size=16, hidden_size=8, num_layers=1).eval()
    >>> out = head(torch.randn(2, 49, 16), torch.randn(2, 16000))
    >>> out.mask.shape, out.enhanced_magnitude.shape, out.noisy_magnitude.shape
    (torch.Size([2, 98, 257]), torch.Size([2, 98, 257]), torch.Size([2, 98, 257]))
    >>> sum(p.numel() for p in EnhancementHead().parameters())
    4862721
    """

    def __init__(
        self,
        input_size=512,
        hidden_size=256,
        num_layers=3,
        dropout=0.1,
        n_fft=512,
        win_length=400,
        hop_length=160,
        upsample=2,
    ):
        super().__init__()
        self.n_fft = n_fft
        self.win_length = win_length
        self.hop_length = hop_length
        self.upsample = upsample
        self.lstm = nn.LSTM(
            input_size,
            hidden_size,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0.0,
            bidirectional=True,
            batch_first=True,
        )
        self.dropout = nn.Dropout(dropout)
        self.output_layer = nn.Linear(2 * hidden_size, n_fft // 2 + 1)

    def valid_frames(self, noisy_wavs, wav_lens=None, feature_mask=None, num_feature_frames=None, feature_lengths=None):
        """Valid output frames per item: ``min(upsample * valid feature frames, valid STFT frames)``.

        Use it to build the frame mask of :func:`robustdistiller.distill.losses.enhancement_loss`.

        Arguments
        ---------
        noisy_wavs : torch.Tensor
            ``[B, T]`` waveforms (only their shape is used).
        wav_lens : torch.Tensor, optional
            ``[B]`` relative lengths (None: all full).
        feature_mask : torch.Tensor, optional
            ``[B, F]`` bool valid feature frames (the student's ``frame_mask``); exact, preferred.
            Without it the feature frames are estimated as ``round(wav_lens * F)``.
        num_feature_frames : int, optional
            ``F``, needed only when ``feature_mask`` is None.
        feature_lengths : torch.Tensor, optional
            ``[B]`` valid feature frames (the student's ``frame_lengths``); exact, and preferred over
            ``feature_mask``: with it and ``wav_lens`` on the host, the result is computed there.

        Returns
        -------
        torch.Tensor
            ``[B]`` long, on the device of ``feature_lengths`` if given, else of ``noisy_wavs``.

        Example
        -------
        >>> head = EnhancementHead(input_size=4, hidden_size=4, num_layers=1)
        >>> mask = torch.arange(49)[None] < torch.tensor([[49], [24]])
        >>> head.valid_frames(torch.zeros(2, 16000), torch.tensor([1.0, 0.5]), feature_mask=mask)
        tensor([98, 48])
        """
        batch_size, num_samples = noisy_wavs.shape
        device = noisy_wavs.device if feature_lengths is None else feature_lengths.device
        if wav_lens is None:
            stft_frames = torch.full((batch_size,), num_stft_frames(num_samples, self.hop_length), device=device)
        else:
            sample_lengths = torch.round(wav_lens.float() * num_samples).long().to(device)
            stft_frames = num_stft_frames(sample_lengths, self.hop_length)
        if feature_lengths is not None:
            feature_frames = feature_lengths.long()
        elif feature_mask is not None:
            feature_frames = feature_mask.long().sum(dim=1).to(device)
        elif wav_lens is not None:
            feature_frames = torch.round(wav_lens.float() * num_feature_frames).long().to(device)
        else:
            feature_frames = torch.full((batch_size,), num_feature_frames, device=device)
        return torch.minimum(feature_frames * self.upsample, stft_frames)

    def forward(self, features, noisy_wavs, wav_lens=None, feature_mask=None, feature_lengths=None):
        """Predicts the mask and applies it to the noisy magnitude.

        Arguments
        ---------
        features : torch.Tensor
            ``[B, F, C]`` student features (20 ms frames).
        noisy_wavs : torch.Tensor
            ``[B, T]`` the waveforms the student heard.
        wav_lens : torch.Tensor, optional
            ``[B]`` relative lengths. When it or ``feature_mask`` is given, the LSTM runs on packed
            sequences of :meth:`valid_frames` frames, so padded frames do not reach valid ones through
            the backward direction (without them, every frame is treated as valid).
        feature_mask : torch.Tensor, optional
            ``[B, F]`` bool valid feature frames (the student's ``frame_mask``), exact where
            ``round(wav_lens * F)`` is only an estimate.
        feature_lengths : torch.Tensor, optional
            ``[B]`` valid feature frames on the host (the student's ``frame_lengths``): packing needs
            host lengths, so this avoids a device-to-host copy per step.

        Returns
        -------
        EnhancementOutput
            ``mask``, ``enhanced_magnitude = mask * noisy_magnitude`` and ``noisy_magnitude``,
            each ``[B, min(upsample * F, S), n_fft // 2 + 1]``.
        """
        noisy_magnitude = stft_magnitude(noisy_wavs, self.n_fft, self.win_length, self.hop_length)
        frames = features.repeat_interleave(self.upsample, dim=1)
        num_frames = min(frames.shape[1], noisy_magnitude.shape[1])
        frames = frames[:, :num_frames]
        noisy_magnitude = noisy_magnitude[:, :num_frames]
        if wav_lens is None and feature_mask is None and feature_lengths is None:
            hidden, _ = self.lstm(frames)
        else:
            lengths = self.valid_frames(noisy_wavs, wav_lens, feature_mask, features.shape[1], feature_lengths)
            lengths = lengths.clamp(1, num_frames)
            packed = nn.utils.rnn.pack_padded_sequence(frames, lengths.cpu(), batch_first=True, enforce_sorted=False)
            hidden, _ = self.lstm(packed)
            hidden, _ = nn.utils.rnn.pad_packed_sequence(hidden, batch_first=True, total_length=num_frames)
        mask = torch.sigmoid(self.output_layer(self.dropout(hidden)))
        enhanced_magnitude = mask * noisy_magnitude.to(mask.dtype)
        return EnhancementOutput(mask, enhanced_magnitude, noisy_magnitude)
