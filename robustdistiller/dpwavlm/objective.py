"""DPWavLM objective: layer-to-layer distillation and the Lagrangian sparsity term (DPHuBERT).

Stage 1 of DPHuBERT minimises ``distill + reg`` (``docs/reference/dphubert.md``
"Distillation objective", "Sparsity constraint"):

* :class:`LayerProjections`: the student's hidden states 0/4/8/12 pass through linear projections,
  identity-initialised, grouped as DPHuBERT's ``--distill_layers 0.4,8,12`` (a period separates groups,
  the layers of one group share one projection: ``[P0, P1, P1, P1]``). Its ``state_dict`` is the
  ``distill_linear_projs`` entry of a DPHuBERT ``.pth`` (keys ``0.*`` .. ``3.*``, section 4.1).
* :func:`distillation_loss` / :func:`layer_to_layer_loss`: DPHuBERT's ``DistillLoss``,
  ``l2_weight * MSE + l1_weight * L1 + cos_weight * (-cos)`` with ``cos_type`` ``"raw"`` (DPHuBERT's
  ``run.sh``) or ``"log_sig"`` (``-log sigmoid(cos)``, RobustDistiller's), **padding-masked**: every mean
  is over the valid frames of the whole batch. DPHuBERT has no mask because it crops a batch to its
  shortest utterance; with equal lengths the masked value equals its plain means over
  ``(batch, layers, time, dim)`` (L1, MSE) and ``(batch, layers, time)`` (cosine).
* :class:`SparsityLagrangian`: ``loss_reg = lambda1 (s - t) + lambda2 (s - t)^2`` with the expected
  sparsity ``s = 1 - N_expected / N_teacher`` and the target ramp ``t = target * min(1, step / warmup)``;
  ``lambda1``, ``lambda2`` start at 0 and are trained by gradient *ascent* (see
  :mod:`robustdistiller.dpwavlm.schedule`).

The model is only assumed to give 13 hidden states ``[B, T, D]`` (layer 0 = feature-projection output,
before the positional convolution) and a differentiable ``expected_num_params()``.
"""

import logging

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

#: Parameter count of the ungated WavLM Base+ teacher (docs/reference/dphubert.md "Parameter counts").
WAVLM_BASE_PLUS_NUM_PARAMS = 94_381_680

#: The cosine variants of DPHuBERT's ``DistillLoss`` (docs/reference/dphubert.md "Distillation objective").
COS_TYPES = ("raw", "log_sig")


def parse_distill_layers(distill_layers="0.4,8,12"):
    """Parses DPHuBERT's ``--distill_layers`` into groups of layers that share one projection.

    Arguments
    ---------
    distill_layers : str
        Hidden-state indices; a period separates groups, commas separate the layers of a group
        (default ``"0.4,8,12"``, DPHuBERT's ``run.sh``, docs/reference/dphubert.md "Distillation objective").

    Returns
    -------
    list of list of int

    Raises
    ------
    ValueError
        If the string is empty, not integers, or repeats a layer.

    Example
    -------
    >>> parse_distill_layers("0.4,8,12")
    [[0], [4, 8, 12]]
    """
    try:
        groups = [[int(layer) for layer in group.split(",")] for group in str(distill_layers).split(".")]
    except ValueError:
        raise ValueError(
            f"distill_layers={distill_layers!r}: expected integers, '.' between groups and ',' within one "
            "(e.g. '0.4,8,12')"
        ) from None
    layers = [layer for group in groups for layer in group]
    if len(set(layers)) != len(layers) or any(layer < 0 for layer in layers):
        raise ValueError(f"distill_layers={distill_layers!r}: layers must be distinct and non-negative")
    return groups


