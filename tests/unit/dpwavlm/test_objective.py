"""DPWavLM objective and schedule (issue 12, item 2): distillation loss, Lagrangian, AdamW groups, lr factor, clipping.

A small stand-in module plays the gated student: parameters named ``*log_alpha`` and a differentiable
``expected_num_params()`` (the interface of ``robustdistiller.dpwavlm.model``). Facts: docs/reference/dphubert.md
"Sparsity constraint", "RobustDistiller + DPWavLM choices".
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustdistiller.dpwavlm.objective import (
    WAVLM_BASE_PLUS_NUM_PARAMS,
    LayerProjections,
    SparsityLagrangian,
    distillation_loss,
    layer_to_layer_loss,
    parse_distill_layers,
)
from robustdistiller.dpwavlm.schedule import (
    STAGE_DEFAULTS,
    LinearDecaySchedule,
    build_optimizer,
    prepare_optimizer_step,
)

DIM = 8
BETA = 2.0 / 3.0


class StandInStudent(nn.Module):
    """Gated stand-in: 13 hidden states from 12 linear layers, one gate group of ``units`` units."""

    def __init__(self, log_alpha=3.0, units=6, unit_cost=100, fixed=400):
        super().__init__()
        self.projection = nn.Linear(DIM, DIM)
        self.layers = nn.ModuleList(nn.Linear(DIM, DIM) for _ in range(12))
        self.ffn_log_alpha = nn.Parameter(torch.full((units,), float(log_alpha)))
        self.unit_cost, self.fixed = unit_cost, fixed
        self.full_num_params = fixed + unit_cost * units

    def expected_num_params(self):
        # expected L0 of the hard-concrete gates (docs/reference/dphubert.md "Hard-concrete gates")
        l0 = torch.sigmoid(self.ffn_log_alpha - BETA * math.log(0.1 / 1.1)).sum()
        return self.fixed + self.unit_cost * l0

    def extract_features(self, wavs, lengths):
        hidden = self.projection(wavs)
        hiddens = [hidden]
        for layer in self.layers:
            hidden = torch.tanh(layer(hidden))
            hiddens.append(hidden)
        return hiddens, lengths


def dphubert_distill_loss(inputs, target, l2_weight, l1_weight, cos_weight, cos_type):
    """DPHuBERT's ``DistillLoss.forward`` (plain means, no mask), the reference."""
    loss_cos = F.cosine_similarity(inputs, target, dim=-1)
    loss_cos = -loss_cos.mean() if cos_type == "raw" else -F.logsigmoid(loss_cos).mean()
    return l2_weight * F.mse_loss(inputs, target) + l1_weight * F.l1_loss(inputs, target) + cos_weight * loss_cos


# --- distillation loss -------------------------------------------------------------------------------------------


def test_loss_hand_written_case():
    predictions = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).reshape(1, 1, 2, 2)
    targets = torch.tensor([[0.0, 1.0], [2.0, 2.0]]).reshape(1, 1, 2, 2)
    out = distillation_loss(predictions, targets, l2_weight=1.0)
    assert float(out["l1"]) == pytest.approx((1 + 1 + 1 + 1) / 4)
    assert float(out["l2"]) == pytest.approx((1 + 1 + 1 + 1) / 4)
    assert float(out["cos"]) == pytest.approx(-(0.0 + 1.0) / 2)  # raw: -cos, cos = 0 and 1
    assert float(out["loss"]) == pytest.approx(1.0 + 1.0 - 0.5)
    log_sig = distillation_loss(predictions, targets, cos_type="log_sig")
    assert float(log_sig["cos"]) == pytest.approx((math.log(2.0) - math.log(torch.sigmoid(torch.tensor(1.0)))) / 2)
    with pytest.raises(ValueError, match="cos_type"):
        distillation_loss(predictions, targets, cos_type="cosine")


