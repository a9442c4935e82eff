"""DPWavLM optimisation: AdamW parameter groups, the linear warm-up/decay factor, clipping over all groups.

DPHuBERT (``docs/reference/dphubert.md`` "Optimizer and schedule") trains
one ``torch.optim.AdamW`` with three parameter groups on **one** schedule:

========== =================================================================== ========== ====
group      parameters                                                          lr         wd
========== =================================================================== ========== ====
main       student parameters without ``log_alpha`` + distillation projections 2e-4       0
           (+ an enhancement head, RobustDistiller)
log_alpha  the hard-concrete gate parameters (names containing ``log_alpha``)  0.02       0
lambda     the Lagrangian multipliers ``lambda1``, ``lambda2``                 -0.02      0
========== =================================================================== ========== ====

The multipliers are trained by gradient **ascent**. DPHuBERT gives their group the learning rate
``-0.02``: AdamW validates only its constructor ``lr``, not a group's. This was checked for the torch of
this project (2.14.1: for-loop, ``foreach`` and ``fused`` AdamW all accept a negative group lr and step
against the gradient), so ``ascent="negative_lr"`` is the default: it is DPHuBERT's exact mechanism and
needs nothing from the training loop. ``ascent="negated_gradients"`` (group lr ``+0.02``, the multipliers'
gradients negated by :func:`prepare_optimizer_step` before the step) is the fallback should a later torch
validate group lrs; for Adam it is the same update (the first moment changes sign, the second does not,
so the step changes sign), which the tests check.

:class:`LinearDecaySchedule` is DPHuBERT's ``LinearDecayLRScheduler`` (linear warm-up, then linear decay to
0), applied as one factor to the initial lr of *every* group (including the negative one). Stage 1: warm-up
15k, end 50k, main lr 2e-4; stage 2 (final distillation of the pruned model, no gates, no multipliers):
warm-up 5k, end 25k, main lr 1e-4 (:data:`STAGE_DEFAULTS`).

Lightning clips the global gradient norm (10.0) over **all** optimizer parameters, including ``log_alpha``
and the multipliers; SpeechBrain 1.1.2's ``Brain`` clips each optimizer's first group only. The DPWavLM
Brain therefore calls :func:`prepare_optimizer_step` between ``scaler.unscale_(optimizer)`` and
``scaler.step(optimizer)``, exactly once per optimizer step.
"""

import logging

import torch

logger = logging.getLogger(__name__)

#: Group names (as DPHuBERT's ``configure_optimizers``).
MAIN_GROUP, LOG_ALPHA_GROUP, LAMBDA_GROUP = "main_params", "log_alpha", "lambda"

#: How the multipliers ascend (module docstring).
ASCENT_MODES = ("negative_lr", "negated_gradients")

#: Per-stage defaults (docs/reference/dphubert.md "Stages"): main lr, warm-up and last step of the schedule.
STAGE_DEFAULTS = {
    1: {"main_lr": 2e-4, "warmup_steps": 15_000, "max_steps": 50_000},
    2: {"main_lr": 1e-4, "warmup_steps": 5_000, "max_steps": 25_000},
}


def _unique_trainable(parameters, seen):
    unique = []
    for parameter in parameters:
        if parameter.requires_grad and id(parameter) not in seen:
            seen.add(id(parameter))
            unique.append(parameter)
    return unique


