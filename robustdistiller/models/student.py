"""The DistilHuBERT student: a 2-layer HuBERT-style backbone plus prediction heads.

The student is the model RobustDistiller trains (``docs/reference/robustdistiller.md`` "Student"). Its backbone is a
plain :class:`transformers.HubertModel` (so a trained backbone is saved and loaded as a standard Hugging Face
model) configured as DistilHuBERT:

* CNN feature extractor (7 conv layers, 512 channels, 320x down-sampling, GroupNorm after the first
  conv only, no conv bias); the gradient flowing into it is multiplied by ``feature_grad_mult`` (0.1);
* projection Linear(512 -> 768) with **no** LayerNorm before it;
* convolutional positional embedding, post-LN encoder with 2 transformer layers (768 dim, 12 heads,
  FFN 3072);
* "expand-last" prediction heads mapping the last hidden state to K teacher layers (default 4, 8, 12).

The backbone alone has 23,491,200 parameters with the default configuration; the heads add 3,543,552
for K = 3 (27,034,752 in total).

Padding. :class:`DistillerStudent` zeroes padded samples and passes an attention mask to the encoder,
so padded frames never enter attention and the positional convolution sees zeros beyond the valid
frames, exactly as for an unpadded utterance. The only remaining dependency on padding is the
GroupNorm after the first conv layer, which normalises each channel over the *whole* (padded) time
axis, so zero padding shifts the channel mean and shrinks the variance. Measured on this machine with
random weights and speech-like signals (2 s batch holding 2 s / 1 s / 0.5 s items; relative L2 error of
the valid frames against the unpadded utterance):

==========================  ==========  ==========  ===========
model                       2 s (none)  1 s item    0.5 s item
==========================  ==========  ==========  ===========
student CNN output          <1e-6       0.67-0.75   1.8-1.9
student last hidden state   <1e-6       0.22-0.23   0.39-0.41
teacher layers 4 / 12       <1e-6       0.21-0.25   0.39-0.53
==========================  ==========  ==========  ===========

(student: tiny 64-dim and default 768-dim configs; teachers: WavLM, HuBERT and wav2vec 2.0, tiny, and
WavLM at Base size.)

So the effect is large, not a rounding issue (trained weights will differ in size, but not in kind).
What holds exactly (<1e-6): the unpadded item of a batch; a CNN with per-frame LayerNorm
(``feat_extract_norm="layer"``); and any model run inside :func:`per_utterance_cnn_norm`
(``per_utterance_norm=True`` of :class:`DistillerStudent` and
:class:`~robustdistiller.models.teacher.FrozenTeacher`), which computes that GroupNorm over each item's valid
samples only. The default (False) keeps the plain Hugging Face computation.

Short audio. An item shorter than the CNN's receptive field (400 samples, 25 ms at 16 kHz) has no
feature frame. :meth:`DistillerStudent.forward` checks the lengths before the CNN: if every item is that
short it raises ``ValueError``; otherwise the short item gets zero valid frames (``frame_mask`` row all
False, ``frame_lengths`` 0), finite features (it attends to its first frame only) and no influence on
the other items or on the masked losses (:mod:`robustdistiller.inference.interface` states the rule once).
"""

import logging
import math
import re
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
from transformers import HubertConfig, HubertModel
from transformers.masking_utils import create_bidirectional_mask

from robustdistiller.inference.interface import (  # noqa: F401  (re-exported: part of this module's API)
    absolute_lengths,
    check_input_lengths,
    cnn_receptive_field,
    lengths_to_mask,
    per_utterance_cnn_norm,
)

logger = logging.getLogger(__name__)

# Architecture fields copied from a teacher configuration (WavLM / HuBERT / wav2vec 2.0 share them).
_TEACHER_FIELDS = (
    "conv_dim",
    "conv_kernel",
    "conv_stride",
    "feat_extract_activation",
    "hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "num_conv_pos_embeddings",
    "num_conv_pos_embedding_groups",
    "layer_norm_eps",
    "initializer_range",
)


