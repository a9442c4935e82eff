"""Using a distilled student for inference: the SpeechBrain pretrained interface and its helpers.

This module is **standalone**: it imports only torch, torchaudio, transformers and SpeechBrain, never
the rest of :mod:`robustdistiller`, because :mod:`robustdistiller.export` copies it verbatim into every
exported model folder as ``custom_interface.py``. A user without this package then loads the folder
with ``speechbrain.inference.interfaces.foreign_class``; with the package installed,
:class:`EncoderInterface` ``.from_hparams`` loads the same folder. The training code imports the shared
pieces from here (one implementation of the padding rules for training and inference):

* :func:`lengths_to_mask`, :func:`absolute_lengths`: SpeechBrain relative lengths to masks;
* :func:`per_utterance_cnn_norm`: the first CNN layer's GroupNorm over each item's valid samples;
* :func:`ssl_hidden_states`: every hidden state of a Hugging Face WavLM / HuBERT / wav2vec 2.0 model
  for a padded batch, with the frame mask;
* :func:`predict_teacher_layers`: the student's prediction heads in the exported layout
  (``Linear`` + grouped ``Conv1d``, which only needs standard modules in ``hyperparams.yaml``);
* :class:`EncoderInterface`: ``encode_batch`` / ``encode_file`` (resampling, stereo down-mix);
* :func:`load_weights_naming_the_file`: the export's ``Pretrainer`` hook (strict loading; a truncated or
  foreign ``encoder.ckpt`` raises :class:`DamagedModelFileError` naming the file, with ``from_hparams``
  and ``foreign_class`` alike).

Audio shorter than the CNN's receptive field (:data:`CNN_RECEPTIVE_FIELD`: 400 samples, 25 ms at
16 kHz, for the wav2vec 2.0 / HuBERT / WavLM CNN) gives no feature frame. The rule, checked on the
lengths before the CNN runs (:func:`check_input_lengths`), is the same for training and inference:

* a single utterance that short, or a batch in which *every* item is that short: ``ValueError``
  naming the length and the minimum;
* a too-short item in a batch with at least one long enough item: that item gets **zero valid
  frames** (its ``frame_mask`` row is all False, its frame length 0). Its features are finite but
  meaningless (it still attends to its first frame, so no attention backend can turn a fully masked
  row into NaN), and the other items' outputs are those of the batch without it.
"""

import contextlib
import logging
import os
import re
import socket
import sys
import warnings
import zipfile
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio
from speechbrain.inference.interfaces import Pretrained
from transformers.utils import logging as transformers_logging

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


class ModelSourceError(ValueError):
    """A model source is neither a loadable local folder nor a reachable Hugging Face hub id."""


class DamagedModelFileError(ModelSourceError):
    """A file of a model folder cannot be read (truncated or damaged) or does not fit the model; names the file."""


INTERFACE_MODULE = "custom_interface"
"""The name of this module's copy in an exported folder (``custom_interface.py``): the export's
``hyperparams.yaml`` names :func:`load_weights_naming_the_file` through it (see
:meth:`EncoderInterface.from_hparams`)."""


def _shown_path(path):
    """The file a user has to look at: a savedir symlink resolved to the exported file it points to."""
    path = os.fspath(path)
    return os.path.realpath(path) if os.path.islink(path) else os.path.abspath(path)


def load_weights_naming_the_file(module, path):
    """SpeechBrain ``Pretrainer`` hook of an export: loads a ``torch.save`` state dict into ``module`` strictly.

    The export's ``hyperparams.yaml`` names it for every loadable (``custom_hooks``), so a truncated
    ``encoder.ckpt`` fails, with ``from_hparams`` and with ``foreign_class`` alike, with an error
    naming the file instead of torch's "failed finding central directory".

    Arguments
    ---------
    module : torch.nn.Module
        The module the folder's ``hyperparams.yaml`` built.
    path : str or pathlib.Path
        Its weights (in SpeechBrain's savedir, usually a link to the exported file).

    Raises
    ------
    DamagedModelFileError
        The file cannot be read (truncated, damaged, not a ``torch.save`` file) or its weights do not
        fit ``module`` (missing, unexpected or differently shaped parameters); the message names it.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "layer.ckpt")
    >>> torch.save(nn.Linear(2, 3).state_dict(), path)
    >>> load_weights_naming_the_file(nn.Linear(2, 3), path)
    >>> with open(path, "r+b") as fout:
    ...     _ = fout.truncate(100)
    >>> try:
    ...     load_weights_naming_the_file(nn.Linear(2, 3), path)
    ... except DamagedModelFileError as error:
    ...     print(str(error).startswith(f"'{path}' cannot be read (truncated or damaged"))
    True
    """
    shown = _shown_path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, pickle errors, EOFError... for a damaged file
        raise DamagedModelFileError(
            f"'{shown}' cannot be read (truncated or damaged: {type(error).__name__}: {error}); copy or "
            f"export the model again"
        ) from error
    if not isinstance(state, dict):
        raise DamagedModelFileError(f"'{shown}' holds a {type(state).__name__}, not a state dict of weights")
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise DamagedModelFileError(
            f"'{shown}' does not hold the weights of the model its hyperparams.yaml declares: {error}"
        ) from error