def build_optimizer(
    student,
    projections,
    lagrangian=None,
    extra_modules=(),
    main_lr=2e-4,
    log_alpha_lr=0.02,
    lambda_lr=0.02,
    weight_decay=0.0,
    betas=(0.9, 0.999),
    eps=1e-8,
    ascent="negative_lr",
    fused=None,
):
    """DPHuBERT's AdamW with the main, ``log_alpha`` and ``lambda`` groups.

    Every group stores ``"name"``, ``"initial_lr"`` (the lr that :class:`LinearDecaySchedule` scales) and
    ``"ascent"`` (``None`` or the ascent mode). Empty groups are left out: in stage 2 (a pruned student,
    no ``lagrangian``) only the main group remains.

    Arguments
    ---------
    student : torch.nn.Module
        The gated (or pruned) student; its parameters whose name contains ``"log_alpha"`` form the gate group.
    projections : torch.nn.Module
        The distillation projections (main group).
    lagrangian : SparsityLagrangian, optional
        The multipliers (``lambda`` group); None in stage 2 (DPHuBERT's ``use_reg=False``).
    extra_modules : sequence of torch.nn.Module
        Further modules trained with the main lr (RobustDistiller's enhancement head).
    main_lr : float
        2e-4 in stage 1, 1e-4 in stage 2 (docs/reference/dphubert.md "Stages").
    log_alpha_lr : float
        0.02 (DPHuBERT's ``reg_learning_rate``, docs/reference/dphubert.md "Optimizer and schedule").
    lambda_lr : float
        Magnitude of the multipliers' lr, 0.02 (applied as ascent, docs/reference/dphubert.md "Optimizer and schedule").
    weight_decay : float
        Main group's weight decay, 0.0 (``run.sh --weight_decay 0.0``); the other groups always 0.
    betas, eps : tuple of float, float
        torch's AdamW defaults (0.9, 0.999) and 1e-8, as DPHuBERT (docs/reference/dphubert.md "Optimizer and schedule").
    ascent : str
        ``"negative_lr"`` (DPHuBERT's, default) or ``"negated_gradients"`` (module docstring).
    fused : bool, optional
        Passed to ``torch.optim.AdamW`` (a fused AdamW lets a GradScaler skip non-finite steps on the device).

    Returns
    -------
    torch.optim.AdamW

    Example
    -------
    >>> student, projections = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    >>> student.log_alpha = torch.nn.Parameter(torch.zeros(3))
    >>> from robustdistiller.dpwavlm.objective import SparsityLagrangian
    >>> optimizer = build_optimizer(student, projections, SparsityLagrangian())
    >>> [(group["name"], group["lr"], len(group["params"])) for group in optimizer.param_groups]
    [('main_params', 0.0002, 4), ('log_alpha', 0.02, 1), ('lambda', -0.02, 2)]
    """
    if ascent not in ASCENT_MODES:
        raise ValueError(f"build_optimizer: ascent={ascent!r}, expected one of {ASCENT_MODES}")
    if min(main_lr, log_alpha_lr, lambda_lr) < 0:
        raise ValueError(
            "build_optimizer: give learning rates as magnitudes (lambda_lr=0.02 is applied as ascent), got "
            f"main_lr={main_lr}, log_alpha_lr={log_alpha_lr}, lambda_lr={lambda_lr}"
        )
    seen = set()
    lambdas = _unique_trainable(lagrangian.parameters(), seen) if lagrangian is not None else []
    named = [(name, parameter) for name, parameter in student.named_parameters()]
    log_alphas = _unique_trainable([parameter for name, parameter in named if "log_alpha" in name], seen)
    main = _unique_trainable([parameter for name, parameter in named if "log_alpha" not in name], seen)
    for module in (projections, *extra_modules):
        main += _unique_trainable(module.parameters(), seen)
    lambda_group_lr = -lambda_lr if ascent == "negative_lr" else lambda_lr
    groups = [
        {"name": MAIN_GROUP, "params": main, "lr": main_lr, "weight_decay": weight_decay, "ascent": None},
        {"name": LOG_ALPHA_GROUP, "params": log_alphas, "lr": log_alpha_lr, "weight_decay": 0.0, "ascent": None},
        {"name": LAMBDA_GROUP, "params": lambdas, "lr": lambda_group_lr, "weight_decay": 0.0, "ascent": ascent},
    ]
    groups = [group for group in groups if group["params"]]
    if not groups:
        raise ValueError("build_optimizer: no trainable parameter")
    for group in groups:
        group["initial_lr"] = group["lr"]
    options = {} if fused is None else {"fused": fused}
    # the constructor lr is a placeholder that every group overrides (AdamW rejects a negative one)
    try:
        optimizer = torch.optim.AdamW(
            groups, lr=main_lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, **options
        )
    except ValueError as error:
        if ascent == "negative_lr" and "learning rate" in str(error).lower():
            raise ValueError(
                f"build_optimizer: this torch ({torch.__version__}) rejects the negative lr of the lambda group "
                f"({error}); use ascent='negated_gradients'"
            ) from error
        raise
    logger.info(
        "DPWavLM optimizer: %s",
        ", ".join(f"{g['name']} ({len(g['params'])} tensors, lr {g['lr']:g})" for g in optimizer.param_groups),
    )
    return optimizer