@pytest.mark.parametrize("cos_type", ["raw", "log_sig"])
def test_equal_lengths_match_dphubert_unmasked_means(cos_type):
    generator = torch.Generator().manual_seed(0)
    predictions = torch.randn(3, 4, 7, DIM, generator=generator)
    targets = torch.randn(3, 4, 7, DIM, generator=generator)
    weights = {"l2_weight": 0.5, "l1_weight": 1.0, "cos_weight": 2.0}
    expected = dphubert_distill_loss(predictions, targets, cos_type=cos_type, **weights)
    full_mask = torch.ones(3, 7, dtype=torch.bool)
    for mask in (None, full_mask):
        out = distillation_loss(predictions, targets, mask, cos_type=cos_type, **weights)
        torch.testing.assert_close(out["loss"], expected, rtol=1e-6, atol=1e-6)
    defaults = distillation_loss(predictions, targets)  # run.sh: l2 0, l1 1, cos 1, raw
    torch.testing.assert_close(defaults["loss"], dphubert_distill_loss(predictions, targets, 0.0, 1.0, 1.0, "raw"))


def test_padding_is_ignored():
    generator = torch.Generator().manual_seed(1)
    lengths = [7, 4, 2]
    predictions = torch.randn(3, 4, 7, DIM, generator=generator)
    targets = torch.randn(3, 4, 7, DIM, generator=generator)
    mask = torch.arange(7)[None, :] < torch.tensor(lengths)[:, None]
    # reference: the valid frames of the batch pooled, then DPHuBERT's plain means
    valid_predictions = torch.cat([predictions[b, :, :n] for b, n in enumerate(lengths)], dim=1)[None]
    valid_targets = torch.cat([targets[b, :, :n] for b, n in enumerate(lengths)], dim=1)[None]
    for cos_type in ("raw", "log_sig"):
        expected = dphubert_distill_loss(valid_predictions, valid_targets, 0.3, 1.0, 1.0, cos_type)
        out = distillation_loss(predictions, targets, mask, l2_weight=0.3, cos_type=cos_type)
        torch.testing.assert_close(out["loss"], expected, rtol=1e-6, atol=1e-6)
    # whatever the padding holds (even NaN) changes neither the loss nor the gradients
    garbage = predictions.clone()
    garbage[~mask[:, None, :, None].expand_as(garbage)] = float("nan")
    garbage.requires_grad_(True)
    out = distillation_loss(garbage, targets, mask)
    out["loss"].backward()
    torch.testing.assert_close(out["loss"], distillation_loss(predictions, targets, mask)["loss"])
    assert torch.isfinite(garbage.grad).all()
    assert (garbage.grad[1, :, 4:] == 0).all() and (garbage.grad[2, :, 2:] == 0).all()


def test_half_precision_inputs_do_not_overflow():
    predictions = torch.ones(1, 1, 100, 768, dtype=torch.float16)  # |difference| sums to 76,800 > fp16 max
    out = distillation_loss(predictions, torch.zeros_like(predictions), l2_weight=1.0)
    assert float(out["l1"]) == 1.0 and float(out["l2"]) == 1.0 and out["loss"].dtype == torch.float32


# --- projections ---------------------------------------------------------------------------------------------------


def test_layer_projections_grouping_and_identity_init():
    assert parse_distill_layers("0.4,8,12") == [[0], [4, 8, 12]]
    with pytest.raises(ValueError, match="distill_layers"):
        parse_distill_layers("0.4,x")
    with pytest.raises(ValueError, match="distinct"):
        parse_distill_layers("4.4")
    projections = LayerProjections()  # DPHuBERT's defaults: 0.4,8,12, 768 -> 768
    assert projections.layers == [0, 4, 8, 12]
    assert projections[1] is projections[2] is projections[3] and projections[0] is not projections[1]
    assert list(projections.state_dict()) == [f"{i}.{name}" for i in range(4) for name in ("weight", "bias")]
    assert len(list(projections.parameters())) == 4  # two Linear(768, 768), each once
    for projection in projections:
        assert torch.equal(projection.weight, torch.eye(768)) and not projection.bias.any()
    # a DPHuBERT distill_linear_projs entry (1-3 the same tensors) loads strictly
    small = LayerProjections("0.4,8,12", DIM, DIM)
    saved = {key: torch.randn_like(value) for key, value in small.state_dict().items()}
    for index in (2, 3):
        saved[f"{index}.weight"], saved[f"{index}.bias"] = saved["1.weight"], saved["1.bias"]
    small.load_state_dict(saved, strict=True)
    assert torch.equal(small[3].weight, saved["1.weight"])


