"""Silence removal as s3prl's ASV applies it: sox ``gain -3.0 silence 1 0.1 0.1% -1 0.1 0.1%``.

s3prl's ``sv_voxceleb1`` reads every utterance (train and test) through
``torchaudio.sox_effects.apply_effects_file`` with ``gain -3.0`` and
``silence 1 0.1 0.1% -1 0.1 0.1%``. torchaudio 2.11 has no ``sox_effects`` and
``torchaudio.functional.vad`` is sox's *vad* effect (leading silence only, spectral): not the same
rule. :func:`trim_silence` re-implements sox 14.4's ``silence`` effect (``src/silence.c``):

* a sample is *above* the threshold when the RMS of the last ``rate / 50`` samples (20 ms, the
  current one included, zeros before the start) is ``> threshold`` (0.1 % of full scale);
* **leading**: everything is dropped until ``duration`` (0.1 s) of consecutive above-threshold
  samples, which are kept with all that follows;
* **inner** (``-1``, restart mode): a run of below-threshold samples shorter than ``duration`` is
  kept; once it reaches ``duration`` those samples are dropped, the RMS window is cleared and the
  leading rule applies again (a burst shorter than ``duration`` after a removed silence is dropped
  too); a trailing below-threshold run shorter than ``duration`` is kept.

The threshold is compared after sox's ``gain -3.0`` (so, on the file's scale, a frame is silent
below 0.1 % x 10^(3/20) = 0.141 % of full scale); the returned samples are *not* scaled (every
upstream here is scale-invariant, see ``docs/reference/s3prl_settings.md`` "Weighted sum and upstream"). ``gain``
outputs 32-bit precision, so sox does not mask the RMS to the file's 16 bits here (``precision=None``): in sox's
``effects.c`` an effect without ``SOX_EFF_PREC`` or ``SOX_EFF_MODIFY`` outputs ``SOX_SAMPLE_PRECISION``
(32) bits, and ``gain.c`` sets only ``SOX_EFF_GAIN``. sox is not installed on the development machine,
so the port is checked against a literal per-sample transcription of ``silence.c``
(:func:`trim_silence_reference`), not against the sox binary.

:class:`SilenceTrimmedPipeline` applies it to a recipe's audio before cropping and corruption,
identically for every upstream.
"""

import logging

import numpy as np
import torch

from robustdistiller.downstream.data import AudioPipeline, audio_dataset, paired_condition_key

logger = logging.getLogger(__name__)

SOX_SAMPLE_MAX = 2**31 - 1


def _above_threshold(rms, threshold_percent, precision):
    """sox's ``aboveThreshold`` on float RMS values (full scale 1.0), optionally masked to ``precision`` bits."""
    rms32 = np.floor(rms * 2.0**31)  # sox_sample_t, truncated
    if precision is not None and precision < 32:
        step = 2.0 ** (32 - int(precision))
        rms32 = np.floor(rms32 / step) * step
    return rms32 / SOX_SAMPLE_MAX * 100.0 > threshold_percent


def _windowed_rms(squares_cumsum, start, stop, window):
    """RMS at samples ``start..stop-1`` of a window cleared (zeros) at ``start``."""
    ends = np.arange(start + 1, stop + 1)
    begins = np.maximum(ends - window, start)
    total = squares_cumsum[ends] - squares_cumsum[begins]
    return np.sqrt(np.maximum(total, 0.0) / window)


