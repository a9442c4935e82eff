"""Speaker diarization (SUPERB SD): frame labels, the head, PIT BCE.

s3prl's ``-d diarization`` (``docs/reference/superb_tasks.md`` "SD"):

* :func:`frame_labels`: ``[F, S]`` 0/1 labels of a recording from its speaker turns, at the upstream
  rate (``frame_shift`` 320 samples); start / end frame = ``rint(sec * 16000 / 320)``, ``F =
  int(num_samples / 320)``;
* :func:`match_frames`: upstream features trimmed, or padded by repeating each utterance's last valid
  frame, to the label length;
* :class:`DiarizationHead`: ``LSTM(D -> 512, 1 layer, unidirectional) -> Linear(512 -> S)``;
* :func:`pit_bce_loss`: BCE-with-logits, best of the speaker permutations per utterance (mean over
  speakers, summed over valid frames, min over permutations, summed over the batch, divided by the
  total number of valid frames);
* decoding and scoring (threshold x median grid, RTTM, DER): :mod:`robustdistiller.downstream.der`.

The Brain (``DiarizationBrain``, used by SD alone) is in ``recipes/LibriMix/SD/train.py``.
"""

import itertools
import json

import numpy as np
import torch
import torch.nn as nn


def frame_labels(turns, speakers, num_frames, frame_shift=320, sample_rate=16000):
    """``[num_frames, len(speakers)]`` 0/1 labels of a recording (s3prl's ``_get_labeled_speech``).

    Arguments
    ---------
    turns : dict
        ``speaker -> [(start_s, end_s), ...]``.
    speakers : sequence
        Speakers in output order (s3prl: ``np.unique`` order, i.e. sorted).
    num_frames : int
        Label length (s3prl: ``int(duration * sample_rate / frame_shift)``).
    frame_shift : int
        Samples per label frame (the upstream rate, 320).
    sample_rate : int
        Sample rate of the turns' time base.

    Example
    -------
    >>> frame_labels({"a": [(0.0, 0.06)], "b": [(0.04, 1.0)]}, ["a", "b"], 5).T
    tensor([[1., 1., 1., 0., 0.],
            [0., 0., 1., 1., 1.]])
    """
    labels = torch.zeros(int(num_frames), len(speakers))
    for column, speaker in enumerate(speakers):
        for start, end in turns.get(speaker, ()):
            first = int(np.rint(start * sample_rate / frame_shift))
            last = int(np.rint(end * sample_rate / frame_shift))
            first, last = max(first, 0), min(last, int(num_frames))
            if last > first:
                labels[first:last, column] = 1.0
    return labels


def parse_turns(text):
    """The ``segments`` CSV column (JSON ``{speaker: [[start, end], ...]}``) as a dict of tuples.

    Example
    -------
    >>> parse_turns('{"19": [[0.1, 0.5]], "26": []}')
    {'19': [(0.1, 0.5)], '26': []}
    """
    return {
        speaker: [(float(start), float(end)) for start, end in turns] for speaker, turns in json.loads(text).items()
    }


def match_frames(features, feature_lengths, num_frames):
    """Features trimmed, or padded by repeating each utterance's last valid frame, to ``num_frames``.

    Arguments
    ---------
    features : torch.Tensor
        ``[B, F, D]``.
    feature_lengths : torch.Tensor
        ``[B]`` valid frames per utterance (at least 1).
    num_frames : int
        Output length.

    Example
    -------
    >>> features = torch.tensor([[[1.0], [2.0], [3.0]], [[4.0], [5.0], [0.0]]])
    >>> match_frames(features, torch.tensor([3, 2]), 4)[..., 0]
    tensor([[1., 2., 3., 3.],
            [4., 5., 5., 5.]])
    """
    positions = torch.arange(int(num_frames), device=features.device).unsqueeze(0)
    last = (feature_lengths.to(features.device).long().clamp(min=1) - 1).unsqueeze(1)
    index = torch.minimum(positions, last)  # [B, num_frames]
    return torch.gather(features, 1, index.unsqueeze(-1).expand(-1, -1, features.shape[-1]))


class DiarizationHead(nn.Module):
    """s3prl's SD model: ``LSTM(D -> hidden, layers, unidirectional) -> Linear(hidden -> num_speakers)``.

    Unidirectional, so the padded frames after an utterance never change its valid outputs.

    Example
    -------
    >>> head = DiarizationHead(8, hidden_size=4, num_speakers=2)
    >>> head(torch.randn(3, 7, 8)).shape
    torch.Size([3, 7, 2])
    """

    def __init__(self, input_size, hidden_size=512, num_speakers=2, num_layers=1):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.output = nn.Linear(hidden_size, num_speakers)

    def forward(self, features):
        """``[B, F, D]`` -> ``[B, F, S]`` logits."""
        hidden, _ = self.lstm(features)
        return self.output(hidden)


# -------------------------------------------------------------------------------------- loss ---


def pit_bce_loss(logits, labels, lengths):
    """Permutation-invariant BCE-with-logits (s3prl's ``pit_loss``) and the best-permuted labels.

    Per utterance: per-frame BCE averaged over speakers, summed over its valid frames, for every
    permutation of the label columns; the smallest is kept. The loss is the sum over the batch divided
    by the total number of valid frames.

    Arguments
    ---------
    logits : torch.Tensor
        ``[B, F, S]``.
    labels : torch.Tensor
        ``[B, F, S]`` 0/1.
    lengths : torch.Tensor
        ``[B]`` valid frames per utterance.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        The loss and the labels in each utterance's best permutation (``[B, F, S]``).

    Example
    -------
    >>> labels = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    >>> loss, permuted = pit_bce_loss(20 * (labels.flip(-1) - 0.5), labels, torch.tensor([2]))
    >>> round(float(loss), 4), permuted.tolist()
    (0.0, [[[0.0, 1.0], [1.0, 0.0]]])
    """
    num_frames, num_speakers = labels.shape[1], labels.shape[2]
    mask = torch.arange(num_frames, device=logits.device).unsqueeze(0) < lengths.to(logits.device).unsqueeze(1)
    mask = mask.to(logits.dtype)
    permutations = list(itertools.permutations(range(num_speakers)))
    losses = []
    for permutation in permutations:
        target = labels[..., list(permutation)].to(logits.dtype)
        frame_loss = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=-1)
        losses.append((frame_loss * mask).sum(dim=1))
    losses = torch.stack(losses, dim=1)  # [B, P]
    best_loss, best = losses.min(dim=1)
    permuted = torch.stack([labels[index][..., list(permutations[int(choice)])] for index, choice in enumerate(best)])
    return best_loss.sum() / mask.sum().clamp(min=1.0), permuted


def frame_accuracy_counts(logits, permuted_labels, lengths):
    """s3prl's frame accuracy: ``(correct speaker decisions / S, valid frames)`` at logit > 0.

    Example
    -------
    >>> logits = torch.tensor([[[1.0, -1.0], [1.0, 1.0], [5.0, 5.0]]])
    >>> frame_accuracy_counts(logits, torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]]), torch.tensor([2]))
    (1.5, 2)
    """
    mask = torch.arange(logits.shape[1], device=logits.device).unsqueeze(0) < lengths.to(logits.device).unsqueeze(1)
    correct = ((logits > 0) == (permuted_labels.to(logits.device) > 0.5)) & mask.unsqueeze(-1)
    return float(correct.sum()) / logits.shape[-1], int(mask.sum())
