"""The prunable WavLM student (DPHuBERT's ``wavlm_model``), built from a DPHuBERT config dict.

A DPHuBERT HuBERT config (``encoder_num_heads`` / ``encoder_head_dim`` instead of WavLM's original heads,
their ids and the position buckets; DPHuBERT's ``hubert`` models) builds the same module with HuBERT's
plain attention: :func:`hubert_base_config`, :func:`is_hubert_config`.

Layout and parameter names follow torchaudio / DPHuBERT (``feature_extractor.*``,
``encoder.feature_projection.*``, ``encoder.transformer.*``) so DPHuBERT ``.pth`` files load with
``strict=True``. See ``docs/reference/dphubert.md`` "Prunable units", "WavLM attention under pruning",
"Config keys" and "Parameter counts".
"""

import copy
import logging

import torch
import torch.nn.functional as F

from robustdistiller.dpwavlm.components import (
    ChannelLayerNorm,
    ConvLayerBlock,
    ConvolutionalPositionalEmbedding,
    EncoderLayer,
    FeatureExtractor,
    FeatureProjection,
    FeedForward,
    WavLMSelfAttention,
    prune_linear,
    prune_norm,
)
from robustdistiller.dpwavlm.hard_concrete import HardConcrete

logger = logging.getLogger(__name__)

WAVLM_BASE_CONV = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2

#: Keys of a DPHuBERT WavLM config, in DPHuBERT's order (``docs/reference/dphubert.md`` "Config keys").
DPHUBERT_WAVLM_CONFIG_KEYS = (
    "extractor_mode",
    "extractor_conv_layer_config",
    "extractor_conv_bias",
    "encoder_embed_dim",
    "encoder_projection_dropout",
    "encoder_pos_conv_kernel",
    "encoder_pos_conv_groups",
    "encoder_num_layers",
    "encoder_use_attention",
    "encoder_use_feed_forward",
    "encoder_total_num_heads",
    "encoder_remaining_heads",
    "encoder_num_buckets",
    "encoder_max_distance",
    "encoder_attention_dropout",
    "encoder_ff_interm_features",
    "encoder_ff_interm_dropout",
    "encoder_dropout",
    "encoder_layer_norm_first",
    "encoder_layer_drop",
    "aux_num_out",
    "normalize_waveform",
    "extractor_prune_conv_channels",
    "encoder_prune_attention_heads",
    "encoder_prune_attention_layer",
    "encoder_prune_feed_forward_intermediate",
    "encoder_prune_feed_forward_layer",
)

PRUNE_FLAGS = DPHUBERT_WAVLM_CONFIG_KEYS[-5:]

_WAVLM_ONLY_KEYS = ("encoder_total_num_heads", "encoder_remaining_heads", "encoder_num_buckets", "encoder_max_distance")

#: Keys of a DPHuBERT HuBERT config: the WavLM keys with per-layer head counts and one head size instead of
#: the original heads, their ids and the position buckets (``docs/reference/dphubert.md`` "Config keys").
DPHUBERT_HUBERT_CONFIG_KEYS = tuple(
    key
    for wavlm_key in DPHUBERT_WAVLM_CONFIG_KEYS
    for key in (
        ("encoder_num_heads", "encoder_head_dim")
        if wavlm_key == "encoder_total_num_heads"
        else ()
        if wavlm_key in _WAVLM_ONLY_KEYS
        else (wavlm_key,)
    )
)


def is_hubert_config(config):
    """DPHuBERT's own dispatch: a config without ``encoder_remaining_heads`` is a HuBERT."""
    return "encoder_remaining_heads" not in config


def config_keys(config):
    """The DPHuBERT key list of ``config``'s model type (WavLM or HuBERT)."""
    return DPHUBERT_HUBERT_CONFIG_KEYS if is_hubert_config(config) else DPHUBERT_WAVLM_CONFIG_KEYS


