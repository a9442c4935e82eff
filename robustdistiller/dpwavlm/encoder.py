"""A trained DPWavLM (a DPHuBERT ``.pth``) as an encoder of padded batches, for the downstream recipes.

:func:`robustdistiller.export.loading.load_student` returns a :class:`DPWavLMEncoder` for DPHuBERT-format files
(our ``final.pth`` / ``pruned.pth``, the released ``DPWavLM-sp0.75.pth`` / ``RDDPWavLM-sp0.75.pth``, an
exported ``dpwavlm.pth``). It takes SpeechBrain's relative lengths and returns a
:class:`~robustdistiller.models.student.StudentOutput`, so :class:`~robustdistiller.downstream.upstream.FrozenUpstream`
treats it as our students:

* ``projection`` is DPHuBERT's layer 0 (the feature projection's output before the positional conv, padded
  frames zeroed; what DPHuBERT distils and its SUPERB upstream gives as state 0);
* ``hidden_states[0]`` is the encoder input (after the positional conv and the encoder LayerNorm, Hugging
  Face's ``hidden_states[0]``), then every layer's output: 13 states for WavLM Base+;
* no prediction heads (``predictions`` is None, ``target_layers`` empty).

With ``per_utterance_norm`` the first CNN GroupNorm (WavLM Base+'s ``group_norm`` extractor) uses each
utterance's own samples, so a short utterance's features do not depend on its batch's padding (as for our
students; DPHuBERT itself normalises over the padded batch).
"""

import logging

import torch

from robustdistiller.inference.interface import (
    absolute_lengths,
    check_input_lengths,
    lengths_to_mask,
    per_utterance_cnn_norm,
)
from robustdistiller.models.student import StudentOutput

logger = logging.getLogger(__name__)


def receptive_field(conv_layer_config):
    """Fewest input samples giving one frame, from DPHuBERT's ``extractor_conv_layer_config``.

    Example
    -------
    >>> receptive_field([(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2)
    400
    """
    field = 1
    for _, kernel, stride in reversed(list(conv_layer_config)):
        field = (field - 1) * int(stride) + int(kernel)
    return field


class DPWavLMEncoder(torch.nn.Module):
    """A DPWavLM behind the students' interface: relative lengths in, :class:`StudentOutput` out.

    Arguments
    ---------
    model : DPWavLM
        A compact (pruned) or gated model; used in eval mode (deterministic gates).
    per_utterance_norm : bool
        First CNN GroupNorm over each utterance's valid samples (no effect with a ``layer_norm`` extractor).

    Example
    -------
    >>> from robustdistiller.dpwavlm import DPWavLM, tiny_config
    >>> encoder = DPWavLMEncoder(DPWavLM(tiny_config()).eval())
    >>> output = encoder(torch.randn(2, 3200), torch.tensor([1.0, 0.5]))
    >>> len(output.hidden_states), output.projection.shape, output.frame_mask.sum(dim=1).tolist()
    (5, torch.Size([2, 79, 32]), [79, 39])
    """

    target_layers = ()

    def __init__(self, model, per_utterance_norm=True):
        super().__init__()
        self.model = model
        self.per_utterance_norm = bool(per_utterance_norm)
        self.minimum_samples = receptive_field(model.config["extractor_conv_layer_config"])

    @property
    def config(self):
        """The DPHuBERT config dict of the wrapped model."""
        return self.model.config

    @property
    def hidden_size(self):
        return self.model.hidden_size

    @property
    def num_layers(self):
        """Transformer layers (the encoder gives ``num_layers + 1`` states)."""
        return self.model.num_layers

    def forward(self, wavs, wav_lens=None):
        """Every state of a padded batch.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[B, T]`` waveforms at 16 kHz (padded samples are zeroed here).
        wav_lens : torch.Tensor, optional
            ``[B]`` relative lengths in (0, 1]; None means all items are full length.

        Returns
        -------
        StudentOutput
            ``cnn_features`` ``[B, F, C]``, ``hidden_states`` (``num_layers + 1`` of ``[B, F, D]``),
            ``predictions`` None, ``frame_mask`` ``[B, F]``, ``frame_lengths`` ``[B]`` (None without
            ``wav_lens``), ``projection`` ``[B, F, D]``.
        """
        num_samples = wavs.shape[-1]
        sample_lengths = absolute_lengths(wav_lens, num_samples)
        check_input_lengths(sample_lengths, num_samples, self.minimum_samples, wavs.shape[0])
        if sample_lengths is not None:
            sample_lengths = sample_lengths.to(wavs.device)
            wavs = wavs * lengths_to_mask(sample_lengths, num_samples).to(wavs.dtype)
        norm_lengths = sample_lengths if self.per_utterance_norm else None
        with per_utterance_cnn_norm(self.model.feature_extractor, norm_lengths):
            hidden, frame_lengths, cnn_features = self.model.extract_features(
                wavs, sample_lengths, return_cnn_features=True
            )
        projection = hidden[0]
        transformer = self.model.encoder.transformer
        encoder_input = transformer.layer_norm(projection + transformer.pos_conv_embed(projection))
        num_frames = projection.shape[1]
        if frame_lengths is None:
            frame_mask = torch.ones(projection.shape[:2], dtype=torch.bool, device=projection.device)
        else:
            frame_mask = lengths_to_mask(frame_lengths.clamp(min=0, max=num_frames), num_frames)
        return StudentOutput(cnn_features, (encoder_input, *hidden[1:]), None, frame_mask, frame_lengths, projection)
