"""Exporting a trained student to ONNX (fp32, and an int8 copy), and checking it.

:func:`export_onnx` writes ``<folder>/encoder.onnx`` (and with ``int8`` ``<folder>/encoder_int8.onnx``):

* inputs ``waveform`` ``[B, T]`` float32 (16 kHz, padded samples anything: they are zeroed in the graph)
  and ``lengths`` ``[B]`` int64 (valid samples per item); batch and time axes are dynamic;
* outputs ``projection`` ``[B, F, D]`` (the feature projection's output before the positional
  convolution, padded frames zeroed: the student's state 0 as s3prl and :class:`FrozenUpstream` use it),
  ``hidden_states`` ``[B, N + 1, F, D]`` (encoder input, then each transformer layer),
  ``predictions`` ``[B, K, F, T]`` (the prediction heads' estimates of the teacher layers) and
  ``frame_lengths`` ``[B]`` int64 (valid frames per item; 0 for an item shorter than the CNN's
  receptive field, which then attends to its first frame, as in :mod:`robustdistiller.inference.interface`).

The padding rules are :class:`~robustdistiller.inference.interface.EncoderInterface`'s: padded samples are zeroed,
padded frames never enter attention, and for a student trained with ``per_utterance_norm`` the first CNN
layer's GroupNorm is computed over each item's valid samples (a masked GroupNorm written with plain
tensor operations, the same two-pass statistics as :func:`robustdistiller.inference.interface._masked_group_norm`),
so the valid frames of a padded batch equal those of each utterance alone. The check that some item is
long enough for one frame (:func:`~robustdistiller.inference.interface.check_input_lengths`) cannot live in a
graph: :mod:`robustdistiller.inference.onnx_runtime` makes it before running the model.

Exporter. The TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) is used: it traces
the module once with example inputs and marks the batch and time axes dynamic, which covers the length
arithmetic of the masks (frame lengths from sample lengths, the attention mask, the masked GroupNorm)
as ordinary graph operations. The ``torch.export``-based exporter (the default in torch 2.9+) has to
prove every shape relation symbolically and stops on the data-dependent lengths of the Hugging Face
feature encoder and on the weight-normalised positional convolution; the traced graph needs none of
that and runs in ONNX Runtime with opset 17. The attention is exported in its eager form (matmul,
additive mask, softmax), which is what dynamic quantisation turns into int8 ``MatMulInteger``.

int8. ``export_onnx(..., int8="all")`` (the default of ``--int8``) writes a static int8 copy of the whole graph
in ONNX Runtime's QDQ format, CNN included, calibrated on speech-like audio
(:mod:`robustdistiller.export.onnx_quantization`): on the full-size student, 2 threads, 4 x 4 s, about 5x
faster than the fp32 file, 26.0 of 103.1 MB, per-layer cosine to fp32 >= 0.996. ``int8="matmul"`` keeps the
earlier file: :func:`quantize_int8`, ONNX Runtime's dynamic quantisation (weights int8 per channel, activations
quantised on the fly) of the ``MatMul`` and ``Gemm`` nodes only (the CNN in fp32: 51.5 MB, 15-25 % faster than
fp32, cosine >= 0.998). Dynamic quantisation of the convolutions (``ConvInteger``) is not offered: ONNX
Runtime's CPU kernel for it is several times slower than its fp32 convolution (4 x 4 s: fp32 4.3 s, int8 with
``ConvInteger`` 13.7 s); the QDQ graph runs ``QLinearConv`` instead.

:func:`verify_onnx` compares the ONNX files with the PyTorch module on a padded batch
(:func:`robustdistiller.export.verify.parity_batch`): the fp32 file's largest absolute difference on valid
frames (must be at most :data:`PARITY_TOLERANCE`) and the int8 file's cosine similarity to fp32 per
output layer.
"""