def wavlm_base_plus_config(**overrides):
    """The DPHuBERT config of WavLM Base+ (unpruned, no gates); ``overrides`` replace keys.

    Example
    -------
    >>> cfg = wavlm_base_plus_config(encoder_prune_attention_heads=True)
    >>> cfg["encoder_total_num_heads"][:2], cfg["encoder_prune_attention_heads"]
    ([12, 12], True)
    """
    layers = 12
    config = {
        "extractor_mode": "group_norm",
        "extractor_conv_layer_config": list(WAVLM_BASE_CONV),
        "extractor_conv_bias": False,
        "encoder_embed_dim": 768,
        "encoder_projection_dropout": 0.1,
        "encoder_pos_conv_kernel": 128,
        "encoder_pos_conv_groups": 16,
        "encoder_num_layers": layers,
        "encoder_use_attention": [True] * layers,
        "encoder_use_feed_forward": [True] * layers,
        "encoder_total_num_heads": [12] * layers,
        "encoder_remaining_heads": [list(range(12)) for _ in range(layers)],
        "encoder_num_buckets": 320,
        "encoder_max_distance": 800,
        "encoder_attention_dropout": 0.1,
        "encoder_ff_interm_features": [3072] * layers,
        "encoder_ff_interm_dropout": 0.0,
        "encoder_dropout": 0.1,
        "encoder_layer_norm_first": False,
        "encoder_layer_drop": 0.05,
        "aux_num_out": None,
        "normalize_waveform": False,
        **{flag: False for flag in PRUNE_FLAGS},
    }
    unknown = set(overrides) - set(config)
    if unknown:
        raise KeyError(f"wavlm_base_plus_config: unknown keys {sorted(unknown)}")
    config.update(overrides)
    return config


def hubert_base_config(**overrides):
    """The DPHuBERT config of HuBERT Base (unpruned, no gates); ``overrides`` replace keys.

    Example
    -------
    >>> cfg = hubert_base_config()
    >>> cfg["encoder_num_heads"][:2], cfg["encoder_head_dim"], is_hubert_config(cfg)
    ([12, 12], 64, True)
    """
    wavlm = wavlm_base_plus_config()
    config = {key: wavlm[key] for key in DPHUBERT_HUBERT_CONFIG_KEYS if key in wavlm}
    config.update(encoder_num_heads=[12] * wavlm["encoder_num_layers"], encoder_head_dim=64)
    config = {key: config[key] for key in DPHUBERT_HUBERT_CONFIG_KEYS}
    unknown = set(overrides) - set(config)
    if unknown:
        raise KeyError(f"hubert_base_config: unknown keys {sorted(unknown)}")
    config.update(overrides)
    return config


def check_config(config):
    """Raise a ValueError naming the key when ``config`` is not a DPHuBERT WavLM or HuBERT config."""
    keys = config_keys(config)
    missing = [key for key in keys if key not in config]
    extra = [key for key in config if key not in keys]
    if missing or extra:
        raise ValueError(
            f"not a DPHuBERT {'HuBERT' if is_hubert_config(config) else 'WavLM'} config: missing keys {missing}, "
            f"unexpected keys {extra} (expected the keys of docs/reference/dphubert.md 'Config keys')"
        )
    layers = config["encoder_num_layers"]
    per_layer = (
        ("encoder_num_heads",) if is_hubert_config(config) else ("encoder_total_num_heads", "encoder_remaining_heads")
    )
    for key in (
        "encoder_use_attention",
        "encoder_use_feed_forward",
        *per_layer,
        "encoder_ff_interm_features",
    ):
        if len(config[key]) != layers:
            raise ValueError(f"config {key!r} has {len(config[key])} entries, expected encoder_num_layers={layers}")
    if config["extractor_mode"] not in ("group_norm", "layer_norm"):
        raise ValueError(f"config extractor_mode {config['extractor_mode']!r}: expected group_norm or layer_norm")
    if config["encoder_layer_norm_first"]:
        raise NotImplementedError("encoder_layer_norm_first=True (pre-LN, WavLM Large) is not supported")


class Transformer(torch.nn.Module):
    """Positional conv, encoder LayerNorm, dropout, then the post-LN layers (no layer drop)."""

    def __init__(self, pos_conv_embed, dropout, layers, layer_norm, layer_drop):
        super().__init__()
        self.pos_conv_embed = pos_conv_embed
        self.layer_norm = layer_norm
        self.dropout = torch.nn.Dropout(dropout)
        self.layer_drop = layer_drop
        self.layers = torch.nn.ModuleList(layers)

    def get_intermediate_outputs(self, x, attention_mask=None):
        """The output of every layer (DPHuBERT never drops layers here)."""
        x = self.dropout(self.layer_norm(x + self.pos_conv_embed(x)))
        outputs, position_bias = [], None
        for layer in self.layers:
            x, position_bias = layer(x, attention_mask=attention_mask, position_bias=position_bias)
            outputs.append(x)
        return outputs

    def get_num_params(self):
        embed = self.layer_norm.normalized_shape[0]
        n = sum(p.numel() for p in self.pos_conv_embed.parameters()) + 2 * embed
        for layer in self.layers:
            n = n + layer.get_num_params()
        return n


