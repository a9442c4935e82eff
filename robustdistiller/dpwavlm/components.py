"""Building blocks of the prunable WavLM (DPHuBERT's ``wav2vec2/components.py``, torchaudio key names).

Every block can carry hard-concrete gates, count its expected parameters differentiably
(``get_num_params``, ``docs/reference/dphubert.md`` "Expected parameter count") and materialise its kept
units in place (``prune``, ``docs/reference/dphubert.md`` "Materialisation"). Soft eval-mode gate values are folded
into the following weights.
"""

import logging
import math

import torch
import torch.nn.functional as F

from robustdistiller.dpwavlm.hard_concrete import HardConcrete

logger = logging.getLogger(__name__)


def _select(param, index, dim):
    """A new Parameter holding ``param`` index-selected along ``dim`` (same requires_grad)."""
    return torch.nn.Parameter(param.data.index_select(dim, index).clone(), requires_grad=param.requires_grad)


def prune_linear(linear, index, dim):
    """Keep the output rows (``dim="output"``) or input columns (``dim="input"``) ``index`` of a Linear."""
    if dim == "output":
        linear.weight = _select(linear.weight, index, 0)
        if linear.bias is not None:
            linear.bias = _select(linear.bias, index, 0)
        linear.out_features = len(index)
    else:
        linear.weight = _select(linear.weight, index, 1)
        linear.in_features = len(index)


def prune_conv1d(conv, index, dim):
    """Keep the output (``dim="output"``) or input (``dim="input"``) channels ``index`` of a Conv1d."""
    if dim == "output":
        conv.weight = _select(conv.weight, index, 0)
        if conv.bias is not None:
            conv.bias = _select(conv.bias, index, 0)
        conv.out_channels = len(index)
    else:
        conv.weight = _select(conv.weight, index, 1)
        conv.in_channels = len(index)


def prune_norm(norm, index):
    """Keep the channels ``index`` of a GroupNorm(C, C) or LayerNorm(C)."""
    norm.weight = _select(norm.weight, index, 0)
    norm.bias = _select(norm.bias, index, 0)
    if isinstance(norm, torch.nn.GroupNorm):
        norm.num_groups = norm.num_channels = len(index)
    else:
        norm.normalized_shape = (len(index),)


class ChannelLayerNorm(torch.nn.LayerNorm):
    """LayerNorm over the channels of a ``[B, C, T]`` tensor (torchaudio's conv ``LayerNorm``)."""

    def forward(self, x):
        return super().forward(x.transpose(-2, -1)).transpose(-2, -1)


