"""Reading and writing students in s3prl's ``distiller`` checkpoint format.

The RobustDistiller and DistilHuBERT authors released their students as s3prl pre-training checkpoints
(``docs/reference/robustdistiller.md`` "Authors' checkpoint format"): a pickled dict ::

    {"Distiller": state_dict, "Config": {"distiller": {...}, ...}, "Optimizer": ..., "Step": int,
     "Args": argparse.Namespace}

which s3prl's ``distiller`` upstream reads with ``DistillerConfig(ckpt["Config"]["distiller"])`` and a
strict ``DistillerModel.load_state_dict(ckpt["Distiller"])``. This module converts between that format
and :class:`~robustdistiller.models.student.DistillerStudent`, without s3prl or fairseq installed:

* :func:`load_s3prl_checkpoint` reads such a file **without executing pickled code**: a restricted
  unpickler rebuilds tensors and a short allowlist of plain types; every other global (the authors'
  ``optimizers`` module, ``argparse.Namespace``, and equally ``os.system`` or ``builtins.eval`` in a
  malicious file) becomes an :class:`InertStub` that only records what the pickle asked for. The module
  of a stubbed global is never imported and nothing of it is called.
* :func:`student_from_s3prl` maps the ``distiller`` config and every state-dict key (prediction heads
  included) onto a :class:`~robustdistiller.models.student.DistillerStudent`, refusing with
  :class:`S3prlFormatError` whatever it cannot map exactly (the message names the field or key).
* :func:`student_to_s3prl` writes the keys, shapes and config s3prl's ``DistillerModel`` expects; the
  result loads with ``torch.load(weights_only=True)`` (no optimizer, ``Args`` as a plain dict).

The two conversions are exact inverses: a student written and read back has bit-identical tensors.

Key mapping (s3prl -> ``DistillerStudent``; the backbone is a ``transformers.HubertModel``):

==========================================  ====================================================
s3prl                                       student
==========================================  ====================================================
``feature_extractor.conv_layers.i.0``       ``backbone.feature_extractor.conv_layers.i.conv``
``feature_extractor.conv_layers.0.2``       ``backbone.feature_extractor.conv_layers.0.layer_norm``
``post_extract_proj``                       ``backbone.feature_projection.projection`` (identity
                                            when s3prl has none: last conv dim == embed dim)
``encoder.pos_conv.0.weight_g/_v, bias``    ``backbone.encoder.pos_conv_embed.conv`` (weight norm)
``encoder.layer_norm``                      ``backbone.encoder.layer_norm``
``encoder.layers.i.self_attn.{q,k,v,out}``  ``backbone.encoder.layers.i.attention.{q,k,v,out}``
``encoder.layers.i.self_attn_layer_norm``   ``backbone.encoder.layers.i.layer_norm``
``encoder.layers.i.fc1`` / ``fc2``          ``...feed_forward.intermediate_dense`` / ``output_dense``
``encoder.layers.i.final_layer_norm``       ``backbone.encoder.layers.i.final_layer_norm``
``output_layer.0``                          ``prediction_heads.expand``
``output_layer.2.weight`` [K, I, T]         ``prediction_heads.split_weight`` [K, I, T]
``output_layer.2.bias`` [1, 1, K, T]        ``prediction_heads.split_bias`` [K, T]
``output_layer.2.layer.{weight, bias}``     the same two for K = 1 (``nn.Linear``: weight [T, I])
==========================================  ====================================================
"""

import _compat_pickle
import argparse
import ast
import collections
import io
import logging
import numbers
import os
import pickle
import re
from collections.abc import Mapping

import numpy
import torch
import torch.nn as nn

from robustdistiller.models.student import DistillerStudent, _canonical_name, build_student_config

logger = logging.getLogger(__name__)


class S3prlFormatError(ValueError):
    """A file or object is not an s3prl ``distiller`` checkpoint this module can map exactly."""


# --------------------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------------------


class InertStub:
    """Stand-in for a pickled global that is not on the allowlist: records, never runs anything.

    The restricted unpickler returns a dynamically created subclass of this class (one per
    ``module.name``, with class attributes ``stub_module`` and ``stub_name``) instead of the real
    global. Whatever the pickle then does with it (call it as a function or constructor, restore its
    state, fill it like a list or dict) is only recorded on the instance:

    Attributes
    ----------
    stub_args : tuple
        Positional arguments of the call (e.g. ``("touch x",)`` for a stubbed ``os.system``).
    stub_kwargs : dict
        Keyword arguments of the call.
    stub_state : object
        What the pickle passed to ``__setstate__`` (an object's ``__dict__``), or None.
    stub_items : list
        ``(key, value)`` pairs and appended elements, for stubbed dict / list subclasses.

    Example
    -------
    >>> Stub = stub_class("os", "system")
    >>> call = Stub("rm -rf /")
    >>> isinstance(call, InertStub), call.stub_args, Stub.qualified_name()
    (True, ('rm -rf /',), 'os.system')
    """

    stub_module = "?"
    stub_name = "?"

    def __new__(cls, *args, **kwargs):
        instance = object.__new__(cls)
        object.__setattr__(instance, "stub_args", args)
        object.__setattr__(instance, "stub_kwargs", kwargs)
        object.__setattr__(instance, "stub_state", None)
        object.__setattr__(instance, "stub_items", [])
        return instance

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        object.__setattr__(self, "stub_state", state)

    def __setitem__(self, key, value):
        self.stub_items.append((key, value))

    def append(self, value):
        """Records an element (the pickle ``APPEND`` opcode of a list subclass)."""
        self.stub_items.append(value)

    def extend(self, values):
        """Records elements (the pickle ``APPENDS`` opcode of a list subclass)."""
        self.stub_items.extend(values)

    @classmethod
    def qualified_name(cls):
        """``"module.name"`` of the global this class stands for."""
        return f"{cls.stub_module}.{cls.stub_name}"

    def __repr__(self):
        return f"<InertStub {self.qualified_name()} args={self.stub_args!r} state={self.stub_state!r}>"


_STUB_CLASSES = {}


def stub_class(module, name):
    """The :class:`InertStub` subclass standing for global ``module.name`` (created once, cached).

    Arguments
    ---------
    module : str
    name : str

    Returns
    -------
    type
        A subclass of :class:`InertStub`. Nothing of ``module`` is imported.

    Example
    -------
    >>> stub_class("optimizers", "Optimizer") is stub_class("optimizers", "Optimizer")
    True
    """
    key = (str(module), str(name))
    if key not in _STUB_CLASSES:
        class_name = re.sub(r"\W", "_", f"Stub_{key[0]}_{key[1]}")
        _STUB_CLASSES[key] = type(
            class_name,
            (InertStub,),
            {"stub_module": key[0], "stub_name": key[1], "__module__": __name__},
        )
    return _STUB_CLASSES[key]