import copy
import json
import logging
import os
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from robustdistiller.export.onnx_quantization import DropMessage, copy_metadata, int8_mode, quantize_static_int8
from robustdistiller.export.verify import parity_batch
from robustdistiller.inference.interface import CNN_RECEPTIVE_FIELD, cnn_receptive_field
from robustdistiller.inference.onnx_runtime import FP32_FILE, INT8_FILE  # the names OnnxEncoder resolves
from robustdistiller.runs.write_errors import reporting_write_errors

logger = logging.getLogger(__name__)

INPUT_NAMES = ("waveform", "lengths")
OUTPUT_NAMES = ("projection", "hidden_states", "predictions", "frame_lengths")
OPSET = 17
PARITY_TOLERANCE = 1e-4
INT8_OP_TYPES = ("MatMul", "Gemm")
SAMPLE_RATE = 16000


class UntraceableStudentError(ValueError):
    """A student module that cannot be exported to an ONNX graph (the message says why)."""


def _masked_group_norm(norm, inputs, step_lengths):
    """GroupNorm ``[B, C, T]`` with statistics over each item's first ``step_lengths`` steps (traceable).

    Example
    -------
    >>> norm = nn.GroupNorm(4, 4)
    >>> x = torch.randn(2, 4, 10)
    >>> out = _masked_group_norm(norm, x, torch.tensor([10, 6]))
    >>> torch.allclose(out[1:, :, :6], norm(x[1:, :, :6]), atol=1e-5)
    True
    """
    batch_size, channels, num_steps = inputs.shape
    groups = norm.num_groups
    mask = (torch.arange(inputs.shape[-1], device=inputs.device)[None, :] < step_lengths[:, None]).to(inputs.dtype)
    grouped = inputs.reshape(batch_size, groups, -1, num_steps)  # [B, G, C/G, T]
    mask = mask[:, None, None, :]
    count = mask.sum(dim=-1, keepdim=True).clamp(min=1) * grouped.shape[2]  # [B, 1, 1, 1]
    mean = (grouped * mask).sum(dim=(2, 3), keepdim=True) / count
    centred = grouped - mean
    variance = ((centred * mask) ** 2).sum(dim=(2, 3), keepdim=True) / count
    output = (centred * torch.rsqrt(variance + norm.eps)).reshape(batch_size, channels, num_steps)
    if norm.affine:
        output = output * norm.weight[None, :, None] + norm.bias[None, :, None]
    return output


def _plain_conv(conv):
    """A plain ``Conv1d`` with the current (e.g. weight-normalised) weight of ``conv`` (a new module)."""
    plain = nn.Conv1d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        plain.weight.copy_(conv.weight)
        if conv.bias is not None:
            plain.bias.copy_(conv.bias)
    return plain