def test_layer_to_layer_loss_uses_teacher_layers_0_4_8_12():
    student = StandInStudent()
    projections = LayerProjections("0.4,8,12", DIM, DIM)
    wavs = torch.randn(2, 5, DIM)
    student_hiddens, _ = student.extract_features(wavs, None)
    teacher_hiddens = [torch.randn(2, 5, DIM) for _ in range(13)]
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    out = layer_to_layer_loss(projections, student_hiddens, teacher_hiddens, mask)
    # identity projections: the loss of the raw student layers against teacher layers 0/4/8/12
    expected = distillation_loss(
        torch.stack([student_hiddens[k] for k in (0, 4, 8, 12)], 1),
        torch.stack([teacher_hiddens[k] for k in (0, 4, 8, 12)], 1),
        mask,
    )
    torch.testing.assert_close(out["loss"], expected["loss"])
    out["loss"].backward()
    assert projections[0].weight.grad.abs().sum() > 0 and projections[1].weight.grad.abs().sum() > 0
    assert student.layers[11].weight.grad.abs().sum() > 0  # layer 12 reached
    # a teacher one frame longer is trimmed
    longer = [torch.cat([hidden, torch.randn(2, 1, DIM)], 1) for hidden in teacher_hiddens]
    torch.testing.assert_close(layer_to_layer_loss(projections, student_hiddens, longer, mask)["loss"], out["loss"])


# --- Lagrangian and optimizer ---------------------------------------------------------------------------------------


def test_target_ramp():
    lagrangian = SparsityLagrangian()
    assert lagrangian.teacher_num_params == WAVLM_BASE_PLUS_NUM_PARAMS == 94_381_680
    assert [lagrangian.target(step) for step in (0, 1000, 2500, 5000, 50_000)] == [0.0, 0.15, 0.375, 0.75, 0.75]
    assert lagrangian.lambda1.item() == 0.0 and lagrangian.lambda2.item() == 0.0


def _setup(log_alpha, ascent="negative_lr", warmup=2, seed=0):
    torch.manual_seed(seed)
    student = StandInStudent(log_alpha=log_alpha)
    projections = LayerProjections("0.4,8,12", DIM, DIM)
    lagrangian = SparsityLagrangian(sparsity_warmup_steps=10, teacher_num_params=student.full_num_params)
    optimizer = build_optimizer(student, projections, lagrangian, ascent=ascent)
    schedule = LinearDecaySchedule(warmup_steps=warmup, max_steps=100)
    return student, projections, lagrangian, optimizer, schedule


def _reg_step(student, lagrangian, optimizer, schedule, update, completed_steps, extra_loss=None):
    schedule(optimizer, update)
    out = lagrangian(student.expected_num_params(), completed_steps)
    loss = out["loss"] if extra_loss is None else out["loss"] + extra_loss()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    prepare_optimizer_step(optimizer)
    optimizer.step()
    return out["expected_sparsity"].item(), out["target_sparsity"]


def _sparsity(student, lagrangian):
    with torch.no_grad():
        return float(lagrangian(student.expected_num_params(), 0)["expected_sparsity"])


def test_optimizer_groups():
    student, projections, lagrangian, optimizer, _ = _setup(3.0)
    names = [group["name"] for group in optimizer.param_groups]
    assert names == ["main_params", "log_alpha", "lambda"]
    main, log_alpha, lambdas = optimizer.param_groups
    assert [main["lr"], log_alpha["lr"], lambdas["lr"]] == [2e-4, 0.02, -0.02]
    assert all(group["weight_decay"] == 0.0 for group in optimizer.param_groups)
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["eps"] == 1e-8
    assert log_alpha["params"] == [student.ffn_log_alpha]
    assert lambdas["params"] == [lagrangian.lambda1, lagrangian.lambda2]
    expected_main = {id(p) for n, p in student.named_parameters() if "log_alpha" not in n}
    expected_main |= {id(p) for p in projections.parameters()}
    assert {id(p) for p in main["params"]} == expected_main and len(main["params"]) == len(expected_main)
    head = nn.Linear(DIM, 2)  # an enhancement head joins the main group
    with_head = build_optimizer(student, projections, lagrangian, extra_modules=[head])
    assert {id(p) for p in head.parameters()} <= {id(p) for p in with_head.param_groups[0]["params"]}
    # stage 2: a pruned student (no gates) and no multipliers -> the main group only, lr 1e-4
    pruned = nn.Linear(DIM, DIM)
    stage2 = build_optimizer(pruned, projections, main_lr=STAGE_DEFAULTS[2]["main_lr"])
    assert [(g["name"], g["lr"]) for g in stage2.param_groups] == [("main_params", 1e-4)]
    with pytest.raises(ValueError, match="magnitudes"):
        build_optimizer(student, projections, lagrangian, lambda_lr=-0.02)


