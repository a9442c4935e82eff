"""Audio file reading shared by data preparation, corruption and inference.

Everything that reads a waveform from disk goes through :func:`load_audio`, so multichannel files,
other sampling rates, unreadable files and non-audio files are handled in one place, with an error
that names the file. Reading uses ``soundfile`` (``torchaudio.load`` needs ``torchcodec`` with
torchaudio 2.11, see REFERENCE.md section 7); resampling uses ``torchaudio.functional.resample``.
"""

import logging

import soundfile
import torch
import torchaudio

logger = logging.getLogger(__name__)


class AudioLoadError(RuntimeError):
    """An audio file could not be read; the message names the file and the reason."""


def audio_info(path):
    """Returns ``(num_frames, sample_rate, num_channels)`` of an audio file without reading it.

    Arguments
    ---------
    path : str
        Audio file (any format libsndfile reads: wav, flac, ...).

    Returns
    -------
    tuple of (int, int, int)

    Raises
    ------
    AudioLoadError
        If the file is missing or is not audio.
    """
    try:
        info = soundfile.info(str(path))
    except Exception as error:  # soundfile raises several types (LibsndfileError, RuntimeError)
        raise AudioLoadError(f"Cannot read audio file '{path}': {error}") from error
    return info.frames, info.samplerate, info.channels


def load_audio(path, sample_rate=16000, channel="mean", start=0, stop=None, generator=None):
    """Reads an audio file as a mono float32 waveform at ``sample_rate``.

    Arguments
    ---------
    path : str
        Audio file.
    sample_rate : int
        Sampling rate of the returned waveform; the file is resampled if it differs.
    channel : str or int
        How a multichannel file becomes mono: ``"mean"`` averages the channels (noise),
        ``"random"`` picks one channel at random (RIRs: one microphone of an array), an int picks
        that channel.
    start, stop : int
        Frame range to read, in the file's own sampling rate (``stop=None``: to the end).
    generator : torch.Generator, optional
        Random source for ``channel="random"`` (default: the global torch RNG).

    Returns
    -------
    torch.Tensor
        Shape ``[time]``, float32.

    Raises
    ------
    AudioLoadError
        If the file is missing, is not audio, is empty, or holds non-finite samples.

    Example
    -------
    >>> import tempfile, os, soundfile, numpy
    >>> path = os.path.join(tempfile.mkdtemp(), "stereo.wav")
    >>> soundfile.write(path, numpy.ones((800, 2)) * [0.5, -0.5], 8000)
    >>> load_audio(path).shape, round(float(load_audio(path, channel=0)[100]), 3)
    (torch.Size([1600]), 0.5)
    """
    try:
        data, file_rate = soundfile.read(
            str(path), start=start, stop=stop, dtype="float32", always_2d=True
        )
    except Exception as error:
        raise AudioLoadError(f"Cannot read audio file '{path}': {error}") from error
    if data.shape[0] == 0:
        raise AudioLoadError(f"Audio file '{path}' is empty (0 samples).")
    waveform = torch.from_numpy(data)  # [time, channels]
    num_channels = waveform.shape[1]
    if channel == "mean":
        waveform = waveform.mean(dim=1)
    elif channel == "random":
        index = int(torch.randint(num_channels, (1,), generator=generator))
        waveform = waveform[:, index]
    else:
        if not 0 <= int(channel) < num_channels:
            raise AudioLoadError(
                f"Audio file '{path}' has {num_channels} channel(s); channel {channel} requested."
            )
        waveform = waveform[:, int(channel)]
    if not torch.isfinite(waveform).all():
        raise AudioLoadError(f"Audio file '{path}' contains NaN or infinite samples.")
    if file_rate != sample_rate:
        waveform = torchaudio.functional.resample(waveform, file_rate, sample_rate)
    return waveform.contiguous()
