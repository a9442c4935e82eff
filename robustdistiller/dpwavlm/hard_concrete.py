"""Hard-concrete gates (Louizos et al. 2018), exactly as DPHuBERT's ``wav2vec2/hardconcrete.py``.

One gate vector per prunable unit group (conv channels, heads, FFN units, whole layers). In training
mode every call draws a fresh sample shared by the whole batch; in eval mode the mask is deterministic
and *soft*: the ``round(n - L0)`` smallest entries of ``sigmoid(0.8 * log_alpha / beta)`` are zero and
the others keep their value (``docs/reference/dphubert.md`` "Hard-concrete gates").
"""

import logging
import math

import torch

logger = logging.getLogger(__name__)


class HardConcrete(torch.nn.Module):
    """A vector of ``n_in`` hard-concrete gates with a learnable ``log_alpha``.

    Arguments
    ---------
    n_in : int
        Number of gates.
    init_mean : float
        Initial *drop rate*: ``log_alpha ~ N(log(1 - init_mean) - log(init_mean), init_std)``
        (0.01 -> mean 4.595 for conv channels and heads, 0.5 -> mean 0 for FFN units).
    init_std : float
        Standard deviation of the initial ``log_alpha``.
    temperature : float
        ``beta`` of the concrete distribution (2/3).
    stretch : float
        The sample is stretched to ``[-stretch, 1 + stretch]`` before clamping to ``[0, 1]``.
    eps : float
        The uniform noise is drawn in ``[eps, 1 - eps]``.

    Example
    -------
    >>> gate = HardConcrete(4, init_mean=0.01)
    >>> _ = gate.eval()
    >>> gate().shape, gate.kept_count()
    (torch.Size([4]), 4)
    """

    def __init__(self, n_in, init_mean=0.5, init_std=0.01, temperature=2 / 3, stretch=0.1, eps=1e-6):
        super().__init__()
        self.n_in = int(n_in)
        self.init_mean = float(init_mean)
        self.init_std = float(init_std)
        self.beta = float(temperature)
        self.limit_l = -float(stretch)
        self.limit_r = 1.0 + float(stretch)
        self.eps = float(eps)
        # P(z != 0) = sigmoid(log_alpha + bias), bias = -beta * log(-l / r) = (2/3) ln 11 for the defaults.
        self.bias = -self.beta * math.log(-self.limit_l / self.limit_r)
        self.log_alpha = torch.nn.Parameter(torch.empty(self.n_in))
        self.compiled_mask = None
        self.reset_parameters()

    def reset_parameters(self):
        """Draw ``log_alpha`` from its initial normal distribution and clear the eval cache."""
        mean = math.log(1 - self.init_mean) - math.log(self.init_mean)
        self.log_alpha.data.normal_(mean, self.init_std)
        self.compiled_mask = None

    def train(self, mode=True):
        """Switch mode; the cached deterministic mask is dropped (``eval()`` recomputes it)."""
        self.compiled_mask = None
        return super().train(mode)

    def l0_norm(self):
        """Expected number of non-zero gates, ``sum(sigmoid(log_alpha + bias))`` (differentiable)."""
        return torch.sigmoid(self.log_alpha + self.bias).sum()

    def kept_count(self):
        """Number of gates the deterministic mask keeps: ``n - round(n - L0)``."""
        return self.n_in - round(self.n_in - float(self.l0_norm().detach()))

    def forward(self):
        """Sample a mask (training) or return the cached deterministic soft mask (eval)."""
        if self.training:
            self.compiled_mask = None
            u = torch.empty_like(self.log_alpha).uniform_(self.eps, 1 - self.eps)
            s = torch.sigmoid((torch.log(u / (1 - u)) + self.log_alpha) / self.beta)
            s = s * (self.limit_r - self.limit_l) + self.limit_l
            return s.clamp(min=0.0, max=1.0)
        if self.compiled_mask is None or self.compiled_mask.device != self.log_alpha.device:
            with torch.no_grad():
                num_zeros = round(self.n_in - float(self.l0_norm()))
                soft_mask = torch.sigmoid(self.log_alpha / self.beta * 0.8)
                if num_zeros > 0:
                    _, indices = torch.topk(soft_mask, k=num_zeros, largest=False)
                    soft_mask[indices] = 0.0
            self.compiled_mask = soft_mask
        return self.compiled_mask

    def extra_repr(self):
        return f"n_in={self.n_in}, init_mean={self.init_mean}, temperature={self.beta:.4f}"
