"""DPHuBERT ``.pth`` files, initialisation from HF WavLM folders, and the padded HF WavLM export.

* ``.pth`` = ``{"state_dict", "config", "distill_linear_projs"}`` (``docs/reference/dphubert.md`` "Checkpoint format"),
  read with ``torch.load(weights_only=True)`` and loaded with ``strict=True``;
* :func:`from_hf_model`: any ``transformers.WavLMModel`` (or ``HubertModel``) folder -> :class:`DPWavLM` (key
  map, section 4.5);
* :func:`export_hf_wavlm_padded`: a (pruned) :class:`DPWavLM` -> ``transformers.WavLMModel`` folder with
  native per-layer ``conv_dim``, heads zero-padded at their original indices and FFNs zero-padded to the
  widest layer (section 4.6). Exact when ``dummy_weight == 1``; otherwise refused (or warned) with the
  measured error.
"""

import logging
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
import transformers

from robustdistiller.dpwavlm.model import (
    DPWavLM,
    check_config,
    config_keys,
    hubert_base_config,
    is_hubert_config,
    wavlm_base_plus_config,
)
from robustdistiller.inference.interface import transformers_progress_bars_off
from robustdistiller.models.teacher import load_model_folder

logger = logging.getLogger(__name__)

_POS_CONV = "encoder.transformer.pos_conv_embed.conv."
_HF_POS_CONV = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}