def silence_keep_mask(waveform, sample_rate=16000, duration=0.1, threshold=0.1, gain_db=-3.0, precision=None):
    """Which samples sox's ``silence 1 <duration> <threshold>% -1 <duration> <threshold>%`` keeps.

    Arguments
    ---------
    waveform : numpy.ndarray or torch.Tensor
        ``[T]`` mono waveform, full scale 1.0.
    sample_rate : int
        Sample rate (the RMS window is ``sample_rate // 50`` samples).
    duration : float
        Seconds of above-threshold audio that start a kept region, and of below-threshold audio
        that end it (s3prl: 0.1 both).
    threshold : float
        Percent of full scale (s3prl: 0.1).
    gain_db : float
        sox ``gain`` applied before ``silence`` (s3prl: -3.0); only the threshold decision sees it.
    precision : int, optional
        Bits the RMS is masked to (sox masks to the input precision; None: 32 bits, no masking).

    Returns
    -------
    numpy.ndarray
        ``[T]`` bool.

    Example
    -------
    >>> tone = 0.5 * np.sin(np.arange(8000) / 5.0)
    >>> wav = np.concatenate([np.zeros(4000), tone, np.zeros(800), tone, np.zeros(4000), tone])
    >>> keep = silence_keep_mask(wav)
    >>> int(keep[:4000].sum()), int(keep[4000:20800].sum()), int(keep[20800:24800].sum())
    (0, 16799, 319)
    """
    signal = np.asarray(waveform, dtype=np.float64).reshape(-1) * 10.0 ** (gain_db / 20.0)
    length = signal.shape[0]
    window = max(int(sample_rate) // 50, 1)
    hold = max(int(round(duration * sample_rate)), 1)
    cumsum = np.concatenate([[0.0], np.cumsum(signal * signal)])
    keep = np.zeros(length, dtype=bool)
    position, trimming = 0, True
    while position < length:
        # RMS since the last window reset (start, or the latest restart).
        above = _above_threshold(_windowed_rms(cumsum, position, length, window), threshold, precision)
        restart = None
        # Runs of equal `above` values from `position`.
        changes = np.flatnonzero(above[1:] != above[:-1]) + 1
        bounds = np.concatenate([[0], changes, [above.shape[0]]])
        for begin, end in zip(bounds[:-1], bounds[1:]):
            run_above, run_length = bool(above[begin]), int(end - begin)
            first, last = position + int(begin), position + int(end)
            if trimming:
                if run_above and run_length >= hold:
                    keep[first:last] = True  # the hold-off buffer is flushed, the rest copied
                    trimming = False
            elif run_above or run_length < hold:
                keep[first:last] = True  # copied, or a short pause flushed (or drained at the end)
            else:
                restart = first + hold  # `hold` silent samples dropped; RMS cleared; leading rule again
                trimming = True
                break
        if restart is None:
            break
        position = restart
    return keep


def trim_silence(waveform, sample_rate=16000, duration=0.1, threshold=0.1, gain_db=-3.0, precision=None):
    """``waveform`` without the samples sox's ``silence`` effect removes (see :func:`silence_keep_mask`).

    Returns the same type as ``waveform`` (a torch tensor keeps its dtype and device); may be empty.

    Example
    -------
    >>> wav = torch.cat([torch.zeros(3200), 0.3 * torch.sin(torch.arange(16000) / 4.0), torch.zeros(3200)])
    >>> trim_silence(wav).shape  # the tone (its first sample is 0.0) and a 20 ms RMS tail
    torch.Size([16318])
    """
    keep = silence_keep_mask(
        waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else waveform,
        sample_rate,
        duration,
        threshold,
        gain_db,
        precision,
    )
    if isinstance(waveform, torch.Tensor):
        return waveform[torch.from_numpy(keep).to(waveform.device)]
    return np.asarray(waveform)[keep]


def trim_silence_reference(waveform, sample_rate=16000, duration=0.1, threshold=0.1, gain_db=-3.0, precision=None):
    """A literal per-sample transcription of sox 14.4 ``silence.c`` (mono, restart mode); slow.

    The parity reference of :func:`trim_silence` in the tests. Returns the kept samples (numpy).

    Example
    -------
    >>> wav = np.concatenate([np.zeros(3200), 0.3 * np.sin(np.arange(4000) / 4.0)])
    >>> trim_silence_reference(wav).shape  # sin(0) = 0.0 is below the threshold
    (3999,)
    """
    signal = np.asarray(waveform, dtype=np.float64).reshape(-1)
    scale = 10.0 ** (gain_db / 20.0)
    window_size = max(int(sample_rate) // 50, 1)
    hold = max(int(round(duration * sample_rate)), 1)
    window = np.zeros(window_size)
    state = {"sum": 0.0, "current": 0}

    def compute_rms(sample):
        value = state["sum"] - window[state["current"]] + sample * sample
        return float(np.sqrt(max(value, 0.0) / window_size))

    def update_rms(sample):
        state["sum"] -= window[state["current"]]
        window[state["current"]] = sample * sample
        state["sum"] += window[state["current"]]
        state["current"] = (state["current"] + 1) % window_size

    def above(sample):
        return bool(_above_threshold(np.array([compute_rms(sample)]), threshold, precision)[0])

    output, start_holdoff, stop_holdoff = [], [], []
    mode = "trim"
    for index, raw in enumerate(signal):
        sample = raw * scale
        if mode == "trim":
            if above(sample):
                update_rms(sample)
                start_holdoff.append(index)
                if len(start_holdoff) >= hold:
                    output += start_holdoff
                    start_holdoff = []
                    mode = "copy"
            else:
                start_holdoff = []
                update_rms(sample)
        else:
            if above(sample):
                output += stop_holdoff  # flush a short pause, then copy
                stop_holdoff = []
                update_rms(sample)
                output.append(index)
            else:
                update_rms(sample)
                stop_holdoff.append(index)
                if len(stop_holdoff) >= hold:
                    stop_holdoff = []
                    window[:] = 0.0  # clear_rms
                    state["sum"], state["current"] = 0.0, 0
                    mode = "trim"
    if mode == "copy":
        output += stop_holdoff  # drain
    return signal[np.array(output, dtype=np.int64)] if output else signal[:0]


class SilenceTrimmedPipeline(AudioPipeline):
    """:class:`~robustdistiller.downstream.data.AudioPipeline` with sox-style silence removal first.

    The utterance is read, its silences removed (:func:`trim_silence`, s3prl's ASV rule), then cropped
    and corrupted exactly as by ``AudioPipeline``: every upstream gets the same trimmed audio, and noise
    and reverberation are applied to the trimmed speech (s3prl trims before anything else).

    Arguments
    ---------
    *args, **kwargs
        Those of ``AudioPipeline``.
    trim_options : dict, optional
        Keyword arguments of :func:`trim_silence` (``duration``, ``threshold``, ``gain_db``,
        ``precision``); None disables trimming (then this is a plain ``AudioPipeline``).

    Example
    -------
    >>> import tempfile, os, soundfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> wav = np.concatenate([np.zeros(8000), 0.3 * np.sin(np.arange(16000) / 4.0), np.zeros(8000)])
    >>> soundfile.write(path, wav, 16000)
    >>> SilenceTrimmedPipeline(16000, trim_options={})("utt", path, 0, -1).shape
    torch.Size([16318])
    """

    def __init__(self, *args, trim_options=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.trim_options = None if trim_options is None else dict(trim_options)

    def load(self, wav, start=0, stop=-1):
        """The utterance's samples with silences removed (before ``AudioPipeline``'s crop and corruption)."""
        waveform = super().load(wav, start, stop)
        if self.trim_options is not None:
            trimmed = trim_silence(waveform, self.sample_rate, **self.trim_options)
            # An all-silent file would leave nothing for the upstream: keep it untrimmed.
            waveform = trimmed if trimmed.shape[0] >= self.sample_rate // 10 else waveform
        return waveform


def trim_options_from_hparams(hparams):
    """The :func:`trim_silence` options of a recipe: ``trim_silence`` (bool) and ``silence_*`` keys.

    Returns None when ``trim_silence`` is False.

    Example
    -------
    >>> trim_options_from_hparams({"trim_silence": True, "silence_duration": 0.1, "silence_threshold": 0.1,
    ...                            "silence_gain_db": -3.0, "silence_precision": None})["gain_db"]
    -3.0
    >>> trim_options_from_hparams({"trim_silence": False}) is None
    True
    """
    if not hparams["trim_silence"]:
        return None
    return {
        "duration": float(hparams["silence_duration"]),
        "threshold": float(hparams["silence_threshold"]),
        "gain_db": float(hparams["silence_gain_db"]),
        "precision": hparams["silence_precision"],
    }


def trimmed_condition_test_set_factory(hparams, csv_file, corruptor, output_keys, trim_options, extra_items=()):
    """``condition_test_set_factory`` with silence removal before corruption (``(name, spec) -> dataset``).

    Same pairing of conditions as :func:`robustdistiller.downstream.data.condition_test_set_factory`.
    """

    def make_test_set(name, spec):
        pipeline = SilenceTrimmedPipeline(
            hparams["sample_rate"],
            corruptor=corruptor,
            condition=spec["condition"],
            snr=spec.get("snr"),
            key_prefix=paired_condition_key(spec),
            trim_options=trim_options,
        )
        return audio_dataset(csv_file, pipeline, output_keys, extra_items=extra_items)

    return make_test_set
