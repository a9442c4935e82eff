"""Writing the files of the generated corpora: 16-bit PCM audio and UTF-8 text, their folders created.

Shared by :mod:`robustdistiller.testing.mini_corpus` and the generators of
:mod:`robustdistiller.testing.fixtures`.
"""

import os

import numpy as np
import soundfile

from robustdistiller.testing.signals import SAMPLE_RATE


def write_audio(path, waveform, sample_rate=SAMPLE_RATE, audio_format=None):
    """Writes ``waveform`` (``[time]`` or ``[time, channels]``, clipped to [-1, 1]) as 16-bit PCM.

    The format follows the extension (``.wav``, ``.flac``) unless ``audio_format`` names it; the parent
    folders are created.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(path, np.clip(waveform, -1.0, 1.0), sample_rate, subtype="PCM_16", format=audio_format)


def write_text(path, text):
    """Writes ``text`` to ``path`` in UTF-8, creating the parent folders."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as text_file:
        text_file.write(text)
