"""The per-utterance CNN GroupNorm (:func:`robustdistiller.inference.interface.per_utterance_cnn_norm`).

The memory-lean implementation (:func:`~robustdistiller.inference.interface._masked_group_norm`, an autograd
Function with an analytic backward run in place of the native GroupNorm) is checked against the
previous implementation, kept verbatim below as the reference (a forward hook that recomputed the
norm with several full-size temporaries after the native GroupNorm had run): outputs and gradients on
every time step, padded ones included, and the peak of live tensor memory of forward + backward.
"""

import contextlib
import weakref

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import HubertConfig, HubertModel

import robustdistiller.models.student as student_module
from robustdistiller.inference.interface import (
    _masked_group_norm,
    _MaskedGroupNormFunction,
    lengths_to_mask,
    per_utterance_cnn_norm,
)
from robustdistiller.models.student import DistillerStudent, build_student_config

TOLERANCE = 1e-5


def _max_error(actual, expected):
    """Largest ``|actual - expected| / max(1, |expected|)``: absolute error, relative above magnitude 1.

    (A one-step item has zero variance, so its padded steps are normalised by ``1 / sqrt(eps)`` and
    reach magnitudes ~1e3, where one float32 rounding is ~1e-4 in absolute terms.)
    """
    actual, expected = actual.detach().double(), expected.detach().double()
    return float(((actual - expected).abs() / expected.abs().clamp(min=1.0)).max())


def _max_grad_error(actual, expected):
    """Largest ``|actual - expected|`` over ``max(1, max |expected|)`` (gradients are sums with
    cancellation: an element is only as precise as the largest terms of the whole tensor)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    return float((actual - expected).abs().max() / max(1.0, float(expected.abs().max())))


# ----------------------------------------------------------------- the previous implementation -----
def _reference_masked_group_norm(norm, inputs, lengths):
    """GroupNorm whose statistics use only the first ``lengths[b]`` time steps of each item."""
    batch_size, channels, num_steps = inputs.shape
    groups = norm.num_groups
    mask = lengths_to_mask(lengths.to(inputs.device), num_steps)[:, None, None, :].to(inputs.dtype)
    grouped = inputs.reshape(batch_size, groups, channels // groups, num_steps)
    count = mask.sum(dim=-1, keepdim=True).clamp(min=1) * (channels // groups)
    mean = (grouped * mask).sum(dim=(2, 3), keepdim=True) / count
    variance = (((grouped - mean) * mask) ** 2).sum(dim=(2, 3), keepdim=True) / count
    normalised = ((grouped - mean) / torch.sqrt(variance + norm.eps)).reshape(inputs.shape)
    if norm.affine:
        normalised = normalised * norm.weight[None, :, None] + norm.bias[None, :, None]
    return normalised


@contextlib.contextmanager
def _reference_per_utterance_cnn_norm(feature_extractor, sample_lengths):
    """The previous context manager: a forward hook replacing the native GroupNorm's output."""
    first_layer = feature_extractor.conv_layers[0]
    norm = getattr(first_layer, "layer_norm", None)
    if sample_lengths is None or not isinstance(norm, nn.GroupNorm):
        yield
        return
    conv = first_layer.conv
    step_lengths = torch.div(sample_lengths - conv.kernel_size[0], conv.stride[0], rounding_mode="floor") + 1

    def hook(module, args, output):
        return _reference_masked_group_norm(module, args[0], step_lengths.clamp(min=1))

    handle = norm.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# ------------------------------------------------------------------------------------ helpers -----
def _make_norm(channels, groups, affine, seed=0):
    norm = nn.GroupNorm(groups, channels, affine=affine)
    if affine:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            norm.weight.copy_(1.0 + 0.5 * torch.randn(channels, generator=generator))
            norm.bias.copy_(0.3 * torch.randn(channels, generator=generator))
    return norm