class LinearDecaySchedule:
    """DPHuBERT's ``LinearDecayLRScheduler``: one factor for the lr of every group.

    ``factor(u) = u / warmup_steps`` for ``u <= warmup_steps``, ``(max_steps - u) / (max_steps - warmup_steps)``
    after, 0 from ``max_steps`` on, where ``u`` is the 1-based number of the optimizer update about to be
    made (the scheduler's ``_step_count``: the first update uses ``1 / warmup_steps``). Stateless: the lr
    follows from the update number alone, so a resumed run continues the schedule exactly.

    Arguments
    ---------
    warmup_steps : int
        15,000 in stage 1, 5,000 in stage 2 (docs/reference/dphubert.md "Stages").
    max_steps : int
        50,000 in stage 1, 25,000 in stage 2 (docs/reference/dphubert.md "Stages").

    Example
    -------
    >>> schedule = LinearDecaySchedule()
    >>> [schedule.factor(update) for update in (7_500, 15_000, 32_500, 50_000, 60_000)]
    [0.5, 1.0, 0.5, 0.0, 0.0]
    """

    def __init__(self, warmup_steps=15_000, max_steps=50_000):
        if not 0 < warmup_steps < max_steps:
            raise ValueError(
                f"LinearDecaySchedule: expected 0 < warmup_steps < max_steps, got {warmup_steps}, {max_steps}"
            )
        self.warmup_steps = int(warmup_steps)
        self.max_steps = int(max_steps)

    def factor(self, update):
        """The lr factor of the 1-based optimizer update ``update`` (float in [0, 1])."""
        if update <= self.warmup_steps:
            return max(0, update) / self.warmup_steps
        if update >= self.max_steps:
            return 0.0
        return (self.max_steps - update) / (self.max_steps - self.warmup_steps)

    def __call__(self, optimizer, update):
        """Sets every group's ``lr`` to ``initial_lr * factor(update)``; call before the update.

        Arguments
        ---------
        optimizer : torch.optim.Optimizer
            From :func:`build_optimizer` (groups carry ``initial_lr``).
        update : int
            1-based number of the coming update (``completed_steps + 1``).

        Returns
        -------
        float
            The factor.
        """
        factor = self.factor(update)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return factor


def negate_ascent_gradients(optimizer):
    """Negates the gradients of the groups whose ``ascent`` is ``"negated_gradients"``.

    Arguments
    ---------
    optimizer : torch.optim.Optimizer
        From :func:`build_optimizer`.
    """
    for group in optimizer.param_groups:
        if group.get("ascent") == "negated_gradients":
            for parameter in group["params"]:
                if parameter.grad is not None:
                    parameter.grad.neg_()


def clip_grad_norm_all_groups(optimizer, max_grad_norm=10.0):
    """Clips the global gradient norm over the parameters of **all** groups (Lightning's clipping).

    Arguments
    ---------
    optimizer : torch.optim.Optimizer
        Any optimizer; every group's parameters count (``log_alpha`` and the multipliers included).
    max_grad_norm : float
        10.0 (DPHuBERT's ``gradient_clip_val``, docs/reference/dphubert.md "Optimizer and schedule").

    Returns
    -------
    torch.Tensor
        The total norm before clipping (non-finite if a gradient is; the step is then for the caller's
        GradScaler to skip).

    Example
    -------
    >>> parameter = torch.nn.Parameter(torch.zeros(2))
    >>> optimizer = torch.optim.SGD([{"params": []}, {"params": [parameter]}], lr=1.0)
    >>> parameter.grad = torch.tensor([30.0, 40.0])
    >>> float(clip_grad_norm_all_groups(optimizer)), [round(value, 4) for value in parameter.grad.tolist()]
    (50.0, [6.0, 8.0])
    """
    seen = set()
    parameters = []
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            if parameter.grad is not None and id(parameter) not in seen:
                seen.add(id(parameter))
                parameters.append(parameter)
    return torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)


def prepare_optimizer_step(optimizer, max_grad_norm=10.0):
    """What the DPWavLM Brain does between ``scaler.unscale_`` and ``scaler.step``, once per step.

    Negates the multipliers' gradients when the ascent mode is ``"negated_gradients"`` (a no-op with
    DPHuBERT's negative lr), then clips over all groups (the norm does not depend on the signs).

    Arguments
    ---------
    optimizer : torch.optim.Optimizer
        From :func:`build_optimizer`.
    max_grad_norm : float
        10.0 (docs/reference/dphubert.md "Optimizer and schedule").

    Returns
    -------
    torch.Tensor
        The total gradient norm before clipping.
    """
    negate_ascent_gradients(optimizer)
    return clip_grad_norm_all_groups(optimizer, max_grad_norm)