def torch_file_problem(path):
    """Why ``path`` is no complete ``torch.save`` file (a zip archive whose every member checks out), or None.

    Reads the whole file (CRC of every member): meant for diagnosing a failed load.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "t.ckpt")
    >>> torch.save({"w": torch.zeros(3)}, path)
    >>> torch_file_problem(path) is None
    True
    >>> with open(path, "r+b") as fout:
    ...     _ = fout.truncate(os.path.getsize(path) - 10)
    >>> torch_file_problem(path)
    'not a complete torch.save file (no zip directory at its end: truncated?)'
    """
    try:
        if not zipfile.is_zipfile(path):
            return "not a complete torch.save file (no zip directory at its end: truncated?)"
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as error:
        return f"unreadable ({type(error).__name__}: {error})"
    if bad_member is not None:
        return f"damaged (member {bad_member} fails its checksum)"
    return None


def damaged_weight_files(folder):
    """``{path: problem}`` of the ``*.ckpt`` files of a model folder that are no complete ``torch.save`` file.

    Example
    -------
    >>> import tempfile
    >>> damaged_weight_files(tempfile.mkdtemp())
    {}
    """
    problems = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith(".ckpt") and os.path.isfile(path):
            problem = torch_file_problem(path)
            if problem is not None:
                problems[_shown_path(path)] = problem
    return problems


@contextlib.contextmanager
def _importable_as_interface_module():
    """Makes ``import custom_interface`` give this module for the duration of a load.

    ``foreign_class`` puts the export's ``custom_interface.py`` on ``sys.path`` before reading
    ``hyperparams.yaml``; ``from_hparams`` with this package installed does not, so this module stands in
    (it is the same code). The previous ``custom_interface`` module, if any, is restored afterwards.
    """
    this_module = sys.modules.get(__name__)
    previous = sys.modules.get(INTERFACE_MODULE)
    if this_module is None or previous is this_module:
        yield
        return
    sys.modules[INTERFACE_MODULE] = this_module
    try:
        yield
    finally:
        if previous is None:
            sys.modules.pop(INTERFACE_MODULE, None)
        else:
            sys.modules[INTERFACE_MODULE] = previous


