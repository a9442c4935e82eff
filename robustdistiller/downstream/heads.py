"""Small pieces of the task heads: the learnable weighted sum of layers, masked pooling."""

import logging

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)


class WeightedLayerSum(nn.Module):
    """Learnable softmax-weighted sum of an upstream's layers (SUPERB's featurizer).

    Arguments
    ---------
    num_layers : int
        Number of layers ``L`` to combine (weights start equal).
    layer_norm : bool
        Normalise each layer over its feature dimension (no affine) before summing.

    Example
    -------
    >>> weighted_sum = WeightedLayerSum(3)
    >>> features = torch.stack([torch.zeros(2, 4, 5), torch.ones(2, 4, 5), 2 * torch.ones(2, 4, 5)], dim=1)
    >>> weighted_sum(features)[0, 0, 0].item()
    1.0
    >>> weighted_sum.layer_weights()
    [0.3333333432674408, 0.3333333432674408, 0.3333333432674408]
    """

    def __init__(self, num_layers, layer_norm=False):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_layers))
        self.layer_norm = bool(layer_norm)

    def forward(self, features):
        """``[B, L, F, D]`` -> ``[B, F, D]``."""
        if features.shape[1] != self.weights.shape[0]:
            raise ValueError(
                f"WeightedLayerSum expects {self.weights.shape[0]} layers, got {features.shape[1]} "
                f"(features of shape {tuple(features.shape)})"
            )
        if self.layer_norm:
            features = nn.functional.layer_norm(features, features.shape[-1:])
        weights = torch.softmax(self.weights, dim=0).to(features.dtype)
        return torch.einsum("blfd,l->bfd", features, weights)

    def layer_weights(self):
        """The current softmax weights, as a list of floats."""
        return torch.softmax(self.weights.detach().float(), dim=0).tolist()


def masked_mean(features, frame_mask):
    """Mean over the valid frames of each item (utterance-level pooling).

    Arguments
    ---------
    features : torch.Tensor
        ``[B, F, D]``.
    frame_mask : torch.Tensor
        ``[B, F]`` bool.

    Returns
    -------
    torch.Tensor
        ``[B, D]``.

    Example
    -------
    >>> masked_mean(torch.tensor([[[1.0], [3.0], [100.0]]]), torch.tensor([[True, True, False]]))
    tensor([[2.]])
    """
    weights = frame_mask.to(features.dtype).unsqueeze(-1)
    return (features * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