class Encoder(torch.nn.Module):
    """Feature projection + transformer."""

    def __init__(self, feature_projection, transformer):
        super().__init__()
        self.feature_projection = feature_projection
        self.transformer = transformer

    def preprocess(self, features, lengths):
        """Projection output with padded frames zeroed, and the additive key mask ``[B, 1, 1, T]``."""
        x = self.feature_projection(features)
        mask = None
        if lengths is not None:
            padded = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]
            x = x.masked_fill(padded.unsqueeze(-1), 0.0)
            mask = -10000.0 * padded[:, None, None, :].to(dtype=x.dtype)
        return x, mask

    def extract_features(self, features, lengths=None):
        x, mask = self.preprocess(features, lengths)
        return [x] + self.transformer.get_intermediate_outputs(x, attention_mask=mask)


class DPWavLM(torch.nn.Module):
    """Prunable WavLM, built from a DPHuBERT config (use :func:`DPWavLM.from_dphubert_config`).

    Example
    -------
    >>> cfg = tiny_config()
    >>> model = DPWavLM.from_dphubert_config(cfg).eval()
    >>> hidden, lengths = model.extract_features(torch.randn(2, 1600), torch.tensor([1600, 1200]))
    >>> len(hidden), hidden[0].shape, lengths.tolist()
    (5, torch.Size([2, 39, 32]), [39, 29])
    """

    def __init__(self, config):
        super().__init__()
        check_config(config)
        self.config = copy.deepcopy(config)
        c = self.config
        embed = c["encoder_embed_dim"]
        blocks, in_channels = [], 1
        for i, (out_channels, kernel, stride) in enumerate(c["extractor_conv_layer_config"]):
            if c["extractor_mode"] == "layer_norm":
                norm = ChannelLayerNorm(out_channels)
            elif i == 0:
                norm = torch.nn.GroupNorm(out_channels, out_channels)
            else:
                norm = None
            blocks.append(
                ConvLayerBlock(
                    in_channels,
                    out_channels,
                    kernel,
                    stride,
                    c["extractor_conv_bias"],
                    norm,
                    c["extractor_prune_conv_channels"],
                )
            )
            in_channels = out_channels
        self.feature_extractor = FeatureExtractor(blocks)
        layers = []
        for idx in range(c["encoder_num_layers"]):
            attention = None
            if c["encoder_use_attention"][idx] and self.is_hubert:
                attention = WavLMSelfAttention(
                    embed,
                    c["encoder_num_heads"][idx],
                    dropout=c["encoder_attention_dropout"],
                    prune_heads=c["encoder_prune_attention_heads"],
                    prune_layer=c["encoder_prune_attention_layer"],
                    relative_position=False,
                    head_dim=c["encoder_head_dim"],
                )
            elif c["encoder_use_attention"][idx]:
                attention = WavLMSelfAttention(
                    embed,
                    c["encoder_total_num_heads"][idx],
                    remaining_heads=c["encoder_remaining_heads"][idx],
                    dropout=c["encoder_attention_dropout"],
                    has_relative_attention_bias=(idx == 0),
                    num_buckets=c["encoder_num_buckets"],
                    max_distance=c["encoder_max_distance"],
                    prune_heads=c["encoder_prune_attention_heads"],
                    prune_layer=c["encoder_prune_attention_layer"],
                )
            feed_forward = None
            if c["encoder_use_feed_forward"][idx]:
                feed_forward = FeedForward(
                    embed,
                    c["encoder_ff_interm_features"][idx],
                    c["encoder_ff_interm_dropout"],
                    c["encoder_dropout"],
                    c["encoder_prune_feed_forward_intermediate"],
                    c["encoder_prune_feed_forward_layer"],
                )
            layers.append(EncoderLayer(attention, c["encoder_dropout"], embed, feed_forward))
        transformer = Transformer(
            ConvolutionalPositionalEmbedding(embed, c["encoder_pos_conv_kernel"], c["encoder_pos_conv_groups"]),
            c["encoder_dropout"],
            layers,
            torch.nn.LayerNorm(embed),
            c["encoder_layer_drop"],
        )
        projection = FeatureProjection(in_channels, embed, c["encoder_projection_dropout"])
        self.encoder = Encoder(projection, transformer)
        self.aux = torch.nn.Linear(embed, c["aux_num_out"]) if c["aux_num_out"] is not None else None

    @classmethod
    def from_dphubert_config(cls, config):
        """Build the (random-weight) model described by a DPHuBERT WavLM config dict."""
        return cls(config)

    @property
    def is_hubert(self):
        """True for a HuBERT (DPHuBERT's plain attention), False for a WavLM."""
        return is_hubert_config(self.config)

    @property
    def num_layers(self):
        return self.config["encoder_num_layers"]

    @property
    def hidden_size(self):
        return self.config["encoder_embed_dim"]

    def extract_features(self, wavs, lengths=None, return_cnn_features=False):
        """Hidden states in DPHuBERT order and the frame lengths.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, T]`` waveforms (16 kHz).
        lengths : torch.Tensor or None
            ``[B]`` valid samples per waveform (absolute counts); ``None`` = no padding.
        return_cnn_features : bool
            Also return the CNN output ``[B, F, C]`` (gated, times ``dummy_weight``: the input of the
            feature projection, e.g. for an enhancement head).

        Returns
        -------
        hidden_states : list of torch.Tensor
            ``num_layers + 1`` tensors ``[B, F, E]``: index 0 = feature-projection output before the
            positional conv (padded frames zeroed), then every layer's output.
        lengths : torch.Tensor or None
            ``[B]`` valid frames.
        cnn_features : torch.Tensor
            Only with ``return_cnn_features=True``.
        """
        if self.config["normalize_waveform"]:
            wavs = self._normalize(wavs, lengths)
        features, frame_lengths = self.feature_extractor(wavs, lengths)
        hidden = self.encoder.extract_features(features, frame_lengths)
        if return_cnn_features:
            return hidden, frame_lengths, features
        return hidden, frame_lengths

    def last_conv_kept_index(self):
        """Indices of the last-conv channels that ``prune()`` keeps (all when ungated), ascending.

        Call it before ``prune()`` to select the matching input columns of a head that reads the CNN
        features: after ``prune()`` the CNN output equals the gated one at these channels.
        """
        gate = self.feature_extractor.conv_layers[-1].hard_concrete
        if gate is None:
            dummy = self.feature_extractor.dummy_weight
            return torch.arange(dummy.numel(), device=dummy.device)
        was_training = gate.training
        gate.eval()
        index = gate().nonzero().squeeze(-1)
        gate.train(was_training)
        return index

    @staticmethod
    def _normalize(wavs, lengths):
        if lengths is None:
            return F.layer_norm(wavs, wavs.shape[-1:])
        out = torch.zeros_like(wavs)
        for i, n in enumerate(lengths.tolist()):
            out[i, :n] = F.layer_norm(wavs[i, :n], (n,))
        return out

    def forward(self, wavs, lengths=None):
        """Last hidden state (through ``aux`` when configured) and frame lengths (no layer drop)."""
        hidden, frame_lengths = self.extract_features(wavs, lengths)
        x = hidden[-1]
        return (self.aux(x) if self.aux is not None else x), frame_lengths

    def gate_modules(self):
        """``{name: HardConcrete}`` of every gate in the model."""
        return {name: module for name, module in self.named_modules() if isinstance(module, HardConcrete)}

    def expected_num_params(self):
        """Differentiable expected parameter count (float64 tensor), DPHuBERT's ``get_num_params``.

        Excludes the gates' ``log_alpha``, WavLM's ``rel_attn_embed``, ``gru_rel_pos_linear`` and
        ``gru_rel_pos_const`` (``docs/reference/dphubert.md`` "Expected parameter count"); counts ``dummy_weight``.
        """
        conv_params, channels = self.feature_extractor.get_num_params_and_final_out_channels()
        n = conv_params + self.encoder.feature_projection.get_num_params(channels)
        n = n + self.encoder.transformer.get_num_params()
        return torch.as_tensor(n, dtype=torch.float64)

    def num_params_extras(self):
        """Parameters present in the model but not in the count formula (WavLM rel-pos and gating)."""
        n = 0
        for layer in self.encoder.transformer.layers:
            att = layer.attention
            if att is not None and att.gru_rel_pos_linear is not None:
                n += att.gru_rel_pos_linear.weight.numel() + att.gru_rel_pos_linear.bias.numel()
                n += att.gru_rel_pos_const.numel()
                if att.rel_attn_embed is not None:
                    n += att.rel_attn_embed.weight.numel()
        return n

    def gated_unit_counts(self):
        """Deterministic kept counts: conv channels per layer, heads and FFN units per encoder layer.

        A layer whose whole-layer gate keeps nothing counts 0 heads (units).
        """
        conv = [
            blk.hard_concrete.kept_count() if blk.hard_concrete is not None else blk.conv.out_channels
            for blk in self.feature_extractor.conv_layers
        ]
        heads, units = [], []
        for layer in self.encoder.transformer.layers:
            att, ffn = layer.attention, layer.feed_forward
            if att is None:
                heads.append(0)
            else:
                h = att.hard_concrete_for_heads.kept_count() if att.hard_concrete_for_heads else att.num_heads
                if att.hard_concrete_for_layer is not None and att.hard_concrete_for_layer.kept_count() == 0:
                    h = 0
                heads.append(h)
            if ffn is None:
                units.append(0)
            else:
                f = (
                    ffn.hard_concrete_for_intermediate.kept_count()
                    if ffn.hard_concrete_for_intermediate
                    else ffn.output_dense.in_features
                )
                if ffn.hard_concrete_for_layer is not None and ffn.hard_concrete_for_layer.kept_count() == 0:
                    f = 0
                units.append(f)
        return {"conv": conv, "heads": heads, "ffn": units}

    @torch.no_grad()
    def prune(self, keep_bias_branches=False):
        """Materialise the eval-mode gates in place and return the new DPHuBERT config.

        Soft gate values are folded into the following weights (the last conv layer's into
        ``feature_extractor.dummy_weight``). A layer whose heads (or FFN units) are all pruned loses
        its attention (FFN) module, as in DPHuBERT, which drops that branch's output bias; with
        ``keep_bias_branches=True`` a bias-only branch is kept instead (exact, but then
        ``encoder_use_attention`` stays True with ``encoder_remaining_heads`` ``[]``, which
        DPHuBERT's own loader does not build).
        """
        self.eval()
        conv_config, conv_index = self.feature_extractor.prune()
        projection = self.encoder.feature_projection
        if len(conv_index) != projection.layer_norm.normalized_shape[0]:
            prune_norm(projection.layer_norm, conv_index)
            prune_linear(projection.projection, conv_index, "input")
        use_attention, use_feed_forward, remaining_heads, interm = [], [], [], []
        for idx, layer in enumerate(self.encoder.transformer.layers):
            heads = []
            if layer.attention is not None:
                heads = layer.attention.prune()
                if not heads and not keep_bias_branches:
                    if idx == 0 and not self.is_hubert:
                        logger.warning(
                            "prune(): layer 0 keeps no head, its rel_attn_embed is removed: "
                            "no layer gets a position bias any more (DPHuBERT behaviour)"
                        )
                    layer.attention = None
            use_attention.append(layer.attention is not None)
            remaining_heads.append(heads)
            width = 0
            if layer.feed_forward is not None:
                width = layer.feed_forward.prune()
                if width == 0 and not keep_bias_branches:
                    layer.feed_forward = None
            use_feed_forward.append(layer.feed_forward is not None)
            interm.append(width)
        config = copy.deepcopy(self.config)
        heads = (
            {"encoder_num_heads": [len(kept) for kept in remaining_heads]}
            if self.is_hubert
            else {"encoder_remaining_heads": remaining_heads}
        )
        config.update(
            extractor_conv_layer_config=conv_config,
            encoder_use_attention=use_attention,
            encoder_use_feed_forward=use_feed_forward,
            encoder_ff_interm_features=interm,
            **heads,
            **{flag: False for flag in PRUNE_FLAGS},
        )
        self.config = config
        return copy.deepcopy(config)