class ConvLayerBlock(torch.nn.Module):
    """Conv1d -> optional norm -> GELU -> optional channel gate; also maps lengths."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, bias, layer_norm, prune_conv_channels):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.conv = torch.nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, bias=bias)
        self.layer_norm = layer_norm
        self.hard_concrete = HardConcrete(out_channels, init_mean=0.01) if prune_conv_channels else None

    def forward(self, x, length):
        x = self.conv(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        x = F.gelu(x)
        if self.hard_concrete is not None:
            x = x * self.hard_concrete().unsqueeze(-1)
        if length is not None:
            length = torch.div(length - self.kernel_size, self.stride, rounding_mode="floor") + 1
            length = torch.clamp(length, min=0)
        return x, length

    def get_num_params_and_out_channels(self, in_channels):
        """Expected parameter count given the (expected) input channels, and the expected outputs."""
        if self.hard_concrete is not None:
            out = self.hard_concrete.l0_norm().double()
        else:
            out = self.conv.out_channels
        n = in_channels * out * self.kernel_size
        if self.conv.bias is not None:
            n = n + out
        if self.layer_norm is not None:
            n = n + 2 * out
        return n, out


class FeatureExtractor(torch.nn.Module):
    """The CNN: conv blocks, then a fixed per-channel scale ``dummy_weight`` on ``[B, T, C]``."""

    def __init__(self, conv_layers):
        super().__init__()
        self.conv_layers = torch.nn.ModuleList(conv_layers)
        channels = conv_layers[-1].conv.out_channels
        self.dummy_weight = torch.nn.Parameter(torch.ones(channels), requires_grad=False)

    def forward(self, x, length):
        x = x.unsqueeze(1)
        for layer in self.conv_layers:
            x, length = layer(x, length)
        x = x.transpose(1, 2) * self.dummy_weight
        return x, length

    def get_num_params_and_final_out_channels(self):
        in_channels, total = 1, 0
        for layer in self.conv_layers:
            n, in_channels = layer.get_num_params_and_out_channels(in_channels)
            total = total + n
        return total + in_channels, in_channels

    def prune(self):
        """Materialise the channel gates; returns the new conv config and the kept last-layer channels."""
        new_config = []
        device = self.dummy_weight.device
        index = torch.arange(self.conv_layers[-1].conv.out_channels, device=device)
        for i, layer in enumerate(self.conv_layers):
            if layer.hard_concrete is not None:
                mask = layer.hard_concrete().detach()
                index = mask.nonzero().squeeze(-1)
                if len(index) == 0:
                    raise ValueError(f"prune(): conv layer {i} would keep no channel")
                prune_conv1d(layer.conv, index, "output")
                if layer.layer_norm is not None:
                    prune_norm(layer.layer_norm, index)
                if i + 1 < len(self.conv_layers):
                    nxt = self.conv_layers[i + 1].conv
                    nxt.weight.data *= mask.view(1, -1, 1)
                    prune_conv1d(nxt, index, "input")
                else:
                    self.dummy_weight.data *= mask
                    self.dummy_weight = _select(self.dummy_weight, index, 0)
                layer.hard_concrete = None
            elif i + 1 == len(self.conv_layers):
                index = torch.arange(layer.conv.out_channels, device=device)
            new_config.append((layer.conv.out_channels, layer.kernel_size, layer.stride))
        return new_config, index


class FeatureProjection(torch.nn.Module):
    """LayerNorm(C) -> Linear(C, E) -> dropout."""

    def __init__(self, in_features, out_features, dropout):
        super().__init__()
        self.layer_norm = torch.nn.LayerNorm(in_features)
        self.projection = torch.nn.Linear(in_features, out_features)
        self.dropout = torch.nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.projection(self.layer_norm(x)))

    def get_num_params(self, in_features):
        return 2 * in_features + (in_features + 1) * self.projection.out_features


class WeightNormConv1d(torch.nn.Module):
    """Conv1d with weight norm over ``dim=2`` stored as ``weight_g`` / ``weight_v`` (old weight_norm names)."""

    def __init__(self, channels, kernel_size, groups):
        super().__init__()
        self.groups = groups
        self.padding = kernel_size // 2
        conv = torch.nn.Conv1d(channels, channels, kernel_size, padding=self.padding, groups=groups)
        self.weight_v = torch.nn.Parameter(conv.weight.data.clone())
        self.weight_g = torch.nn.Parameter(self._norm(conv.weight.data))
        self.bias = torch.nn.Parameter(conv.bias.data.clone())

    @staticmethod
    def _norm(v):
        return v.pow(2).sum(dim=(0, 1), keepdim=True).sqrt()

    def forward(self, x):
        weight = self.weight_v * (self.weight_g / self._norm(self.weight_v))
        return F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


class ConvolutionalPositionalEmbedding(torch.nn.Module):
    """WavLM's positional conv: grouped conv (weight norm, dim 2), drop one frame if the kernel is even, GELU."""

    def __init__(self, embed_dim, kernel_size, groups):
        super().__init__()
        self.conv = WeightNormConv1d(embed_dim, kernel_size, groups)
        self.num_remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x):
        x = self.conv(x.transpose(-2, -1))
        if self.num_remove > 0:
            x = x[..., : -self.num_remove]
        return F.gelu(x).transpose(-2, -1)


