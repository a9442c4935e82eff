"""Exporting a compact DPWavLM (a pruned DPHuBERT-format WavLM) to ONNX, fp32 and int8, and checking it.

The graph has the inputs and outputs of the students' ONNX files (:mod:`robustdistiller.export.onnx`) less
``predictions`` (a DPWavLM has no prediction heads), so :class:`~robustdistiller.inference.onnx_runtime.OnnxEncoder`
and the ``onnx`` upstream kind of the downstream recipes run it as they run a student:

* ``projection`` ``[B, F, D]``: DPHuBERT's layer 0 (the feature projection's output before the positional
  convolution, padded frames zeroed);
* ``hidden_states`` ``[B, N + 1, F, D]``: the encoder input (after the positional convolution and the encoder
  LayerNorm), then every layer's output, as :class:`~robustdistiller.dpwavlm.encoder.DPWavLMEncoder` gives them;
* ``frame_lengths`` ``[B]``.

Whatever the pruning left: uneven heads and FFN widths per layer, attention-free layers (``attention`` None, or 0
heads: a bias-only branch), FFN-free layers, pruned CNN channels (the fixed per-channel scale ``dummy_weight``
included), WavLM's relative position bias (computed by the first layer from the frame count, a traced ``arange``)
and its gates. The module is traced in eval mode (deterministic gates of a not yet pruned model become
constants). As for the students, the first CNN layer's GroupNorm is computed over each item's valid samples
(``per_utterance_norm``, :class:`DPWavLMEncoder`'s default) with the traceable masked GroupNorm of
:mod:`robustdistiller.export.onnx`, and ``normalize_waveform`` (a HuBERT-Large-style layer norm of the waveform)
over each item's valid samples too.

The parity rule is the students': :func:`export_dpwavlm_onnx` refuses a file whose valid frames differ from the
PyTorch model by more than :data:`~robustdistiller.export.onnx.PARITY_TOLERANCE` (``1e-4``).
"""

import copy
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustdistiller.dpwavlm.encoder import DPWavLMEncoder, receptive_field
from robustdistiller.export.onnx import (
    OPSET,
    SAMPLE_RATE,
    UntraceableStudentError,
    _masked_group_norm,
    quantize_int8,
    trace_to_onnx,
    verify_onnx,
)
from robustdistiller.export.onnx_quantization import int8_mode, quantize_static_int8
from robustdistiller.inference.onnx_runtime import FP32_FILE, INT8_FILE
from robustdistiller.runs.write_errors import reporting_write_errors

OUTPUT_NAMES = ("projection", "hidden_states", "frame_lengths")


def _masked_layer_norm(wavs, lengths):
    """Layer norm of each item's first ``lengths`` samples (no affine), padded samples zero (traceable).

    Example
    -------
    >>> x = torch.randn(2, 50)
    >>> out = _masked_layer_norm(x, torch.tensor([50, 30]))
    >>> torch.allclose(out[1, :30], F.layer_norm(x[1, :30], (30,)), atol=1e-5), float(out[1, 30:].abs().max())
    (True, 0.0)
    """
    mask = (torch.arange(wavs.shape[1], device=wavs.device)[None, :] < lengths[:, None]).to(wavs.dtype)
    count = mask.sum(dim=1, keepdim=True).clamp(min=1)
    mean = (wavs * mask).sum(dim=1, keepdim=True) / count
    variance = (((wavs - mean) * mask) ** 2).sum(dim=1, keepdim=True) / count
    return (wavs - mean) * torch.rsqrt(variance + 1e-5) * mask


class OnnxDPWavLMModule(nn.Module):
    """A DPWavLM's inference computation in the layout of its ONNX file (module docstring).

    ``forward(waveform [B, T], lengths [B] int64) -> (projection, hidden_states, frame_lengths)``; equal to
    :class:`~robustdistiller.dpwavlm.encoder.DPWavLMEncoder` on valid frames.

    Arguments
    ---------
    encoder : DPWavLMEncoder or DPWavLM
        Copied and set to eval mode; a bare ``DPWavLM`` is wrapped with ``per_utterance_norm=True``.
    """

    def __init__(self, encoder):
        super().__init__()
        if not isinstance(encoder, DPWavLMEncoder):
            encoder = DPWavLMEncoder(encoder)
        encoder = copy.deepcopy(encoder).eval()
        self.model = encoder.model
        self.per_utterance_norm = encoder.per_utterance_norm
        layers = self.model.config["extractor_conv_layer_config"]
        self.kernels = [int(kernel) for _, kernel, _ in layers]
        self.strides = [int(stride) for _, _, stride in layers]

    def _frames(self, lengths):
        for kernel, stride in zip(self.kernels, self.strides):
            lengths = (torch.div(lengths - kernel, stride, rounding_mode="floor") + 1).clamp(min=0)
        return lengths

    def forward(self, waveform, lengths):
        """See the class docstring."""
        sample_index = torch.arange(waveform.shape[1], device=waveform.device)
        lengths = torch.minimum(lengths.to(torch.int64).clamp(min=1), sample_index[-1:] + 1)
        waveform = waveform * (sample_index[None, :] < lengths[:, None]).to(waveform.dtype)
        if self.model.config["normalize_waveform"]:
            waveform = _masked_layer_norm(waveform, lengths)
        extractor = self.model.feature_extractor
        features = waveform[:, None]
        for index, block in enumerate(extractor.conv_layers):
            features = block.conv(features)
            norm = block.layer_norm
            if index == 0 and self.per_utterance_norm and isinstance(norm, nn.GroupNorm):
                steps = (torch.div(lengths - self.kernels[0], self.strides[0], rounding_mode="floor") + 1).clamp(min=1)
                features = _masked_group_norm(norm, features, steps)
            elif norm is not None:
                features = norm(features)
            features = F.gelu(features)
            if block.hard_concrete is not None:
                features = features * block.hard_concrete().unsqueeze(-1)
        features = features.transpose(1, 2) * extractor.dummy_weight
        frame_index = torch.arange(features.shape[1], device=waveform.device)
        frame_lengths = torch.minimum(self._frames(lengths), frame_index[-1:] + 1)
        states = self.model.encoder.extract_features(features, frame_lengths)
        projection = states[0]
        transformer = self.model.encoder.transformer
        encoder_input = transformer.layer_norm(projection + transformer.pos_conv_embed(projection))
        return projection, torch.stack([encoder_input, *states[1:]], dim=1), frame_lengths