class OnnxEncoderModule(nn.Module):
    """The student's inference computation with plain tensor operations, in the layout of the ONNX file.

    ``forward(waveform [B, T], lengths [B] int64) -> (projection, hidden_states, predictions,
    frame_lengths)`` (see the module docstring); equal to :class:`~robustdistiller.models.student.DistillerStudent`
    in eval mode on valid frames.

    Arguments
    ---------
    student : DistillerStudent
        Copied (the weight normalisation of the positional convolution is folded into a plain weight,
        the attention set to its eager form); the original is untouched.
    """

    def __init__(self, student):
        super().__init__()
        student = copy.deepcopy(student).eval()
        backbone = student.backbone
        config = backbone.config
        if getattr(config, "feat_extract_norm", "group") != "group" or getattr(config, "do_stable_layer_norm", False):
            raise UntraceableStudentError(
                "Only the DistilHuBERT/HuBERT-Base layout (first CNN layer with GroupNorm, post-LN "
                f"transformer) is exported; this student has feat_extract_norm={config.feat_extract_norm!r}, "
                f"do_stable_layer_norm={config.do_stable_layer_norm!r}"
            )
        config._attn_implementation = "eager"
        for module in backbone.modules():
            if hasattr(module, "config"):
                module.config._attn_implementation = "eager"
        pos_conv = backbone.encoder.pos_conv_embed
        if torch.nn.utils.parametrize.is_parametrized(pos_conv.conv):
            pos_conv.conv = _plain_conv(pos_conv.conv)  # the weight norm folded into one weight
        self.backbone = backbone
        self.heads = student.prediction_heads
        self.per_utterance_norm = bool(student.per_utterance_norm)
        self.minimum = cnn_receptive_field(config)
        self.kernels = [int(k) for k in config.conv_kernel]
        self.strides = [int(s) for s in config.conv_stride]

    def _frames(self, lengths):
        for kernel, stride in zip(self.kernels, self.strides):
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths

    def forward(self, waveform, lengths):
        """See the class docstring."""
        # sizes from tensors (torch.arange of a traced size), so that the time axis stays dynamic
        sample_index = torch.arange(waveform.shape[1], device=waveform.device)
        lengths = torch.minimum(lengths.to(torch.int64).clamp(min=1), sample_index[-1:] + 1)
        waveform = waveform * (sample_index[None, :] < lengths[:, None]).to(waveform.dtype)
        conv_layers = self.backbone.feature_extractor.conv_layers
        first = conv_layers[0]
        features = first.conv(waveform[:, None])
        if self.per_utterance_norm:
            steps = (torch.div(lengths - self.kernels[0], self.strides[0], rounding_mode="floor") + 1).clamp(min=1)
            features = _masked_group_norm(first.layer_norm, features, steps)
        else:
            features = first.layer_norm(features)
        features = first.activation(features)
        for conv_layer in conv_layers[1:]:
            features = conv_layer(features)
        features = features.transpose(1, 2)  # [B, F, C]
        frame_index = torch.arange(features.shape[1], device=waveform.device)
        frame_lengths = torch.minimum(self._frames(lengths).clamp(min=0), frame_index[-1:] + 1)
        frame_mask = frame_index[None, :] < frame_lengths[:, None]
        hidden = self.backbone.feature_projection(features)
        hidden = hidden * frame_mask[..., None].to(hidden.dtype)
        projection = hidden
        # an item without a valid frame attends to its first frame (no fully masked attention row)
        attention_frames = frame_mask | ((frame_index == 0)[None, :] & (frame_lengths == 0)[:, None])
        additive = (1.0 - attention_frames.to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        attention_mask = additive[:, None, None, :]
        encoder = self.backbone.encoder
        hidden = hidden + encoder.pos_conv_embed(hidden)
        hidden = encoder.layer_norm(hidden)
        hidden_states = [hidden]
        for layer in encoder.layers:
            hidden = layer(hidden, attention_mask=attention_mask)
            if isinstance(hidden, tuple):
                hidden = hidden[0]
            hidden_states.append(hidden)
        heads = self.heads
        expanded = F.gelu(heads.expand(hidden))  # [B, F, K * I]
        # one 2-D MatMul per predicted layer (what dynamic quantisation turns into int8)
        chunks = expanded.split(heads.inner_size, dim=-1)
        predictions = torch.stack(
            [torch.matmul(chunks[k], heads.split_weight[k]) + heads.split_bias[k] for k in range(heads.num_targets)],
            dim=1,
        )
        return projection, torch.stack(hidden_states, dim=1), predictions, frame_lengths


def onnx_metadata(student):
    """What the ONNX file records of the student (``metadata_props``: plain strings)."""
    return {
        "robustdistiller": "1",
        "sample_rate": str(SAMPLE_RATE),
        "per_utterance_norm": json.dumps(bool(student.per_utterance_norm)),
        "target_layers": json.dumps(list(student.target_layers)),
        "num_hidden_layers": str(student.config.num_hidden_layers),
        "hidden_size": str(student.config.hidden_size),
        "target_size": str(student.prediction_heads.target_size),
        "receptive_field": str(cnn_receptive_field(student.config)),
        "inputs": json.dumps(list(INPUT_NAMES)),
        "outputs": json.dumps(list(OUTPUT_NAMES)),
    }


def _example_inputs(module):
    # a length no test batch has (a size wrongly frozen by the trace then fails the parity check)
    lengths = torch.tensor([20011, 13003], dtype=torch.int64)
    generator = torch.Generator().manual_seed(0)
    return 0.1 * torch.randn(2, 20011, generator=generator), lengths


def export_fp32(student, path, opset=OPSET):
    """Writes the fp32 ONNX graph of ``student`` to ``path`` (see the module docstring).

    Raises
    ------
    UntraceableStudentError
        The student's layout or one of its operations cannot be exported; the message says which.
    """
    try:
        module = OnnxEncoderModule(student).eval()
    except UntraceableStudentError:
        raise
    except Exception as error:
        raise UntraceableStudentError(
            f"Cannot prepare {type(student).__name__} for ONNX export ({type(error).__name__}: {error}); "
            f"only DistillerStudent (a HuBERT-layout backbone with prediction heads) is supported"
        ) from error
    return trace_to_onnx(module, path, onnx_metadata(student), OUTPUT_NAMES, opset=opset)


def trace_to_onnx(module, path, metadata, output_names, opset=OPSET):
    """Traces ``module(waveform, lengths)`` into ``path`` (batch and time axes dynamic) and adds ``metadata``.

    ``output_names`` are among :data:`OUTPUT_NAMES` (a model without prediction heads leaves ``predictions`` out).

    Raises
    ------
    UntraceableStudentError
        ``torch.onnx.export`` failed (the message says why).
    """
    import onnx  # optional dependency

    example = _example_inputs(module)
    all_axes = {
        "waveform": {0: "batch", 1: "samples"},
        "lengths": {0: "batch"},
        "projection": {0: "batch", 1: "frames"},
        "hidden_states": {0: "batch", 2: "frames"},
        "predictions": {0: "batch", 2: "frames"},
        "frame_lengths": {0: "batch"},
    }
    dynamic_axes = {name: all_axes[name] for name in (*INPUT_NAMES, *output_names)}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings on shape arithmetic (made dynamic below)
            torch.onnx.export(
                module,
                example,
                path,
                input_names=list(INPUT_NAMES),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                dynamo=False,
                do_constant_folding=True,
            )
    except Exception as error:
        raise UntraceableStudentError(
            f"torch.onnx.export could not trace {type(module).__name__} ({type(error).__name__}: {error}). The "
            f"export traces the model's eval-mode forward pass; a model with data-dependent Python control "
            f"flow or custom autograd functions in its forward pass cannot be traced"
        ) from error
    model = onnx.load(path)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, path)
    return path