class WavLMSelfAttention(torch.nn.Module):
    """WavLM self-attention over the ``remaining_heads`` of ``total_num_heads`` original heads.

    The relative position bias (layer 0 only owns ``rel_attn_embed``) and its GRU-style gate are
    computed for all original heads from the 768-dim input, then the remaining heads' rows are selected,
    so pruning never changes them. Head gates multiply each head's context before ``out_proj``; the layer
    gate multiplies ``out_proj``'s output. With 0 remaining heads the module is a bias-only branch.

    ``relative_position=False`` with an explicit ``head_dim`` is HuBERT's plain attention (DPHuBERT's
    ``SelfAttention``: ``total_num_heads`` heads of ``head_dim``, no position bias, no gating parameters).
    """

    def __init__(
        self,
        embed_dim,
        total_num_heads,
        remaining_heads=None,
        dropout=0.0,
        has_relative_attention_bias=False,
        num_buckets=320,
        max_distance=800,
        prune_heads=False,
        prune_layer=False,
        relative_position=True,
        head_dim=None,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.total_num_heads = total_num_heads
        if head_dim is None:
            if total_num_heads <= 0 or embed_dim % total_num_heads:
                raise ValueError(f"embed_dim {embed_dim} is not divisible by total_num_heads {total_num_heads}")
            head_dim = embed_dim // total_num_heads
        self.head_dim = head_dim
        if relative_position and self.head_dim * total_num_heads != embed_dim:
            raise ValueError(f"embed_dim {embed_dim} is not total_num_heads {total_num_heads} x head_dim {head_dim}")
        self.remaining_heads = list(range(total_num_heads)) if remaining_heads is None else list(remaining_heads)
        self.num_heads = len(self.remaining_heads)
        self.scaling = self.head_dim**-0.5
        inner = self.num_heads * self.head_dim
        self.q_proj = torch.nn.Linear(embed_dim, inner)
        self.k_proj = torch.nn.Linear(embed_dim, inner)
        self.v_proj = torch.nn.Linear(embed_dim, inner)
        self.out_proj = torch.nn.Linear(inner, embed_dim)
        self.dropout = torch.nn.Dropout(dropout)
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.rel_attn_embed = (
            torch.nn.Embedding(num_buckets, total_num_heads)
            if has_relative_attention_bias and relative_position
            else None
        )
        self.gru_rel_pos_linear = torch.nn.Linear(self.head_dim, 8) if relative_position else None
        self.gru_rel_pos_const = torch.nn.Parameter(torch.ones(1, total_num_heads, 1, 1)) if relative_position else None
        self.hard_concrete_for_heads = HardConcrete(self.num_heads, init_mean=0.01) if prune_heads else None
        self.hard_concrete_for_layer = HardConcrete(1, init_mean=0.01) if prune_layer else None

    def _relative_positions_bucket(self, relative_positions):
        num_buckets = self.num_buckets // 2
        buckets = (relative_positions > 0).to(torch.long) * num_buckets
        relative_positions = torch.abs(relative_positions)
        max_exact = num_buckets // 2
        is_small = relative_positions < max_exact
        if_large = torch.log(relative_positions.float() / max_exact)
        if_large = if_large / math.log(self.max_distance / max_exact) * (num_buckets - max_exact)
        if_large = torch.clamp((max_exact + if_large).to(torch.long), max=num_buckets - 1)
        return buckets + torch.where(is_small, relative_positions, if_large)

    def compute_bias(self, length):
        """Raw bucketed position bias of all original heads, ``[total_heads, T, T]``."""
        positions = torch.arange(length, dtype=torch.long, device=self.rel_attn_embed.weight.device)
        relative = positions[None, :] - positions[:, None]
        return self.rel_attn_embed(self._relative_positions_bucket(relative)).permute(2, 0, 1)

    def forward(self, x, attention_mask=None, position_bias=None):
        """``x`` [B, T, E]; ``attention_mask`` additive [B, 1, 1, T]; returns (output, raw position bias)."""
        batch, length, _ = x.shape
        if self.rel_attn_embed is not None and position_bias is None:
            position_bias = self.compute_bias(length).unsqueeze(0)
        if self.num_heads == 0:
            output = self.out_proj.bias.expand(batch, length, self.embed_dim)
        else:
            scores = (self.scaling * self._heads(self.q_proj(x))) @ self._heads(self.k_proj(x)).transpose(-2, -1)
            if position_bias is not None:
                x_heads = x.view(batch, length, self.total_num_heads, self.head_dim).transpose(1, 2)
                gates = self.gru_rel_pos_linear(x_heads).view(batch, self.total_num_heads, length, 2, 4).sum(-1)
                gate_a, gate_b = torch.sigmoid(gates).chunk(2, dim=-1)
                gate = gate_a * (gate_b * self.gru_rel_pos_const - 1.0) + 2.0
                scores = scores + (gate * position_bias)[:, self.remaining_heads]
            if attention_mask is not None:
                scores = scores + attention_mask
            scores = scores - scores.max(dim=-1, keepdim=True)[0]
            weights = self.dropout(torch.softmax(scores, dim=-1))
            context = weights @ self._heads(self.v_proj(x))
            if self.hard_concrete_for_heads is not None:
                context = context * self.hard_concrete_for_heads().view(1, -1, 1, 1)
            context = context.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
            output = self.out_proj(context)
        if self.hard_concrete_for_layer is not None:
            output = output * self.hard_concrete_for_layer()
        return output, position_bias

    def _heads(self, x):
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def get_num_params(self):
        heads = self.hard_concrete_for_heads.l0_norm().double() if self.hard_concrete_for_heads else self.num_heads
        n = 3 * (self.embed_dim + 1) * heads * self.head_dim + (heads * self.head_dim + 1) * self.embed_dim
        if self.hard_concrete_for_layer is not None:
            n = n * self.hard_concrete_for_layer.l0_norm().double()
        return n

    def prune(self):
        """Materialise head/layer gates in place; returns the kept original head ids (``[]`` if none)."""
        if self.hard_concrete_for_layer is not None:
            layer_mask = self.hard_concrete_for_layer().detach()
            self.out_proj.weight.data *= layer_mask
            self.out_proj.bias.data *= layer_mask
            self.hard_concrete_for_layer = None
            if float(layer_mask) == 0.0:
                self._keep_heads(torch.zeros(0, dtype=torch.long, device=layer_mask.device))
                return []
        if self.hard_concrete_for_heads is not None:
            head_mask = self.hard_concrete_for_heads().detach()
            self.out_proj.weight.data *= head_mask.repeat_interleave(self.head_dim).view(1, -1)
            self._keep_heads(head_mask.nonzero().squeeze(-1))
            self.hard_concrete_for_heads = None
        return list(self.remaining_heads)

    def _keep_heads(self, head_index):
        offsets = torch.arange(self.head_dim, device=head_index.device).view(1, -1)
        dims = (head_index.view(-1, 1) * self.head_dim + offsets).reshape(-1)
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            prune_linear(proj, dims, "output")
        prune_linear(self.out_proj, dims, "input")
        self.remaining_heads = [self.remaining_heads[i] for i in head_index.tolist()]
        self.num_heads = len(self.remaining_heads)


class FeedForward(torch.nn.Module):
    """Linear(E, F) -> GELU -> dropout -> unit gate -> Linear(F, E) -> dropout -> layer gate."""

    def __init__(self, embed_dim, interm_features, interm_dropout, dropout, prune_intermediate, prune_layer):
        super().__init__()
        self.intermediate_dense = torch.nn.Linear(embed_dim, interm_features)
        self.intermediate_dropout = torch.nn.Dropout(interm_dropout)
        self.output_dense = torch.nn.Linear(interm_features, embed_dim)
        self.output_dropout = torch.nn.Dropout(dropout)
        self.hard_concrete_for_intermediate = (
            HardConcrete(interm_features, init_mean=0.5) if prune_intermediate else None
        )
        self.hard_concrete_for_layer = HardConcrete(1, init_mean=0.01) if prune_layer else None

    def forward(self, x):
        x = self.intermediate_dropout(F.gelu(self.intermediate_dense(x)))
        if self.hard_concrete_for_intermediate is not None:
            x = x * self.hard_concrete_for_intermediate()
        x = self.output_dropout(self.output_dense(x))
        if self.hard_concrete_for_layer is not None:
            x = x * self.hard_concrete_for_layer()
        return x

    def get_num_params(self):
        embed = self.output_dense.out_features
        if self.hard_concrete_for_intermediate is not None:
            units = self.hard_concrete_for_intermediate.l0_norm().double()
        else:
            units = self.output_dense.in_features
        n = (embed + 1) * units + (units + 1) * embed
        if self.hard_concrete_for_layer is not None:
            n = n * self.hard_concrete_for_layer.l0_norm().double()
        return n

    def prune(self):
        """Materialise unit/layer gates in place; returns the kept width."""
        if self.hard_concrete_for_layer is not None:
            layer_mask = self.hard_concrete_for_layer().detach()
            self.output_dense.weight.data *= layer_mask
            self.output_dense.bias.data *= layer_mask
            self.hard_concrete_for_layer = None
            if float(layer_mask) == 0.0:
                self._keep(torch.zeros(0, dtype=torch.long, device=layer_mask.device))
                return 0
        if self.hard_concrete_for_intermediate is not None:
            mask = self.hard_concrete_for_intermediate().detach()
            self.output_dense.weight.data *= mask.view(1, -1)
            self._keep(mask.nonzero().squeeze(-1))
            self.hard_concrete_for_intermediate = None
        return self.output_dense.in_features

    def _keep(self, index):
        prune_linear(self.intermediate_dense, index, "output")
        prune_linear(self.output_dense, index, "input")


class EncoderLayer(torch.nn.Module):
    """Post-LN transformer layer; ``attention`` / ``feed_forward`` may be ``None`` (removed)."""

    def __init__(self, attention, dropout, embed_dim, feed_forward):
        super().__init__()
        self.attention = attention
        self.dropout = torch.nn.Dropout(dropout)
        self.layer_norm = torch.nn.LayerNorm(embed_dim)
        self.feed_forward = feed_forward
        self.final_layer_norm = torch.nn.LayerNorm(embed_dim)

    def forward(self, x, attention_mask=None, position_bias=None):
        if self.attention is not None:
            residual = x
            x, position_bias = self.attention(x, attention_mask=attention_mask, position_bias=position_bias)
            x = residual + self.dropout(x)
        x = self.layer_norm(x)
        if self.feed_forward is not None:
            x = x + self.feed_forward(x)
        return self.final_layer_norm(x), position_bias

    def get_num_params(self):
        embed = self.layer_norm.normalized_shape[0]
        n = 4 * embed
        if self.attention is not None:
            n = n + self.attention.get_num_params()
        if self.feed_forward is not None:
            n = n + self.feed_forward.get_num_params()
        return n
