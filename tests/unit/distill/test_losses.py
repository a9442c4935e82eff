"""Tests of the distillation and enhancement losses: parity with a loop reference, masking, alignment."""

import pytest
import torch
import torch.nn.functional as F

from robustdistiller.distill.losses import align_frames, distillation_loss, enhancement_loss, lengths_to_mask
from robustdistiller.models.student import PredictionHeads


def reference_distillation_loss(predictions, targets, frame_lengths, cosine_weight=1.0):
    """Straightforward per-utterance, per-layer loop over valid frames."""
    num_layers = predictions.shape[1]
    l1, cosine, similarity = [], [], []
    for k in range(num_layers):
        absolute_sum, log_sigmoid_sum, similarity_sum, frame_count = 0.0, 0.0, 0.0, 0
        for b, length in enumerate(frame_lengths):
            prediction = predictions[b, k, :length].double()
            target = targets[b, k, :length].double()
            absolute_sum += (prediction - target).abs().sum()
            cos = F.cosine_similarity(prediction, target, dim=-1)
            log_sigmoid_sum += -F.logsigmoid(cos).sum()
            similarity_sum += cos.sum()
            frame_count += length
        l1.append(absolute_sum / (frame_count * predictions.shape[-1]))
        cosine.append(log_sigmoid_sum / frame_count)
        similarity.append(similarity_sum / frame_count)
    l1, cosine, similarity = torch.stack(l1), torch.stack(cosine), torch.stack(similarity)
    return (l1 + cosine_weight * cosine).mean(), l1, cosine, similarity


def test_lengths_to_mask():
    mask = lengths_to_mask(torch.tensor([3, 0, 5]), 5)
    assert mask.dtype == torch.bool and mask.shape == (3, 5)
    assert mask.sum(dim=1).tolist() == [3, 0, 5]
    assert lengths_to_mask(torch.tensor([2, 4])).shape == (2, 4)


def test_align_frames_trims_to_shortest():
    a, b, c = align_frames(torch.zeros(2, 50, 3), torch.zeros(2, 49, 3), torch.zeros(2, 51))
    assert a.shape[1] == b.shape[1] == c.shape[1] == 49
    x, y = align_frames(torch.zeros(2, 3, 50, 4), torch.zeros(2, 3, 48, 4), dim=2)
    assert x.shape[2] == y.shape[2] == 48


@pytest.mark.parametrize("cosine_weight", [1.0, 0.5])
def test_distillation_loss_matches_loop_reference(cosine_weight):
    torch.manual_seed(0)
    predictions = torch.randn(3, 3, 20, 16)
    targets = torch.randn(3, 3, 21, 16)  # one more teacher frame
    frame_lengths = [20, 13, 7]
    frame_mask = lengths_to_mask(torch.tensor(frame_lengths), 21)
    result = distillation_loss(predictions, targets, frame_mask, cosine_weight=cosine_weight)
    loss, l1, cosine, similarity = reference_distillation_loss(predictions, targets, frame_lengths, cosine_weight)
    assert result["l1"].shape == result["cosine"].shape == result["cosine_similarity"].shape == (3,)
    assert torch.allclose(result["loss"].double(), loss, atol=1e-6)
    assert torch.allclose(result["l1"].double(), l1, atol=1e-6)
    assert torch.allclose(result["cosine"].double(), cosine, atol=1e-6)
    assert torch.allclose(result["cosine_similarity"].double(), similarity, atol=1e-6)


def test_padding_does_not_change_distillation_loss():
    torch.manual_seed(1)
    predictions = torch.randn(2, 3, 10, 8, requires_grad=True)
    targets = torch.randn(2, 3, 10, 8)
    frame_mask = lengths_to_mask(torch.tensor([10, 6]), 10)
    reference = distillation_loss(predictions, targets, frame_mask)
    # garbage in the padded frames of item 1 and in 5 extra padded frames for everyone
    padded_predictions = torch.cat([predictions, 1e6 * torch.randn(2, 3, 5, 8)], dim=2)
    padded_predictions = padded_predictions.clone()
    padded_predictions[1, :, 6:] = float("nan")
    padded_targets = torch.cat([targets, torch.full((2, 3, 5, 8), float("inf"))], dim=2)
    padded_targets[1, :, 6:] = -3e5
    padded_mask = torch.cat([frame_mask, torch.zeros(2, 5, dtype=torch.bool)], dim=1)
    padded = distillation_loss(padded_predictions, padded_targets, padded_mask)
    for key in ("loss", "l1", "cosine", "cosine_similarity"):
        assert torch.equal(padded[key], reference[key]), key
    padded["loss"].backward()
    assert torch.isfinite(predictions.grad).all()
    assert torch.equal(predictions.grad[1, :, 6:], torch.zeros(3, 4, 8))


def test_distillation_loss_values():
    targets = torch.randn(2, 3, 5, 4)
    perfect = distillation_loss(targets.clone(), targets)
    assert torch.equal(perfect["l1"], torch.zeros(3))
    assert torch.allclose(perfect["cosine"], -F.logsigmoid(torch.tensor(1.0)).expand(3))
    assert torch.allclose(perfect["cosine_similarity"], torch.ones(3))
    l1_only = distillation_loss(targets + 1.0, targets, cosine_weight=0.0)
    assert torch.allclose(l1_only["loss"], torch.tensor(1.0))
    with pytest.raises(ValueError, match="no valid frame"):
        distillation_loss(targets, targets, torch.zeros(2, 5, dtype=torch.bool))


def test_training_prediction_heads_decreases_loss():
    torch.manual_seed(0)
    heads = PredictionHeads(hidden_size=16, num_targets=3)
    hidden = torch.randn(4, 12, 16)
    targets = torch.randn(4, 3, 12, 16)
    frame_mask = lengths_to_mask(torch.tensor([12, 10, 8, 5]), 12)
    optimizer = torch.optim.Adam(heads.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = distillation_loss(heads(hidden), targets, frame_mask)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]
    assert all(later < earlier for earlier, later in zip(losses[:5], losses[1:6]))


def test_enhancement_loss_masks_and_aligns():
    torch.manual_seed(2)
    enhanced = torch.rand(2, 12, 257)
    clean = torch.rand(2, 11, 257)
    frame_mask = lengths_to_mask(torch.tensor([11, 4]), 13)
    loss = enhancement_loss(enhanced, clean, frame_mask)
    expected = torch.cat([(enhanced[0, :11] - clean[0, :11]).abs(), (enhanced[1, :4] - clean[1, :4]).abs()])
    assert torch.allclose(loss, expected.mean())
    garbage = enhanced.clone()
    garbage[1, 4:] = float("nan")
    assert torch.equal(enhancement_loss(garbage, clean, frame_mask), loss)
    assert torch.allclose(enhancement_loss(enhanced[:, :11], clean), (enhanced[:, :11] - clean).abs().mean())
