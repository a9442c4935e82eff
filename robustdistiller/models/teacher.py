"""The frozen teacher: a self-supervised speech model whose hidden layers the student predicts.

:func:`load_ssl_model` loads a WavLM / HuBERT / wav2vec 2.0 model from a local folder (``config.json``,
weights and ``preprocessor_config.json``) or a Hugging Face hub id, with an error that names the source
when neither works. :class:`FrozenTeacher` wraps it so that it stays frozen, in eval mode (no dropout, no
layerdrop, even when a parent module or ``Brain.fit`` calls ``.train()``), runs it at its own precision
whatever the student's mixed precision is (``precision``: fp32 by default, as in the RobustDistiller
paper; bf16, or fp16 on CUDA, under autocast as DPHuBERT does) and returns the target layers in fp32
(``docs/reference/robustdistiller.md`` "Teacher", ``docs/reference/speechbrain.md`` "Brain").
``benchmarks/teacher_precision.py`` measures how far bf16 / fp16 targets are from fp32 ones and what they save.
:meth:`FrozenTeacher.check_precision` is the recipes' start-of-run self-check of low-precision targets against fp32
ones on the first batch (a run whose device computes the teacher wrongly in bf16 / fp16 is refused with
:class:`TeacherPrecisionError`).

No pretrained weights can be downloaded here: :func:`save_random_teacher` writes a model with *random*
weights in the same on-disk format, which the demo and the tests use in place of WavLM Base+.
"""

import contextlib
import json
import logging
import os
from typing import NamedTuple

import torch
import torch.nn as nn
from transformers import (
    AutoModel,
    HubertConfig,
    HubertModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
    WavLMConfig,
    WavLMModel,
)

from robustdistiller.inference.interface import (
    ModelSourceError,
    hub_unavailable_reason,
    looks_like_path,
    ssl_hidden_states,
    transformers_progress_bars_off,
)

logger = logging.getLogger(__name__)

_MODEL_TYPES = {
    "wavlm": (WavLMConfig, WavLMModel),
    "hubert": (HubertConfig, HubertModel),
    "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model),
}

# Model types whose Hugging Face models ssl_hidden_states / FrozenTeacher run (same CNN + encoder API).
SSL_MODEL_TYPES = (
    "wavlm",
    "hubert",
    "wav2vec2",
    "unispeech",
    "unispeech-sat",
    "data2vec-audio",
    "wav2vec2-conformer",
)
# Parameters a checkpoint may lack without changing the features (used in pre-training only).
_OPTIONAL_PARAMETERS = ("masked_spec_embed",)
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
TORCH_WEIGHTS_FILE = "pytorch_model.bin"

# Small but complete: 12 layers so that targets 4/8/12 exist, the real CNN kernels/strides.
_TINY_CONFIG = dict(
    hidden_size=64,
    num_attention_heads=4,
    intermediate_size=128,
    num_hidden_layers=12,
    conv_dim=[32] * 7,  # narrower than the encoder, like 512 -> 768 (s3prl then has a projection)
    conv_kernel=[10, 3, 3, 3, 3, 2, 2],
    conv_stride=[5, 2, 2, 2, 2, 2, 2],
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=16,
)


# Teacher precision -> autocast dtype (None: autocast disabled, plain fp32).
TEACHER_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Default bound of the start-of-run self-check (YAML ``teacher_precision_min_cosine``): the smallest
# per-frame cosine similarity between a low-precision target and its fp32 target that a run accepts.
# Healthy bf16 gives 0.9992 (tiny test teacher) and 0.99984 (Base-size shape); the oneDNN fault the
# check was built for gave 0.92 (docs/distillation.md, "Teacher precision self-check").
DEFAULT_PRECISION_MIN_COSINE = 0.99


class TeacherSourceError(ModelSourceError):
    """A teacher source is neither a loadable local folder nor a reachable hub id."""