class LayerProjections(nn.ModuleList):
    """Identity-initialised linear projections of the distilled student layers, one per group.

    An ``nn.ModuleList`` with one entry per distilled layer, the layers of a group holding the *same*
    ``Linear``: for ``"0.4,8,12"`` the list is ``[P0, P1, P1, P1]``, so ``state_dict()`` has DPHuBERT's
    ``distill_linear_projs`` keys ``0.weight`` .. ``3.bias`` (1-3 share storage) and ``parameters()``
    yields each projection once. Trained with the main learning rate (docs/reference/dphubert.md
    "Distillation objective").

    Arguments
    ---------
    distill_layers : str
        See :func:`parse_distill_layers` (default ``"0.4,8,12"``, docs/reference/dphubert.md "Distillation objective").
    student_dim : int
        Student hidden size (768 for WavLM Base+).
    teacher_dim : int
        Teacher hidden size (768); identity init needs ``student_dim == teacher_dim``.

    Example
    -------
    >>> projections = LayerProjections("0.4,8,12", 8, 8)
    >>> projections.layers, projections[1] is projections[3], len(list(projections.parameters()))
    ([0, 4, 8, 12], True, 4)
    >>> hiddens = [torch.randn(2, 5, 8) for _ in range(13)]
    >>> torch.equal(projections(hiddens)[:, 2], hiddens[8])
    True
    """

    def __init__(self, distill_layers="0.4,8,12", student_dim=768, teacher_dim=768):
        if student_dim != teacher_dim:
            raise ValueError(
                f"LayerProjections: identity init needs student_dim == teacher_dim, got {student_dim}, {teacher_dim}"
            )
        self.groups = parse_distill_layers(distill_layers)
        self.layers = [layer for group in self.groups for layer in group]
        entries = []
        for _ in self.groups:
            projection = nn.Linear(student_dim, teacher_dim)
            with torch.no_grad():  # DPHuBERT's _init_layer_transform: identity weight, zero bias
                projection.weight.copy_(torch.eye(teacher_dim, student_dim))
                projection.bias.zero_()
            entries.append(projection)
        super().__init__(entries[index] for index, group in enumerate(self.groups) for _ in group)

    def forward(self, student_hiddens):
        """Projects the distilled student layers.

        Arguments
        ---------
        student_hiddens : sequence of torch.Tensor
            All student hidden states (13 for WavLM Base+), each ``[B, T, D]``.

        Returns
        -------
        torch.Tensor
            ``[B, K, T, D]``: ``P_i(h_{layers[i]})`` for the K distilled layers.
        """
        if len(student_hiddens) <= max(self.layers):
            raise ValueError(
                f"LayerProjections: {len(student_hiddens)} hidden states, but distilled layers {self.layers}"
            )
        return torch.stack([projection(student_hiddens[layer]) for projection, layer in zip(self, self.layers)], dim=1)


