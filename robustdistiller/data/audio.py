"""Audio file reading shared by data preparation, corruption and inference.

Everything that reads a waveform from disk goes through :func:`load_audio`, so multichannel files,
other sampling rates, unreadable files and non-audio files are handled in one place, with an error
that names the file. Reading uses ``soundfile`` (``torchaudio.load`` needs ``torchcodec`` with
torchaudio 2.11, see ``docs/reference/speechbrain.md`` "Audio I/O"); resampling uses ``torchaudio.functional.resample``.
"""

import logging

import soundfile
import torch
import torchaudio

logger = logging.getLogger(__name__)


class AudioLoadError(RuntimeError):
    """An audio file could not be read; the message names the file and the reason."""


class DamagedAudioError(AudioLoadError):
    """An audio file's header is intact but its data ends early (a truncated copy); the message says so."""


END_CHECK_FRAMES = 4096
"""Frames decoded at the end of a file by ``audio_info(path, check_end=True)`` (about one FLAC block)."""


def audio_info(path, check_end=False):
    """Returns ``(num_frames, sample_rate, num_channels)`` of an audio file without reading it.

    Arguments
    ---------
    path : str
        Audio file (any format libsndfile reads: wav, flac, ...).
    check_end : bool
        Also decode the last :data:`END_CHECK_FRAMES` frames, so a file whose header is intact but
        whose data stops early (a truncated copy or download) fails here, at preparation, rather
        than when it is read hours into training. The header alone cannot tell: a FLAC header
        records the full length. Cost: one seek and one block decoded per file, about 0.3 ms for a
        FLAC against 0.1 ms for the header alone (a few minutes more for LibriSpeech's 960 h, where
        decoding every file fully would take about ten times longer). Damage in the middle of a
        file is not detected. A truncated WAV needs no check: libsndfile counts its frames from
        the data actually present.

    Returns
    -------
    tuple of (int, int, int)

    Raises
    ------
    AudioLoadError
        If the file is missing or is not audio.
    DamagedAudioError
        With ``check_end``, if its end cannot be decoded (the message says the file is damaged and
        what to do); a subclass of :class:`AudioLoadError`.

    Example
    -------
    >>> import tempfile, os, soundfile, numpy
    >>> path = os.path.join(tempfile.mkdtemp(), "a.flac")
    >>> soundfile.write(path, numpy.zeros(16000), 16000)
    >>> audio_info(path, check_end=True)
    (16000, 16000, 1)
    >>> content = open(path, "rb").read()
    >>> _ = open(path, "wb").write(content[:-10])  # truncated, header intact
    >>> audio_info(path)
    (16000, 16000, 1)
    >>> audio_info(path, check_end=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    robustdistiller.data.audio.DamagedAudioError: Audio file '...a.flac' is damaged: its header promises 16000 frames ...
    """
    try:
        info = soundfile.info(str(path))
    except Exception as error:  # soundfile raises several types (LibsndfileError, RuntimeError)
        raise AudioLoadError(f"Cannot read audio file '{path}': {error}") from error
    if check_end and info.frames > 0:
        _check_end(path, info.frames)
    return info.frames, info.samplerate, info.channels


def _check_end(path, frames):
    """Decodes the last frames of a file; raises :class:`AudioLoadError` (damaged) if it cannot."""
    count = min(frames, END_CHECK_FRAMES)
    try:
        with soundfile.SoundFile(str(path)) as audio_file:
            audio_file.seek(frames - count)
            decoded = audio_file.read(count, dtype="float32", always_2d=True).shape[0]
        problem = None if decoded == count else f"only {decoded} of its last {count} frames could be decoded"
    except Exception as error:  # LibsndfileError ("Internal psf_fseek() failed", error 158: no text)
        problem = f"its last {count} frames cannot be decoded ({type(error).__name__}: {error or 'no detail'})"
    if problem is not None:
        raise DamagedAudioError(
            f"Audio file '{path}' is damaged: its header promises {frames} frames but {problem}, as in a "
            f"truncated copy or download. Replace it with an intact copy (or remove it); preparation "
            f"leaves damaged files out of the lists and counts them."
        )


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
        data, file_rate = soundfile.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except Exception as error:  # libsndfile's error 158 has no text: name its type at least
        raise AudioLoadError(f"Cannot read audio file '{path}': {error or type(error).__name__}") from error
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
            raise AudioLoadError(f"Audio file '{path}' has {num_channels} channel(s); channel {channel} requested.")
        waveform = waveform[:, int(channel)]
    if not torch.isfinite(waveform).all():
        raise AudioLoadError(f"Audio file '{path}' contains NaN or infinite samples.")
    if file_rate != sample_rate:
        waveform = torchaudio.functional.resample(waveform, file_rate, sample_rate)
    return waveform.contiguous()
