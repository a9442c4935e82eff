"""Padding-safe loading of an exported student in ``transformers`` and in SpeechBrain recipes.

This module is **standalone** (torch and transformers only): every export folder carries a copy,
``modeling_robustdistiller.py``, named by the ``auto_map`` of its ``config.json``, so that

.. code-block:: python

    model = AutoModel.from_pretrained("exported_student", trust_remote_code=True)
    inputs = AutoFeatureExtractor.from_pretrained("exported_student")(waves, sampling_rate=16000,
                                                                     padding=True, return_tensors="pt")
    hidden_states = model(**inputs, output_hidden_states=True).hidden_states

gives every utterance of a padded batch the features it has alone. Why a model class: the first CNN layer of
HuBERT / WavLM / wav2vec 2.0 Base (and of the student) normalises each channel with a GroupNorm over the whole
time axis, padding included, so a plain ``HubertModel`` changes a short utterance's features when it is
batched with a longer one (about 8 % relative L1 at 22 % padding, 30 % at 61 %). :class:`PaddingSafeHubertModel`
computes that GroupNorm over each utterance's valid samples (read from ``attention_mask``); everything else is
``HubertModel``'s, with the same weights and state-dict keys. Without an ``attention_mask`` it is
``HubertModel`` exactly.

:class:`RobustDistillerSSL` is the same model behind the signature of SpeechBrain's own SSL wrappers
(``speechbrain.integrations.huggingface.HuBERT``: ``forward(wav, wav_lens)``, ``output_all_hiddens``, ``freeze``,
``output_norm``), so one line of a recipe YAML swaps it in.

It repeats on purpose, in plain autograd, what :mod:`robustdistiller.inference.interface` does for the trained
model (``per_utterance_cnn_norm``'s memory-saving masked GroupNorm, the lengths-to-mask helpers, the progress-bar
switch): that module imports SpeechBrain, which ``trust_remote_code`` users need not have; the export's ``--verify``
checks both give the same features.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import HubertModel
from transformers.utils import logging as transformers_logging

CNN_RECEPTIVE_FIELD = 400
"""Samples of the wav2vec 2.0 / HuBERT CNN's receptive field: shorter audio gives no frame."""


class ValidStepsGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` over ``[B, C, T]`` whose statistics use only each item's first ``step_lengths`` steps.

    Set :attr:`step_lengths` (``[B]``) before a forward pass and reset it to None after; with None it is
    ``nn.GroupNorm``. Padded steps are normalised with their item's statistics.

    Example
    -------
    >>> norm = ValidStepsGroupNorm(4, 4)
    >>> inputs = torch.randn(2, 4, 10)
    >>> norm.step_lengths = torch.tensor([10, 6])
    >>> padded = norm(inputs)
    >>> norm.step_lengths = None
    >>> torch.allclose(padded[1:, :, :6], norm(inputs[1:, :, :6]), atol=1e-5)
    True
    """

    step_lengths = None

    def forward(self, inputs):
        if self.step_lengths is None:
            return super().forward(inputs)
        batch, channels, steps = inputs.shape
        # statistics in float32: a float16 sum of squares over minutes of audio overflows
        values = inputs.float()
        mask = torch.arange(steps, device=inputs.device)[None, :] < self.step_lengths.to(inputs.device)[:, None]
        mask = mask[:, None, None, :].float()  # [B, 1, 1, T]
        grouped = values.reshape(batch, self.num_groups, channels // self.num_groups, steps)
        count = mask.sum(dim=-1, keepdim=True).clamp(min=1) * (channels // self.num_groups)
        mean = (grouped * mask).sum(dim=(-2, -1), keepdim=True) / count
        variance = (((grouped - mean) * mask) ** 2).sum(dim=(-2, -1), keepdim=True) / count
        normalised = ((grouped - mean) / torch.sqrt(variance + self.eps)).reshape(batch, channels, steps)
        if self.affine:
            normalised = normalised * self.weight.float()[None, :, None] + self.bias.float()[None, :, None]
        return normalised.to(inputs.dtype)


class PaddingSafeHubertModel(HubertModel):
    """``HubertModel`` whose features of a padded batch equal each utterance's own (given ``attention_mask``).

    Padded samples are zeroed, the first CNN layer's GroupNorm uses each item's valid samples only
    (:class:`ValidStepsGroupNorm`), and the mask reaches the encoder as in ``HubertModel``. An item shorter than
    the CNN's receptive field (400 samples) keeps one attended frame, so its (meaningless) features stay finite.

    Example
    -------
    >>> from transformers import HubertConfig
    >>> config = HubertConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=1, intermediate_size=64,
    ...                       conv_dim=[32] * 7, conv_bias=False, num_conv_pos_embedding_groups=4)
    >>> model = PaddingSafeHubertModel(config).eval()
    >>> wavs = torch.randn(2, 16000)
    >>> mask = torch.ones(2, 16000, dtype=torch.long)
    >>> mask[1, 6000:] = 0
    >>> with torch.no_grad():
    ...     padded = model(wavs, attention_mask=mask).last_hidden_state
    ...     alone = model(wavs[1:, :6000]).last_hidden_state
    >>> torch.allclose(padded[1, : alone.shape[1]], alone[0], atol=1e-5)
    True
    """

    def __init__(self, config):
        super().__init__(config)
        first_layer = self.feature_extractor.conv_layers[0]
        norm = getattr(first_layer, "layer_norm", None)
        if isinstance(norm, nn.GroupNorm):  # feat_extract_norm="group"; "layer" is per frame already
            safe_norm = ValidStepsGroupNorm(norm.num_groups, norm.num_channels, eps=norm.eps, affine=norm.affine)
            safe_norm.load_state_dict(norm.state_dict())
            first_layer.layer_norm = safe_norm

    def forward(self, input_values, attention_mask=None, **kwargs):
        """``HubertModel.forward``; with ``attention_mask`` (``[B, T]``, 1 on valid samples) padding-safe."""
        if attention_mask is None:
            return super().forward(input_values, **kwargs)
        num_samples = input_values.shape[-1]
        sample_lengths = attention_mask.long().sum(dim=-1)
        positions = torch.arange(num_samples, device=input_values.device)[None, :]
        input_values = input_values * (positions < sample_lengths[:, None]).to(input_values.dtype)
        attended = sample_lengths.clamp(min=min(CNN_RECEPTIVE_FIELD, num_samples))
        attention_mask = (positions < attended[:, None]).long()
        norm = self.feature_extractor.conv_layers[0].layer_norm
        if not isinstance(norm, ValidStepsGroupNorm):
            return super().forward(input_values, attention_mask=attention_mask, **kwargs)
        conv = self.feature_extractor.conv_layers[0].conv
        step_lengths = torch.div(sample_lengths - conv.kernel_size[0], conv.stride[0], rounding_mode="floor") + 1
        norm.step_lengths = step_lengths.clamp(min=1)
        try:
            return super().forward(input_values, attention_mask=attention_mask, **kwargs)
        finally:
            norm.step_lengths = None


class RobustDistillerSSL(nn.Module):
    """An exported student as a SpeechBrain SSL lobe, padding-safe: ``(wav, wav_lens)`` in, hidden states out.

    The signature of SpeechBrain's ``HuBERT`` / ``Wav2Vec2`` wrappers, so it replaces them in a recipe YAML::

        ssl_model: !new:robustdistiller.inference.modeling_robustdistiller.RobustDistillerSSL
            source: exported_student     # an export folder (or a hub id of one)
            output_all_hiddens: True
            freeze: True

    The arguments and their defaults are those of SpeechBrain's ``HuBERT`` wrapper (1.1), so a YAML written for it
    keeps its meaning; ``**kwargs`` of that wrapper's base class are accepted and ignored.

    Arguments
    ---------
    source : str
        Export folder or hub id (loaded with :class:`PaddingSafeHubertModel`).
    save_path : str, optional
        Cache folder for a hub id (``cache_dir``).
    output_norm : bool
        Layer-normalise each frame's features (SpeechBrain's wrappers normalise over frames and features
        together, which would bring the padding back in).
    freeze : bool
        No gradients into the model, which then stays in eval mode (no dropout) whatever ``train()`` says.
    freeze_feature_extractor : bool
        With ``freeze`` False: freeze the CNN only.
    apply_spec_augment : bool
        Let the model mask time steps while training (``config.apply_spec_augment``), as the wrapper does.
    output_all_hiddens : bool
        Return every hidden state stacked, ``[layers + 1, B, frames, D]`` (index 0: the encoder input);
        else the last one, ``[B, frames, D]``.

    Frames past an utterance's length are not meaningful: the valid frames of item ``i`` are the first
    ``self.model._get_feat_extract_output_lengths(lengths)[i]``.

    Example
    -------
    >>> import tempfile
    >>> from transformers import HubertConfig
    >>> folder = tempfile.mkdtemp()
    >>> PaddingSafeHubertModel(HubertConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=2,
    ...     intermediate_size=64, conv_dim=[32] * 7, conv_bias=False, num_conv_pos_embedding_groups=4)
    ... ).save_pretrained(folder)
    >>> lobe = RobustDistillerSSL(folder, output_all_hiddens=True, freeze=True)
    >>> lobe(torch.randn(2, 16000), torch.tensor([1.0, 0.5])).shape
    torch.Size([3, 2, 49, 32])
    """

    def __init__(
        self,
        source,
        save_path=None,
        output_norm=False,
        freeze=False,
        freeze_feature_extractor=False,
        apply_spec_augment=False,
        output_all_hiddens=False,
        **kwargs,
    ):
        super().__init__()
        enabled = transformers_logging.is_progress_bar_enabled()
        transformers_logging.disable_progress_bar()  # no weight-loading bar for a lobe of a recipe
        try:
            self.model = PaddingSafeHubertModel.from_pretrained(source, cache_dir=save_path)
        finally:
            if enabled:
                transformers_logging.enable_progress_bar()
        self.model.config.apply_spec_augment = bool(apply_spec_augment)
        self.output_norm = output_norm
        self.freeze = freeze
        self.output_all_hiddens = output_all_hiddens
        if freeze:
            self.model.eval()
            self.model.requires_grad_(False)
        elif freeze_feature_extractor:
            self.model.feature_extractor._freeze_parameters()

    def train(self, mode=True):
        """A frozen model stays in eval mode (no dropout, no masking)."""
        super().train(mode)
        if self.freeze:
            self.model.eval()
        return self

    def forward(self, wav, wav_lens=None):
        """``wav`` ``[B, T]`` at 16 kHz, ``wav_lens`` relative lengths in (0, 1] (None: all full)."""
        if self.freeze:
            with torch.no_grad():
                return self.extract_features(wav, wav_lens)
        return self.extract_features(wav, wav_lens)

    def extract_features(self, wav, wav_lens=None):
        """The hidden states (see the class docstring for the shapes)."""
        attention_mask = None
        if wav_lens is not None:
            sample_lengths = torch.round(wav_lens.to(wav.device) * wav.shape[-1]).long()
            attention_mask = (torch.arange(wav.shape[-1], device=wav.device)[None, :] < sample_lengths[:, None]).long()
        output = self.model(wav, attention_mask=attention_mask, output_hidden_states=self.output_all_hiddens)
        if self.output_all_hiddens:
            features = torch.stack(list(output.hidden_states), dim=0)
        else:
            features = output.last_hidden_state
        if self.output_norm:
            features = F.layer_norm(features, features.shape[-1:])
        return features