def num_parameters(module, trainable_only=False):
    """Counts the parameters of a module.

    Arguments
    ---------
    module : torch.nn.Module
    trainable_only : bool
        Count only parameters with ``requires_grad=True``.

    Returns
    -------
    int

    Example
    -------
    >>> num_parameters(torch.nn.Linear(4, 2))
    10
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def build_student_config(teacher_config=None, num_layers=2, **overrides):
    """Builds the DistilHuBERT backbone configuration, optionally derived from a teacher's.

    The CNN (channels, kernels, strides), the model width, heads, FFN size, positional-conv size and
    LayerNorm epsilon are copied from ``teacher_config``; everything that makes the model DistilHuBERT is
    fixed: ``num_hidden_layers=num_layers``, no LayerNorm before the projection, no conv bias, GroupNorm
    after the first conv only, post-LN encoder, no masking, no layerdrop, dropout 0.1 in the encoder
    (hidden, attention, activation). The projection output has no dropout (``feat_proj_dropout=0``),
    as in s3prl's DistilHuBERT.

    Arguments
    ---------
    teacher_config : transformers.PretrainedConfig, optional
        A ``WavLMConfig``, ``HubertConfig`` or ``Wav2Vec2Config``. ``None`` uses HuBERT Base values.
    num_layers : int
        Number of transformer layers of the student (2 for DistilHuBERT).
    **overrides
        Any ``HubertConfig`` field, applied last.

    Returns
    -------
    transformers.HubertConfig

    Example
    -------
    >>> config = build_student_config()
    >>> config.num_hidden_layers, config.hidden_size, config.feat_proj_layer_norm
    (2, 768, False)
    >>> num_parameters(HubertModel(config))
    23491200
    """
    values = {}
    if teacher_config is not None:
        for field in _TEACHER_FIELDS:
            if hasattr(teacher_config, field):
                value = getattr(teacher_config, field)
                values[field] = list(value) if isinstance(value, (list, tuple)) else value
    values.update(
        num_hidden_layers=num_layers,
        feat_proj_layer_norm=False,
        conv_bias=False,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        mask_time_prob=0.0,
        mask_feature_prob=0.0,
        layerdrop=0.0,
        hidden_dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.1,
        feat_proj_dropout=0.0,
        final_dropout=0.1,
    )
    values.update(overrides)
    if "conv_dim" in values:
        values["num_feat_extract_layers"] = len(values["conv_dim"])
    return HubertConfig(**values)


class StudentOutput(NamedTuple):
    """What :meth:`DistillerStudent.forward` returns.

    Attributes
    ----------
    cnn_features : torch.Tensor
        ``[B, F, C]`` CNN output, time-major, after the gradient multiplier (values unchanged).
    hidden_states : tuple of torch.Tensor
        ``N + 1`` tensors ``[B, F, D]``; index 0 is the encoder input (after positional conv, LayerNorm
        and dropout), index i the output of transformer layer i.
    predictions : torch.Tensor
        ``[B, K, F, D]`` predicted teacher layers.
    frame_mask : torch.Tensor
        ``[B, F]`` bool, True on valid (non-padded) frames; all False for an item shorter than the
        CNN's receptive field (400 samples).
    frame_lengths : torch.Tensor or None
        ``[B]`` long valid frames (0 for such an item), on the device of ``wav_lens`` (the host in
        training, so that packing the enhancement LSTM needs no device-to-host copy); None without
        ``wav_lens``.
    projection : torch.Tensor or None
        ``[B, F, D]`` the feature projection's output, *before* the positional convolution and the
        encoder LayerNorm, padded frames zeroed: s3prl's distiller upstream feeds it (``feat_final``)
        to SUPERB's weighted sum as state 0.
    """

    cnn_features: torch.Tensor
    hidden_states: Tuple[torch.Tensor, ...]
    predictions: torch.Tensor
    frame_mask: torch.Tensor
    frame_lengths: Optional[torch.Tensor] = None
    projection: Optional[torch.Tensor] = None


class _GradMultiply(torch.autograd.Function):
    """Identity in the forward pass, multiplies the gradient by ``scale`` in the backward pass."""

    @staticmethod
    def forward(ctx, tensor, scale):
        ctx.scale = scale
        return tensor.clone()

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * ctx.scale, None


def grad_multiply(tensor, scale):
    """Returns ``tensor`` unchanged; the gradient flowing back through it is multiplied by ``scale``.

    Arguments
    ---------
    tensor : torch.Tensor
    scale : float

    Returns
    -------
    torch.Tensor
        Same values (a copy) as ``tensor``.

    Example
    -------
    >>> x = torch.ones(3, requires_grad=True)
    >>> grad_multiply(x, 0.1).sum().backward()
    >>> x.grad
    tensor([0.1000, 0.1000, 0.1000])
    """
    if scale == 1.0:
        return tensor
    return _GradMultiply.apply(tensor, scale)


class PredictionHeads(nn.Module):
    """DistilHuBERT "expand-last" prediction heads: one hidden sequence -> K teacher layers.

    ``Linear(D -> I*K)``, GELU, then K separate ``Linear(I -> T)`` held as one weight ``[K, I, T]``
    (applied as ``x @ weight[k]``, s3prl's ``SplitLinear`` layout) and one bias ``[K, T]``.

    Arguments
    ---------
    hidden_size : int
        Student width ``D``.
    num_targets : int
        Number of predicted teacher layers ``K``.
    target_size : int, optional
        Teacher width ``T`` (defaults to ``hidden_size``).
    inner_size : int, optional
        Width ``I`` of each chunk between the two layers (defaults to ``target_size``; s3prl's
        ``out_layer_inter_dim``).

    Example
    -------
    >>> heads = PredictionHeads(hidden_size=8, num_targets=3)
    >>> heads(torch.randn(2, 5, 8)).shape
    torch.Size([2, 3, 5, 8])
    >>> num_parameters(PredictionHeads(768, 3))
    3543552
    """

    def __init__(self, hidden_size, num_targets=3, target_size=None, inner_size=None):
        super().__init__()
        target_size = hidden_size if target_size is None else int(target_size)
        inner_size = target_size if inner_size is None else int(inner_size)
        self.num_targets = num_targets
        self.target_size = target_size
        self.inner_size = inner_size
        self.expand = nn.Linear(hidden_size, inner_size * num_targets)
        self.activation = nn.GELU()
        self.split_weight = nn.Parameter(torch.empty(num_targets, inner_size, target_size))
        self.split_bias = nn.Parameter(torch.empty(num_targets, target_size))
        bound = 1.0 / math.sqrt(inner_size)
        nn.init.uniform_(self.split_weight, -bound, bound)
        nn.init.uniform_(self.split_bias, -bound, bound)

    def forward(self, hidden):
        """Predicts the target layers.

        Arguments
        ---------
        hidden : torch.Tensor
            ``[B, F, D]`` last hidden state of the student.

        Returns
        -------
        torch.Tensor
            ``[B, K, F, T]``.
        """
        batch_size, num_frames, _ = hidden.shape
        expanded = self.activation(self.expand(hidden))
        expanded = expanded.view(batch_size, num_frames, self.num_targets, self.inner_size)
        predictions = torch.einsum("bfki,kio->bkfo", expanded, self.split_weight)
        return predictions + self.split_bias[None, :, None, :]


_STATE_FORMAT_VERSION = 1

# Config fields that define the computation (a checkpoint must agree on all of them).
_ARCHITECTURE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "conv_dim",
    "conv_kernel",
    "conv_stride",
    "conv_bias",
    "feat_extract_norm",
    "feat_extract_activation",
    "feat_proj_layer_norm",
    "do_stable_layer_norm",
    "num_conv_pos_embeddings",
    "num_conv_pos_embedding_groups",
    "layer_norm_eps",
)


def _plain(value):
    """Tuples as lists, so saved (list) and live (tuple) configuration values compare equal."""
    return list(value) if isinstance(value, tuple) else value


# The encoder's final LayerNorm (post-LN: after the positional convolution) and its default init.
ENCODER_LAYER_NORM_DEFAULTS = {"encoder.layer_norm.weight": 1.0, "encoder.layer_norm.bias": 0.0}


def _canonical_name(name):
    """Maps both weight-norm namings (``weight_g``/``weight_v`` and ``parametrizations``) to one."""
    name = name.replace("parametrizations.weight.original0", "weight_g")
    return name.replace("parametrizations.weight.original1", "weight_v")


class DistillerStudent(nn.Module):
    """DistilHuBERT student: HuBERT-style backbone + prediction heads, with a CNN gradient multiplier.

    Arguments
    ---------
    config : transformers.HubertConfig
        Backbone configuration, usually from :func:`build_student_config`.
    target_layers : sequence of int
        Teacher layers the heads predict (their number ``K`` is what matters here).
    feature_grad_mult : float
        Multiplier of the gradient flowing into the CNN (0.1); forward values are unchanged.
    target_size : int, optional
        Width of the predicted teacher layers (defaults to ``config.hidden_size``).
    per_utterance_norm : bool
        Compute the first CNN layer's GroupNorm over each item's valid samples only
        (:func:`per_utterance_cnn_norm`), making outputs independent of batch padding. False (default)
        keeps the exact Hugging Face ``HubertModel`` computation.
    head_inner_size : int, optional
        Chunk width of the prediction heads (:class:`PredictionHeads` ``inner_size``).

    The state dict carries the architecture (``_extra_state``: backbone config, target layers, head
    sizes), so a checkpoint alone rebuilds the model (:meth:`from_state_dict`), and loading a checkpoint
    of another architecture fails with the differing fields named.

    Example
    -------
    >>> config = build_student_config(hidden_size=32, num_attention_heads=2, intermediate_size=64,
    ...                               conv_dim=[32] * 7, num_conv_pos_embeddings=16,
    ...                               num_conv_pos_embedding_groups=4)
    >>> student = DistillerStudent(config).eval()
    >>> out = student(torch.randn(2, 16000), torch.tensor([1.0, 0.5]))
    >>> out.cnn_features.shape, len(out.hidden_states), out.predictions.shape
    (torch.Size([2, 49, 32]), 3, torch.Size([2, 3, 49, 32]))
    >>> out.frame_mask.sum(dim=1)
    tensor([49, 24])
    """

    def __init__(
        self,
        config,
        target_layers=(4, 8, 12),
        feature_grad_mult=0.1,
        target_size=None,
        per_utterance_norm=False,
        head_inner_size=None,
    ):
        super().__init__()
        self.per_utterance_norm = bool(per_utterance_norm)
        self.config = config
        self.target_layers = tuple(int(layer) for layer in target_layers)
        self.feature_grad_mult = float(feature_grad_mult)
        self.backbone = HubertModel(config)
        self.prediction_heads = PredictionHeads(
            config.hidden_size,
            num_targets=len(self.target_layers),
            target_size=target_size,
            inner_size=head_inner_size,
        )

    def get_extra_state(self):
        """The architecture, saved in the state dict under ``_extra_state`` (plain types only)."""
        return {
            "format_version": _STATE_FORMAT_VERSION,
            "config": self.config.to_dict(),
            "target_layers": list(self.target_layers),
            "feature_grad_mult": self.feature_grad_mult,
            "target_size": self.prediction_heads.target_size,
            "head_inner_size": self.prediction_heads.inner_size,
            "per_utterance_norm": self.per_utterance_norm,
        }

    def set_extra_state(self, state):
        """Checks that a loaded checkpoint has this module's architecture (raises ValueError if not)."""
        if not isinstance(state, dict) or "config" not in state:
            raise ValueError(f"Unrecognised DistillerStudent extra state: {type(state).__name__}")
        current = self.get_extra_state()
        differences = [
            f"{field}: checkpoint {state['config'].get(field)!r}, model {current['config'].get(field)!r}"
            for field in _ARCHITECTURE_FIELDS
            if _plain(state["config"].get(field)) != _plain(current["config"].get(field))
        ]
        for field in ("target_layers", "target_size", "head_inner_size"):
            if field in state and _plain(state[field]) != _plain(current[field]):
                differences.append(f"{field}: checkpoint {state[field]!r}, model {current[field]!r}")
        if differences:
            raise ValueError("The checkpoint holds a student of another architecture: " + "; ".join(differences))
        if bool(state.get("per_utterance_norm", self.per_utterance_norm)) != self.per_utterance_norm:
            logger.warning(
                "The checkpoint was trained with per_utterance_norm=%s; this model uses %s",
                state.get("per_utterance_norm"),
                self.per_utterance_norm,
            )

    @classmethod
    def from_state_dict(cls, state_dict, per_utterance_norm=None):
        """Rebuilds a student from its state dict alone (``student.ckpt`` of a checkpoint).

        Arguments
        ---------
        state_dict : dict
            ``DistillerStudent.state_dict()``, including ``_extra_state``.
        per_utterance_norm : bool, optional
            Overrides the saved setting.

        Returns
        -------
        DistillerStudent
            In eval mode.

        Raises
        ------
        ValueError
            If the state dict has no architecture (``_extra_state``) or does not match it.

        Example
        -------
        >>> config = build_student_config(hidden_size=32, num_attention_heads=2, intermediate_size=64,
        ...     conv_dim=[32] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
        >>> student = DistillerStudent(config, target_layers=(2, 4))
        >>> copy = DistillerStudent.from_state_dict(student.state_dict())
        >>> copy.target_layers, torch.equal(copy.prediction_heads.split_weight,
        ...                                 student.prediction_heads.split_weight)
        ((2, 4), True)
        """
        state = state_dict.get("_extra_state")
        if not isinstance(state, dict) or "config" not in state:
            raise ValueError(
                "This state dict does not describe its architecture (no '_extra_state' entry with a "
                "'config'): it was not saved from a robustdistiller DistillerStudent"
            )
        config = HubertConfig.from_dict(dict(state["config"]))
        if per_utterance_norm is None:
            per_utterance_norm = state.get("per_utterance_norm", False)
        student = cls(
            config,
            target_layers=state["target_layers"],
            feature_grad_mult=state.get("feature_grad_mult", 0.1),
            target_size=state.get("target_size"),
            per_utterance_norm=per_utterance_norm,
            head_inner_size=state.get("head_inner_size"),
        )
        student.load_state_dict(state_dict)
        return student.eval()

    def num_frames(self, num_samples):
        """Frame count of the CNN for ``num_samples`` input samples (int or long tensor)."""
        return self.backbone._get_feat_extract_output_lengths(num_samples)

    def forward(self, wavs, wav_lens=None):
        """Runs the student on a (padded) batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, T]`` float waveforms at 16 kHz (padded samples are zeroed here).
        wav_lens : torch.Tensor, optional
            ``[B]`` relative lengths in (0, 1]; None means all items are full length. Keep them on
            the host (as SpeechBrain's ``PaddedBatch`` makes them): every length computation then
            stays there and the forward pass never waits for the device.

        Returns
        -------
        StudentOutput

        Raises
        ------
        ValueError
            If every item is shorter than the CNN's receptive field (checked before the CNN runs; a
            short item next to longer ones gets zero valid frames, see the module docstring).
        """
        features, frame_mask, frame_lengths = self.extract_cnn_features(wavs, wav_lens, return_lengths=True)
        padded = frame_lengths is not None and bool((frame_lengths < features.shape[1]).any())
        projection, hidden_states = self.encode(features, frame_mask, padded=padded, return_projection=True)
        predictions = self.prediction_heads(hidden_states[-1])
        return StudentOutput(features, hidden_states, predictions, frame_mask, frame_lengths, projection)

    def extract_cnn_features(self, wavs, wav_lens=None, return_lengths=False):
        """CNN features ``[B, F, C]`` (after the gradient multiplier) and the frame mask ``[B, F]``.

        With ``return_lengths``, also the valid frames ``[B]`` (long, on the device of ``wav_lens``;
        None without ``wav_lens``).
        """
        num_samples = wavs.shape[-1]
        sample_lengths = absolute_lengths(wav_lens, num_samples)
        check_input_lengths(sample_lengths, num_samples, cnn_receptive_field(self.config), wavs.shape[0])
        if sample_lengths is not None:
            sample_mask = lengths_to_mask(sample_lengths.to(wavs.device), num_samples)
            wavs = wavs * sample_mask.to(wavs.dtype)
        norm_lengths = sample_lengths if self.per_utterance_norm else None
        with per_utterance_cnn_norm(self.backbone.feature_extractor, norm_lengths):
            # the conv layers of HubertFeatureEncoder.forward, without its in-place requires_grad trick
            # (which fails when the input waveform itself requires a gradient)
            features = wavs[:, None]
            for conv_layer in self.backbone.feature_extractor.conv_layers:
                features = conv_layer(features)
            features = features.transpose(1, 2)
        features = grad_multiply(features, self.feature_grad_mult)
        num_frames = features.shape[1]
        frame_lengths = None
        if sample_lengths is None:
            frame_mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        else:
            frame_lengths = self.num_frames(sample_lengths).clamp(min=0, max=num_frames)
            frame_mask = lengths_to_mask(frame_lengths.to(features.device), num_frames)
        if return_lengths:
            return features, frame_mask, frame_lengths
        return features, frame_mask

    def encode(self, features, frame_mask, padded=None, return_projection=False):
        """Projection + transformer encoder on CNN features, keeping every hidden state.

        Mirrors ``HubertEncoder.forward`` (post-LN) but returns all hidden states.

        Arguments
        ---------
        features : torch.Tensor
            ``[B, F, C]`` CNN features.
        frame_mask : torch.Tensor
            ``[B, F]`` bool valid-frame mask (an all-False row, an item without valid frames, attends
            to its first frame so that its features stay finite).
        padded : bool, optional
            Whether any frame is padding (known on the host from the lengths); None reads it from
            ``frame_mask`` (a device-to-host synchronisation on a GPU).
        return_projection : bool
            Also return the feature projection's output (before the positional convolution).

        Returns
        -------
        tuple of torch.Tensor
            ``N + 1`` tensors ``[B, F, D]`` (with ``return_projection``: ``(projection, that tuple)``).
        """
        backbone = self.backbone
        hidden = backbone.feature_projection(features)
        hidden = hidden.masked_fill(~frame_mask.unsqueeze(-1), 0.0)
        projection = hidden
        encoder = backbone.encoder
        attention_mask = None
        if padded is None:
            padded = not bool(frame_mask.all())
        if padded:
            # an item without a valid frame attends to its first frame: no fully masked attention row
            # (NaN with some attention backends); computed on the device, without a host read
            attention_frames = frame_mask.clone()
            attention_frames[:, 0] |= ~frame_mask.any(dim=1)
            # no skip check: HF's test for an all-valid mask would read the mask on the host
            attention_mask = create_bidirectional_mask(
                config=backbone.config,
                inputs_embeds=hidden,
                attention_mask=attention_frames,
                allow_is_bidirectional_skip=False,
            )
        hidden = hidden + encoder.pos_conv_embed(hidden)
        hidden = encoder.dropout(encoder.layer_norm(hidden))
        hidden_states = [hidden]
        for layer in encoder.layers:
            if self.training and backbone.config.layerdrop > 0.0:
                if torch.rand([]) < backbone.config.layerdrop:
                    hidden_states.append(hidden)
                    continue
            hidden = layer(hidden, attention_mask=attention_mask)
            if isinstance(hidden, tuple):
                hidden = hidden[0]
            hidden_states.append(hidden)
        if return_projection:
            return projection, tuple(hidden_states)
        return tuple(hidden_states)

    @torch.no_grad()
    def init_from_teacher(self, teacher_model, copy_encoder_layer_norm=False):
        """Copies CNN, projection, positional conv and the first N layers from the teacher.

        As s3prl's DistilHuBERT and the RobustDistiller authors do, the encoder's final LayerNorm
        (``encoder.layer_norm``, applied after the positional convolution in the post-LN encoder) is
        *not* copied by default: it is set to its default initialisation (weight 1, bias 0),
        explicitly, so a student that was already initialised or trained is reset too. With
        ``copy_encoder_layer_norm=True`` it is copied from the teacher like everything else.

        Student parameters are mapped to the teacher's by name (both follow the Hugging Face
        WavLM/HuBERT/wav2vec 2.0 layout; the two weight-norm namings of the positional conv,
        ``weight_g/weight_v`` and ``parametrizations.weight.original0/1``, are treated as one).
        Teacher parameters with no student counterpart are dropped: the LayerNorm before the projection,
        WavLM's relative position bias and gates (``rel_attn_embed``, ``gru_rel_pos_*``), the mask
        embedding and layers N+1.. (and, by default, the encoder LayerNorm). The prediction heads are
        left as they are.

        Arguments
        ---------
        teacher_model : transformers.PreTrainedModel or FrozenTeacher
            A WavLM / HuBERT / wav2vec 2.0 model (a task model such as ``HubertForCTC`` or a
            :class:`~robustdistiller.models.teacher.FrozenTeacher` is unwrapped to its base model).
        copy_encoder_layer_norm : bool
            False (default, the authors' and s3prl's choice): ``encoder.layer_norm`` is reset to
            weight 1, bias 0. True: it is copied from the teacher.

        Returns
        -------
        dict
            ``{"copied": [student parameter names], "dropped": [teacher parameter names],
            "kept_default": [student parameter names set to their default init]}``
            (``kept_default`` is empty when ``copy_encoder_layer_norm`` is True).

        Raises
        ------
        ValueError
            If a student parameter has no teacher counterpart or the shapes differ (the message names
            the parameter and both shapes).
        """
        teacher = getattr(teacher_model, "model", teacher_model)
        teacher = getattr(teacher, "base_model", teacher)
        teacher_params = {_canonical_name(n): p for n, p in teacher.named_parameters()}
        teacher_config = getattr(teacher, "config", None)
        if teacher_config is not None:
            teacher_norm = getattr(teacher_config, "feat_extract_norm", "group")
            if teacher_norm != self.config.feat_extract_norm:
                logger.warning(
                    "Teacher CNN uses feat_extract_norm=%r, the student %r: norm weights copied anyway",
                    teacher_norm,
                    self.config.feat_extract_norm,
                )
            if getattr(teacher_config, "do_stable_layer_norm", False):
                logger.warning("Teacher is pre-LN (do_stable_layer_norm); the student is post-LN")
        copied, kept_default = [], []
        used = set()
        for name, param in self.backbone.named_parameters():
            key = _canonical_name(name)
            if not copy_encoder_layer_norm and key in ENCODER_LAYER_NORM_DEFAULTS:
                param.fill_(ENCODER_LAYER_NORM_DEFAULTS[key])
                kept_default.append(name)
                continue
            if key not in teacher_params:
                raise ValueError(
                    f"Cannot initialise student parameter '{name}' from the teacher: the teacher "
                    f"({type(teacher).__name__}) has no parameter '{key}'"
                )
            source = teacher_params[key]
            if source.shape != param.shape:
                raise ValueError(
                    f"Shape mismatch for student parameter '{name}': student {tuple(param.shape)}, "
                    f"teacher {tuple(source.shape)}; build the student with "
                    f"build_student_config(teacher.config)"
                )
            param.copy_(source.detach().to(param.dtype))
            copied.append(name)
            used.add(key)
        dropped = [name for name in teacher_params if name not in used]
        layer_pattern = re.compile(r"^encoder\.layers\.(\d+)\.")
        num_layers = len(self.backbone.encoder.layers)
        later_layers = sorted(
            {int(m.group(1)) for m in map(layer_pattern.match, dropped) if m and int(m.group(1)) >= num_layers}
        )
        others = [
            name
            for name in dropped
            if not (layer_pattern.match(name) and int(layer_pattern.match(name).group(1)) >= num_layers)
        ]
        logger.info(
            "Initialised %d student tensors from %s; dropped %d teacher tensors: transformer layers %s "
            "(0-based) and %s",
            len(copied),
            type(teacher).__name__,
            len(dropped),
            later_layers,
            others,
        )
        if kept_default:
            logger.info(
                "Left %s at its default initialisation (weight 1, bias 0), as s3prl and the authors do "
                "(copy_encoder_layer_norm=False)",
                kept_default,
            )
        return {"copied": copied, "dropped": dropped, "kept_default": kept_default}
