"""Running an exported student with ONNX Runtime, without torch: numpy, onnxruntime, soundfile (and scipy).

This module imports nothing from torch or the rest of :mod:`robustdistiller` (it can be copied next to
an ``encoder.onnx``). :class:`OnnxEncoder` has :meth:`~OnnxEncoder.encode_batch` and
:meth:`~OnnxEncoder.encode_file` like :class:`robustdistiller.inference.interface.EncoderInterface` and returns
the same fields as numpy arrays::

    from robustdistiller.inference.onnx_runtime import OnnxEncoder

    encoder = OnnxEncoder("exported_student")        # the export folder: its onnx/encoder.onnx (fp32)
    encoder = OnnxEncoder("exported_student", precision="int8")  # its onnx/encoder_int8.onnx
    encoder = OnnxEncoder("exported_student/onnx/encoder_int8.onnx")  # or a file
    out = encoder.encode_file("utterance.flac")      # any sample rate; channels are averaged
    out.hidden_states.shape                          # [1, N + 1, frames, D]
    out.predictions.shape                            # [1, K, frames, T]
    out.frame_mask                                   # [1, frames] bool

The rules are the interface's: ``wavs`` ``[T]``, ``[B, T]`` or ``[B, T, C]`` (channels averaged),
SpeechBrain relative lengths, audio at another rate resampled to 16 kHz (``scipy.signal.resample_poly``,
a polyphase low-pass resampler), and a batch in which every item is shorter than the CNN's receptive
field (400 samples, 25 ms) refused with ``ValueError`` (a shorter item next to longer ones gets zero
valid frames).

A folder is resolved by :func:`resolve_onnx_file` (also used by the ``onnx`` upstream kind of the downstream
recipes): ``<folder>/onnx/<file>``, else ``<folder>/<file>`` (a copied-out ``onnx/`` folder), with ``<file>``
:data:`FP32_FILE` or :data:`INT8_FILE`; a missing file is named with what the folder does hold, and a file
ONNX Runtime cannot parse (a truncated copy) is named in a ``ValueError``.
"""

import json
import logging
import os
from fractions import Fraction
from typing import NamedTuple, Optional

import numpy as np
import soundfile

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# The files of an export (robustdistiller.export.onnx writes them, robustdistiller.export.layout lists them).
ONNX_FOLDER = "onnx"
FP32_FILE = "encoder.onnx"
INT8_FILE = "encoder_int8.onnx"
PRECISIONS = {"fp32": FP32_FILE, "int8": INT8_FILE}


class OnnxEncodedBatch(NamedTuple):
    """What :meth:`OnnxEncoder.encode_batch` returns (numpy arrays; the fields of ``EncodedBatch``).

    Attributes
    ----------
    hidden_states : numpy.ndarray
        ``[B, N + 1, F, D]`` float32: encoder input, then each transformer layer.
    predictions : numpy.ndarray or None
        ``[B, K, F, T]``: the prediction heads' estimates of the teacher layers.
    frame_mask : numpy.ndarray
        ``[B, F]`` bool, True on valid frames.
    projection : numpy.ndarray
        ``[B, F, D]`` the feature projection's output (s3prl's state 0 of a distiller).
    """

    hidden_states: np.ndarray
    predictions: Optional[np.ndarray]
    frame_mask: np.ndarray
    projection: np.ndarray


def resample(wavs, orig_rate, new_rate=SAMPLE_RATE):
    """Resamples along the last axis with a polyphase filter (``scipy.signal.resample_poly``).

    Example
    -------
    >>> resample(np.zeros((2, 44100), dtype=np.float32), 44100).shape
    (2, 16000)
    """
    orig_rate, new_rate = int(orig_rate), int(new_rate)
    if orig_rate == new_rate:
        return wavs
    from scipy.signal import resample_poly  # optional dependency (only for audio at another rate)

    ratio = Fraction(new_rate, orig_rate)
    return resample_poly(wavs, ratio.numerator, ratio.denominator, axis=-1).astype(np.float32)


def too_short_message(num_samples, minimum, what="The utterance"):
    """The interface's message for audio shorter than the CNN's receptive field."""
    khz = SAMPLE_RATE // 1000
    return (
        f"{what} has {int(num_samples)} samples ({1000 * num_samples / SAMPLE_RATE:.1f} ms at {khz} kHz), "
        f"fewer than the {minimum} samples ({1000 * minimum / SAMPLE_RATE:.1f} ms) the CNN needs for one "
        f"feature frame: pass audio of at least {1000 * minimum / SAMPLE_RATE:.1f} ms"
    )


