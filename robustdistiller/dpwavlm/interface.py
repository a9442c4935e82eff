"""SpeechBrain pretrained interface of an exported DPWavLM / DPHuBERT (``robustdistiller`` installed).

An export of :mod:`robustdistiller.dpwavlm.export` holds ``hyperparams.yaml`` (the model's DPHuBERT config
inline, building a :class:`~robustdistiller.dpwavlm.encoder.DPWavLMEncoder`) and ``encoder.ckpt`` (its
weights, for SpeechBrain's ``Pretrainer``), so::

    encoder = DPWavLMInterface.from_hparams(source="exported_dpwavlm", savedir="pretrained_cache")
    out = encoder.encode_file("utterance.flac")   # any sample rate, mono or stereo
    out.hidden_states.shape                       # [1, 13, frames, 768]; index 0 = projection output

The states follow DPHuBERT (and s3prl's ``dp_hubert`` upstream): index 0 is the feature projection's output
before the positional convolution, then every layer's output. There are no prediction heads
(``predictions`` is None).
"""

import logging

import torch

from robustdistiller.inference.interface import EncodedBatch, EncoderInterface

logger = logging.getLogger(__name__)


class DPWavLMInterface(EncoderInterface):
    """:class:`~robustdistiller.inference.interface.EncoderInterface` for an exported DPWavLM (module docstring).

    Input handling (mono mix-down, resampling, relative lengths, too-short audio) is the students'.
    """

    @property
    def num_layers(self):
        """Number of transformer layers ``N`` (the encoder gives ``N + 1`` states)."""
        return self.mods.encoder.num_layers

    def minimum_samples(self):
        """Fewest samples giving one frame (the CNN's receptive field)."""
        return self.mods.encoder.minimum_samples

    def _encode(self, wavs, wav_lens):
        with torch.no_grad():
            output = self.mods.encoder(wavs, wav_lens)
        states = (output.projection, *output.hidden_states[1:])
        return EncodedBatch(torch.stack(states, dim=1), None, output.frame_mask)