def hub_offline():
    """Whether Hugging Face hub access is disabled (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(flag.strip().upper() in {"1", "ON", "YES", "TRUE"} for flag in flags)


HUB_PROBE_TIMEOUT = 3.0
"""Seconds the one connectivity probe of :func:`hub_unavailable_reason` waits for the hub."""
_hub_probe_results = {}


def hub_unavailable_reason(timeout=HUB_PROBE_TIMEOUT):
    """Why the Hugging Face hub cannot be used now, or None when it can.

    ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set, or no TCP connection to the hub's host (``HF_ENDPOINT``,
    default ``huggingface.co``, port 443) within ``timeout`` seconds: one probe per process and host, so a
    machine without network fails at once with this reason instead of after the hub client's retries.

    Example
    -------
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):
    ...     hub_unavailable_reason()
    'the Hugging Face hub is disabled (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set)'
    """
    if hub_offline():
        return "the Hugging Face hub is disabled (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set)"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = re.sub(r"^[a-z]+://", "", endpoint).split("/")[0]
    name, _, port = host.partition(":")
    address = (name, int(port) if port else (80 if endpoint.startswith("http://") else 443))
    if address not in _hub_probe_results:
        try:
            socket.create_connection(address, timeout=timeout).close()
            _hub_probe_results[address] = None
        except OSError as error:
            _hub_probe_results[address] = (
                f"the Hugging Face hub ({address[0]}:{address[1]}) is not reachable ({type(error).__name__}: "
                f"{error}; no network?)"
            )
    return _hub_probe_results[address]


@contextlib.contextmanager
def transformers_progress_bars_off():
    """No ``Loading weights`` bars from ``transformers`` inside the block (restored after it).

    Example
    -------
    >>> with transformers_progress_bars_off():
    ...     transformers_logging.is_progress_bar_enabled()
    False
    """
    enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def looks_like_path(source):
    """True for strings meant as file-system paths rather than hub ids (``owner/name``).

    Example
    -------
    >>> looks_like_path("microsoft/wavlm-base-plus"), looks_like_path("./exported"), looks_like_path("/a/b")
    (False, True, True)
    """
    source = os.fspath(source)
    return (
        os.path.isabs(source)
        or source.startswith((".", "~"))
        or (os.sep != "/" and os.sep in source)
        or not _HUB_ID.match(source)
    )


def lengths_to_mask(lengths, max_length=None):
    """Boolean mask of valid positions from integer lengths.

    Arguments
    ---------
    lengths : torch.Tensor
        ``[B]`` integer lengths.
    max_length : int, optional
        ``L``; defaults to ``lengths.max()``.

    Returns
    -------
    torch.Tensor
        ``[B, L]`` bool, True where ``position < length``.

    Example
    -------
    >>> lengths_to_mask(torch.tensor([3, 1]), 4)
    tensor([[ True,  True,  True, False],
            [ True, False, False, False]])
    """
    lengths = torch.as_tensor(lengths)
    if max_length is None:
        max_length = int(lengths.max()) if lengths.numel() else 0
    positions = torch.arange(int(max_length), device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


def absolute_lengths(wav_lens, num_samples):
    """Converts SpeechBrain relative lengths to sample counts.

    Arguments
    ---------
    wav_lens : torch.Tensor or None
        ``[B]`` relative lengths in (0, 1]; None means every item is full length.
    num_samples : int
        Padded length ``T`` of the batch.

    Returns
    -------
    torch.Tensor or None
        ``[B]`` long, in ``[1, T]`` (None when ``wav_lens`` is None).

    Example
    -------
    >>> absolute_lengths(torch.tensor([1.0, 0.5]), 16000)
    tensor([16000,  8000])
    """
    if wav_lens is None:
        return None
    lengths = torch.round(wav_lens.float() * num_samples).long()
    return lengths.clamp(min=1, max=num_samples)


CNN_RECEPTIVE_FIELD = 400
"""Samples the wav2vec 2.0 / HuBERT / WavLM / DistilHuBERT CNN needs for one frame (25 ms at 16 kHz)."""

SAMPLE_RATE = 16000  # the models' sample rate, for the durations in messages


def cnn_receptive_field(config):
    """Fewest input samples for which a model's CNN gives one frame (its receptive field).

    Arguments
    ---------
    config : transformers.PretrainedConfig
        Any config with ``conv_kernel`` and ``conv_stride`` (WavLM, HuBERT, wav2vec 2.0, the student).

    Returns
    -------
    int

    Example
    -------
    >>> from transformers import HubertConfig
    >>> cnn_receptive_field(HubertConfig()) == CNN_RECEPTIVE_FIELD
    True
    """
    field = 1
    for kernel, stride in zip(reversed(list(config.conv_kernel)), reversed(list(config.conv_stride))):
        field = (field - 1) * int(stride) + int(kernel)
    return field


def too_short_message(num_samples, minimum, what="The utterance"):
    """The error text for audio shorter than the CNN's receptive field (names both lengths).

    Example
    -------
    >>> too_short_message(160, 400)
    'The utterance has 160 samples (10.0 ms at 16 kHz), fewer than the 400 samples (25.0 ms) the CNN needs for one feature frame: pass audio of at least 25.0 ms'
    """
    khz = SAMPLE_RATE // 1000
    return (
        f"{what} has {int(num_samples)} samples ({1000 * num_samples / SAMPLE_RATE:.1f} ms at {khz} kHz), "
        f"fewer than the {minimum} samples ({1000 * minimum / SAMPLE_RATE:.1f} ms) the CNN needs for one "
        f"feature frame: pass audio of at least {1000 * minimum / SAMPLE_RATE:.1f} ms"
    )


def check_input_lengths(sample_lengths, num_samples, minimum=CNN_RECEPTIVE_FIELD, batch_size=1):
    """Checks, before the CNN runs, that a batch has an item with at least one feature frame.

    Items shorter than ``minimum`` next to a long enough one are allowed: they get zero valid frames
    (see the module docstring). Only the lengths are read (host tensors in training, so no device
    synchronisation).

    Arguments
    ---------
    sample_lengths : torch.Tensor or None
        ``[B]`` valid samples per item (:func:`absolute_lengths`); None: every item has ``num_samples``.
    num_samples : int
        Padded length ``T`` of the batch.
    minimum : int
        The model's receptive field (:func:`cnn_receptive_field`).
    batch_size : int
        ``B``, for the message when ``sample_lengths`` is None.

    Raises
    ------
    ValueError
        If every item (a single utterance included) is shorter than ``minimum`` samples.

    Example
    -------
    >>> check_input_lengths(torch.tensor([16000, 80]), 16000)  # the 80-sample item gets no frame
    >>> check_input_lengths(None, 160)
    Traceback (most recent call last):
    ...
    ValueError: The utterance has 160 samples (10.0 ms at 16 kHz), fewer than the 400 samples (25.0 ms) the CNN needs for one feature frame: pass audio of at least 25.0 ms
    """
    longest = int(num_samples)
    if sample_lengths is not None and longest >= minimum:
        longest = min(longest, int(sample_lengths.max()))
    if longest >= minimum:
        return
    count = batch_size if sample_lengths is None else sample_lengths.numel()
    what = "The utterance" if count <= 1 else f"Every item of the batch of {count} is too short: the longest"
    raise ValueError(too_short_message(longest, minimum, what))


_NO_FORWARD_OVERRIDE = object()
_NORM_TIME_CHUNKS = 8  # full-size temporaries of the masked GroupNorm are at most 1/8 of its input


def _time_chunks(num_steps, num_chunks=_NORM_TIME_CHUNKS):
    """``(start, stop)`` bounds splitting ``range(num_steps)`` into at most ``num_chunks`` pieces.

    Example
    -------
    >>> _time_chunks(10, 4)
    [(0, 3), (3, 6), (6, 9), (9, 10)]
    """
    size = max(1, -(-int(num_steps) // int(num_chunks)))
    return [(start, min(start + size, num_steps)) for start in range(0, int(num_steps), size)]


def _autocast_off(device):
    """A context that disables autocast on ``device`` (a no-op when autocast is not active)."""
    try:
        enabled = torch.is_autocast_enabled(device.type)
    except TypeError:  # torch < 2.4 has no per-device query
        enabled = torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()
    if enabled:
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _per_channel(group_values, channels_per_group):
    """``[B, G]`` per-group values -> ``[B, C, 1]`` (each repeated for the channels of its group)."""
    return group_values.repeat_interleave(channels_per_group, dim=1).unsqueeze(-1)


def _group_sum(channel_values, num_groups):
    """``[B, C]`` per-channel values -> ``[B, G]`` sums over the channels of each group."""
    return channel_values.reshape(channel_values.shape[0], num_groups, -1).sum(dim=-1)


class _MaskedGroupNormFunction(torch.autograd.Function):
    """GroupNorm ``[B, C, T]`` with statistics over the masked time steps, with an analytic backward.

    ``forward(inputs, mask, num_groups, weight, bias, eps)``: ``mask`` is ``[B, T]`` float32 (1 on the
    valid steps); every step, padded ones included, is normalised with its item's statistics. The
    statistics (two passes: mean, then the mean squared deviation) and the arithmetic are float32
    (float64 for a float64 input) whatever the input dtype; the output has the input's dtype. Full-size temporaries are one time
    chunk (:data:`_NORM_TIME_CHUNKS`) at a time; the backward saves only the input and ``[B, G]``
    statistics, like the native GroupNorm.
    """

    @staticmethod
    def forward(ctx, inputs, mask, num_groups, weight, bias, eps):
        batch_size, channels, num_steps = inputs.shape
        per_group = channels // num_groups
        chunks = _time_chunks(num_steps)
        compute_dtype = torch.promote_types(inputs.dtype, torch.float32)
        with _autocast_off(inputs.device):
            mask = mask.to(compute_dtype)
            count = mask.sum(dim=1).clamp(min=1) * per_group  # [B]
            total = torch.zeros(batch_size, channels, dtype=compute_dtype, device=inputs.device)
            for start, stop in chunks:
                total += (inputs[:, :, start:stop] * mask[:, None, start:stop]).sum(dim=-1)
            mean = _group_sum(total, num_groups) / count[:, None]  # [B, G]
            mean_c = _per_channel(mean, per_group)
            total.zero_()
            for start, stop in chunks:
                centred = torch.sub(inputs[:, :, start:stop], mean_c)
                total += centred.mul_(mask[:, None, start:stop]).square_().sum(dim=-1)
                del centred  # one chunk-sized temporary alive at a time
            rstd = torch.rsqrt(_group_sum(total, num_groups) / count[:, None] + eps)  # [B, G]
            scale = _per_channel(rstd, per_group)
            if weight is not None:
                scale = scale * weight.to(compute_dtype)[None, :, None]
            shift = None if bias is None else bias.to(compute_dtype)[None, :, None]
            output = torch.empty_like(inputs, memory_format=torch.contiguous_format)
            for start, stop in chunks:
                centred = torch.sub(inputs[:, :, start:stop], mean_c)
                if shift is None:
                    torch.mul(centred, scale, out=output[:, :, start:stop])
                else:
                    torch.addcmul(shift, centred, scale, out=output[:, :, start:stop])
                del centred
        ctx.save_for_backward(inputs, mask, mean, rstd, weight)
        ctx.num_groups = num_groups
        ctx.has_bias = bias is not None
        return output

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        # y = w * (x - mu) * rstd + b on every step, mu and var over the valid set V (n elements):
        # dx = rstd * w * dy - [t in V] * rstd * (A + xhat * Bv), with
        # A = sum_all(w * dy) / n and Bv = sum_all(w * dy * xhat) / n (sums over every step and the
        # channels of the group; padded steps reach the statistics only through A and Bv).
        inputs, mask, mean, rstd, weight = ctx.saved_tensors
        batch_size, channels, num_steps = inputs.shape
        num_groups = ctx.num_groups
        per_group = channels // num_groups
        chunks = _time_chunks(num_steps)
        need_input, _, _, need_weight, need_bias, _ = ctx.needs_input_grad
        grad_input = grad_weight = grad_bias = None
        compute_dtype = mean.dtype
        with _autocast_off(inputs.device):
            mean_c = _per_channel(mean, per_group)
            rstd_c = _per_channel(rstd, per_group)
            sum_dy = torch.zeros(batch_size, channels, dtype=compute_dtype, device=inputs.device)
            sum_dy_centred = torch.zeros_like(sum_dy)
            for start, stop in chunks:
                grad_piece = grad_output[:, :, start:stop]
                sum_dy += grad_piece.sum(dim=-1, dtype=compute_dtype)
                centred = torch.sub(inputs[:, :, start:stop], mean_c)
                sum_dy_centred += centred.mul_(grad_piece).sum(dim=-1)
                del centred
            if need_weight and weight is not None:
                grad_weight = (sum_dy_centred * rstd_c[..., 0]).sum(dim=0).to(weight.dtype)
            if need_bias and ctx.has_bias:
                grad_bias = sum_dy.sum(dim=0).to(weight.dtype if weight is not None else inputs.dtype)
            if need_input:
                weight_f = None if weight is None else weight.to(compute_dtype)[None, :]
                if weight_f is not None:
                    sum_dy = sum_dy * weight_f
                    sum_dy_centred = sum_dy_centred * weight_f
                count = (mask.sum(dim=1).clamp(min=1) * per_group)[:, None]  # [B, 1]
                mean_dy = _group_sum(sum_dy, num_groups) / count  # A
                mean_dy_xhat = _group_sum(sum_dy_centred, num_groups) * rstd / count  # Bv
                direct = rstd_c if weight_f is None else rstd_c * weight_f[..., None]
                offset = _per_channel(rstd * mean_dy, per_group)
                slope = _per_channel(rstd * rstd * mean_dy_xhat, per_group)
                negative_mask = -mask[:, None, :]
                grad_input = torch.empty_like(inputs, memory_format=torch.contiguous_format)
                for start, stop in chunks:
                    correction = torch.sub(inputs[:, :, start:stop], mean_c)
                    correction.mul_(slope).add_(offset).mul_(negative_mask[:, :, start:stop])
                    torch.addcmul(correction, grad_output[:, :, start:stop], direct, out=grad_input[:, :, start:stop])
                    del correction
        return grad_input, None, None, grad_weight, grad_bias, None


def _masked_group_norm(norm, inputs, lengths):
    """GroupNorm whose statistics use only the first ``lengths[b]`` time steps of each item.

    Every step (padded ones too) is normalised with its item's statistics, then scaled and shifted by
    the norm's affine parameters. Costs about what the native GroupNorm costs: the statistics are
    float32 reductions over one time chunk at a time, the output is written in one pass and the
    backward (analytic) keeps only the input and per-group statistics. Under autocast or with a
    half-precision input the arithmetic is float32 and the output has the input's dtype.

    Arguments
    ---------
    norm : torch.nn.GroupNorm
        Supplies ``num_groups``, ``eps`` and the (optional) affine ``weight`` / ``bias``.
    inputs : torch.Tensor
        ``[B, C, T]``.
    lengths : torch.Tensor
        ``[B]`` valid time steps per item (clamped to ``[1, T]``).

    Returns
    -------
    torch.Tensor
        ``[B, C, T]``, dtype of ``inputs``.

    Example
    -------
    >>> norm = nn.GroupNorm(4, 4)
    >>> inputs = torch.randn(2, 4, 6)
    >>> out = _masked_group_norm(norm, inputs, torch.tensor([6, 3]))
    >>> torch.allclose(out[1:, :, :3], norm(inputs[1:, :, :3]), atol=1e-5)
    True
    >>> torch.allclose(out[:1], norm(inputs[:1]), atol=1e-5)
    True
    """
    if inputs.dim() != 3 or inputs.shape[0] != lengths.shape[0]:
        raise ValueError(
            f"per-utterance GroupNorm expects [B, C, T] inputs and [B] lengths, got "
            f"{tuple(inputs.shape)} and {tuple(lengths.shape)}"
        )
    num_steps = inputs.shape[-1]
    lengths = lengths.to(inputs.device).clamp(min=1, max=max(num_steps, 1))
    mask = lengths_to_mask(lengths, num_steps).to(torch.float32)
    weight = norm.weight if norm.affine else None
    bias = norm.bias if norm.affine else None
    return _MaskedGroupNormFunction.apply(inputs, mask, norm.num_groups, weight, bias, norm.eps)


@contextlib.contextmanager
def per_utterance_cnn_norm(feature_extractor, sample_lengths):
    """Makes the GroupNorm of the first CNN layer ignore padded time steps, for the duration of a block.

    Hugging Face WavLM/HuBERT/wav2vec 2.0 Base and the DistilHuBERT student normalise every channel of
    the first conv layer over the whole padded time axis, so the features of a short utterance depend
    on how much padding its batch has (see the module docstring for the size of the effect). Inside
    this context the statistics are computed over each item's valid steps only, which makes the valid
    frames of a padded batch equal (to float precision) to those of the unpadded utterance. Without
    padding the result is unchanged. Padded steps are normalised with their item's statistics (not
    zeroed). The norm module's ``forward`` is replaced for the duration of the block and restored on
    exit (its parameters and hooks are untouched), so the native GroupNorm is not computed at all and
    the masked one (:func:`_masked_group_norm`) costs about as much memory; this works on any HF model.

    Arguments
    ---------
    feature_extractor : torch.nn.Module
        The model's ``feature_extractor`` (``conv_layers[0]`` has ``conv`` and ``layer_norm``).
    sample_lengths : torch.Tensor or None
        ``[B]`` valid samples per item; None leaves the model untouched.

    Example
    -------
    >>> from transformers import HubertConfig, HubertModel
    >>> model = HubertModel(HubertConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=1,
    ...     intermediate_size=64, conv_dim=[32] * 7, conv_bias=False, feat_extract_norm="group",
    ...     num_conv_pos_embedding_groups=4)).eval()
    >>> wavs = torch.randn(2, 8000)
    >>> wavs[1, 4000:] = 0
    >>> with per_utterance_cnn_norm(model.feature_extractor, torch.tensor([8000, 4000])):
    ...     padded = model.feature_extractor(wavs)
    >>> single = model.feature_extractor(wavs[1:, :4000])
    >>> torch.allclose(padded[1:, :, : single.shape[-1]], single, atol=1e-5)
    True
    """
    first_layer = feature_extractor.conv_layers[0]
    norm = getattr(first_layer, "layer_norm", None)
    if sample_lengths is None or not isinstance(norm, nn.GroupNorm):
        yield
        return
    conv = first_layer.conv
    step_lengths = torch.div(sample_lengths - conv.kernel_size[0], conv.stride[0], rounding_mode="floor") + 1
    step_lengths = step_lengths.clamp(min=1)

    def masked_forward(inputs):
        return _masked_group_norm(norm, inputs, step_lengths)

    previous = norm.__dict__.get("forward", _NO_FORWARD_OVERRIDE)  # set by an enclosing block
    norm.forward = masked_forward
    try:
        yield
    finally:
        if previous is _NO_FORWARD_OVERRIDE:
            del norm.forward
        else:
            norm.forward = previous


def ssl_hidden_states(model, wavs, wav_lens=None, per_utterance_norm=False):
    """Every hidden state of a Hugging Face WavLM / HuBERT / wav2vec 2.0 model for a padded batch.

    Padded samples are zeroed and an attention mask is passed, so padded frames never enter attention.
    An item shorter than the CNN's receptive field gets zero valid frames (it attends to its first
    frame only, so its features stay finite); if every item is that short, ``ValueError``.

    Arguments
    ---------
    model : transformers.PreTrainedModel
        A ``WavLMModel``, ``HubertModel`` or ``Wav2Vec2Model`` (or compatible).
    wavs : torch.Tensor
        ``[B, T]`` waveforms at the model's sample rate.
    wav_lens : torch.Tensor, optional
        ``[B]`` relative lengths in (0, 1] (SpeechBrain convention); None: all full length.
    per_utterance_norm : bool
        Normalise the first CNN layer over each item's valid samples (:func:`per_utterance_cnn_norm`),
        so the features of an utterance do not depend on the padding of its batch.

    Returns
    -------
    hidden_states : tuple of torch.Tensor
        ``N + 1`` tensors ``[B, F, D]``: index 0 is the encoder input, index k the output of layer k.
    frame_mask : torch.Tensor
        ``[B, F]`` bool, True on valid frames.

    Raises
    ------
    ValueError
        If every item is shorter than the CNN's receptive field (checked before the model runs).

    Example
    -------
    >>> from transformers import HubertConfig, HubertModel
    >>> model = HubertModel(HubertConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=2,
    ...     intermediate_size=64, conv_dim=[32] * 7, num_conv_pos_embedding_groups=4)).eval()
    >>> hidden_states, frame_mask = ssl_hidden_states(model, torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
    >>> len(hidden_states), hidden_states[-1].shape, frame_mask.sum(dim=1).tolist()
    (3, torch.Size([2, 49, 32]), [49, 24])
    """
    num_samples = wavs.shape[-1]
    sample_lengths = absolute_lengths(wav_lens, num_samples)
    minimum = cnn_receptive_field(model.config)
    check_input_lengths(sample_lengths, num_samples, minimum, batch_size=wavs.shape[0])
    attention_mask = None
    if sample_lengths is not None:
        sample_mask = lengths_to_mask(sample_lengths.to(wavs.device), num_samples)
        wavs = wavs * sample_mask.to(wavs.dtype)
        # a too-short item attends to its (zero-padded) first frame: never a fully masked attention row
        attention_lengths = sample_lengths.clamp(min=min(minimum, num_samples))
        attention_mask = lengths_to_mask(attention_lengths.to(wavs.device), num_samples).long()
    norm_lengths = sample_lengths if per_utterance_norm else None
    with per_utterance_cnn_norm(model.feature_extractor, norm_lengths), warnings.catch_warnings():
        # HF WavLM mixes a bool padding mask with its float position bias (harmless deprecation)
        warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")
        output = model(wavs, attention_mask=attention_mask, output_hidden_states=True)
    hidden_states = tuple(output.hidden_states)
    num_frames = hidden_states[-1].shape[1]
    if sample_lengths is None:
        frame_mask = torch.ones(wavs.shape[0], num_frames, dtype=torch.bool, device=wavs.device)
    else:
        frame_lengths = model._get_feat_extract_output_lengths(sample_lengths).to(wavs.device)
        frame_mask = lengths_to_mask(frame_lengths.clamp(min=0), num_frames)
    return hidden_states, frame_mask


def predict_teacher_layers(expand, split, hidden, num_targets):
    """The student's "expand-last" prediction heads in the exported layout.

    ``GELU(expand(hidden))`` is split into ``K`` chunks; chunk k goes through its own linear map, held
    as one ``Conv1d(K * I, K * T, kernel_size=1, groups=K)`` (the same maps as the training layout,
    a weight ``[K, I, T]``, with ``conv.weight[k * T + o, i, 0] = weight[k, i, o]``).

    Arguments
    ---------
    expand : torch.nn.Linear
        ``D -> K * I``.
    split : torch.nn.Conv1d
        ``K * I -> K * T``, kernel size 1, ``groups=K``.
    hidden : torch.Tensor
        ``[B, F, D]`` last hidden state.
    num_targets : int
        ``K``.

    Returns
    -------
    torch.Tensor
        ``[B, K, F, T]`` predicted teacher layers.

    Example
    -------
    >>> expand, split = torch.nn.Linear(8, 12), torch.nn.Conv1d(12, 6, 1, groups=3)
    >>> predict_teacher_layers(expand, split, torch.randn(2, 5, 8), num_targets=3).shape
    torch.Size([2, 3, 5, 2])
    """
    expanded = F.gelu(expand(hidden))  # [B, F, K * I]
    predictions = split(expanded.transpose(1, 2))  # [B, K * T, F]
    batch_size, channels, num_frames = predictions.shape
    predictions = predictions.view(batch_size, num_targets, channels // num_targets, num_frames)
    return predictions.transpose(2, 3)


class EncodedBatch(NamedTuple):
    """What :meth:`EncoderInterface.encode_batch` returns.

    Attributes
    ----------
    hidden_states : torch.Tensor
        ``[B, N + 1, F, D]``: index 0 is the encoder input, index i the output of transformer layer i
        (``hidden_states[:, -1]`` is the last layer).
    predictions : torch.Tensor or None
        ``[B, K, F, T]``: the prediction heads' estimates of the teacher layers ``target_layers``
        (None for a folder exported without heads).
    frame_mask : torch.Tensor
        ``[B, F]`` bool, True on valid frames (values on padded frames are meaningless). The row of an
        item shorter than the CNN's receptive field (400 samples) is all False.
    """

    hidden_states: torch.Tensor
    predictions: Optional[torch.Tensor]
    frame_mask: torch.Tensor


class EncoderInterface(Pretrained):
    """SpeechBrain pretrained interface of a distilled student (an exported RobustDistiller folder).

    The folder's ``hyperparams.yaml`` declares the backbone (``encoder``, a ``transformers.HubertModel``)
    and, optionally, the prediction heads (``prediction_expand``, ``prediction_split``), plus
    ``sample_rate``, ``per_utterance_norm`` and ``target_layers``.

    Example (an exported folder; ``tests/unit/export/test_export.py`` runs this on a trained tiny student)::

        encoder = EncoderInterface.from_hparams(source="exported_student", savedir="pretrained_cache")
        out = encoder.encode_file("utterance.flac")   # any sample rate, mono or stereo
        out.hidden_states.shape                       # [1, N + 1, frames, 768]
        out.predictions.shape                         # [1, 3, frames, 768]: teacher layers 4, 8, 12
    """

    MODULES_NEEDED = ["encoder"]
    HPARAMS_NEEDED = ["sample_rate"]

    @classmethod
    def from_hparams(cls, source, hparams_file="hyperparams.yaml", **kwargs):
        """Loads an exported folder (or, on a connected machine, a hub id) like ``Pretrained``.

        Raises
        ------
        ModelSourceError
            ``source`` looks like a path but is not a folder; or it is a hub id while the hub is
            unreachable (``HF_HUB_OFFLINE=1``: fails at once) or the id is unknown.
        DamagedModelFileError
            A weights file (``encoder.ckpt``...) is truncated, damaged or of another model: the
            message names it (through the export's loading hook, :func:`load_weights_naming_the_file`,
            or, for folders without it, by checking each ``*.ckpt`` after the load failed).
        """
        source_text = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
        if source_text is not None and not os.path.isdir(os.path.expanduser(source_text)):
            if looks_like_path(source_text):
                raise ModelSourceError(f"Model source '{source_text}' is not a folder (no such directory)")
            unavailable = hub_unavailable_reason()
            if unavailable:
                raise ModelSourceError(
                    f"Model source '{source_text}' is not a local folder and {unavailable}: download the model "
                    f"elsewhere and pass its local folder as source"
                )
            try:
                with _importable_as_interface_module():
                    return super().from_hparams(source=source_text, hparams_file=hparams_file, **kwargs)
            except DamagedModelFileError:
                raise
            except Exception as error:  # network errors come in many types
                raise ModelSourceError(
                    f"Cannot fetch '{source_text}' from the Hugging Face hub ({type(error).__name__}: "
                    f"{error}); check the id and the network, or pass a local folder as source"
                ) from error
        try:
            with _importable_as_interface_module():
                return super().from_hparams(source=source, hparams_file=hparams_file, **kwargs)
        except DamagedModelFileError:
            raise
        except Exception as error:
            # an export written before the hook (or another interface's folder): find the damaged file
            folder = os.path.expanduser(source_text) if source_text is not None else None
            damaged = damaged_weight_files(folder) if folder and os.path.isdir(folder) else {}
            if not damaged:
                raise
            path, problem = next(iter(damaged.items()))
            raise DamagedModelFileError(
                f"'{path}' cannot be read (truncated or damaged: {problem}); copy or export the model again "
                f"(loading failed with {type(error).__name__}: {error})"
            ) from error

    @property
    def num_layers(self):
        """Number of transformer layers ``N`` of the encoder."""
        return self.mods.encoder.config.num_hidden_layers

    def encode_batch(self, wavs, wav_lens=None, sample_rate=None):
        """Encodes a (padded) batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[T]``, ``[B, T]`` or ``[B, T, C]`` (C channels are averaged to mono).
        wav_lens : torch.Tensor, optional
            ``[B]`` relative lengths in (0, 1]; None: every item is full length.
        sample_rate : int, optional
            Sample rate of ``wavs``; resampled to the model's (16 kHz) when different.

        Returns
        -------
        EncodedBatch

        Raises
        ------
        ValueError
            If every item is shorter than the CNN's receptive field (400 samples, 25 ms at 16 kHz,
            after resampling); a shorter item next to longer ones gets zero valid frames.
        """
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        elif wavs.dim() == 3:
            wavs = wavs.mean(dim=-1)
        elif wavs.dim() != 2:
            raise ValueError(f"wavs must be [T], [B, T] or [B, T, C]; got shape {tuple(wavs.shape)}")
        wavs = wavs.to(self.device, torch.float32)
        model_rate = int(self.hparams.sample_rate)
        if sample_rate is not None and int(sample_rate) != model_rate:
            wavs = torchaudio.functional.resample(wavs, int(sample_rate), model_rate)
        if wav_lens is not None:
            wav_lens = torch.as_tensor(wav_lens, dtype=torch.float32, device=self.device)
        return self._encode(wavs, wav_lens)

    def minimum_samples(self):
        """Fewest input samples giving one frame (the CNN's receptive field, 400 at 16 kHz)."""
        return cnn_receptive_field(self.mods.encoder.config)

    def _encode(self, wavs, wav_lens):
        """The model part of :meth:`encode_batch`: 16 kHz mono ``[B, T]`` and relative lengths in."""
        per_utterance_norm = bool(getattr(self.hparams, "per_utterance_norm", False))
        with torch.no_grad():
            hidden_states, frame_mask = ssl_hidden_states(
                self.mods.encoder, wavs, wav_lens, per_utterance_norm=per_utterance_norm
            )
            predictions = None
            if "prediction_expand" in self.mods and "prediction_split" in self.mods:
                predictions = predict_teacher_layers(
                    self.mods.prediction_expand,
                    self.mods.prediction_split,
                    hidden_states[-1],
                    num_targets=len(self.hparams.target_layers),
                )
        return EncodedBatch(torch.stack(hidden_states, dim=1), predictions, frame_mask)

    def encode_file(self, path, **kwargs):
        """Encodes one audio file (any sample rate; multichannel audio is averaged to mono).

        Arguments
        ---------
        path : str
            Audio file (anything SpeechBrain's audio reader opens).
        **kwargs
            Passed to ``load_audio`` (``savedir``).

        Returns
        -------
        EncodedBatch
            A batch of one.

        Raises
        ------
        ValueError
            If the file is shorter than the CNN's receptive field (400 samples, 25 ms at 16 kHz); the
            message names the file.
        """
        waveform = self.load_audio(path, **kwargs)
        minimum = self.minimum_samples()
        if waveform.shape[0] < minimum:
            raise ValueError(too_short_message(waveform.shape[0], minimum, what=f"Audio file '{path}'"))
        return self.encode_batch(waveform.unsqueeze(0))

    def forward(self, wavs, wav_lens=None):
        """Same as :meth:`encode_batch`."""
        return self.encode_batch(wavs, wav_lens)