def _onnx_files_in(folder):
    """The ``.onnx`` files of ``folder`` and of its ``onnx/`` subfolder, relative to ``folder``."""
    found = []
    for sub in ("", ONNX_FOLDER):
        directory = os.path.join(folder, sub)
        if os.path.isdir(directory):
            names = sorted(name for name in os.listdir(directory) if name.endswith(".onnx"))
            found += [os.path.join(sub, name) if sub else name for name in names]
    return found


def resolve_onnx_file(source, precision=None):
    """The ONNX file of ``source``: the file itself, or an export folder's fp32 or int8 encoder.

    Arguments
    ---------
    source : str
        An ``.onnx`` file, an export folder (``onnx/encoder.onnx``, ``onnx/encoder_int8.onnx``) or its
        ``onnx/`` subfolder.
    precision : str, optional
        ``"fp32"`` (:data:`FP32_FILE`, the default for a folder) or ``"int8"`` (:data:`INT8_FILE`);
        a file is returned as it is (:class:`OnnxEncoder` checks its precision).

    Returns
    -------
    str

    Raises
    ------
    FileNotFoundError
        ``source`` does not exist, or the folder has no such file (the message names the ONNX files it holds).
    ValueError
        An unknown ``precision``.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(folder, "onnx"))
    >>> open(os.path.join(folder, "onnx", "encoder.onnx"), "wb").close()
    >>> os.path.relpath(resolve_onnx_file(folder), folder)
    'onnx/encoder.onnx'
    >>> resolve_onnx_file(folder, precision="int8")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    FileNotFoundError: '...' holds onnx/encoder.onnx but no encoder_int8.onnx: export with --int8 ...
    """
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}; got {precision!r}")
    path = os.path.expanduser(os.fspath(source))
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"ONNX model '{source}' does not exist (pass an .onnx file or an export folder)")
    name = PRECISIONS[precision or "fp32"]
    for candidate in (os.path.join(path, ONNX_FOLDER, name), os.path.join(path, name)):
        if os.path.isfile(candidate):
            return candidate
    found = _onnx_files_in(path)
    if not found:
        raise FileNotFoundError(
            f"'{source}' holds no ONNX encoder (looked for {ONNX_FOLDER}/{name} and {name}): export one with "
            f"`python -m robustdistiller.export CHECKPOINT OUTPUT --onnx`{' --int8' if name == INT8_FILE else ''}"
        )
    advice = "export with --int8 (`python -m robustdistiller.export CHECKPOINT OUTPUT --onnx --int8`)"
    if name == FP32_FILE:
        advice = "export with --onnx, or pass one of these files"
    raise FileNotFoundError(f"'{source}' holds {', '.join(found)} but no {name}: {advice}")


def _load_session(path, options):
    """An ONNX Runtime CPU session of ``path``; a file it cannot parse is named in a ``ValueError``."""
    import onnxruntime  # optional dependency

    try:
        return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own classes (InvalidProtobuf, Fail, ...)
        if type(error).__module__.startswith("onnxruntime"):
            raise ValueError(
                f"'{path}' ({os.path.getsize(path):,} bytes) is not a valid ONNX model (truncated or not an "
                f"ONNX file?): export it again or copy it in full. ONNX Runtime: {error}"
            ) from error
        raise