def test_multipliers_ascend_and_gates_follow_when_below_target():
    student, _, lagrangian, optimizer, schedule = _setup(log_alpha=3.0)
    log_alpha_before = student.ffn_log_alpha.detach().clone()
    sparsity, target = _reg_step(student, lagrangian, optimizer, schedule, update=1, completed_steps=10)
    assert sparsity < target == 0.75
    assert lagrangian.lambda1.item() < 0  # gradient ascent on lambda1 (s - t)
    assert lagrangian.lambda2.item() > 0
    # the multipliers start at 0: the first step leaves the gates (no other loss here) unchanged
    assert torch.equal(student.ffn_log_alpha.detach(), log_alpha_before)
    lambda2_history = [lagrangian.lambda2.item()]
    sparsities = [_sparsity(student, lagrangian)]
    for update in (2, 3):
        _reg_step(student, lagrangian, optimizer, schedule, update=update, completed_steps=10)
        lambda2_history.append(lagrangian.lambda2.item())
        sparsities.append(_sparsity(student, lagrangian))
    assert sparsities[1] > sparsities[0] and sparsities[2] > sparsities[1]  # minimising over log_alpha raises s
    assert (student.ffn_log_alpha.detach() < log_alpha_before).all()
    assert lambda2_history == sorted(lambda2_history)  # non-decreasing
    assert lagrangian.lambda1.item() < 0


def test_fused_adamw_ascends_with_negative_lr():
    torch.manual_seed(0)
    student = StandInStudent(log_alpha=3.0)
    lagrangian = SparsityLagrangian(sparsity_warmup_steps=10, teacher_num_params=student.full_num_params)
    optimizer = build_optimizer(student, LayerProjections("0.4,8,12", DIM, DIM), lagrangian, fused=True)
    _reg_step(student, lagrangian, optimizer, LinearDecaySchedule(2, 100), update=1, completed_steps=10)
    assert lagrangian.lambda1.item() < 0 < lagrangian.lambda2.item()


def test_multiplier_positive_when_above_target():
    student, _, lagrangian, optimizer, schedule = _setup(log_alpha=-1.0)
    sparsity, target = _reg_step(student, lagrangian, optimizer, schedule, update=1, completed_steps=0)
    assert target == 0.0 and sparsity > 0.0
    assert lagrangian.lambda1.item() > 0
    # dL/dlambda2 = (s - t)^2 = s^2; AdamW's first step moves a parameter by lr * g / (|g| + eps) with
    # lr = -0.02 (ascent) x 1/2 (update 1 of a 2-step warm-up), eps = 1e-8, no weight decay, from 0
    gradient = sparsity**2
    assert lagrangian.lambda2.item() == pytest.approx(0.02 * 0.5 * gradient / (gradient + 1e-8), rel=1e-5)


def test_negated_gradients_equal_negative_lr():
    runs = {}
    for ascent in ("negative_lr", "negated_gradients"):
        student, projections, lagrangian, optimizer, schedule = _setup(log_alpha=1.0, ascent=ascent, seed=3)
        wavs = torch.randn(2, 5, DIM, generator=torch.Generator().manual_seed(4))
        teacher = [torch.randn(2, 5, DIM, generator=torch.Generator().manual_seed(5 + k)) for k in range(13)]

        def distill():
            return layer_to_layer_loss(projections, student.extract_features(wavs, None)[0], teacher)["loss"]

        for update in (1, 2, 3):
            _reg_step(student, lagrangian, optimizer, schedule, update, completed_steps=10, extra_loss=distill)
        runs[ascent] = [p.detach().clone() for p in (lagrangian.lambda1, lagrangian.lambda2, student.ffn_log_alpha)]
        runs[ascent].append(student.layers[0].weight.detach().clone())
    assert optimizer.param_groups[2]["lr"] > 0  # the fallback keeps a positive lr
    for negative_lr, negated in zip(runs["negative_lr"], runs["negated_gradients"]):
        torch.testing.assert_close(negative_lr, negated, rtol=1e-6, atol=0.0)


