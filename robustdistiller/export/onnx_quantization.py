"""int8 copies of an exported encoder: static QDQ quantisation of the whole graph, or dynamic of the MatMuls.

Two modes (:data:`INT8_MODES`), chosen with ``--int8 all|matmul`` of ``python -m robustdistiller.export``; both
write ``onnx/encoder_int8.onnx`` and record the mode in its ``quantization`` metadata entry:

* ``all`` (the default): :func:`quantize_static_int8`, ONNX Runtime's static quantisation
  (``onnxruntime.quantization.quantize_static``) in the QDQ format (QuantizeLinear/DequantizeLinear pairs around
  every ``Conv``, ``MatMul`` and ``Gemm``, which ONNX Runtime's CPU provider fuses into int8 kernels), weights int8
  per output channel, activations uint8 with ranges calibrated (min/max) on seeded speech-like audio
  (:func:`speech_calibration_batches`). The CNN on raw audio, most of the student's compute, then runs in int8
  too, except its first layer (one input channel, under 2 % of the CNN's multiply-adds) and that layer's
  normalisation, kept in fp32 for accuracy: on the full-size student (2 threads, 4 x 4 s) about 2-5x faster than
  the fp32 file and a quarter of its size (26.0 of 103.1 MB), with a lowest per-layer cosine similarity to fp32 of
  0.997 on speech-like audio (0.993 with the first layer in int8 too).
* ``matmul``: :func:`robustdistiller.export.onnx.quantize_int8`, dynamic quantisation of the ``MatMul`` and
  ``Gemm`` nodes only (activations quantised at run time, no calibration; the CNN stays fp32): half the fp32 file,
  15-25 % faster, cosine >= 0.998.

Static quantisation fixes the activation ranges at export: audio far louder or quieter than the calibration
(peak amplitude about 0.1-0.2 here; our students normalise each utterance in the first CNN layer's GroupNorm,
which makes the later ranges level-independent) is the case where ``matmul`` is the safer choice.
"""

import logging
import os
import tempfile

import numpy as np

from robustdistiller.export.verify import parity_batch

logger = logging.getLogger(__name__)

INT8_MODES = ("all", "matmul")
STATIC_OP_TYPES = ("Conv", "MatMul", "Gemm")
# calibration: batches of two utterances (the longer sets the padded length, the other exercises the padding)
CALIBRATION_SECONDS = (2.0, 1.3)
CALIBRATION_BATCHES = 6


class DropMessage(logging.Filter):
    """Drops log records whose message contains any of ``texts`` (ONNX Runtime's quantiser logs through root).

    Example
    -------
    >>> record = logging.LogRecord("x", logging.INFO, "", 0, "Quantization parameters for tensor a", None, None)
    >>> DropMessage("Quantization parameters").filter(record)
    False
    """

    def __init__(self, *texts):
        super().__init__()
        self.texts = texts

    def filter(self, record):
        message = record.getMessage()
        return not any(text in message for text in self.texts)


def copy_metadata(source_path, target_path, quantization):
    """Copies the ``metadata_props`` of ``source_path`` into ``target_path`` and records ``quantization`` there."""
    import onnx  # optional dependency

    source, model = onnx.load(source_path), onnx.load(target_path)
    present = {entry.key for entry in model.metadata_props}
    for entry in source.metadata_props:
        if entry.key not in present and entry.key != "quantization":
            model.metadata_props.add().CopyFrom(entry)
    model.metadata_props.add().CopyFrom(onnx.StringStringEntryProto(key="quantization", value=quantization))
    onnx.save(model, target_path)
    return target_path


def int8_mode(value):
    """The quantisation mode of ``value``: ``True`` means ``"all"``; ``False``/``None`` mean no int8 file.

    Example
    -------
    >>> int8_mode(True), int8_mode("matmul"), int8_mode(False)
    ('all', 'matmul', None)
    >>> int8_mode("conv")
    Traceback (most recent call last):
    ValueError: int8 must be one of ('all', 'matmul') (or True for 'all'); got 'conv'
    """
    if value is None or value is False:
        return None
    if value is True:
        return "all"
    if value not in INT8_MODES:
        raise ValueError(f"int8 must be one of {INT8_MODES} (or True for 'all'); got {value!r}")
    return value