class TeacherPrecisionError(ValueError):
    """The teacher's low-precision targets are too far from its fp32 targets on this device."""


def _damaged(path, error, error_class):
    return error_class(f"'{path}' cannot be read (truncated or damaged: {error}): copy, download or export it again")


def check_weight_files(folder, error_class=TeacherSourceError):
    """Checks that the weights ``from_pretrained`` will read in ``folder`` are complete files.

    ``model.safetensors`` (or every shard of ``model.safetensors.index.json``) must have a valid
    header covering the whole file, and a zip-format ``pytorch_model.bin`` a readable zip directory.
    Only the file headers and directories are read, not the tensors. A missing weights file is left to
    ``from_pretrained`` (its error names the files it looked for).

    Arguments
    ---------
    folder : str
        A Hugging Face model folder.
    error_class : type
        The exception raised (a ``ValueError`` subclass).

    Raises
    ------
    error_class
        Naming the damaged file.

    Example
    -------
    >>> import tempfile
    >>> folder = save_random_teacher(tempfile.mkdtemp(), model_type="hubert")
    >>> check_weight_files(folder)
    >>> with open(os.path.join(folder, SAFETENSORS_FILE), "r+b") as weights:
    ...     _ = weights.truncate(1000)
    >>> check_weight_files(folder)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    robustdistiller.models.teacher.TeacherSourceError: '.../model.safetensors' cannot be read (truncated or damaged: ...
    """
    from safetensors import safe_open

    single = os.path.join(folder, SAFETENSORS_FILE)
    index = os.path.join(folder, SAFETENSORS_INDEX_FILE)
    torch_file = os.path.join(folder, TORCH_WEIGHTS_FILE)
    if os.path.isfile(single):
        shards = [single]
    elif os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as fin:
                names = sorted(set(json.load(fin)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise _damaged(index, error, error_class) from error
        shards = [os.path.join(folder, name) for name in names]
        missing = [path for path in shards if not os.path.isfile(path)]
        if missing:
            raise error_class(f"'{index}' lists weight shards that are missing: {missing}")
    else:
        if os.path.isfile(torch_file):
            _check_zip_weights(torch_file, error_class)
        return
    for path in shards:
        try:
            with safe_open(path, framework="pt") as weights:
                weights.keys()
        except Exception as error:  # safetensors raises its own SafetensorError (not an OSError)
            raise _damaged(path, error, error_class) from error


def _check_zip_weights(path, error_class):
    """A ``torch.save`` zip archive must have its central directory (the legacy format is not checked)."""
    import zipfile

    with open(path, "rb") as fin:
        is_zip = fin.read(4) == b"PK\x03\x04"
    if not is_zip:
        return
    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except (OSError, zipfile.BadZipFile) as error:
        raise _damaged(path, error, error_class) from error


def check_model_type(
    model_type, source, model_types=SSL_MODEL_TYPES, expected="a speech SSL model", error_class=TeacherSourceError
):
    """Raises unless ``model_type`` (a config's) is one of ``model_types``.

    Example
    -------
    >>> check_model_type("bert", "my_folder")
    Traceback (most recent call last):
    ...
    robustdistiller.models.teacher.TeacherSourceError: 'my_folder' holds a bert model; expected a speech SSL model (wavlm, hubert, wav2vec2, unispeech, unispeech-sat, data2vec-audio, wav2vec2-conformer)
    """
    if model_type not in model_types:
        raise error_class(f"'{source}' holds a {model_type} model; expected {expected} ({', '.join(model_types)})")


def load_model_folder(
    folder,
    model_class=AutoModel,
    model_types=SSL_MODEL_TYPES,
    expected="a speech SSL model",
    error_class=TeacherSourceError,
    **kwargs,
):
    """Loads a local Hugging Face model folder after checking what it holds, with errors naming it.

    In order, before any weight is loaded: ``config.json`` exists and is readable, its ``model_type`` is
    one of ``model_types``, the weights files are complete (:func:`check_weight_files`). After loading,
    every parameter of the model must have come from the weights (``masked_spec_embed``, used in
    pre-training only, may be missing), so a weights file of another model is not silently replaced
    by random values.

    Arguments
    ---------
    folder : str
        The model folder.
    model_class : type
        ``AutoModel`` or a model class (``from_pretrained`` is called on it).
    model_types : sequence of str
        Accepted ``model_type`` values of ``config.json``.
    expected : str
        What the folder should hold, for the messages.
    error_class : type
        The exception raised (a ``ValueError`` subclass).
    **kwargs
        Passed to ``from_pretrained`` (``cache_dir``).

    Returns
    -------
    transformers.PreTrainedModel

    Raises
    ------
    error_class
        The message names the folder or file and what was expected.

    Example
    -------
    >>> import tempfile
    >>> from transformers import BertConfig, BertModel
    >>> folder = tempfile.mkdtemp()
    >>> BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
    ...                      intermediate_size=8)).save_pretrained(folder)
    >>> load_model_folder(folder)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    robustdistiller.models.teacher.TeacherSourceError: '...' holds a bert model; expected a speech SSL model (wavlm, ...)
    """
    config_file = os.path.join(folder, "config.json")
    if not os.path.isfile(config_file):
        raise error_class(
            f"'{folder}' has no config.json: expected a Hugging Face model folder (config.json and "
            f"{SAFETENSORS_FILE}) holding {expected} ({', '.join(model_types)})"
        )
    try:
        with open(config_file, encoding="utf-8") as fin:
            model_type = json.load(fin).get("model_type")
    except (OSError, ValueError, AttributeError) as error:
        raise _damaged(config_file, error, error_class) from error
    check_model_type(model_type, folder, model_types, expected, error_class)
    check_weight_files(folder, error_class)
    try:
        with transformers_progress_bars_off():  # a bar per load says nothing for models this size
            model, loading_info = model_class.from_pretrained(folder, output_loading_info=True, **kwargs)
    except Exception as error:  # transformers and safetensors raise many types
        raise error_class(
            f"Cannot load {expected} from the local folder '{folder}': {type(error).__name__}: {error}"
        ) from error
    _check_all_weights_loaded(model, loading_info, folder, error_class)
    return model


def _check_all_weights_loaded(model, loading_info, source, error_class):
    """Raises when parameters of ``model`` were initialised randomly (absent from the weights)."""
    missing = sorted(
        name for name in loading_info.get("missing_keys", ()) if name.rsplit(".", 1)[-1] not in _OPTIONAL_PARAMETERS
    )
    if missing:
        total = len(model.state_dict())
        raise error_class(
            f"The weights in '{source}' do not fit its config.json ({model.config.model_type}): "
            f"{len(missing)} of {total} parameters are missing (e.g. {', '.join(missing[:3])}), so they "
            f"would be random. Use the config.json saved with these weights."
        )


def _check_min_cosine(value):
    """``value`` as a float in [-1, 1], else a ``ValueError`` naming ``teacher_precision_min_cosine``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not -1.0 <= number <= 1.0:
        raise ValueError(
            f"Invalid teacher_precision_min_cosine {value!r}: expected a number in [-1, 1], the smallest "
            f"per-frame cosine similarity between bf16/fp16 and fp32 teacher targets a run accepts "
            f"(default {DEFAULT_PRECISION_MIN_COSINE}; -1 accepts anything)"
        )
    return number


class TeacherOutput(NamedTuple):
    """What :meth:`FrozenTeacher.forward` returns.

    Attributes
    ----------
    layers : torch.Tensor
        ``[B, K, F, D]`` fp32 hidden layers ``target_layers`` (layer k = output of transformer layer k).
    frame_mask : torch.Tensor
        ``[B, F]`` bool, True on valid frames (all False for an item shorter than the CNN's receptive
        field, 400 samples: see :mod:`robustdistiller.inference.interface`).
    """

    layers: torch.Tensor
    frame_mask: torch.Tensor


def load_ssl_model(source, cache_dir=None, option="teacher_source"):
    """Loads a WavLM / HuBERT / wav2vec 2.0 model with ``transformers.AutoModel``.

    Arguments
    ---------
    source : str or os.PathLike
        A local folder with ``config.json`` and weights, or a hub id (``microsoft/wavlm-base-plus``).
        A hub id is first looked up in the local cache only, then on the network (skipped when
        ``HF_HUB_OFFLINE=1``).
    cache_dir : str, optional
        Hugging Face cache folder.
    option : str
        The option that gave ``source`` (``teacher_source``, ``upstream_source``), named in errors.

    Returns
    -------
    transformers.PreTrainedModel

    Raises
    ------
    TeacherSourceError
        If ``source`` looks like a path but is not a folder; if the folder cannot be loaded: no or
        unreadable ``config.json``, a model other than a speech SSL model (:data:`SSL_MODEL_TYPES`;
        checked before the weights are read), truncated or damaged weights, weights that do not fit
        the config (:func:`load_model_folder`); or if a hub id is neither cached nor reachable or holds
        another kind of model. The message names ``source`` or the damaged file.

    Example
    -------
    >>> import tempfile
    >>> folder = save_random_teacher(tempfile.mkdtemp(), model_type="hubert")
    >>> type(load_ssl_model(folder)).__name__
    'HubertModel'
    """
    source = os.fspath(source)
    label = option.replace("_", " ").capitalize()  # "Teacher source", "Upstream source"
    expanded = os.path.expanduser(source)
    if os.path.isdir(expanded):
        return load_model_folder(expanded, cache_dir=cache_dir)
    if looks_like_path(source):
        raise TeacherSourceError(f"{label} '{source}' is not a folder (no such directory) and not a hub id")
    try:
        with transformers_progress_bars_off():
            model, loading_info = AutoModel.from_pretrained(
                source, cache_dir=cache_dir, local_files_only=True, output_loading_info=True
            )
    except (OSError, ValueError) as local_error:
        unavailable = hub_unavailable_reason()  # one quick probe instead of the hub client's retries
        if unavailable:
            raise TeacherSourceError(
                f"{label} '{source}' is neither a local folder nor a cached hub model, and {unavailable}: "
                f"download it elsewhere and pass its folder (e.g. --{option}=/models/wavlm-base-plus). "
                f"({type(local_error).__name__})"
            ) from local_error
        try:
            model, loading_info = AutoModel.from_pretrained(source, cache_dir=cache_dir, output_loading_info=True)
        except Exception as error:  # network errors come in many types (OSError, HTTPError, ...)
            raise TeacherSourceError(
                f"{label} '{source}' is neither a local folder nor reachable on the Hugging Face "
                f"hub (no network, or unknown id; set HF_HUB_OFFLINE=1 to skip the network attempt; "
                f"--{option} also takes a local folder): {error}"
            ) from error
    check_model_type(model.config.model_type, source)
    _check_all_weights_loaded(model, loading_info, source, TeacherSourceError)
    return model


def random_teacher_config(model_type="wavlm", tiny=True, **config_overrides):
    """The configuration :func:`save_random_teacher` uses.

    Arguments
    ---------
    model_type : str
        ``"wavlm"``, ``"hubert"`` or ``"wav2vec2"``.
    tiny : bool
        True: 12 layers of width 64 (see :func:`save_random_teacher`); False: the Base architecture.
    **config_overrides
        Any config field.

    Returns
    -------
    transformers.PretrainedConfig

    Example
    -------
    >>> config = random_teacher_config("hubert")
    >>> config.num_hidden_layers, config.hidden_size, list(config.conv_stride)
    (12, 64, [5, 2, 2, 2, 2, 2, 2])
    """
    if model_type not in _MODEL_TYPES:
        raise ValueError(f"model_type must be one of {sorted(_MODEL_TYPES)}, got {model_type!r}")
    values = dict(_TINY_CONFIG) if tiny else {}
    values.update(config_overrides)
    return _MODEL_TYPES[model_type][0](**values)


def save_random_teacher(folder, model_type="wavlm", tiny=True, seed=0, **config_overrides):
    """Writes an SSL model with **random weights** (no pretrained knowledge) in Hugging Face format.

    This stands in for WavLM Base+ / HuBERT Base / wav2vec 2.0 Base where pretrained weights cannot be
    downloaded (demo, tests). The folder holds ``config.json``, the weights and a
    ``preprocessor_config.json`` (``Wav2Vec2FeatureExtractor``, 16 kHz, ``do_normalize=False``,
    ``return_attention_mask=True``), so :func:`load_ssl_model` and SpeechBrain's HF wrappers load it.

    Arguments
    ---------
    folder : str or os.PathLike
        Output folder (created).
    model_type : str
        ``"wavlm"``, ``"hubert"`` or ``"wav2vec2"``.
    tiny : bool
        True: 12 layers of width 64 (4 heads, FFN 128, 32-channel CNN with the real kernels/strides,
        positional conv of kernel 16 in 16 groups of 4 channels: a shape oneDNN computes wrongly in
        bf16 on CPUs with AMX, see :meth:`FrozenTeacher.check_precision`;
        ``num_conv_pos_embedding_groups=4`` avoids it), about 0.5M parameters. False: the real Base architecture
        (for WavLM the Base+ shape: 94,381,936 parameters in ``WavLMModel``; the "94.70M" usually
        quoted also counts the pre-training projection and label embeddings).
    seed : int
        Seed of the random weights (the global RNG state is restored afterwards).
    **config_overrides
        Any config field.

    Returns
    -------
    str
        ``folder``.

    Example
    -------
    >>> import tempfile
    >>> folder = save_random_teacher(tempfile.mkdtemp(), model_type="wavlm")
    >>> sorted(name for name in os.listdir(folder) if name.endswith(".json"))
    ['config.json', 'preprocessor_config.json']
    """
    config = random_teacher_config(model_type, tiny=tiny, **config_overrides)
    model_class = _MODEL_TYPES[model_type][1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    with transformers_progress_bars_off():  # no 'Writing model shards' bar for one small file
        model.save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=16000,
        padding_value=0.0,
        do_normalize=False,
        return_attention_mask=True,
    ).save_pretrained(folder)
    with open(os.path.join(folder, "RANDOM_WEIGHTS.txt"), "w") as note:
        note.write(
            f"Random weights (seed {seed}), {model_type}, written by robustdistiller.models.teacher."
            "save_random_teacher for demos and tests. Not a pretrained model.\n"
        )
    logger.info("Saved a %s teacher with RANDOM weights to %s", model_type, folder)
    return folder


class FrozenTeacher(nn.Module):
    """Frozen, always-eval SSL teacher that returns its target hidden layers in fp32.

    The teacher runs at its own ``precision``, independently of the autocast context it is called in
    (the student's ``--precision``): ``"fp32"`` (default; the RobustDistiller paper's fp32 teacher)
    disables autocast; ``"bf16"`` and ``"fp16"`` run the forward under
    ``torch.autocast(device_type, dtype)`` (DPHuBERT ran its teacher under fp16 autocast). Whatever
    the precision, the returned layers are cast to fp32.

    The weights always stay fp32 (autocast casts them per op, it does not convert the model): the
    stored teacher loses no precision, ``precision`` can be changed without reloading, and the ops
    that autocast keeps in fp32 get fp32 weights. On CUDA autocast runs GroupNorm / LayerNorm (and
    softmax) in fp32; on CPU it feeds them bf16 activations, which the CPU kernels normalise with fp32
    statistics but return in bf16. The first CNN layer's GroupNorm sees the raw waveform's dynamic
    range and normalises over the whole utterance, so under bf16 / fp16 the output of that layer's
    conv is cast back to fp32 before its normalisation, on every device and whichever way the norm is
    implemented (the plain ``nn.GroupNorm``, the per-utterance version or a LayerNorm CNN); the convs,
    linear layers and attention matmuls then run in the low precision.

    Arguments
    ---------
    source : str or transformers.PreTrainedModel
        Local folder or hub id (see :func:`load_ssl_model`), or an already-built model.
    target_layers : sequence of int
        Hidden layers to return; layer k is the output of transformer layer k (1..N), 0 the
        encoder input.
    cache_dir : str, optional
        Hugging Face cache folder.
    per_utterance_norm : bool
        Compute the first CNN layer's GroupNorm over each item's valid samples only
        (:func:`robustdistiller.inference.interface.per_utterance_cnn_norm`), so targets do not depend on how much
        padding a batch has (with random Base-size weights, padding a 0.5 s item to 2 s changes its
        hidden layers by ~40 % relative otherwise). False (default) is the plain HF computation.
    precision : str
        ``"fp32"`` (default), ``"bf16"`` (CPU or CUDA) or ``"fp16"`` (CUDA only; a CPU forward raises
        ``ValueError``). The recipes set it with ``teacher_precision``.
    precision_min_cosine : float
        Bound of :meth:`check_precision`: the smallest per-frame cosine similarity between a bf16 /
        fp16 target and its fp32 target that is accepted (default 0.99; -1 accepts anything). The
        recipes set it with ``teacher_precision_min_cosine``.

    Raises
    ------
    ValueError
        For an unknown ``precision`` (the message names ``teacher_precision`` and the allowed values)
        or a ``precision_min_cosine`` that is not a number in [-1, 1] (the message names
        ``teacher_precision_min_cosine``).

    Example
    -------
    >>> import tempfile
    >>> teacher = FrozenTeacher(save_random_teacher(tempfile.mkdtemp()))
    >>> out = teacher(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
    >>> out.layers.shape, out.frame_mask.sum(dim=1)
    (torch.Size([2, 3, 49, 64]), tensor([49, 24]))
    >>> _ = nn.ModuleDict({"teacher": teacher}).train()
    >>> teacher.training, teacher.model.training
    (False, False)
    >>> teacher.precision = "bf16"
    >>> bf16 = teacher(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
    >>> bf16.layers.dtype, next(teacher.parameters()).dtype
    (torch.float32, torch.float32)
    """

    def __init__(
        self,
        source,
        target_layers=(4, 8, 12),
        cache_dir=None,
        per_utterance_norm=False,
        precision="fp32",
        precision_min_cosine=DEFAULT_PRECISION_MIN_COSINE,
    ):
        super().__init__()
        self.precision = precision  # validated by the property setter
        self.precision_min_cosine = precision_min_cosine  # validated by the property setter
        self.per_utterance_norm = bool(per_utterance_norm)
        if isinstance(source, nn.Module):
            model = source
        else:
            model = load_ssl_model(source, cache_dir=cache_dir)
        self.model = model.float()
        self.config = model.config
        num_layers = self.config.num_hidden_layers
        target_layers = tuple(int(layer) for layer in target_layers)
        if not target_layers:
            raise ValueError("FrozenTeacher needs at least one target layer")
        invalid = [layer for layer in target_layers if not 0 <= layer <= num_layers]
        if invalid:
            raise ValueError(
                f"Invalid teacher target layers {invalid}: the teacher ({type(model).__name__}) has "
                f"{num_layers} transformer layers, so layers must be in 0..{num_layers} "
                f"(0 = encoder input, k = output of layer k)"
            )
        self.target_layers = target_layers
        self.model.requires_grad_(False)
        self.train(False)

    @property
    def precision(self):
        """``"fp32"``, ``"bf16"`` or ``"fp16"``: the precision of the teacher forward."""
        return self._precision

    @precision.setter
    def precision(self, value):
        if value not in TEACHER_PRECISIONS:
            raise ValueError(
                f"Invalid teacher_precision {value!r}: must be one of {list(TEACHER_PRECISIONS)} "
                f"('fp32' disables autocast; 'bf16'/'fp16' run the frozen teacher under autocast)"
            )
        self._precision = value

    @property
    def precision_min_cosine(self):
        """The bound of :meth:`check_precision` (``teacher_precision_min_cosine``), in [-1, 1]."""
        return self._precision_min_cosine

    @precision_min_cosine.setter
    def precision_min_cosine(self, value):
        self._precision_min_cosine = _check_min_cosine(value)

    def check_precision(self, wavs, wav_lens=None):
        """Start-of-run self-check: the low-precision targets of a batch against its fp32 targets.

        Under ``precision`` ``"bf16"`` or ``"fp16"``, the batch is run twice, at that precision and in
        fp32; for each target layer the cosine similarity of every valid frame's low-precision target
        with its fp32 target is computed, its minimum and mean are logged, and the run is refused when
        a minimum is below ``precision_min_cosine`` (or not finite: fp16 overflow). This catches any
        low-precision kernel that computes the teacher wrongly on the device at hand. The case it was
        built for: on CPUs with AMX, oneDNN's bf16 grouped ``Conv1d`` with fewer than 16 channels per
        group and a kernel of 16 or more (a small teacher's positional convolution) returns garbage
        (relative L1 error 1.05-1.12, torch 2.14.1), which drops the per-frame cosine of the tiny test
        teacher's targets to 0.92. Under ``"fp32"`` nothing is computed.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, T]`` clean waveforms (a training batch), on the device of the run.
        wav_lens : torch.Tensor, optional
            ``[B]`` relative lengths.

        Returns
        -------
        dict
            ``{layer: (min cosine, mean cosine)}`` per target layer; empty under ``"fp32"``.

        Raises
        ------
        TeacherPrecisionError
            Naming the precision, the layers below the bound with their cosines, the bound and what to
            change (``teacher_precision: fp32``).

        Example
        -------
        >>> import tempfile
        >>> teacher = FrozenTeacher(save_random_teacher(tempfile.mkdtemp(), num_conv_pos_embedding_groups=4),
        ...                         precision="bf16")
        >>> cosines = teacher.check_precision(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
        >>> sorted(cosines), all(low > 0.99 for low, mean in cosines.values())
        ([4, 8, 12], True)
        >>> teacher.precision_min_cosine = 1.0  # nothing passes
        >>> teacher.check_precision(torch.randn(2, 16000))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        robustdistiller.models.teacher.TeacherPrecisionError: teacher_precision='bf16' gives targets far from ...
        """
        if TEACHER_PRECISIONS[self.precision] is None:
            return {}
        precision = self.precision
        low = self(wavs, wav_lens)
        try:
            self._precision = "fp32"
            reference = self(wavs, wav_lens)
        finally:
            self._precision = precision
        mask = reference.frame_mask
        cosines = {}
        for index, layer in enumerate(self.target_layers):
            frames = torch.nn.functional.cosine_similarity(
                low.layers[:, index][mask].double(), reference.layers[:, index][mask].double(), dim=-1
            )
            cosines[layer] = (float(frames.min()), float(frames.mean())) if frames.numel() else (1.0, 1.0)
        logger.info(
            "Teacher precision self-check (%s vs fp32, %d valid frames of the first batch on %s): per-frame "
            "cosine min / mean %s; bound teacher_precision_min_cosine=%g",
            precision,
            int(mask.sum()),
            wavs.device,
            ", ".join(f"layer {layer} {low:.5f} / {mean:.5f}" for layer, (low, mean) in cosines.items()),
            self.precision_min_cosine,
        )
        # "not >=" also refuses NaN (fp16 overflow)
        failed = {layer: values for layer, values in cosines.items() if not values[0] >= self.precision_min_cosine}
        if failed:
            details = ", ".join(
                f"layer {layer}: min {low:.4f} (mean {mean:.4f})" for layer, (low, mean) in failed.items()
            )
            raise TeacherPrecisionError(
                f"teacher_precision={precision!r} gives targets far from the fp32 ones on this device "
                f"({wavs.device}): per-frame cosine similarity to the fp32 targets on the first batch is "
                f"below teacher_precision_min_cosine={self.precision_min_cosine:g} at {details}. A "
                f"low-precision kernel computes this teacher wrongly here (known case: oneDNN's bf16 grouped "
                f"Conv1d with fewer than 16 channels per group and a kernel of 16 or more, e.g. a small "
                f"teacher's positional convolution, on CPUs with AMX). Run the teacher in fp32 "
                f"(teacher_precision: fp32); lower teacher_precision_min_cosine only to accept these targets."
            )
        return cosines

    def train(self, mode=True):
        """Keeps the teacher in eval mode whatever ``mode`` is (dropout and layerdrop stay off)."""
        return super().train(False)

    def num_frames(self, num_samples):
        """Frame count of the teacher's CNN for ``num_samples`` samples (int or long tensor)."""
        return self.model._get_feat_extract_output_lengths(num_samples)

    def _autocast(self, device_type):
        """The autocast context of the teacher forward on ``device_type``."""
        dtype = TEACHER_PRECISIONS[self.precision]
        if dtype is None:
            return torch.autocast(device_type=device_type, enabled=False)
        if dtype is torch.float16 and device_type != "cuda":
            raise ValueError(
                f"teacher_precision='fp16' needs CUDA: fp16 autocast of the teacher is only supported on "
                f"CUDA devices, but the batch is on '{device_type}'. Use teacher_precision='bf16' or "
                f"'fp32' there."
            )
        return torch.autocast(device_type=device_type, dtype=dtype)

    @contextlib.contextmanager
    def _first_norm_in_fp32(self):
        """Under bf16 / fp16, casts the first CNN conv's output to fp32 (see the class docstring)."""
        conv = None
        if TEACHER_PRECISIONS[self.precision] is not None:
            layers = getattr(getattr(self.model, "feature_extractor", None), "conv_layers", None)
            conv = getattr(layers[0], "conv", None) if layers else None
        if conv is None:
            yield
            return
        handle = conv.register_forward_hook(lambda module, args, output: output.float())
        try:
            yield
        finally:
            handle.remove()

    def forward(self, wavs, wav_lens=None):
        """Computes the target layers of a (padded) batch, without gradient, at ``self.precision``.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, T]`` clean waveforms at 16 kHz (padded samples are zeroed here).
        wav_lens : torch.Tensor, optional
            ``[B]`` relative lengths in (0, 1]; None means all items are full length.

        Returns
        -------
        TeacherOutput
            ``layers`` in fp32 whatever the precision.

        Raises
        ------
        ValueError
            If ``precision`` is ``"fp16"`` and ``wavs`` is not on a CUDA device; if every item is
            shorter than the CNN's receptive field (checked before the model runs; a short item next
            to longer ones gets zero valid frames).
        """
        if self.model.training:  # someone bypassed self.train
            self.model.eval()
        with torch.no_grad(), self._autocast(wavs.device.type), self._first_norm_in_fp32():
            hidden_states, frame_mask = ssl_hidden_states(
                self.model, wavs.float(), wav_lens, per_utterance_norm=self.per_utterance_norm
            )
            if len(hidden_states) != self.config.num_hidden_layers + 1:
                raise RuntimeError(
                    f"Teacher returned {len(hidden_states)} hidden states, expected "
                    f"{self.config.num_hidden_layers + 1} (is layerdrop active?)"
                )
            layers = torch.stack([hidden_states[k] for k in self.target_layers], dim=1).float()
        return TeacherOutput(layers, frame_mask)