def test_lr_factor_identical_across_groups():
    _, _, _, optimizer, _ = _setup(3.0)
    schedule = LinearDecaySchedule()  # stage 1: 15k warm-up, 0 at 50k
    expected = {1: 1 / 15_000, 7_500: 0.5, 15_000: 1.0, 32_500: 0.5, 49_999: 1 / 35_000, 50_000: 0.0, 60_000: 0.0}
    for update, factor in expected.items():
        assert schedule(optimizer, update) == pytest.approx(factor)
        ratios = [group["lr"] / group["initial_lr"] for group in optimizer.param_groups]
        assert ratios == pytest.approx([factor] * 3, abs=1e-12)
    assert optimizer.param_groups[2]["lr"] <= 0  # the multipliers' lr stays an ascent lr
    stage2 = LinearDecaySchedule(STAGE_DEFAULTS[2]["warmup_steps"], STAGE_DEFAULTS[2]["max_steps"])
    assert [stage2.factor(u) for u in (2_500, 5_000, 15_000, 25_000)] == [0.5, 1.0, 0.5, 0.0]


def test_schedule_matches_dphubert_scheduler():
    """Parity with DPHuBERT's (torchaudio's) LinearDecayLRScheduler, which counts ``_step_count`` from 1."""

    class Reference(torch.optim.lr_scheduler.LRScheduler):
        def __init__(self, optimizer, warmup_updates, max_updates):
            self.warmup_updates, self.max_updates = warmup_updates, max_updates
            super().__init__(optimizer)

        def get_lr(self):
            if self._step_count <= self.warmup_updates:
                return [self._step_count / self.warmup_updates * base for base in self.base_lrs]
            if self._step_count >= self.max_updates:
                return [0.0 for _ in self.base_lrs]
            remaining = (self.max_updates - self._step_count) / (self.max_updates - self.warmup_updates)
            return [base * remaining for base in self.base_lrs]

    parameter = nn.Parameter(torch.zeros(1))
    reference_optimizer = torch.optim.SGD([parameter], lr=2e-4)
    reference = Reference(reference_optimizer, 4, 12)
    schedule = LinearDecaySchedule(4, 12)
    for update in range(1, 16):
        assert reference_optimizer.param_groups[0]["lr"] == pytest.approx(2e-4 * schedule.factor(update), abs=1e-15)
        reference_optimizer.step()
        reference.step()


def test_clipping_covers_log_alpha_and_lambdas():
    student, _, lagrangian, optimizer, _ = _setup(3.0)
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            parameter.grad = torch.full_like(parameter, 1e-4)  # main group: tiny
    student.ffn_log_alpha.grad = torch.full_like(student.ffn_log_alpha, 1e3)
    lagrangian.lambda1.grad = torch.tensor(-2e3)
    lagrangian.lambda2.grad = torch.tensor(5e2)
    all_grads = [p.grad.clone() for g in optimizer.param_groups for p in g["params"]]
    norm_before = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in all_grads]))
    norm = prepare_optimizer_step(optimizer, max_grad_norm=10.0)
    torch.testing.assert_close(norm, norm_before)
    after = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.grad) for g in optimizer.param_groups for p in g["params"]])
    )
    assert float(after) == pytest.approx(10.0, rel=1e-4)
    scale = 10.0 / float(norm_before)
    assert lagrangian.lambda1.grad.item() == pytest.approx(-2e3 * scale, rel=1e-4)  # sign kept (negative_lr)
    torch.testing.assert_close(student.ffn_log_alpha.grad, torch.full_like(student.ffn_log_alpha, 1e3 * scale))