def distillation_loss(
    predictions, targets, frame_mask=None, l2_weight=0.0, l1_weight=1.0, cos_weight=1.0, cos_type="raw"
):
    """DPHuBERT's ``DistillLoss`` averaged over the valid frames only.

    Padded frames are replaced by zeros before any arithmetic, so whatever they hold (even NaN) changes
    neither the loss nor any gradient; with uneven lengths the valid frames of all utterances are pooled
    (each valid frame weighs the same). The arithmetic is float32 whatever the input dtype. The defaults
    are DPHuBERT's ``run.sh`` (``l2=0, l1=1, cos=1, cos_type=raw``; docs/reference/dphubert.md
    "Distillation objective").

    Arguments
    ---------
    predictions : torch.Tensor
        ``[B, K, T, D]`` projected student layers.
    targets : torch.Tensor
        ``[B, K, T, D]`` teacher layers (not differentiated).
    frame_mask : torch.Tensor, optional
        ``[B, T]`` bool, True on valid frames; None: every frame is valid.
    l2_weight, l1_weight, cos_weight : float
        Weights of the MSE, L1 and ``-cos`` terms.
    cos_type : str
        ``"raw"``: ``-cos``; ``"log_sig"``: ``-log sigmoid(cos)`` (RobustDistiller's).

    Returns
    -------
    dict
        ``"loss"`` (scalar), the unweighted terms ``"l2"``, ``"l1"``, ``"cos"`` (scalars, the cosine term
        as minimised) and ``"cosine_similarity"`` (``[K]`` mean per layer, detached, for monitoring).

    Example
    -------
    >>> targets = torch.randn(2, 4, 6, 8)
    >>> out = distillation_loss(targets.clone(), targets)
    >>> float(out["l1"]), round(float(out["loss"]), 4)
    (0.0, -1.0)
    """
    if cos_type not in COS_TYPES:
        raise ValueError(f"distillation_loss: cos_type={cos_type!r}, expected one of {COS_TYPES}")
    if predictions.shape != targets.shape:
        raise ValueError(
            f"distillation_loss: predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ"
        )
    batch, num_layers, num_frames, dim = predictions.shape
    if frame_mask is None:
        frame_mask = torch.ones(batch, num_frames, dtype=torch.bool, device=predictions.device)
    frame_mask = frame_mask.bool()
    if frame_mask.shape != (batch, num_frames):
        raise ValueError(f"distillation_loss: frame_mask {tuple(frame_mask.shape)}, expected {(batch, num_frames)}")
    # reduce in float32: under fp16 autocast a sum over (B, K, T, D) would overflow float16
    predictions = predictions.float()
    targets = targets.detach().float()
    valid = frame_mask[:, None, :, None]
    zero = torch.zeros((), dtype=predictions.dtype, device=predictions.device)
    predictions = torch.where(valid, predictions, zero)
    targets = torch.where(valid, targets, zero)
    weights = frame_mask.to(predictions.dtype)[:, None, :]  # [B, 1, T]
    num_valid = weights.sum().clamp(min=1.0)  # valid frames of the batch
    difference = predictions - targets
    l1 = difference.abs().sum() / (num_valid * num_layers * dim)
    l2 = difference.square().sum() / (num_valid * num_layers * dim)
    similarity = F.cosine_similarity(predictions, targets, dim=-1)  # [B, K, T]
    cos_terms = -similarity if cos_type == "raw" else -F.logsigmoid(similarity)
    cos = (cos_terms * weights).sum() / (num_valid * num_layers)
    loss = l2_weight * l2 + l1_weight * l1 + cos_weight * cos
    return {
        "loss": loss,
        "l2": l2,
        "l1": l1,
        "cos": cos,
        "cosine_similarity": (similarity.detach() * weights).sum(dim=(0, 2)) / num_valid,
    }


def layer_to_layer_loss(projections, student_hiddens, teacher_hiddens, frame_mask=None, **loss_options):
    """DPHuBERT's ``layer2layer`` distillation: ``P(student_k)`` vs ``teacher_k`` for the distilled k.

    Arguments
    ---------
    projections : LayerProjections
        Gives the distilled layers (``projections.layers``) and their projections (may be wrapped in
        ``DistributedDataParallel``).
    student_hiddens, teacher_hiddens : sequence of torch.Tensor
        The 13 hidden states ``[B, T, D]`` of student and teacher (index 0 = feature projection
        output, before the positional convolution, docs/reference/dphubert.md "Distillation objective"). Frame counts
        may differ by one frame: all are trimmed to the shortest.
    frame_mask : torch.Tensor, optional
        ``[B, T]`` bool valid frames (e.g. ``lengths_to_mask`` of the student's frame lengths).
    **loss_options
        ``l2_weight``, ``l1_weight``, ``cos_weight``, ``cos_type`` of :func:`distillation_loss`.

    Returns
    -------
    dict
        As :func:`distillation_loss`.

    Example
    -------
    >>> projections = LayerProjections("0.4,8,12", 8, 8)
    >>> hiddens = [torch.randn(2, 5, 8) for _ in range(13)]
    >>> layer_to_layer_loss(projections, hiddens, hiddens)["l1"].item()
    0.0
    """
    predictions = projections(student_hiddens)  # through a DDP wrapper when there is one (gradient sync)
    layers = getattr(projections, "module", projections).layers
    targets = torch.stack([teacher_hiddens[layer] for layer in layers], dim=1)
    num_frames = min(predictions.shape[2], targets.shape[2])
    if frame_mask is not None:
        num_frames = min(num_frames, frame_mask.shape[1])
        frame_mask = frame_mask[:, :num_frames]
    return distillation_loss(predictions[:, :, :num_frames], targets[:, :, :num_frames], frame_mask, **loss_options)


