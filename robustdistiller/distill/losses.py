"""Training objectives of RobustDistiller: layer distillation and spectral enhancement.

For each target teacher layer k the distillation loss is ``L1(pred_k, target_k)`` plus
``cosine_weight * mean(-log sigmoid(cos(pred_k, target_k)))`` (DistilHuBERT), averaged over layers;
the enhancement loss is the L1 distance between the masked noisy magnitude and the clean magnitude
(``docs/reference/robustdistiller.md`` "Objective"). Unlike the authors' code, both losses ignore padded frames: every
mean is taken over the valid frames of the whole batch only, so the padding of a batch never changes the loss.
Teacher and student frame counts may differ by one frame: the losses trim all inputs to the shortest.
"""

import logging

import torch
import torch.nn.functional as F

from robustdistiller.inference.interface import lengths_to_mask  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)


def align_frames(*tensors, dim=1):
    """Trims all tensors to the shortest size along ``dim`` (frame counts may differ by one).

    Arguments
    ---------
    *tensors : torch.Tensor
        Tensors sharing the frame axis ``dim``; None entries are passed through.
    dim : int
        The frame axis.

    Returns
    -------
    tuple of torch.Tensor

    Example
    -------
    >>> a, b = align_frames(torch.zeros(2, 50, 3), torch.zeros(2, 49, 3))
    >>> a.shape, b.shape
    (torch.Size([2, 49, 3]), torch.Size([2, 49, 3]))
    """
    sizes = [t.shape[dim] for t in tensors if t is not None]
    if not sizes:
        return tensors
    shortest = min(sizes)
    return tuple(None if t is None else t.narrow(dim, 0, shortest) for t in tensors)


def distillation_loss(predictions, targets, frame_mask=None, cosine_weight=1.0, validate=True):
    """DistilHuBERT layer-prediction loss, masked to valid frames.

    Means over valid frames are masked sums divided by the valid count (no boolean indexing, so the
    loss never waits for the device to know how many frames are valid).

    Arguments
    ---------
    predictions : torch.Tensor
        ``[B, K, F, D]`` student predictions of K teacher layers.
    targets : torch.Tensor
        ``[B, K, F', D]`` teacher layers (``F'`` may differ from ``F`` by a frame; both are trimmed).
    frame_mask : torch.Tensor, optional
        ``[B, F'']`` bool, True on valid frames; None means all frames are valid.
    cosine_weight : float
        Weight of the cosine term.
    validate : bool
        Raise if no frame is valid (reads the mask on the host: the training step passes False;
        the data preparation guarantees a valid frame per utterance).

    Returns
    -------
    dict
        ``"loss"``: scalar, mean over layers of ``l1 + cosine_weight * cosine``;
        ``"l1"``: ``[K]`` mean absolute error over valid frames and dims;
        ``"cosine"``: ``[K]`` mean over valid frames of ``-log sigmoid(cos)``;
        ``"cosine_similarity"``: ``[K]`` mean cosine similarity (for monitoring, detached).

    Raises
    ------
    ValueError
        If no frame is valid (with ``validate``).

    Example
    -------
    >>> targets = torch.randn(2, 3, 10, 8)
    >>> out = distillation_loss(targets.clone(), targets, torch.ones(2, 10, dtype=torch.bool))
    >>> out["l1"]
    tensor([0., 0., 0.])
    >>> round(float(out["loss"]), 4)  # -log sigmoid(1)
    0.3133
    """
    if frame_mask is None:
        frame_mask = torch.ones(predictions.shape[0], predictions.shape[2], dtype=torch.bool, device=predictions.device)
    num_frames = min(predictions.shape[2], targets.shape[2], frame_mask.shape[1])
    predictions = predictions[:, :, :num_frames]
    targets = targets[:, :, :num_frames].to(predictions.dtype)
    frame_mask = frame_mask[:, :num_frames].bool()
    if validate and not bool(frame_mask.any()):
        raise ValueError("distillation_loss: the frame mask has no valid frame")

    # zero the padded frames first: whatever they hold (even NaN) then gives exact zeros, and no gradient
    valid = frame_mask[:, None, :, None]
    predictions = torch.where(valid, predictions, torch.zeros((), dtype=predictions.dtype, device=predictions.device))
    targets = torch.where(valid, targets, torch.zeros((), dtype=targets.dtype, device=targets.device))
    weights = frame_mask.to(predictions.dtype)[:, None, :]  # [B, 1, F]
    num_valid = weights.sum().clamp(min=1.0)
    absolute_error = (predictions - targets).abs().mean(dim=-1)  # [B, K, F]
    l1 = (absolute_error * weights).sum(dim=(0, 2)) / num_valid
    similarity = F.cosine_similarity(predictions, targets, dim=-1)  # [B, K, F]
    cosine = (-F.logsigmoid(similarity) * weights).sum(dim=(0, 2)) / num_valid
    loss = (l1 + cosine_weight * cosine).mean()
    return {
        "loss": loss,
        "l1": l1,
        "cosine": cosine,
        "cosine_similarity": (similarity.detach() * weights).sum(dim=(0, 2)) / num_valid,
    }


def enhancement_loss(enhanced_magnitude, clean_magnitude, frame_mask=None, validate=True):
    """L1 distance between enhanced and clean STFT magnitudes over valid frames.

    Arguments
    ---------
    enhanced_magnitude : torch.Tensor
        ``[B, S, Fq]`` masked noisy magnitude.
    clean_magnitude : torch.Tensor
        ``[B, S', Fq]`` clean magnitude (frames trimmed to the shorter).
    frame_mask : torch.Tensor, optional
        ``[B, S'']`` bool valid STFT frames (see :func:`robustdistiller.models.enhancement.num_stft_frames`).
    validate : bool
        Raise if no frame is valid (a host read of the mask; the training step passes False).

    Returns
    -------
    torch.Tensor
        Scalar: mean absolute difference over valid frames x frequency bins.

    Example
    -------
    >>> clean = torch.ones(1, 4, 3)
    >>> mask = torch.tensor([[True, True, False, False]])
    >>> float(enhancement_loss(torch.cat([torch.zeros(1, 2, 3), 9 * torch.ones(1, 2, 3)], 1), clean, mask))
    1.0
    """
    if frame_mask is None:
        frame_mask = torch.ones(enhanced_magnitude.shape[:2], dtype=torch.bool, device=enhanced_magnitude.device)
    enhanced_magnitude, clean_magnitude, frame_mask = align_frames(
        enhanced_magnitude, clean_magnitude, frame_mask.bool(), dim=1
    )
    if validate and not bool(frame_mask.any()):
        raise ValueError("enhancement_loss: the frame mask has no valid frame")
    weights = frame_mask.to(enhanced_magnitude.dtype)
    difference = enhanced_magnitude - clean_magnitude.to(enhanced_magnitude.dtype)
    difference = torch.where(
        frame_mask[..., None], difference, torch.zeros((), dtype=difference.dtype, device=difference.device)
    )
    return (difference.abs().mean(dim=-1) * weights).sum() / weights.sum().clamp(min=1.0)