def quantize_int8(fp32_path, int8_path, op_types=INT8_OP_TYPES):
    """Dynamically quantised int8 copy of an ONNX file (``onnxruntime.quantization.quantize_dynamic``).

    Weights of ``op_types`` nodes become int8 (per output channel), activations are quantised at run
    time. The metadata of the fp32 file is kept.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic  # optional dependency

    root = logging.getLogger()
    # ONNX Runtime's quantiser logs through the root logger: its advice for static quantisation and one
    # "Quantization parameters for tensor ..." line per quantised tensor, noise for a dynamic int8 export
    hint = DropMessage("pre-processing before quantization", "Quantization parameters")
    root.addFilter(hint)
    try:
        quantize_dynamic(
            fp32_path,
            int8_path,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=list(op_types),
        )
    finally:
        root.removeFilter(hint)
    return copy_metadata(fp32_path, int8_path, f"dynamic int8 ({', '.join(op_types)})")


def export_onnx(student, folder, int8=False, opset=OPSET):
    """Writes ``folder/encoder.onnx`` (and with ``int8`` ``folder/encoder_int8.onnx``).

    Arguments
    ---------
    student : DistillerStudent
        In eval mode.
    folder : str
        Created if missing.
    int8 : bool or str
        Also write ``encoder_int8.onnx``: ``"all"`` (or True) the static QDQ copy of the whole graph
        (:func:`robustdistiller.export.onnx_quantization.quantize_static_int8`), ``"matmul"`` the dynamic
        copy of the matrix products only (:func:`quantize_int8`).
    opset : int
        ONNX opset.

    Returns
    -------
    dict
        ``{"fp32": path, "int8": path or None}``.

    Raises
    ------
    robustdistiller.runs.write_errors.WriteFailedError
        A file cannot be written (a full disk): the message names it, the device and the free space.
    """
    mode = int8_mode(int8)
    with reporting_write_errors(folder):
        os.makedirs(folder, exist_ok=True)
    with reporting_write_errors(os.path.join(folder, FP32_FILE)):  # a full disk names the file
        paths = {"fp32": export_fp32(student, os.path.join(folder, FP32_FILE), opset=opset), "int8": None}
    if mode is not None:
        quantize = quantize_static_int8 if mode == "all" else quantize_int8
        with reporting_write_errors(os.path.join(folder, INT8_FILE)):
            paths["int8"] = quantize(paths["fp32"], os.path.join(folder, INT8_FILE))
    logger.debug("ONNX export: %s", ", ".join(path for path in paths.values() if path))
    return paths


def _valid_layers(layers, frames):
    """``[B, L, F, D]`` numpy -> per item ``[L, F_i, D]`` valid frames."""
    return [layers[i, :, :n] for i, n in enumerate(frames)]


def reference_layers(student, batch):
    """The PyTorch student's layers in the ONNX layout, per item (valid frames), as numpy arrays.

    Returns
    -------
    dict
        ``projection`` ``[F_i, D]``, ``hidden_states`` ``[N + 1, F_i, D]``, ``predictions``
        ``[K, F_i, T]`` lists, and ``frames`` (valid frames per item).
    """
    with torch.no_grad():
        output = student.eval()(batch["wavs"], batch["wav_lens"])
    frames = output.frame_mask.sum(dim=1).tolist()
    hidden = torch.stack(output.hidden_states, dim=1).numpy()
    return {
        "projection": [output.projection[i, :n].numpy() for i, n in enumerate(frames)],
        "hidden_states": _valid_layers(hidden, frames),
        "predictions": _valid_layers(output.predictions.numpy(), frames),
        "frames": frames,
    }


def _run_session(path, batch):
    import onnxruntime  # optional dependency

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    outputs = session.run(
        None,
        {"waveform": batch["wavs"].numpy().astype(np.float32), "lengths": batch["lengths"].numpy().astype(np.int64)},
    )
    return dict(zip([output.name for output in session.get_outputs()], outputs))


def _quantization_of(path):
    """The ``quantization`` metadata entry of an ONNX file (how it was quantised), or None."""
    import onnx  # optional dependency

    entries = {entry.key: entry.value for entry in onnx.load(path, load_external_data=False).metadata_props}
    return entries.get("quantization")


def _cosine(a, b):
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def layer_names(num_hidden_layers, num_targets):
    """Names of the compared layers: ``projection``, ``hidden_0`` ... ``hidden_N``, ``prediction_1`` ...

    Example
    -------
    >>> layer_names(2, 1)
    ['projection', 'hidden_0', 'hidden_1', 'hidden_2', 'prediction_1']
    """
    return (
        ["projection"]
        + [f"hidden_{i}" for i in range(num_hidden_layers + 1)]
        + [f"prediction_{k + 1}" for k in range(num_targets)]
    )


def _per_layer(outputs, frames):
    """Per layer name: the valid frames of every item concatenated ``[sum F_i, D]``."""
    layers = {"projection": np.concatenate([outputs["projection"][i, :n] for i, n in enumerate(frames)])}
    for index in range(outputs["hidden_states"].shape[1]):
        layers[f"hidden_{index}"] = np.concatenate(
            [outputs["hidden_states"][i, index, :n] for i, n in enumerate(frames)]
        )
    predictions = outputs.get("predictions")
    for index in range(0 if predictions is None else predictions.shape[1]):
        layers[f"prediction_{index + 1}"] = np.concatenate(
            [outputs["predictions"][i, index, :n] for i, n in enumerate(frames)]
        )
    return layers


def verify_onnx(student, fp32_path, int8_path=None, batch=None, tolerance=PARITY_TOLERANCE):
    """Parity of the ONNX files with the PyTorch student on a padded batch (valid frames only).

    Arguments
    ---------
    student : DistillerStudent or DPWavLMEncoder
        The reference module (a :class:`~robustdistiller.models.student.StudentOutput` from relative lengths).
    fp32_path, int8_path : str
        The ONNX files (``int8_path`` optional).
    batch : dict, optional
        :func:`robustdistiller.export.verify.parity_batch` output (default: utterances of 1.0, 0.7, 0.45 s).
    tolerance : float
        Largest accepted absolute difference of the fp32 file.

    Returns
    -------
    dict
        ``fp32_max_abs_diff`` (over every output layer), ``fp32_per_layer`` (max abs diff by layer),
        ``frame_lengths_equal``, ``int8_cosine`` (by layer, when ``int8_path``), ``int8_min_cosine``,
        ``int8_quantization`` (how the int8 file was quantised: its ``quantization`` metadata),
        ``batch_seconds`` and ``tolerance``.

    Raises
    ------
    ValueError
        The fp32 file differs by more than ``tolerance`` or gives other frame lengths.
    """
    batch = parity_batch() if batch is None else batch
    student = student.eval()
    with torch.no_grad():
        output = student(batch["wavs"], batch["wav_lens"])
    frames = output.frame_mask.sum(dim=1).tolist()
    torch_outputs = {
        "projection": output.projection.numpy(),
        "hidden_states": torch.stack(output.hidden_states, dim=1).numpy(),
        "predictions": None if output.predictions is None else output.predictions.numpy(),
    }
    reference = _per_layer(torch_outputs, frames)
    fp32 = _run_session(fp32_path, batch)
    candidate = _per_layer(fp32, frames)
    per_layer = {name: float(np.abs(reference[name] - candidate[name]).max()) for name in reference}
    result = {
        "fp32_max_abs_diff": max(per_layer.values()),
        "fp32_per_layer": per_layer,
        "frame_lengths_equal": [int(n) for n in fp32["frame_lengths"]] == [int(n) for n in frames],
        "batch_seconds": [round(int(n) / SAMPLE_RATE, 3) for n in batch["lengths"]],
        "tolerance": tolerance,
    }
    if int8_path is not None:
        int8 = _per_layer(_run_session(int8_path, batch), frames)
        result["int8_cosine"] = {name: _cosine(candidate[name], int8[name]) for name in candidate}
        result["int8_min_cosine"] = min(result["int8_cosine"].values())
        result["int8_quantization"] = _quantization_of(int8_path)
    if not result["frame_lengths_equal"] or result["fp32_max_abs_diff"] > tolerance:
        raise ValueError(
            f"The ONNX file {fp32_path} differs from the PyTorch student by {result['fp32_max_abs_diff']:.3g} "
            f"(tolerance {tolerance}) or in frame lengths ({fp32['frame_lengths'].tolist()} vs {frames})"
        )
    return result


def format_onnx_parity(result):
    """Markdown lines of a :func:`verify_onnx` result (for the model card and the command line)."""
    lines = [
        f"ONNX fp32 vs PyTorch (padded batch of {', '.join(f'{s:g}' for s in result['batch_seconds'])} s, "
        f"valid frames): max abs diff {result['fp32_max_abs_diff']:.2e} (tolerance {result['tolerance']:g}).",
    ]
    if "int8_cosine" in result:
        lines.append("")
        lines.append("| layer | int8 vs fp32 cosine similarity |")
        lines.append("|---|---|")
        lines += [f"| {name} | {value:.4f} |" for name, value in result["int8_cosine"].items()]
    return "\n".join(lines)


__all__ = [
    "CNN_RECEPTIVE_FIELD",
    "OnnxEncoderModule",
    "UntraceableStudentError",
    "export_onnx",
    "export_fp32",
    "trace_to_onnx",
    "quantize_int8",
    "verify_onnx",
    "format_onnx_parity",
    "layer_names",
    "reference_layers",
]