class SparsityLagrangian(nn.Module):
    """DPHuBERT's Lagrangian sparsity term with learnable multipliers ``lambda1``, ``lambda2``.

    ``loss_reg = lambda1 (s - t) + lambda2 (s - t)^2`` where ``s = 1 - N_expected / N_teacher`` and
    ``t = target_sparsity * min(1, completed_steps / sparsity_warmup_steps)`` (docs/reference/dphubert.md
    "Sparsity constraint"). ``dL/dlambda1 = s - t``: the multipliers are trained by gradient
    *ascent* (their optimizer group, :func:`robustdistiller.dpwavlm.schedule.build_optimizer`), so
    ``lambda1`` turns negative while ``s < t`` and minimising over the gates then raises ``s``;
    ``lambda2`` only grows. Both start at 0, so the first step moves only the multipliers.

    Arguments
    ---------
    target_sparsity : float
        Final target (0.75, DPWavLM "sp0.75", docs/reference/dphubert.md "Sparsity constraint").
    sparsity_warmup_steps : int
        Optimizer steps of the linear target ramp (5000, ``run.sh``).
    teacher_num_params : int
        ``N_teacher`` (94,381,680: WavLM Base+ without gates, docs/reference/dphubert.md "Parameter counts"). As in
        DPHuBERT (``original_num_params`` = the teacher's numel) it includes the 10,224 WavLM relative-position and
        gating parameters that the expected count leaves out (docs/reference/dphubert.md "Expected parameter count"),
        so a fully open student has ``s`` = 10,224 / 94,381,680 (about 1.1e-4), not 0.

    Example
    -------
    >>> lagrangian = SparsityLagrangian()
    >>> lagrangian.target(2500), lagrangian.target(10_000)
    (0.375, 0.75)
    >>> out = lagrangian(torch.tensor(94_381_680.0), completed_steps=2500)
    >>> out["expected_sparsity"].item(), out["loss"].item()  # lambdas are 0 at init
    (0.0, 0.0)
    """

    def __init__(self, target_sparsity=0.75, sparsity_warmup_steps=5000, teacher_num_params=WAVLM_BASE_PLUS_NUM_PARAMS):
        super().__init__()
        if not 0.0 <= target_sparsity < 1.0:
            raise ValueError(f"SparsityLagrangian: target_sparsity={target_sparsity}, expected in [0, 1)")
        if sparsity_warmup_steps < 0 or teacher_num_params <= 0:
            raise ValueError(
                f"SparsityLagrangian: sparsity_warmup_steps={sparsity_warmup_steps} must be >= 0 and "
                f"teacher_num_params={teacher_num_params} > 0"
            )
        self.target_sparsity = float(target_sparsity)
        self.sparsity_warmup_steps = int(sparsity_warmup_steps)
        self.teacher_num_params = int(teacher_num_params)
        self.lambda1 = nn.Parameter(torch.tensor(0.0))
        self.lambda2 = nn.Parameter(torch.tensor(0.0))

    def target(self, completed_steps):
        """Target sparsity after ``completed_steps`` optimizer steps (Lightning's ``global_step``).

        Arguments
        ---------
        completed_steps : int
            Optimizer steps done before the current one (0 at the first step).

        Returns
        -------
        float
        """
        if self.sparsity_warmup_steps == 0 or completed_steps >= self.sparsity_warmup_steps:
            return self.target_sparsity
        return self.target_sparsity * max(0, completed_steps) / self.sparsity_warmup_steps

    def forward(self, expected_num_params, completed_steps):
        """The regularisation loss for the current step.

        Arguments
        ---------
        expected_num_params : torch.Tensor
            Differentiable scalar, the student's ``expected_num_params()`` (backbone only: no
            projections, enhancement head or gate parameters, docs/reference/dphubert.md
            "RobustDistiller + DPWavLM choices").
        completed_steps : int
            Optimizer steps done so far (the ramp's step).

        Returns
        -------
        dict
            ``"loss"``, ``"expected_sparsity"`` (differentiable), ``"target_sparsity"`` (float).
        """
        expected_sparsity = 1.0 - expected_num_params / self.teacher_num_params
        target = self.target(completed_steps)
        gap = expected_sparsity - target
        loss = self.lambda1 * gap + self.lambda2 * gap * gap
        return {"loss": loss, "expected_sparsity": expected_sparsity, "target_sparsity": target}