def _inputs(batch_size, channels, num_steps, dtype=torch.float32, seed=0):
    """Random activations with channel offsets (a non-zero mean exercises the numerics)."""
    generator = torch.Generator().manual_seed(seed)
    scale = 0.5 + torch.rand(1, channels, 1, generator=generator) * 2
    offset = torch.randn(1, channels, 1, generator=generator) * 3
    values = torch.randn(batch_size, channels, num_steps, generator=generator) * scale + offset
    return values.to(dtype)


def _forward_backward(function, norm, inputs, lengths, grad_output):
    """Output and gradients w.r.t. input, weight and bias of ``function(norm, inputs, lengths)``."""
    inputs = inputs.detach().clone().requires_grad_(True)
    norm.zero_grad(set_to_none=True)
    output = function(norm, inputs, lengths)
    output.backward(grad_output)
    grads = {"input": inputs.grad}
    if norm.affine:
        grads["weight"] = norm.weight.grad
        grads["bias"] = norm.bias.grad
    return output.detach(), grads


LENGTHS_CASES = {
    "mixed": lambda steps: [steps, steps - 7, 1, steps // 3],  # full, nearly full, one step, a third
    "full": lambda steps: [steps, steps, steps, steps],
}


# -------------------------------------------------------------------------------------- parity -----
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("groups", [16, 4], ids=["per_channel", "grouped"])
@pytest.mark.parametrize("case", sorted(LENGTHS_CASES))
def test_parity_with_reference_fp32(affine, groups, case):
    channels, num_steps = 16, 203
    lengths = torch.tensor(LENGTHS_CASES[case](num_steps))
    norm = _make_norm(channels, groups, affine)
    inputs = _inputs(len(lengths), channels, num_steps)
    grad_output = torch.randn(inputs.shape, generator=torch.Generator().manual_seed(1))
    expected, expected_grads = _forward_backward(_reference_masked_group_norm, norm, inputs, lengths, grad_output)
    actual, actual_grads = _forward_backward(_masked_group_norm, norm, inputs, lengths, grad_output)
    assert actual.dtype == torch.float32
    assert _max_error(actual, expected) <= TOLERANCE  # every step, padded ones included
    assert sorted(actual_grads) == sorted(expected_grads)
    for name, expected_grad in expected_grads.items():
        assert _max_grad_error(actual_grads[name], expected_grad) <= TOLERANCE, name


def test_valid_steps_match_the_unpadded_item():
    norm = _make_norm(8, 8, affine=True)
    inputs = _inputs(3, 8, 50)
    lengths = torch.tensor([50, 20, 1])
    output = _masked_group_norm(norm, inputs, lengths)
    for index, length in enumerate(lengths.tolist()):
        if length > 1:
            alone = F.group_norm(inputs[index : index + 1, :, :length], 8, norm.weight, norm.bias, norm.eps)
            assert torch.allclose(output[index : index + 1, :, :length], alone, atol=TOLERANCE)
    # a one-step item has zero variance: its step normalises to the bias
    assert torch.allclose(output[2, :, 0], norm.bias.detach(), atol=TOLERANCE)


def test_analytic_backward_gradcheck_float64():
    norm = _make_norm(6, 3, affine=True).double()
    inputs = _inputs(3, 6, 11, dtype=torch.float64).requires_grad_(True)
    mask = lengths_to_mask(torch.tensor([11, 4, 1]), 11).double()

    def masked(x, weight, bias):
        return _MaskedGroupNormFunction.apply(x, mask, 3, weight, bias, 1e-5)

    assert torch.autograd.gradcheck(masked, (inputs, norm.weight, norm.bias), atol=1e-6)


def test_parity_bf16_autocast():
    channels, num_steps = 32, 301
    lengths = torch.tensor([num_steps, 250, 1, 90])
    norm = _make_norm(channels, channels, affine=True)
    inputs = _inputs(len(lengths), channels, num_steps, dtype=torch.bfloat16)  # a bf16 conv output
    grad_output = torch.randn(inputs.shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    # reference: the previous implementation in fp32 on the same (bf16-rounded) values
    expected, expected_grads = _forward_backward(
        _reference_masked_group_norm, norm, inputs.float(), lengths, grad_output.float()
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual, actual_grads = _forward_backward(_masked_group_norm, norm, inputs, lengths, grad_output)
    assert actual.dtype == torch.bfloat16 and actual_grads["input"].dtype == torch.bfloat16
    assert actual_grads["weight"].dtype == torch.float32
    # only the output rounding to bf16 (statistics are fp32): about 2^-8 relative
    assert torch.allclose(actual.float(), expected, atol=2e-2, rtol=1e-2)
    assert torch.allclose(actual_grads["input"].float(), expected_grads["input"], atol=2e-2, rtol=1e-2)
    for name in ("weight", "bias"):
        scale = float(expected_grads[name].abs().max())
        assert (actual_grads[name] - expected_grads[name]).abs().max() <= 1e-2 * scale, name


# ---------------------------------------------------------------------------- context manager -----
def _tiny_model(seed=0):
    torch.manual_seed(seed)
    config = HubertConfig(
        hidden_size=32,
        num_attention_heads=2,
        num_hidden_layers=1,
        intermediate_size=64,
        conv_dim=[32] * 7,
        conv_bias=False,
        feat_extract_norm="group",
        num_conv_pos_embedding_groups=4,
    )
    return HubertModel(config).eval()


def _counting_group_norm(monkeypatch):
    calls = []
    original = F.group_norm

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "group_norm", counting)
    return calls


def test_native_group_norm_not_called_inside_and_restored_after(monkeypatch):
    model = _tiny_model()
    norm = model.feature_extractor.conv_layers[0].layer_norm
    calls = _counting_group_norm(monkeypatch)
    wavs = torch.randn(2, 4000)
    model.feature_extractor(wavs)
    assert len(calls) == 1
    with per_utterance_cnn_norm(model.feature_extractor, torch.tensor([4000, 2000])):
        assert "forward" in vars(norm)
        inside = model.feature_extractor(wavs)
    assert len(calls) == 1  # the native GroupNorm did not run inside the block
    assert "forward" not in vars(norm)  # the class forward is back
    outside = model.feature_extractor(wavs)
    assert len(calls) == 2
    assert not torch.allclose(inside, outside)


def test_restored_after_an_exception_and_nested_blocks():
    model = _tiny_model()
    norm = model.feature_extractor.conv_layers[0].layer_norm
    with pytest.raises(RuntimeError, match="boom"):
        with per_utterance_cnn_norm(model.feature_extractor, torch.tensor([4000, 2000])):
            raise RuntimeError("boom")
    assert "forward" not in vars(norm)
    with per_utterance_cnn_norm(model.feature_extractor, torch.tensor([4000, 2000])):
        outer = vars(norm)["forward"]
        with per_utterance_cnn_norm(model.feature_extractor, torch.tensor([4000, 4000])):
            assert vars(norm)["forward"] is not outer
        assert vars(norm)["forward"] is outer
    assert "forward" not in vars(norm)


def test_none_lengths_leave_the_model_untouched(monkeypatch):
    model = _tiny_model()
    norm = model.feature_extractor.conv_layers[0].layer_norm
    calls = _counting_group_norm(monkeypatch)
    wavs = torch.randn(2, 4000)
    expected = model.feature_extractor(wavs)
    with per_utterance_cnn_norm(model.feature_extractor, None):
        assert "forward" not in vars(norm)
        actual = model.feature_extractor(wavs)
    assert len(calls) == 2
    assert torch.equal(actual, expected)


def test_feature_extractor_parity_with_previous_context():
    model = _tiny_model()
    wavs = torch.randn(3, 6000)
    lengths = torch.tensor([6000, 3000, 401])
    wavs = wavs * lengths_to_mask(lengths, 6000)
    with _reference_per_utterance_cnn_norm(model.feature_extractor, lengths):
        expected = model.feature_extractor(wavs)
    with per_utterance_cnn_norm(model.feature_extractor, lengths):
        actual = model.feature_extractor(wavs)
    assert _max_error(actual, expected) <= TOLERANCE


def test_student_outputs_and_gradients_match_previous_implementation(monkeypatch):
    config = build_student_config(
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=[32] * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
    )
    torch.manual_seed(0)
    student = DistillerStudent(config, per_utterance_norm=True).train()
    wavs = torch.randn(3, 8000)
    wav_lens = torch.tensor([1.0, 0.6, 0.25])

    def run():
        student.zero_grad(set_to_none=True)
        out = student(wavs, wav_lens)
        (out.predictions.square().mean() + out.cnn_features.mean()).backward()
        grads = {name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None}
        return out.predictions.detach(), grads

    actual, actual_grads = run()
    monkeypatch.setattr(student_module, "per_utterance_cnn_norm", _reference_per_utterance_cnn_norm)
    expected, expected_grads = run()
    assert _max_error(actual, expected) <= TOLERANCE
    assert sorted(actual_grads) == sorted(expected_grads)
    norm_prefix = "backbone.feature_extractor.conv_layers.0.layer_norm."
    assert norm_prefix + "weight" in actual_grads
    for name, expected_grad in expected_grads.items():
        assert _max_grad_error(actual_grads[name], expected_grad) <= TOLERANCE, name


def test_bf16_autocast_feature_extractor():
    model = _tiny_model()
    wavs = torch.randn(2, 6000)
    lengths = torch.tensor([6000, 2500])
    wavs = wavs * lengths_to_mask(lengths, 6000)
    with per_utterance_cnn_norm(model.feature_extractor, lengths):
        expected = model.feature_extractor(wavs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            actual = model.feature_extractor(wavs)
    scale = float(expected.detach().abs().max())
    assert (actual.float() - expected).abs().max() <= 5e-2 * scale


# ------------------------------------------------------------------------------- peak memory -----
class _LiveTensorBytes(TorchDispatchMode):
    """Peak of the bytes held by tensors allocated by the ops dispatched inside the mode.

    Each op output with a new storage adds its size; a weakref finalizer on every tensor using that
    storage removes it when the last one dies. Outputs sharing an argument's storage (views, in-place
    and ``out=`` ops) are not new allocations. Kernel-internal scratch memory is not seen.
    """

    def __init__(self):
        super().__init__()
        self.live = {}
        self.current = 0
        self.peak = 0

    def _release(self, key):
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del self.live[key]
            self.current -= entry[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        arguments = {
            t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)
        }
        for tensor in tree_flatten(output)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or (key in arguments and key not in self.live):
                continue
            if key not in self.live:
                self.live[key] = [storage.nbytes(), 0]
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
            self.live[key][1] += 1
            weakref.finalize(tensor, self._release, key)
        return output


def _peak_forward_backward(function, batch_size=4, channels=64, num_steps=20000):
    """Peak live bytes of ``function(norm, x, lengths)`` forward + backward, in units of ``x``'s size."""
    norm = _make_norm(channels, channels, affine=True)
    inputs = _inputs(batch_size, channels, num_steps).requires_grad_(True)
    grad_output = torch.randn(inputs.shape, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([num_steps, int(num_steps * 0.8), int(num_steps * 0.6), 1][:batch_size])
    mode = _LiveTensorBytes()
    with mode:
        output = function(norm, inputs, lengths)
        output.backward(grad_output)
        del output
    return mode.peak / (inputs.numel() * inputs.element_size())


def test_peak_memory_close_to_native_group_norm():
    native = _peak_forward_backward(lambda norm, inputs, lengths: norm(inputs))
    new = _peak_forward_backward(_masked_group_norm)
    reference = _peak_forward_backward(_reference_masked_group_norm)
    # the tracker sees the native output and input gradient (forward + backward): 2 input sizes
    assert 1.9 <= native <= 2.2, native
    assert new <= 1.3 * native, (new, native)
    assert reference > 1.3 * native, (reference, native)