def dpwavlm_onnx_metadata(encoder):
    """What the ONNX file records of the DPWavLM (``metadata_props``: plain strings)."""
    config = encoder.model.config
    return {
        "robustdistiller": "1",
        "model_type": "dpwavlm",
        "sample_rate": str(SAMPLE_RATE),
        "per_utterance_norm": json.dumps(bool(encoder.per_utterance_norm)),
        "target_layers": "[]",
        "num_hidden_layers": str(config["encoder_num_layers"]),
        "hidden_size": str(config["encoder_embed_dim"]),
        "target_size": str(config["encoder_embed_dim"]),
        "receptive_field": str(receptive_field(config["extractor_conv_layer_config"])),
        "inputs": json.dumps(["waveform", "lengths"]),
        "outputs": json.dumps(list(OUTPUT_NAMES)),
    }


def export_dpwavlm_fp32(encoder, path, opset=OPSET):
    """Writes the fp32 ONNX graph of a DPWavLM (``DPWavLMEncoder`` or ``DPWavLM``) to ``path``.

    Raises
    ------
    UntraceableStudentError
        The model cannot be traced (the message says why).
    """
    if not isinstance(encoder, DPWavLMEncoder):
        encoder = DPWavLMEncoder(encoder)
    if any(name.endswith("log_alpha") for name, _ in encoder.named_parameters()) and encoder.training:
        raise UntraceableStudentError("A DPWavLM with pruning gates must be in eval mode (deterministic gates)")
    module = OnnxDPWavLMModule(encoder).eval()
    return trace_to_onnx(module, path, dpwavlm_onnx_metadata(encoder), OUTPUT_NAMES, opset=opset)


def export_dpwavlm_onnx(encoder, folder, int8=False, opset=OPSET, batch=None):
    """Writes ``folder/encoder.onnx`` (and with ``int8`` ``folder/encoder_int8.onnx``) and checks them.

    Arguments
    ---------
    encoder : DPWavLMEncoder or DPWavLM
        The compact model (a bare ``DPWavLM`` is wrapped with ``per_utterance_norm=True``).
    folder : str
        Created if missing.
    int8 : bool or str
        ``"all"`` (or True): static int8 of the whole graph; ``"matmul"``: dynamic int8 of the matrix products
        (:mod:`robustdistiller.export.onnx_quantization`); False: fp32 only.
    opset : int
        ONNX opset.
    batch : dict, optional
        The parity batch (:func:`robustdistiller.export.verify.parity_batch`; default 1.0, 0.7, 0.45 s).

    Returns
    -------
    dict
        ``{"fp32": path, "int8": path or None, "parity": verify_onnx(...) result}``.

    Raises
    ------
    ValueError
        The fp32 file differs from PyTorch by more than 1e-4 on valid frames, or in frame lengths
        (:func:`~robustdistiller.export.onnx.verify_onnx`), or an unknown ``int8`` mode.
    """
    if not isinstance(encoder, DPWavLMEncoder):
        encoder = DPWavLMEncoder(encoder)
    encoder = encoder.eval()
    mode = int8_mode(int8)
    with reporting_write_errors(folder):
        os.makedirs(folder, exist_ok=True)
    fp32_path = os.path.join(folder, FP32_FILE)
    with reporting_write_errors(fp32_path):
        export_dpwavlm_fp32(encoder, fp32_path, opset=opset)
    int8_path = None
    if mode is not None:
        int8_path = os.path.join(folder, INT8_FILE)
        quantize = quantize_static_int8 if mode == "all" else quantize_int8
        with reporting_write_errors(int8_path):
            quantize(fp32_path, int8_path)
    parity = verify_onnx(encoder, fp32_path, int8_path, batch=batch)
    return {"fp32": fp32_path, "int8": int8_path, "parity": parity}


__all__ = [
    "OnnxDPWavLMModule",
    "dpwavlm_onnx_metadata",
    "export_dpwavlm_fp32",
    "export_dpwavlm_onnx",
]