def tiny_config(num_layers=4, **overrides):
    """A tiny random DPHuBERT WavLM config for tests and doctests (embed 32, 4 heads of 8).

    Example
    -------
    >>> tiny_config()["encoder_embed_dim"]
    32
    """
    config = wavlm_base_plus_config(
        extractor_conv_layer_config=[(16, 10, 5), (16, 3, 2), (16, 3, 2), (16, 2, 2)],
        encoder_embed_dim=32,
        encoder_pos_conv_kernel=16,
        encoder_pos_conv_groups=4,
        encoder_num_layers=num_layers,
        encoder_use_attention=[True] * num_layers,
        encoder_use_feed_forward=[True] * num_layers,
        encoder_total_num_heads=[4] * num_layers,
        encoder_remaining_heads=[list(range(4)) for _ in range(num_layers)],
        encoder_num_buckets=32,
        encoder_max_distance=64,
        encoder_ff_interm_features=[48] * num_layers,
    )
    config.update(overrides)
    return config


def tiny_hubert_config(num_layers=4, **overrides):
    """The HuBERT counterpart of :func:`tiny_config` (embed 32, 4 heads of 8).

    Example
    -------
    >>> tiny_hubert_config()["encoder_num_heads"]
    [4, 4, 4, 4]
    """
    wavlm = tiny_config(num_layers)
    config = hubert_base_config(
        **{key: wavlm[key] for key in DPHUBERT_HUBERT_CONFIG_KEYS if key in wavlm},
        encoder_num_heads=[4] * num_layers,
        encoder_head_dim=8,
    )
    config.update(overrides)
    return config