_ALLOWED_CODECS = {"latin1", "latin-1", "latin_1", "iso-8859-1", "utf-8", "utf8", "ascii"}


def _safe_codecs_encode(obj, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as pickle protocol 2 uses it for ``bytes``, restricted to plain text codecs."""
    if not isinstance(obj, str) or str(encoding).lower() not in _ALLOWED_CODECS:
        raise pickle.UnpicklingError(f"Refusing _codecs.encode with encoding {encoding!r}")
    return obj.encode(encoding, errors)


def _numpy_multiarray(attribute):
    def resolve():
        core = getattr(numpy, "_core", None)
        multiarray = getattr(core, "multiarray", None) if core is not None else None
        if multiarray is None:
            multiarray = numpy.core.multiarray
        return getattr(multiarray, attribute)

    return resolve


def _numpy_attribute(attribute):
    def resolve():
        return getattr(numpy, attribute)

    return resolve


def _attribute(owner, attribute):
    return lambda: getattr(owner, attribute)


def _build_allowlist():
    """``(module, name) -> resolver`` of every global the restricted unpickler returns for real."""
    allowed = {
        ("collections", "OrderedDict"): lambda: collections.OrderedDict,
        ("collections", "defaultdict"): lambda: collections.defaultdict,
        ("builtins", "set"): lambda: set,
        ("builtins", "frozenset"): lambda: frozenset,
        ("builtins", "slice"): lambda: slice,
        ("builtins", "complex"): lambda: complex,
        ("builtins", "bytearray"): lambda: bytearray,
        ("builtins", "range"): lambda: range,
        ("_codecs", "encode"): lambda: _safe_codecs_encode,
        ("torch", "Size"): lambda: torch.Size,
        ("torch", "device"): lambda: torch.device,
        ("torch", "Tensor"): lambda: torch.Tensor,
        ("torch", "UntypedStorage"): lambda: torch.UntypedStorage,
        ("torch", "TypedStorage"): lambda: torch.TypedStorage,
        ("torch.storage", "UntypedStorage"): lambda: torch.UntypedStorage,
        ("torch.storage", "TypedStorage"): lambda: torch.TypedStorage,
        ("torch.nn.parameter", "Parameter"): lambda: nn.Parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): lambda: torch._tensor._rebuild_from_type_v2,
        ("numpy", "dtype"): _numpy_attribute("dtype"),
        ("numpy", "ndarray"): _numpy_attribute("ndarray"),
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "scalar")] = _numpy_multiarray("scalar")
        allowed[(module, "_reconstruct")] = _numpy_multiarray("_reconstruct")
    for function in (
        "_rebuild_tensor",
        "_rebuild_tensor_v2",
        "_rebuild_tensor_v3",
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
        "_rebuild_qtensor",
        "_rebuild_meta_tensor_no_storage",
        "_rebuild_device_tensor_from_cpu_tensor",
    ):
        if hasattr(torch._utils, function):
            allowed[("torch._utils", function)] = _attribute(torch._utils, function)
    return allowed


_ALLOWED_GLOBALS = _build_allowlist()
_TORCH_ENUM_TYPES = (torch.dtype, torch.layout, torch.memory_format, torch.qscheme)
_NOT_ALLOWED = object()


def _normalise_global(module, name):
    """Python 2 names (``__builtin__``, ``copy_reg``) as Python 3 spells them (names only, no import)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def allowed_global(module, name):
    """The real object for an allowlisted global, or None when the global would be stubbed.

    Allowed: torch's tensor / parameter rebuild functions (``torch._utils``), storage classes,
    ``torch.Size``, ``torch.device``, ``torch.Tensor``, ``torch.nn.parameter.Parameter``, torch dtypes,
    layouts, memory formats and quantisation schemes, ``collections.OrderedDict`` / ``defaultdict``,
    builtins ``set``, ``frozenset``, ``slice``, ``complex``, ``bytearray``, ``range``, ``_codecs.encode``
    (plain text codecs only) and numpy's scalar / dtype / array reconstruction.

    Arguments
    ---------
    module : str
    name : str

    Returns
    -------
    object or None

    Example
    -------
    >>> allowed_global("torch", "float16"), allowed_global("__builtin__", "set")
    (torch.float16, <class 'set'>)
    >>> allowed_global("builtins", "eval") is None, allowed_global("torch", "load") is None
    (True, True)
    """
    value = _resolve_global(module, name)
    return None if value is _NOT_ALLOWED else value


def _resolve_global(module, name):
    module, name = _normalise_global(module, name)
    resolver = _ALLOWED_GLOBALS.get((module, name))
    if resolver is not None:
        return resolver()
    if module == "torch" and isinstance(name, str):
        # vars(), not getattr(): torch's module __getattr__ may import submodules
        value = vars(torch).get(name)
        if isinstance(value, _TORCH_ENUM_TYPES):
            return value
    return _NOT_ALLOWED


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler returning real objects for the allowlist of :func:`allowed_global` only.

    Every other global becomes an :class:`InertStub` subclass (its module is not imported); the
    qualified names are appended to ``stubbed`` (a list per instance, or one list shared by the
    unpicklers of one :func:`restricted_pickle_module`).

    Example
    -------
    >>> import os
    >>> payload = pickle.dumps(os.system)
    >>> unpickler = RestrictedUnpickler(io.BytesIO(payload))
    >>> unpickler.load().qualified_name() in ("posix.system", "nt.system"), len(unpickler.stubbed)
    (True, 1)
    """

    stubbed = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.stubbed is None:
            self.stubbed = []

    def find_class(self, module, name):
        value = _resolve_global(module, name)
        if value is not _NOT_ALLOWED:
            return value
        module, name = _normalise_global(module, name)
        qualified = f"{module}.{name}"
        if qualified not in self.stubbed:
            self.stubbed.append(qualified)
        return stub_class(module, name)


class _RestrictedPickleModule:
    """The module-like object ``torch.load(pickle_module=...)`` needs: ``Unpickler`` and ``load``."""

    __name__ = "robustdistiller_restricted_pickle"

    def __init__(self):
        self.stubbed = []
        self.Unpickler = type("RestrictedUnpickler", (RestrictedUnpickler,), {"stubbed": self.stubbed})

    def load(self, file, **kwargs):
        return self.Unpickler(file, **kwargs).load()

    def loads(self, data, **kwargs):
        return self.load(io.BytesIO(data), **kwargs)


def restricted_pickle_module():
    """A fresh pickle-module-like object for ``torch.load(..., pickle_module=...)``.

    Its ``stubbed`` attribute lists the globals replaced by :class:`InertStub` during its loads.

    Returns
    -------
    object
        With ``Unpickler`` (a :class:`RestrictedUnpickler` subclass), ``load`` and ``loads``.

    Example
    -------
    >>> module = restricted_pickle_module()
    >>> module.loads(pickle.dumps({"a": {1, 2}})), module.stubbed
    ({'a': {1, 2}}, [])
    """
    return _RestrictedPickleModule()


def load_s3prl_checkpoint(path):
    """Loads an s3prl checkpoint (zip or legacy torch format) without executing pickled code.

    s3prl is not needed: tensors and plain containers come back as they were saved, every other pickled
    global (the authors' ``optimizers`` module, ``argparse.Namespace``, ...) as an :class:`InertStub`
    instance. The globals replaced are logged (info) and listed by :func:`stubbed_globals`.

    Arguments
    ---------
    path : str or os.PathLike

    Returns
    -------
    dict
        The checkpoint, tensors on the CPU.

    Raises
    ------
    S3prlFormatError
        If the file does not exist, is not a torch checkpoint, or does not hold a dict (the message
        names the path).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise S3prlFormatError(f"No s3prl checkpoint at '{path}': the file does not exist")
    pickle_module = restricted_pickle_module()
    try:
        checkpoint = torch.load(path, map_location="cpu", pickle_module=pickle_module, weights_only=False)
    except Exception as error:  # any failure to read means: not a (readable) torch checkpoint
        raise S3prlFormatError(
            f"'{path}' is not a readable torch checkpoint: {type(error).__name__}: {error}"
        ) from error
    if not isinstance(checkpoint, dict):
        raise S3prlFormatError(f"'{path}' holds a {type(checkpoint).__name__}, not an s3prl checkpoint dict")
    if pickle_module.stubbed:
        logger.info(
            "Loaded '%s'; replaced %d pickled globals by inert stubs (not imported, not called): %s",
            path,
            len(pickle_module.stubbed),
            ", ".join(pickle_module.stubbed),
        )
    return checkpoint


def stubbed_globals(obj):
    """Qualified names of the :class:`InertStub` globals found anywhere inside ``obj``.

    Arguments
    ---------
    obj : object
        Usually a checkpoint returned by :func:`load_s3prl_checkpoint`.

    Returns
    -------
    list of str
        Sorted, unique ``"module.name"`` strings.

    Example
    -------
    >>> stubbed_globals({"Args": stub_class("argparse", "Namespace")(), "Step": 3})
    ['argparse.Namespace']
    """
    found = set()
    seen = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, (torch.Tensor, str, bytes, numbers.Number)):
            continue
        seen.add(id(item))
        if isinstance(item, type) and issubclass(item, InertStub):
            found.add(item.qualified_name())
        elif isinstance(item, InertStub):
            found.add(type(item).qualified_name())
            stack.extend([item.stub_args, item.stub_kwargs, item.stub_state, item.stub_items])
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
            stack.append(getattr(item, "default_factory", None))
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
    return sorted(found)


# --------------------------------------------------------------------------------------------------
# The distiller config
# --------------------------------------------------------------------------------------------------

DEFAULT_CONV_LAYERS = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"

# s3prl DistillerConfig fields: (name, converter, default). pred_layer_id is handled apart.
_CONFIG_FIELDS = (
    ("extractor_mode", str, "default"),
    ("extractor_conv_feature_layers", str, DEFAULT_CONV_LAYERS),
    ("extractor_dropout", float, 0.0),
    ("feature_grad_mult", float, 1.0),
    ("conv_pos", int, 128),
    ("conv_pos_groups", int, 16),
    ("encoder_layers", int, 1),
    ("encoder_embed_dim", int, 768),
    ("encoder_ffn_embed_dim", int, 3072),
    ("encoder_attention_heads", int, 12),
    ("activation_fn", str, "gelu"),
    ("layer_norm_first", bool, False),
    ("attention_type", str, "original"),
    ("dropout", float, 0.1),
    ("attention_dropout", float, 0.1),
    ("activation_dropout", float, 0.1),
    ("encoder_layerdrop", float, 0.0),
    ("final_dim", int, 768),
    ("out_layer_type", str, "expand-last"),
    ("out_layer_inter_dim", int, -1),
    ("n_tasks", int, 12),
    ("task_emb_type", str, "expand-last"),
    ("task_emb_size", int, 0),
    ("layer_emb_size", int, 0),
    ("loss_type", str, "l1"),
    ("feat_pen_loss", float, 0.0),
    ("cosine_loss", float, 0.0),
    ("init_teacher_conv_layers", bool, False),
    ("init_teacher_encoder_layers", bool, False),
)

# fairseq activation name (s3prl) -> identical Hugging Face activation
_ACTIVATIONS_FROM_S3PRL = {
    "gelu": "gelu",
    "relu": "relu",
    "tanh": "tanh",
    "linear": "linear",
    "gelu_accurate": "gelu_accurate",
    "gelu_fast": "gelu_accurate",  # fairseq's deprecated alias of gelu_accurate
}
_ACTIVATIONS_TO_S3PRL = {
    "gelu": "gelu",
    "relu": "relu",
    "tanh": "tanh",
    "linear": "linear",
    "gelu_accurate": "gelu_accurate",
}

_MAX_CONV_EXPRESSION = 10_000
_MAX_CONV_LAYERS = 1_000
_MAX_CONV_INT = 10**7


def _conv_error(text, reason):
    return S3prlFormatError(f"extractor_conv_feature_layers {text!r}: {reason}")


def _conv_value(node, text):
    """Value of one AST node of a conv-layer expression (lists, tuples, ints, ``+`` and ``*`` only)."""
    if isinstance(node, ast.Constant):
        if type(node.value) is not int:
            raise _conv_error(text, f"only integer constants are allowed, found {node.value!r}")
        if abs(node.value) > _MAX_CONV_INT:
            raise _conv_error(text, f"integer {node.value} is out of range")
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        values = [_conv_value(element, text) for element in node.elts]
        return values if isinstance(node, ast.List) else tuple(values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _conv_value(node.left, text), _conv_value(node.right, text)
        if isinstance(node.op, ast.Add):
            if type(left) is not type(right):
                raise _conv_error(text, f"cannot add a {type(left).__name__} and a {type(right).__name__}")
            result = left + right
        else:
            if isinstance(left, int) and isinstance(right, int):
                result = left * right
            elif isinstance(left, (list, tuple)) and isinstance(right, int):
                result = _repeat(left, right, text)
            elif isinstance(right, (list, tuple)) and isinstance(left, int):
                result = _repeat(right, left, text)
            else:
                raise _conv_error(text, "'*' needs a sequence and an integer")
        if isinstance(result, int) and abs(result) > _MAX_CONV_INT:
            raise _conv_error(text, f"integer {result} is out of range")
        if isinstance(result, (list, tuple)) and len(result) > _MAX_CONV_LAYERS:
            raise _conv_error(text, f"more than {_MAX_CONV_LAYERS} elements")
        return result
    raise _conv_error(text, f"{type(node).__name__} is not allowed (only lists, tuples, integers, '+' and '*')")


def _repeat(sequence, times, text):
    if times < 0 or len(sequence) * times > _MAX_CONV_LAYERS:
        raise _conv_error(text, f"repetition '* {times}' is out of range")
    return sequence * times


def parse_conv_layers(text):
    """Parses s3prl's ``extractor_conv_feature_layers`` safely (no ``eval``).

    Only list and tuple displays, integer constants, ``+`` and ``*`` are accepted.

    Arguments
    ---------
    text : str
        E.g. ``"[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"``.

    Returns
    -------
    list of tuple
        ``(dim, kernel, stride)`` per conv layer.

    Raises
    ------
    S3prlFormatError
        Naming the field, for anything else.

    Example
    -------
    >>> parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 2")
    [(512, 10, 5), (512, 3, 2), (512, 3, 2)]
    >>> parse_conv_layers("__import__('os').system('x')")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    robustdistiller.export.s3prl.S3prlFormatError: extractor_conv_feature_layers ...: Call is not allowed ...
    """
    if not isinstance(text, str):
        raise _conv_error(text, f"expected a string, found a {type(text).__name__}")
    if len(text) > _MAX_CONV_EXPRESSION:
        raise _conv_error(text[:80] + "...", "expression too long")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise _conv_error(text, f"not a valid expression ({type(error).__name__}: {error})") from None
    try:
        layers = _conv_value(tree.body, text)
    except RecursionError:
        raise _conv_error(text, "expression nested too deeply") from None
    if not isinstance(layers, list) or not layers:
        raise _conv_error(text, "expected a non-empty list of (dim, kernel, stride) tuples")
    for layer in layers:
        if not (
            isinstance(layer, tuple)
            and len(layer) == 3
            and all(isinstance(value, int) and value > 0 for value in layer)
        ):
            raise _conv_error(text, f"layer {layer!r} is not a (dim, kernel, stride) tuple of positive ints")
    return layers


def format_conv_layers(layers):
    """Writes conv layers as the compact expression s3prl evaluates (inverse of :func:`parse_conv_layers`).

    Arguments
    ---------
    layers : sequence of (int, int, int)

    Returns
    -------
    str

    Example
    -------
    >>> format_conv_layers([(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2) == DEFAULT_CONV_LAYERS
    True
    """
    parts = []
    index = 0
    layers = [tuple(int(value) for value in layer) for layer in layers]
    while index < len(layers):
        count = 1
        while index + count < len(layers) and layers[index + count] == layers[index]:
            count += 1
        dim, kernel, stride = layers[index]
        parts.append(f"[({dim},{kernel},{stride})]" + (f" * {count}" if count > 1 else ""))
        index += count
    return " + ".join(parts)


def resolve_distiller_config(section):
    """The ``distiller`` config section with s3prl's defaults and conversions applied.

    Mirrors s3prl's ``DistillerConfig``: missing fields take its defaults, values are converted with
    ``int`` / ``float`` / ``bool`` / ``str`` as it does, ``pred_layer_id`` defaults to
    ``1..n_tasks``.

    Arguments
    ---------
    section : dict
        ``checkpoint["Config"]["distiller"]``.

    Returns
    -------
    dict
        Every field of ``DistillerConfig``.

    Raises
    ------
    S3prlFormatError
        If a value cannot be converted (the message names the field).

    Example
    -------
    >>> config = resolve_distiller_config({"encoder_layers": "2", "n_tasks": 3})
    >>> config["encoder_layers"], config["pred_layer_id"], config["feature_grad_mult"]
    (2, [1, 2, 3], 1.0)
    """
    if not isinstance(section, Mapping):
        raise S3prlFormatError(f"The 'distiller' config section is a {type(section).__name__}, not a dict")
    resolved = {}
    for name, converter, default in _CONFIG_FIELDS:
        value = section.get(name, default)
        try:
            resolved[name] = converter(value)
        except (TypeError, ValueError) as error:
            raise S3prlFormatError(
                f"Config field distiller.{name}={value!r} is not a valid {converter.__name__}: {error}"
            ) from None
    raw_layers = section.get("pred_layer_id", range(1, resolved["n_tasks"] + 1))
    try:
        resolved["pred_layer_id"] = [int(layer) for layer in raw_layers]
    except (TypeError, ValueError) as error:
        raise S3prlFormatError(
            f"Config field distiller.pred_layer_id={raw_layers!r} is not a list of ints: {error}"
        ) from None
    return resolved


def _check_mappable(config):
    """Refuses (S3prlFormatError) a resolved distiller config with no exact DistillerStudent equivalent."""
    problems = []
    if config["extractor_mode"] != "default":
        problems.append(
            f"extractor_mode={config['extractor_mode']!r} (only 'default', GroupNorm after the first "
            f"conv, is supported)"
        )
    if config["layer_norm_first"]:
        problems.append("layer_norm_first=True (pre-LN encoder; the student is post-LN)")
    if config["task_emb_type"] != "expand-last":
        problems.append(f"task_emb_type={config['task_emb_type']!r} (only 'expand-last' is supported)")
    if config["out_layer_type"] != "expand-last":
        problems.append(f"out_layer_type={config['out_layer_type']!r} (only 'expand-last' is supported)")
    if config["attention_type"] != "original":
        problems.append(f"attention_type={config['attention_type']!r} (only 'original' is supported)")
    if config["activation_fn"] not in _ACTIVATIONS_FROM_S3PRL:
        problems.append(f"activation_fn={config['activation_fn']!r} (supported: {sorted(_ACTIVATIONS_FROM_S3PRL)})")
    if config["n_tasks"] != len(config["pred_layer_id"]):
        problems.append(
            f"n_tasks={config['n_tasks']} but pred_layer_id={config['pred_layer_id']} has "
            f"{len(config['pred_layer_id'])} entries"
        )
    if config["n_tasks"] < 1:
        problems.append(f"n_tasks={config['n_tasks']} (at least one predicted layer is needed)")
    if config["encoder_layers"] < 1:
        problems.append(f"encoder_layers={config['encoder_layers']} (s3prl then has no transformer encoder at all)")
    for name in (
        "encoder_embed_dim",
        "encoder_ffn_embed_dim",
        "encoder_attention_heads",
        "final_dim",
        "conv_pos",
        "conv_pos_groups",
    ):
        if config[name] < 1:
            problems.append(f"{name}={config[name]} (must be positive)")
    if problems:
        raise S3prlFormatError("Cannot map this s3prl distiller config: " + "; ".join(problems))
    if config["extractor_dropout"] > 0:
        logger.warning(
            "extractor_dropout=%s has no counterpart in the student (no dropout in the CNN); "
            "outputs in eval mode are unaffected",
            config["extractor_dropout"],
        )


def _inner_size(config):
    inter = config["out_layer_inter_dim"]
    return inter if inter > 0 else config["encoder_embed_dim"]


def student_from_config(config, per_utterance_norm=False):
    """A (randomly initialised) DistillerStudent with the architecture of an s3prl distiller config.

    Arguments
    ---------
    config : dict
        The ``distiller`` section (raw or resolved by :func:`resolve_distiller_config`).
    per_utterance_norm : bool
        See :class:`~robustdistiller.models.student.DistillerStudent`.

    Returns
    -------
    DistillerStudent
        When the last conv dim equals ``encoder_embed_dim`` s3prl has no ``post_extract_proj``: the
        student's projection is then set to the identity and frozen (``requires_grad=False``), so the
        student stays exactly what s3prl computes, and exportable, after training.

    Raises
    ------
    S3prlFormatError
        If the config cannot be mapped exactly (the message names the field).

    Example
    -------
    >>> student = student_from_config({"encoder_layers": 2, "encoder_embed_dim": 32,
    ...     "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 2, "conv_pos": 16,
    ...     "conv_pos_groups": 4, "extractor_conv_feature_layers": "[(24,10,5)] + [(24,3,2)] * 2",
    ...     "final_dim": 48, "n_tasks": 2, "pred_layer_id": [3, 6]})
    >>> student.target_layers, student.config.conv_dim, student.prediction_heads.target_size
    ((3, 6), [24, 24, 24], 48)
    """
    config = resolve_distiller_config(config)
    _check_mappable(config)
    layers = parse_conv_layers(config["extractor_conv_feature_layers"])
    try:
        hf_config = build_student_config(
            None,
            num_layers=config["encoder_layers"],
            hidden_size=config["encoder_embed_dim"],
            num_attention_heads=config["encoder_attention_heads"],
            intermediate_size=config["encoder_ffn_embed_dim"],
            conv_dim=[layer[0] for layer in layers],
            conv_kernel=[layer[1] for layer in layers],
            conv_stride=[layer[2] for layer in layers],
            num_conv_pos_embeddings=config["conv_pos"],
            num_conv_pos_embedding_groups=config["conv_pos_groups"],
            hidden_act=_ACTIVATIONS_FROM_S3PRL[config["activation_fn"]],
            hidden_dropout=config["dropout"],
            attention_dropout=config["attention_dropout"],
            activation_dropout=config["activation_dropout"],
            layerdrop=config["encoder_layerdrop"],
            feat_extract_activation="gelu",
            layer_norm_eps=1e-5,
        )
        student = DistillerStudent(
            hf_config,
            target_layers=config["pred_layer_id"],
            feature_grad_mult=config["feature_grad_mult"],
            target_size=config["final_dim"],
            per_utterance_norm=per_utterance_norm,
            head_inner_size=_inner_size(config),
        )
    except (ValueError, RuntimeError) as error:
        raise S3prlFormatError(f"Cannot build a student for this s3prl distiller config: {error}") from error
    if not _has_projection(hf_config):
        projection = student.backbone.feature_projection.projection
        with torch.no_grad():
            projection.weight.copy_(torch.eye(*projection.weight.shape))
            projection.bias.zero_()
        projection.requires_grad_(False)
    return student


# --------------------------------------------------------------------------------------------------
# The state-dict mapping
# --------------------------------------------------------------------------------------------------

# (student backbone name pattern, s3prl name template); names use weight_g / weight_v
_LAYER = r"^encoder\.layers\.(\d+)\."
_BACKBONE_RULES = tuple(
    (re.compile(pattern), template)
    for pattern, template in (
        (r"^feature_extractor\.conv_layers\.(\d+)\.conv\.weight$", r"feature_extractor.conv_layers.\1.0.weight"),
        (r"^feature_extractor\.conv_layers\.0\.layer_norm\.(weight|bias)$", r"feature_extractor.conv_layers.0.2.\1"),
        (r"^feature_projection\.projection\.(weight|bias)$", r"post_extract_proj.\1"),
        (r"^encoder\.pos_conv_embed\.conv\.(weight_g|weight_v|bias)$", r"encoder.pos_conv.0.\1"),
        (r"^encoder\.layer_norm\.(weight|bias)$", r"encoder.layer_norm.\1"),
        (_LAYER + r"attention\.(q|k|v|out)_proj\.(weight|bias)$", r"encoder.layers.\1.self_attn.\2_proj.\3"),
        (_LAYER + r"layer_norm\.(weight|bias)$", r"encoder.layers.\1.self_attn_layer_norm.\2"),
        (_LAYER + r"feed_forward\.intermediate_dense\.(weight|bias)$", r"encoder.layers.\1.fc1.\2"),
        (_LAYER + r"feed_forward\.output_dense\.(weight|bias)$", r"encoder.layers.\1.fc2.\2"),
        (_LAYER + r"final_layer_norm\.(weight|bias)$", r"encoder.layers.\1.final_layer_norm.\2"),
    )
)

_SAME = "same"
_IDENTITY_PROJECTION = "identity projection"


def _to_s3prl(kind, tensor):
    """A student tensor in s3prl's layout (see the module docstring)."""
    if kind == "split_weight_single":
        return tensor[0].t()
    if kind == "split_bias_single":
        return tensor[0]
    if kind == "split_bias":
        return tensor.reshape(1, 1, tensor.shape[0], tensor.shape[1])
    return tensor


def _from_s3prl(kind, tensor):
    """An s3prl tensor in the student's layout (inverse of :func:`_to_s3prl`)."""
    if kind == "split_weight_single":
        return tensor.t().unsqueeze(0)
    if kind == "split_bias_single":
        return tensor.unsqueeze(0)
    if kind == "split_bias":
        return tensor.reshape(tensor.shape[2], tensor.shape[3])
    return tensor


def _has_projection(config):
    """Whether s3prl's DistillerModel has ``post_extract_proj`` (last conv dim != embed dim)."""
    return int(config.conv_dim[-1]) != int(config.hidden_size)


def _mapping(student):
    """``[(student key, s3prl key or None, kind)]`` for every tensor of the student's state dict.

    Raises S3prlFormatError naming the student parameters that have no s3prl counterpart.
    """
    has_projection = _has_projection(student.config)
    num_targets = len(student.target_layers)
    entries = []
    unmapped = []
    for key, value in student.state_dict().items():
        if not isinstance(value, torch.Tensor):
            continue  # _extra_state
        if key.startswith("backbone."):
            name = _canonical_name(key[len("backbone.") :])
            for pattern, template in _BACKBONE_RULES:
                if pattern.match(name):
                    s3prl_key = pattern.sub(template, name)
                    break
            else:
                unmapped.append(key)
                continue
            if s3prl_key.startswith("post_extract_proj.") and not has_projection:
                entries.append((key, None, _IDENTITY_PROJECTION))
            else:
                entries.append((key, s3prl_key, _SAME))
        elif key.startswith("prediction_heads.expand."):
            entries.append((key, "output_layer.0." + key.rsplit(".", 1)[1], _SAME))
        elif key == "prediction_heads.split_weight":
            if num_targets == 1:
                entries.append((key, "output_layer.2.layer.weight", "split_weight_single"))
            else:
                entries.append((key, "output_layer.2.weight", _SAME))
        elif key == "prediction_heads.split_bias":
            if num_targets == 1:
                entries.append((key, "output_layer.2.layer.bias", "split_bias_single"))
            else:
                entries.append((key, "output_layer.2.bias", "split_bias"))
        else:
            unmapped.append(key)
    if unmapped:
        raise S3prlFormatError(
            "These student tensors have no counterpart in s3prl's DistillerModel: " + ", ".join(unmapped)
        )
    return entries


def expected_s3prl_shapes(student):
    """The s3prl state-dict keys and shapes matching a student's architecture.

    Arguments
    ---------
    student : DistillerStudent

    Returns
    -------
    dict
        ``{s3prl key: torch.Size}`` (``weight_g`` / ``weight_v`` naming).

    Example
    -------
    >>> student = student_from_config({"encoder_layers": 1, "encoder_embed_dim": 32,
    ...     "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 2, "conv_pos": 16,
    ...     "conv_pos_groups": 4, "extractor_conv_feature_layers": "[(24,10,5)]", "n_tasks": 1,
    ...     "pred_layer_id": [1], "final_dim": 48})
    >>> shapes = expected_s3prl_shapes(student)
    >>> shapes["encoder.pos_conv.0.weight_g"], shapes["output_layer.2.layer.weight"]
    (torch.Size([1, 1, 16]), torch.Size([48, 32]))
    """
    state = student.state_dict()
    return {
        s3prl_key: _to_s3prl(kind, state[key]).shape
        for key, s3prl_key, kind in _mapping(student)
        if s3prl_key is not None
    }


def _canonical_s3prl_state(state_dict):
    """s3prl state dict with the pos-conv weight norm named ``weight_g`` / ``weight_v``."""
    if not isinstance(state_dict, Mapping):
        raise S3prlFormatError(f"checkpoint['Distiller'] is a {type(state_dict).__name__}, not a state dict")
    canonical = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise S3prlFormatError(f"checkpoint['Distiller'] has a non-string key {key!r}")
        name = _canonical_name(key)
        if name in canonical:
            raise S3prlFormatError(
                f"checkpoint['Distiller'] holds '{name}' twice (as weight_g/weight_v and as parametrizations)"
            )
        canonical[name] = value
    return canonical


def _plain_value(value, where):
    """A configuration / args value as plain Python (what ``torch.load(weights_only=True)`` accepts)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple, range)):
        return [_plain_value(item, where) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _plain_value(item, where) for key, item in value.items()}
    if isinstance(value, InertStub):
        return repr(value)
    logger.warning("%s: %s value %r written as its string", where, type(value).__name__, value)
    return str(value)


def _args_dict(args):
    if args is None:
        return {}
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    if isinstance(args, InertStub) and isinstance(args.stub_state, Mapping):
        args = args.stub_state
    if not isinstance(args, Mapping):
        raise S3prlFormatError(f"args must be a dict or an argparse.Namespace, not {type(args).__name__}")
    return {str(key): _plain_value(value, f"args[{key!r}]") for key, value in args.items()}


def student_from_s3prl(checkpoint, per_utterance_norm=False):
    """Builds a DistillerStudent from an s3prl ``distiller`` checkpoint (the authors' format).

    Arguments
    ---------
    checkpoint : str, os.PathLike or dict
        A path (read with :func:`load_s3prl_checkpoint`) or an already loaded checkpoint dict.
    per_utterance_norm : bool
        See :class:`~robustdistiller.models.student.DistillerStudent` (s3prl itself computes the first
        GroupNorm over the padded batch, i.e. False).

    Returns
    -------
    student : DistillerStudent
        In eval mode, every tensor copied from the checkpoint (strict loading).
    info : dict
        ``step`` (int or None), ``config`` (the ``distiller`` section as stored, a plain dict),
        ``resolved_config`` (with s3prl's defaults), ``stubbed`` (``"module.name"`` of the pickled
        globals replaced by :class:`InertStub`), ``args`` (dict or None), ``identity_projection``
        (True when s3prl has no ``post_extract_proj`` and an identity projection was set).

    Raises
    ------
    S3prlFormatError
        For a missing section, a config that cannot be mapped exactly, a missing or unexpected key or a
        shape mismatch (the message names the fields / keys and shapes).

    Example
    -------
    >>> student = student_from_config({"encoder_layers": 1, "encoder_embed_dim": 32,
    ...     "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 2, "conv_pos": 16,
    ...     "conv_pos_groups": 4, "extractor_conv_feature_layers": "[(24,10,5)] + [(24,3,2)]",
    ...     "n_tasks": 2, "pred_layer_id": [2, 4], "final_dim": 32})
    >>> copy, info = student_from_s3prl(student_to_s3prl(student, step=7))
    >>> info["step"], torch.equal(copy.prediction_heads.split_bias, student.prediction_heads.split_bias)
    (7, True)
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = load_s3prl_checkpoint(checkpoint)
    if not isinstance(checkpoint, Mapping):
        raise S3prlFormatError(f"An s3prl checkpoint is a dict, not a {type(checkpoint).__name__}")
    for section in ("Distiller", "Config"):
        if section not in checkpoint:
            raise S3prlFormatError(
                f"Not an s3prl distiller checkpoint: no '{section}' entry (found {sorted(map(str, checkpoint))})"
            )
    if not isinstance(checkpoint["Config"], Mapping) or "distiller" not in checkpoint["Config"]:
        found = sorted(map(str, checkpoint["Config"])) if isinstance(checkpoint["Config"], Mapping) else None
        raise S3prlFormatError(
            f"Not an s3prl distiller checkpoint: checkpoint['Config'] has no 'distiller' section "
            f"(found {found if found is not None else type(checkpoint['Config']).__name__})"
        )
    raw_config = checkpoint["Config"]["distiller"]
    config = resolve_distiller_config(raw_config)
    student = student_from_config(config, per_utterance_norm=per_utterance_norm)

    source = _canonical_s3prl_state(checkpoint["Distiller"])
    entries = _mapping(student)
    expected = {s3prl_key for _, s3prl_key, _ in entries if s3prl_key is not None}
    missing = sorted(expected - set(source))
    unexpected = sorted(set(source) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append("missing keys: " + ", ".join(missing))
        if unexpected:
            parts.append("unexpected keys: " + ", ".join(unexpected))
        raise S3prlFormatError(
            "checkpoint['Distiller'] does not match the architecture of its 'distiller' config ("
            + "; ".join(parts)
            + ")"
        )
    target_state = student.state_dict()
    new_state = collections.OrderedDict()
    mismatches = []
    for key, s3prl_key, kind in entries:
        reference = target_state[key]
        if s3prl_key is None:  # no post_extract_proj in s3prl: the identity
            identity = torch.eye(*reference.shape) if reference.dim() == 2 else torch.zeros(reference.shape)
            new_state[key] = identity.to(reference.dtype)
            continue
        value = source[s3prl_key]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            found = str(value.dtype) if isinstance(value, torch.Tensor) else type(value).__name__
            raise S3prlFormatError(f"checkpoint['Distiller']['{s3prl_key}'] is not a floating-point tensor ({found})")
        expected_shape = _to_s3prl(kind, reference).shape
        if value.shape != expected_shape:
            mismatches.append(f"'{s3prl_key}': checkpoint {tuple(value.shape)}, expected {tuple(expected_shape)}")
            continue
        new_state[key] = _from_s3prl(kind, value.detach())
    if mismatches:
        raise S3prlFormatError("Shape mismatch in checkpoint['Distiller']: " + "; ".join(mismatches))
    new_state["_extra_state"] = target_state["_extra_state"]
    student.load_state_dict(new_state, strict=True)
    student.eval()

    args = checkpoint.get("Args")
    if isinstance(args, InertStub) and isinstance(args.stub_state, Mapping):
        args = dict(args.stub_state)
    elif isinstance(args, argparse.Namespace):
        args = vars(args)
    elif not isinstance(args, Mapping):
        args = None
    step = checkpoint.get("Step")
    info = {
        "step": int(step) if isinstance(step, numbers.Integral) and not isinstance(step, bool) else None,
        "config": dict(raw_config),
        "resolved_config": config,
        "stubbed": stubbed_globals(checkpoint),
        "args": dict(args) if args is not None else None,
        "identity_projection": not _has_projection(student.config),
    }
    logger.info(
        "Loaded an s3prl distiller (step %s): %d layers, width %d, predicting teacher layers %s",
        info["step"],
        config["encoder_layers"],
        config["encoder_embed_dim"],
        config["pred_layer_id"],
    )
    return student, info


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def s3prl_config_from_student(student):
    """The complete s3prl ``distiller`` config section describing a student.

    Training-only fields take RobustDistiller's values (``loss_type="l1"``, ``cosine_loss=1.0``,
    ``init_teacher_*=True``); ``feature_grad_mult`` is the student's.

    Arguments
    ---------
    student : DistillerStudent

    Returns
    -------
    dict

    Raises
    ------
    S3prlFormatError
        If s3prl's DistillerModel cannot represent the student (the message names the field).

    Example
    -------
    >>> from robustdistiller.models.student import build_student_config
    >>> config = s3prl_config_from_student(DistillerStudent(build_student_config()))
    >>> config["extractor_conv_feature_layers"], config["pred_layer_id"], config["out_layer_inter_dim"]
    ('[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2', [4, 8, 12], 768)
    """
    if not isinstance(student, DistillerStudent):
        raise S3prlFormatError(f"Expected a DistillerStudent, got a {type(student).__name__}")
    config = student.config
    problems = []
    if config.feat_extract_norm != "group":
        problems.append(
            f"feat_extract_norm={config.feat_extract_norm!r} (s3prl's extractor_mode 'default' has a "
            f"GroupNorm after the first conv only)"
        )
    if config.conv_bias:
        problems.append("conv_bias=True (s3prl's conv layers have no bias)")
    if config.feat_proj_layer_norm:
        problems.append("feat_proj_layer_norm=True (s3prl has no LayerNorm before the projection)")
    if config.do_stable_layer_norm:
        problems.append("do_stable_layer_norm=True (pre-LN; s3prl's layer_norm_first is not supported)")
    if config.feat_extract_activation != "gelu":
        problems.append(f"feat_extract_activation={config.feat_extract_activation!r} (s3prl uses GELU)")
    if config.hidden_act not in _ACTIVATIONS_TO_S3PRL:
        problems.append(f"hidden_act={config.hidden_act!r} (supported: {sorted(_ACTIVATIONS_TO_S3PRL)})")
    if float(config.layer_norm_eps) != 1e-5:
        problems.append(f"layer_norm_eps={config.layer_norm_eps} (s3prl's LayerNorms use 1e-5)")
    if getattr(config, "conv_pos_batch_norm", False):
        problems.append("conv_pos_batch_norm=True (s3prl's positional conv uses weight norm)")
    if not len(config.conv_dim) == len(config.conv_kernel) == len(config.conv_stride):
        problems.append("conv_dim, conv_kernel and conv_stride differ in length")
    if problems:
        raise S3prlFormatError("s3prl's DistillerModel cannot represent this student: " + "; ".join(problems))
    if config.feat_proj_dropout:
        logger.warning(
            "feat_proj_dropout=%s is not representable in s3prl (no dropout after the projection)",
            config.feat_proj_dropout,
        )
    if student.per_utterance_norm:
        logger.warning(
            "The student uses per_utterance_norm=True; s3prl computes the first GroupNorm over the padded "
            "batch (outputs differ for padded items only)"
        )
    heads = student.prediction_heads
    layers = list(zip(config.conv_dim, config.conv_kernel, config.conv_stride))
    return {
        "extractor_mode": "default",
        "extractor_conv_feature_layers": format_conv_layers(layers),
        "extractor_dropout": 0.0,
        "feature_grad_mult": float(student.feature_grad_mult),
        "conv_pos": int(config.num_conv_pos_embeddings),
        "conv_pos_groups": int(config.num_conv_pos_embedding_groups),
        "encoder_layers": int(config.num_hidden_layers),
        "encoder_embed_dim": int(config.hidden_size),
        "encoder_ffn_embed_dim": int(config.intermediate_size),
        "encoder_attention_heads": int(config.num_attention_heads),
        "activation_fn": _ACTIVATIONS_TO_S3PRL[config.hidden_act],
        "layer_norm_first": False,
        "attention_type": "original",
        "dropout": float(config.hidden_dropout),
        "attention_dropout": float(config.attention_dropout),
        "activation_dropout": float(config.activation_dropout),
        "encoder_layerdrop": float(config.layerdrop),
        "final_dim": int(heads.target_size),
        "out_layer_type": "expand-last",
        "out_layer_inter_dim": int(heads.inner_size),
        "n_tasks": len(student.target_layers),
        "task_emb_type": "expand-last",
        "task_emb_size": 0,
        "layer_emb_size": 0,
        "loss_type": "l1",
        "feat_pen_loss": 0.0,
        "cosine_loss": 1.0,
        "pred_layer_id": [int(layer) for layer in student.target_layers],
        "init_teacher_conv_layers": True,
        "init_teacher_encoder_layers": True,
    }


def student_to_s3prl(student, path=None, step=0, args=None):
    """Writes a student as an s3prl ``distiller`` checkpoint (what s3prl's distiller upstream loads).

    The state dict holds exactly the keys and shapes of s3prl's ``DistillerModel`` for the student's
    config (pos-conv weight norm as ``weight_g`` / ``weight_v``; no ``post_extract_proj`` when the last
    conv dim equals the width, which requires the student's projection to be the identity). There is no
    ``"Optimizer"`` entry and ``"Args"`` is a plain dict, so the file also loads with
    ``torch.load(weights_only=True)``.

    Arguments
    ---------
    student : DistillerStudent
    path : str or os.PathLike, optional
        Where to ``torch.save`` the checkpoint (parent folders are created).
    step : int
        Training step stored under ``"Step"``.
    args : dict or argparse.Namespace, optional
        Stored under ``"Args"`` as a plain dict (values converted to plain Python types).

    Returns
    -------
    dict
        ``{"Distiller": OrderedDict, "Config": {"distiller": {...}}, "Step": int, "Args": dict}``
        (tensors are copies, on the CPU).

    Raises
    ------
    S3prlFormatError
        If s3prl cannot represent the student (the message names the field or parameter).

    Example
    -------
    >>> student = student_from_config({"encoder_layers": 1, "encoder_embed_dim": 32,
    ...     "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 2, "conv_pos": 16,
    ...     "conv_pos_groups": 4, "extractor_conv_feature_layers": "[(32,10,5)]", "n_tasks": 2,
    ...     "pred_layer_id": [2, 4], "final_dim": 32})
    >>> checkpoint = student_to_s3prl(student, step=3)
    >>> state = checkpoint["Distiller"]
    >>> "post_extract_proj.weight" in state, state["output_layer.2.bias"].shape
    (False, torch.Size([1, 1, 2, 32]))
    """
    distiller_config = s3prl_config_from_student(student)
    entries = _mapping(student)
    state = student.state_dict()
    distiller_state = collections.OrderedDict()
    for key, s3prl_key, kind in entries:
        tensor = state[key].detach()
        if s3prl_key is None:
            weight = state["backbone.feature_projection.projection.weight"]
            bias = state["backbone.feature_projection.projection.bias"]
            if not (
                torch.equal(weight, torch.eye(*weight.shape, dtype=weight.dtype, device=weight.device))
                and torch.equal(bias, torch.zeros_like(bias))
            ):
                raise S3prlFormatError(
                    "s3prl's DistillerModel cannot represent this student: the last conv dim "
                    f"({student.config.conv_dim[-1]}) equals hidden_size, so s3prl has no post_extract_proj "
                    "(identity), but the student's feature_projection.projection is not the identity"
                )
            continue
        distiller_state[s3prl_key] = _to_s3prl(kind, tensor).to("cpu").clone(memory_format=torch.contiguous_format)
    checkpoint = {
        "Distiller": distiller_state,
        "Config": {"distiller": distiller_config},
        "Step": int(step),
        "Args": _args_dict(args),
    }
    if path is not None:
        path = os.fspath(path)
        folder = os.path.dirname(path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        torch.save(checkpoint, path)
        # DEBUG: an export writes this file in its staging folder, a path the user never sees
        logger.debug("Wrote the student as an s3prl distiller checkpoint to '%s'", path)
    return checkpoint


__all__ = [
    "DEFAULT_CONV_LAYERS",
    "InertStub",
    "RestrictedUnpickler",
    "S3prlFormatError",
    "allowed_global",
    "expected_s3prl_shapes",
    "format_conv_layers",
    "load_s3prl_checkpoint",
    "parse_conv_layers",
    "resolve_distiller_config",
    "restricted_pickle_module",
    "s3prl_config_from_student",
    "stub_class",
    "student_from_config",
    "student_from_s3prl",
    "student_to_s3prl",
    "stubbed_globals",
]