class OnnxEncoder:
    """An exported student (``encoder.onnx`` or ``encoder_int8.onnx``) in an ONNX Runtime CPU session.

    Arguments
    ---------
    path : str
        The ONNX file written by :mod:`robustdistiller.export.onnx`, or an export folder (or its ``onnx/``
        subfolder): its fp32 file, or its int8 file with ``precision="int8"`` (:func:`resolve_onnx_file`).
    num_threads : int, optional
        ONNX Runtime intra-op threads (default: its own choice).
    precision : str, optional
        ``"fp32"`` or ``"int8"``: which file of a folder (default fp32); for a file, the precision it must have.

    Raises
    ------
    FileNotFoundError
        No such file, or a folder without the asked file (the message names the ONNX files it holds).
    ValueError
        A file that is not a valid ONNX model (named), not an export of :mod:`robustdistiller.export.onnx`,
        or not of the asked ``precision``.

    Attributes
    ----------
    path : str
        The ONNX file loaded.
    quantized : bool
        Whether it is the int8 file.
    model_type : str
        ``"student"`` (a DistilHuBERT-layout student with prediction heads) or ``"dpwavlm"`` (no heads:
        ``predictions`` is None; :mod:`robustdistiller.export.dpwavlm_onnx`).
    quantization : str or None
        How it was quantised (its ``quantization`` metadata): ``"static int8 QDQ (Conv, MatMul, Gemm)"`` for the
        whole-student file of ``--int8 all``, ``"dynamic int8 (MatMul, Gemm)"`` for ``--int8 matmul``; None for fp32.
    """

    def __init__(self, path, num_threads=None, precision=None):
        import onnxruntime  # optional dependency

        options = onnxruntime.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
            options.inter_op_num_threads = 1
        path = resolve_onnx_file(path, precision)
        self.path = path
        self.session = _load_session(path, options)
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("robustdistiller") != "1":
            raise ValueError(f"{path} is not an encoder exported by robustdistiller.export.onnx (no metadata)")
        self.metadata = meta
        self.sample_rate = int(meta.get("sample_rate", SAMPLE_RATE))
        self.receptive_field = int(meta.get("receptive_field", 400))
        self.per_utterance_norm = json.loads(meta.get("per_utterance_norm", "false"))
        self.target_layers = json.loads(meta.get("target_layers", "[]"))
        self.num_layers = int(meta["num_hidden_layers"])
        self.hidden_size = int(meta["hidden_size"])
        self.target_size = int(meta.get("target_size", self.hidden_size))
        self.quantized = "quantization" in meta
        self.quantization = meta.get("quantization")
        self.model_type = meta.get("model_type", "student")
        self.has_predictions = "predictions" in {output.name for output in self.session.get_outputs()}
        if precision is not None and (precision == "int8") != self.quantized:
            raise ValueError(
                f"'{path}' is the {'int8' if self.quantized else 'fp32'} encoder, not {precision}: pass the export "
                f"folder with precision={precision!r}, or its {PRECISIONS[precision]}"
            )

    def encode_batch(self, wavs, wav_lens=None, sample_rate=None):
        """Encodes a (padded) batch.

        Arguments
        ---------
        wavs : array-like
            ``[T]``, ``[B, T]`` or ``[B, T, C]`` (C channels are averaged).
        wav_lens : array-like, optional
            ``[B]`` relative lengths in (0, 1]; None: all full length.
        sample_rate : int, optional
            Rate of ``wavs`` (resampled to 16 kHz when different).

        Returns
        -------
        OnnxEncodedBatch

        Raises
        ------
        ValueError
            A bad shape, or every item shorter than the CNN's receptive field.
        """
        wavs = np.asarray(wavs, dtype=np.float32)
        if wavs.ndim == 1:
            wavs = wavs[None]
        elif wavs.ndim == 3:
            wavs = wavs.mean(axis=-1)
        elif wavs.ndim != 2:
            raise ValueError(f"wavs must be [T], [B, T] or [B, T, C]; got shape {wavs.shape}")
        if sample_rate is not None and int(sample_rate) != self.sample_rate:
            wavs = resample(wavs, sample_rate, self.sample_rate)
        num_samples = wavs.shape[1]
        if wav_lens is None:
            lengths = np.full(wavs.shape[0], num_samples, dtype=np.int64)
        else:
            relative = np.asarray(wav_lens, dtype=np.float32).reshape(-1)
            lengths = np.clip(np.round(relative * num_samples), 1, num_samples).astype(np.int64)
        longest = int(lengths.max()) if lengths.size else 0
        if longest < self.receptive_field:
            what = (
                "The utterance"
                if wavs.shape[0] <= 1
                else (f"Every item of the batch of {wavs.shape[0]} is too short: the longest")
            )
            raise ValueError(too_short_message(longest, self.receptive_field, what))
        names = ["projection", "hidden_states", "predictions", "frame_lengths"]
        if not self.has_predictions:  # a model without prediction heads (a DPWavLM)
            names.remove("predictions")
        outputs = dict(
            zip(names, self.session.run(names, {"waveform": np.ascontiguousarray(wavs), "lengths": lengths}))
        )
        projection, hidden_states, frame_lengths = (
            outputs["projection"],
            outputs["hidden_states"],
            outputs["frame_lengths"],
        )
        predictions = outputs.get("predictions")
        frame_mask = np.arange(hidden_states.shape[2])[None, :] < frame_lengths[:, None]
        return OnnxEncodedBatch(hidden_states, predictions, frame_mask, projection)

    def encode_file(self, path):
        """Encodes one audio file (any rate; channels averaged); a batch of one.

        Raises
        ------
        ValueError
            The file is shorter than the CNN's receptive field (the message names the file).
        """
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)  # [T, C]
        audio = resample(audio.mean(axis=1), rate, self.sample_rate)
        if audio.shape[0] < self.receptive_field:
            raise ValueError(too_short_message(audio.shape[0], self.receptive_field, f"Audio file '{path}'"))
        return self.encode_batch(audio[None])

    __call__ = encode_batch