def save_dphubert_checkpoint(path, model, distill_linear_projs=None):
    """Write ``model`` as a DPHuBERT ``.pth`` (its current config, its state_dict, the projections).

    ``distill_linear_projs`` is a state_dict (or module) of the distillation projections, or None
    (an empty OrderedDict is written).
    """
    if isinstance(distill_linear_projs, torch.nn.Module):
        distill_linear_projs = distill_linear_projs.state_dict()
    config = _plain(model.config)
    check_config(config)
    payload = {
        "state_dict": OrderedDict((k, v.detach().cpu()) for k, v in model.state_dict().items()),
        "config": config,
        "distill_linear_projs": OrderedDict(distill_linear_projs or {}),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def _plain(config):
    """Config with plain Python containers (tuples for the conv layers, lists elsewhere)."""
    config = dict(config)
    config["extractor_conv_layer_config"] = [tuple(int(v) for v in c) for c in config["extractor_conv_layer_config"]]
    if "encoder_remaining_heads" in config:  # WavLM (a HuBERT config has per-layer counts)
        config["encoder_remaining_heads"] = [[int(h) for h in heads] for heads in config["encoder_remaining_heads"]]
    else:
        config["encoder_num_heads"] = [int(heads) for heads in config["encoder_num_heads"]]
    return config


def load_dphubert_checkpoint(path, map_location="cpu"):
    """Read a DPHuBERT ``.pth`` with ``weights_only=True``; returns ``(model, checkpoint dict)``.

    The model is built from ``checkpoint["config"]`` (gates included when its ``*_prune_*`` flags are
    set; config keys unknown to DPHuBERT's WavLM are logged and ignored) and loaded with ``strict=True``.
    """
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: not a readable DPHuBERT checkpoint ({error})") from error
    for key in ("state_dict", "config"):
        if key not in checkpoint:
            raise ValueError(
                f"{path}: missing key {key!r}; expected {{'state_dict', 'config', 'distill_linear_projs'}}"
            )
    config = dict(checkpoint["config"])
    known = config_keys(config)
    unknown = [key for key in config if key not in known]
    if unknown:
        kind = "HuBERT" if is_hubert_config(config) else "WavLM"
        logger.warning("%s: ignoring config keys unknown to DPHuBERT's %s: %s", path, kind, unknown)
        config = {key: value for key, value in config.items() if key not in unknown}
    model = DPWavLM.from_dphubert_config(config)
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    return model, checkpoint


def dphubert_config_from_hf(hf_config, **prune_flags):
    """DPHuBERT config of a ``transformers.WavLMConfig`` or ``HubertConfig`` (plus ``*_prune_*`` flags)."""
    model_type = getattr(hf_config, "model_type", "wavlm")
    if model_type not in ("wavlm", "hubert"):
        raise ValueError(f"model_type {model_type!r}: only WavLM and HuBERT folders are supported")
    if hf_config.do_stable_layer_norm:
        raise NotImplementedError("do_stable_layer_norm=True (pre-LN, the Large models) is not supported")
    if model_type == "hubert" and not getattr(hf_config, "feat_proj_layer_norm", True):
        raise NotImplementedError("feat_proj_layer_norm=False: DPHuBERT's feature projection has a LayerNorm")
    layers, heads = hf_config.num_hidden_layers, hf_config.num_attention_heads
    shared = dict(
        extractor_mode={"group": "group_norm", "layer": "layer_norm"}[hf_config.feat_extract_norm],
        extractor_conv_layer_config=list(zip(hf_config.conv_dim, hf_config.conv_kernel, hf_config.conv_stride)),
        extractor_conv_bias=bool(hf_config.conv_bias),
        encoder_embed_dim=hf_config.hidden_size,
        encoder_projection_dropout=hf_config.feat_proj_dropout,
        encoder_pos_conv_kernel=hf_config.num_conv_pos_embeddings,
        encoder_pos_conv_groups=hf_config.num_conv_pos_embedding_groups,
        encoder_num_layers=layers,
        encoder_use_attention=[True] * layers,
        encoder_use_feed_forward=[True] * layers,
        encoder_attention_dropout=hf_config.attention_dropout,
        encoder_ff_interm_features=[hf_config.intermediate_size] * layers,
        encoder_ff_interm_dropout=hf_config.activation_dropout,
        encoder_dropout=hf_config.hidden_dropout,
        encoder_layer_drop=hf_config.layerdrop,
        **prune_flags,
    )
    if model_type == "hubert":
        return hubert_base_config(
            encoder_num_heads=[heads] * layers, encoder_head_dim=hf_config.hidden_size // heads, **shared
        )
    return wavlm_base_plus_config(
        encoder_total_num_heads=[heads] * layers,
        encoder_remaining_heads=[list(range(heads)) for _ in range(layers)],
        encoder_num_buckets=hf_config.num_buckets,
        encoder_max_distance=hf_config.max_bucket_distance,
        **shared,
    )


def _hf_to_dphubert_key(key):
    for name, hf_name in _HF_POS_CONV.items():
        key = key.replace(hf_name, name)
    if key.startswith("feature_projection."):
        return "encoder." + key
    if key.startswith("encoder."):
        return "encoder.transformer." + key[len("encoder.") :]
    return key


def from_hf_model(folder, **prune_flags):
    """A :class:`DPWavLM` initialised from a ``transformers`` WavLM or HuBERT folder (teacher or student init).

    ``prune_flags`` are DPHuBERT config flags, e.g. ``extractor_prune_conv_channels=True``; the gates
    they add keep their random init, ``dummy_weight`` is ones, HF's ``masked_spec_embed`` is ignored.
    A HuBERT folder gives DPHuBERT's HuBERT model (plain attention, ``encoder_num_heads`` config).
    The folder is read by :func:`robustdistiller.models.teacher.load_model_folder` (a truncated or damaged
    ``model.safetensors`` is a :class:`~robustdistiller.models.teacher.TeacherSourceError` naming it).
    """
    folder = Path(folder)
    # The distillation's teacher loader: config.json, model type and complete weight files are checked
    # first, and every parameter must come from the weights; errors name the folder or the damaged file.
    hf_model = load_model_folder(
        str(folder),
        model_class=transformers.AutoModel,
        model_types=("wavlm", "hubert"),
        expected="a WavLM or HuBERT model",
    )
    model_type = hf_model.config.model_type
    model = DPWavLM(dphubert_config_from_hf(hf_model.config, **prune_flags))
    state = {_hf_to_dphubert_key(k): v for k, v in hf_model.state_dict().items() if k != "masked_spec_embed"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed_missing = [k for k in missing if "log_alpha" in k or k == "feature_extractor.dummy_weight"]
    if unexpected or len(allowed_missing) != len(missing):
        raise ValueError(
            f"{folder}: weights do not match a {model_type} of its config: missing "
            f"{sorted(set(missing) - set(allowed_missing))}, unexpected {sorted(unexpected)}"
        )
    return model


def hf_wavlm_config(model):
    """``transformers.WavLMConfig`` of the padded export of ``model`` (uniform heads, max FFN width)."""
    c = model.config
    if model.is_hubert:
        if c["encoder_embed_dim"] % c["encoder_head_dim"]:
            raise ValueError(f"encoder_head_dim {c['encoder_head_dim']} does not divide the embedding dimension")
        heads = {c["encoder_embed_dim"] // c["encoder_head_dim"]}  # padded to the unpruned head count
        config_class, position = transformers.HubertConfig, {}
    else:
        heads = set(c["encoder_total_num_heads"])
        if len(heads) != 1:
            raise ValueError(f"encoder_total_num_heads {c['encoder_total_num_heads']}: HF needs one head count")
        config_class = transformers.WavLMConfig
        position = {"num_buckets": c["encoder_num_buckets"], "max_bucket_distance": c["encoder_max_distance"]}
    conv = c["extractor_conv_layer_config"]
    return config_class(
        hidden_size=c["encoder_embed_dim"],
        num_hidden_layers=c["encoder_num_layers"],
        num_attention_heads=heads.pop(),
        intermediate_size=max(1, max(c["encoder_ff_interm_features"])),
        hidden_act="gelu",
        hidden_dropout=c["encoder_dropout"],
        activation_dropout=c["encoder_ff_interm_dropout"],
        attention_dropout=c["encoder_attention_dropout"],
        feat_proj_dropout=c["encoder_projection_dropout"],
        layerdrop=c["encoder_layer_drop"],
        feat_extract_norm={"group_norm": "group", "layer_norm": "layer"}[c["extractor_mode"]],
        feat_extract_activation="gelu",
        conv_dim=[int(x[0]) for x in conv],
        conv_kernel=[int(x[1]) for x in conv],
        conv_stride=[int(x[2]) for x in conv],
        conv_bias=c["extractor_conv_bias"],
        num_conv_pos_embeddings=c["encoder_pos_conv_kernel"],
        num_conv_pos_embedding_groups=c["encoder_pos_conv_groups"],
        **position,
        do_stable_layer_norm=False,
        apply_spec_augment=False,
        mask_time_prob=0.0,
        mask_feature_prob=0.0,
        layer_norm_eps=1e-5,
    )


def padded_hf_state_dict(model, hf_model):
    """State dict of ``hf_model`` filled from ``model``: missing heads / FFN units are zeros."""
    if any(name.endswith("log_alpha") for name, _ in model.named_parameters()):
        raise ValueError("export_hf_wavlm_padded: the model still has gates; call model.prune() first")
    own = model.state_dict()
    target = {k: torch.zeros_like(v) for k, v in hf_model.state_dict().items()}
    for key, value in own.items():
        if key == "feature_extractor.dummy_weight" or ".transformer.layers." in key:
            continue
        hf_key = key
        if key.startswith(_POS_CONV):
            hf_key = "encoder.pos_conv_embed.conv." + _HF_POS_CONV.get(key[len(_POS_CONV) :], key[len(_POS_CONV) :])
        elif key.startswith("encoder.feature_projection."):
            hf_key = key[len("encoder.") :]
        elif key.startswith("encoder.transformer."):
            hf_key = "encoder." + key[len("encoder.transformer.") :]
        if hf_key not in target or target[hf_key].shape != value.shape:
            raise ValueError(f"export: {key} {tuple(value.shape)} has no HF counterpart {hf_key}")
        target[hf_key] = value.clone()
    for idx, layer in enumerate(model.encoder.transformer.layers):
        prefix = f"encoder.layers.{idx}."
        for name in ("layer_norm", "final_layer_norm"):
            target[prefix + name + ".weight"] = getattr(layer, name).weight.detach().clone()
            target[prefix + name + ".bias"] = getattr(layer, name).bias.detach().clone()
        att = layer.attention
        if not model.is_hubert:
            target[prefix + "attention.gru_rel_pos_const"] = torch.ones_like(
                target[prefix + "attention.gru_rel_pos_const"]
            )
        if att is not None:
            d = att.head_dim
            for j, head in enumerate(att.remaining_heads):
                rows, src = slice(head * d, (head + 1) * d), slice(j * d, (j + 1) * d)
                for proj in ("q_proj", "k_proj", "v_proj"):
                    target[prefix + f"attention.{proj}.weight"][rows] = getattr(att, proj).weight.detach()[src]
                    target[prefix + f"attention.{proj}.bias"][rows] = getattr(att, proj).bias.detach()[src]
                target[prefix + "attention.out_proj.weight"][:, rows] = att.out_proj.weight.detach()[:, src]
            target[prefix + "attention.out_proj.bias"] = att.out_proj.bias.detach().clone()
            if att.gru_rel_pos_linear is not None:
                target[prefix + "attention.gru_rel_pos_linear.weight"] = att.gru_rel_pos_linear.weight.detach().clone()
                target[prefix + "attention.gru_rel_pos_linear.bias"] = att.gru_rel_pos_linear.bias.detach().clone()
                target[prefix + "attention.gru_rel_pos_const"] = att.gru_rel_pos_const.detach().clone()
            if att.rel_attn_embed is not None:
                target[prefix + "attention.rel_attn_embed.weight"] = att.rel_attn_embed.weight.detach().clone()
        ffn = layer.feed_forward
        if ffn is not None:
            width = ffn.output_dense.in_features
            target[prefix + "feed_forward.intermediate_dense.weight"][:width] = ffn.intermediate_dense.weight.detach()
            target[prefix + "feed_forward.intermediate_dense.bias"][:width] = ffn.intermediate_dense.bias.detach()
            target[prefix + "feed_forward.output_dense.weight"][:, :width] = ffn.output_dense.weight.detach()
            target[prefix + "feed_forward.output_dense.bias"] = ffn.output_dense.bias.detach().clone()
    return target


@torch.no_grad()
def hf_export_error(model, hf_model, num_samples=16000, seed=0):
    """Max abs difference of layers 1..L between ``model`` and ``hf_model`` on a seeded probe waveform."""
    generator = torch.Generator().manual_seed(seed)
    wav = torch.randn(1, num_samples, generator=generator)
    was_training = model.training
    model.eval()
    hf_model.eval()
    ours, _ = model.extract_features(wav)
    theirs = hf_model(wav, output_hidden_states=True).hidden_states
    model.train(was_training)
    return max(float((a - b).abs().max()) for a, b in zip(ours[1:], theirs[1:]))


def export_hf_wavlm_padded(model, folder, on_inexact="refuse", atol=1e-4):
    """Write a padded ``transformers.WavLMModel`` copy of a pruned ``model`` to ``folder``.

    Arguments
    ---------
    model : DPWavLM
        A model without gates (after ``prune()``).
    folder : str or Path
        Output folder (``save_pretrained``).
    on_inexact : str
        ``"refuse"`` (raise ValueError) or ``"warn"`` when ``dummy_weight`` is not all ones, which HF
        cannot represent; the message gives the error measured on a probe waveform.
    atol : float
        Tolerance of the probe check that is always run.

    Returns
    -------
    float
        The measured max abs error of hidden states 1..L on the probe.

    Note: HF's ``num_parameters()`` is inflated (all heads and the widest FFN in every layer), and HF's
    ``hidden_states[0]`` is after the positional conv, unlike DPHuBERT's layer 0.
    """
    if on_inexact not in ("refuse", "warn"):
        raise ValueError(f"on_inexact={on_inexact!r}: expected 'refuse' or 'warn'")
    model_class = transformers.HubertModel if model.is_hubert else transformers.WavLMModel
    hf_model = model_class(hf_wavlm_config(model))
    hf_model.load_state_dict(padded_hf_state_dict(model, hf_model), strict=True)
    error = hf_export_error(model, hf_model)
    dummy = model.feature_extractor.dummy_weight
    if not torch.equal(dummy, torch.ones_like(dummy)):
        message = (
            f"export_hf_wavlm_padded: feature_extractor.dummy_weight is not all ones (range "
            f"{float(dummy.min()):.4g}..{float(dummy.max()):.4g}); HF WavLM cannot represent it: "
            f"measured max abs error of hidden states 1..L = {error:.3g} on 1 s of seeded white noise "
            f"(the export's model card measures it on speech-like voices, where it is larger)"
        )
        if on_inexact == "refuse":
            raise ValueError(message)
        warnings.warn(message)
        logger.warning(message)
    elif error > atol:
        raise RuntimeError(f"export_hf_wavlm_padded: padded HF model differs by {error:.3g} (> {atol})")
    Path(folder).mkdir(parents=True, exist_ok=True)
    with transformers_progress_bars_off():
        hf_model.save_pretrained(str(folder))
    return error