def speech_calibration_batches(num_batches=CALIBRATION_BATCHES, seconds=CALIBRATION_SECONDS, seed=0):
    """Seeded padded batches of speech-like audio (:func:`robustdistiller.export.verify.parity_batch`) as ONNX feeds.

    Each batch has another seed (other pitches and noise) and another peak level (0.5x to 2x), so that the
    calibrated ranges cover quiet and loud recordings.

    Returns
    -------
    list of dict
        ``{"waveform": float32 [B, T], "lengths": int64 [B]}``.

    Example
    -------
    >>> feeds = speech_calibration_batches(num_batches=2, seconds=(0.5, 0.3))
    >>> [feed["waveform"].shape for feed in feeds], feeds[0]["lengths"].tolist()
    ([(2, 8000), (2, 8000)], [8000, 4800])
    """
    levels = np.geomspace(0.5, 2.0, num=max(num_batches, 2))
    feeds = []
    for index in range(num_batches):
        batch = parity_batch(seconds=seconds, seed=seed + index)
        feeds.append(
            {
                "waveform": (batch["wavs"].numpy() * levels[index % len(levels)]).astype(np.float32),
                "lengths": batch["lengths"].numpy().astype(np.int64),
            }
        )
    return feeds


def _calibration_reader(feeds):
    from onnxruntime.quantization import CalibrationDataReader  # optional dependency

    class FeedReader(CalibrationDataReader):
        """Hands ``feeds`` to the calibrator one by one."""

        def __init__(self):
            self.remaining = iter(feeds)

        def get_next(self):
            return next(self.remaining, None)

    return FeedReader()


def first_conv_nodes(model):
    """Names of the first ``Conv`` node on the waveform and of the nodes up to the next ``Conv`` (its normalisation).

    Example
    -------
    >>> import onnx
    >>> from onnx import helper
    >>> nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="conv0"),
    ...          helper.make_node("Relu", ["a"], ["b"], name="act0"),
    ...          helper.make_node("Conv", ["b", "w1"], ["c"], name="conv1")]
    >>> graph = helper.make_graph(nodes, "g", [], [])
    >>> first_conv_nodes(helper.make_model(graph))
    ['conv0', 'act0']
    """
    names, started = [], False
    for node in model.graph.node:  # topologically sorted (the exporter writes them so)
        if node.op_type == "Conv":
            if started:
                break
            started = True
        if started:
            names.append(node.name)
    return names


def quantize_static_int8(fp32_path, int8_path, feeds=None, exclude_first_conv=True):
    """Static int8 QDQ copy of an ONNX encoder (see the module docstring); the fp32 file's metadata is kept.

    Arguments
    ---------
    fp32_path, int8_path : str
        The source and the written file.
    feeds : list of dict, optional
        Calibration inputs (default :func:`speech_calibration_batches`).
    exclude_first_conv : bool
        Keep the first CNN layer (one input channel: under 2 % of the CNN's multiply-adds) and its normalisation
        in fp32: on the full-size student the lowest per-layer cosine to fp32 goes from 0.993 to 0.997 at the
        same speed (the default).

    Returns
    -------
    str
        ``int8_path``.
    """
    import onnx  # optional dependency
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static  # optional dependency
    from onnxruntime.quantization.shape_inference import quant_pre_process  # optional dependency

    feeds = speech_calibration_batches() if feeds is None else feeds
    root = logging.getLogger()
    hint = DropMessage("pre-processing before quantization", "Quantization parameters", "Please consider")
    root.addFilter(hint)
    try:
        with tempfile.TemporaryDirectory(prefix="onnx_quantization_") as scratch:
            prepared = os.path.join(scratch, "prepared.onnx")
            # ONNX Runtime's recommended pre-processing (graph optimisation, shape inference); the symbolic
            # shape inference is skipped: ONNX's own inference covers this graph
            quant_pre_process(fp32_path, prepared, skip_symbolic_shape=True)
            excluded = first_conv_nodes(onnx.load(prepared)) if exclude_first_conv else []
            quantize_static(
                prepared,
                int8_path,
                _calibration_reader(feeds),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=list(STATIC_OP_TYPES),
                nodes_to_exclude=excluded,
            )
    finally:
        root.removeFilter(hint)
    description = "static int8 QDQ (Conv, MatMul, Gemm" + (", first Conv fp32)" if exclude_first_conv else ")")
    copy_metadata(fp32_path, int8_path, description)
    return int8_path


__all__ = [
    "DropMessage",
    "copy_metadata",
    "INT8_MODES",
    "first_conv_nodes",
    "int8_mode",
    "quantize_static_int8",
    "speech_calibration_batches",
]
