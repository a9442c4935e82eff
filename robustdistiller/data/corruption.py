"""Per-utterance corruption of the student's input (noise, reverberation, both, or none).

RobustDistiller feeds the teacher the clean utterance and the student a corrupted copy; each utterance
independently gets one of four conditions (:data:`CONDITIONS`), with probability 0.25 each by default
(``docs/reference/robustdistiller.md`` "Corruption"). SpeechBrain's ``Augmenter`` makes its decision once per *batch*,
and ``AddReverb`` uses one RIR per batch, so this module makes the decision per *utterance* instead and
runs inside the DataLoader workers (where file reading overlaps with training; the authors read noise
files in the training step, their main bottleneck).

The signal processing stays SpeechBrain's: :class:`speechbrain.augment.time_domain.AddNoise` mixes and
:class:`speechbrain.augment.time_domain.AddReverb` convolves; both are declared in the recipe's YAML.
This module adds what they lack for this recipe:

- :class:`NoisePool`, a ``noise_funct`` for ``AddNoise`` that reads a random segment of a random file of
  a SpeechBrain noise CSV (multichannel and any sampling rate; long files are not read whole; unreadable
  or silent files are skipped with a warning). ``AddNoise``'s own ``csv_file`` loading is not used: it
  builds a DataLoader of its own and expects mono files at one rate.
- :class:`PooledAddReverb`, an ``AddReverb`` that draws one random RIR (one random channel) per call
  and convolves *linearly* (SpeechBrain's FFT convolution is circular: the reverberation tail wraps
  around to the start of the utterance, and an RIR longer than the utterance is cropped).
- :class:`Corruptor`, which draws the condition, the noise source and the SNR per utterance from a seed
  derived from ``(seed, epoch, key)``, so the result does not depend on which worker runs it, and
  returns the clean *reference* the enhancement head must recover (``AddNoise`` scales the clean signal
  down by ``1 - 1/(10^(SNR/20)+1)``; the reference carries the same gain).

Everything here is picklable and creates no DataLoader, so it can live in a dataset's pipeline.
"""

import csv
import hashlib
import logging
import math
import os
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from speechbrain.augment.time_domain import AddReverb
from speechbrain.processing.signal_processing import compute_amplitude, reverberate, rescale

from robustdistiller.data.audio import AudioLoadError, audio_info, load_audio

logger = logging.getLogger(__name__)

CONDITIONS = ("clean", "noise", "reverb", "noise_reverb")
"""The four corruption conditions, in the order used for drawing them."""

SILENCE_RMS = 1e-6
"""RMS below which a waveform (clean utterance, noise segment, RIR) counts as silent."""


def condition_names():
    """Returns the names of the corruption conditions.

    Example
    -------
    >>> condition_names()
    ('clean', 'noise', 'reverb', 'noise_reverb')
    """
    return CONDITIONS


def fast_fft_length(minimum_length):
    """Smallest ``2^a 3^b 5^c >= minimum_length``: FFTs of such lengths are fast (a prime length can be
    ten times slower).

    Example
    -------
    >>> fast_fft_length(266001), fast_fft_length(7)
    (270000, 8)
    """
    best = 2 ** math.ceil(math.log2(max(minimum_length, 1)))
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            candidate = power35 * 2 ** max(0, math.ceil(math.log2(minimum_length / power35)))
            best = min(best, candidate)
            power35 *= 3
        power5 *= 5
    return best


def _rms(waveform):
    return float(torch.sqrt(torch.mean(waveform.double() ** 2))) if waveform.numel() else 0.0


def hash_seed(*parts):
    """A stable 63-bit seed from any printable parts (not Python's salted ``hash``).

    Example
    -------
    >>> hash_seed(1, 0, "utt") == hash_seed(1, 0, "utt") != hash_seed(1, 1, "utt")
    True
    """
    text = "\x1f".join(str(part) for part in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") & (2**63 - 1)


class AudioFileList:
    """The rows of a SpeechBrain audio CSV (``ID,duration,wav,...``), with bad files excluded.

    Draws are made over *all* rows and an excluded row is rejected and redrawn, so the random numbers
    consumed by a draw do not depend on which bad files this process has already discovered: the same
    seed gives the same file in every DataLoader worker.

    Arguments
    ---------
    csv_file : str
        SpeechBrain CSV with at least a ``wav`` column (``duration`` in seconds is kept if present).
        A relative path is taken relative to the CSV's folder when the file exists there.
    kind : str
        What the files are ("noise", "RIR"), for messages.

    Raises
    ------
    FileNotFoundError
        If the CSV does not exist.
    ValueError
        If it has no ``wav`` column or no rows.

    Example
    -------
    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> csv_path = os.path.join(folder, "noise.csv")
    >>> with open(csv_path, "w") as f:
    ...     _ = f.write("ID,duration,wav,wav_format,wav_opts\\nn1,1.0,n1.wav,wav,\\n")
    >>> files = AudioFileList(csv_path, "noise")
    >>> len(files), os.path.basename(files.paths[0])
    (1, 'n1.wav')
    """

    def __init__(self, csv_file, kind):
        self.csv_file = str(csv_file)
        self.kind = kind
        if not os.path.isfile(self.csv_file):
            raise FileNotFoundError(f"{kind} CSV '{self.csv_file}' does not exist.")
        with open(self.csv_file, newline="") as csv_handle:
            reader = csv.DictReader(csv_handle)
            if reader.fieldnames is None or "wav" not in reader.fieldnames:
                raise ValueError(
                    f"{kind} CSV '{self.csv_file}' has no 'wav' column "
                    f"(expected columns ID,duration,wav,wav_format,wav_opts)."
                )
            rows = [row for row in reader if row.get("wav")]
        if not rows:
            raise ValueError(f"{kind} CSV '{self.csv_file}' lists no files.")
        csv_folder = os.path.dirname(os.path.abspath(self.csv_file))
        self.paths = [self._resolve(row["wav"], csv_folder) for row in rows]
        self.durations = [self._duration(row.get("duration")) for row in rows]
        self.excluded = set()
        self._info_cache = {}

    @staticmethod
    def _resolve(path, csv_folder):
        if not os.path.isabs(path) and os.path.exists(os.path.join(csv_folder, path)):
            return os.path.join(csv_folder, path)
        return path

    @staticmethod
    def _duration(text):
        try:
            return float(text)
        except (TypeError, ValueError):
            return float("nan")

    def __len__(self):
        return len(self.paths)

    def draw_index(self):
        """Draws a random row that is not excluded (global torch RNG).

        Raises
        ------
        RuntimeError
            If every file of the CSV has been excluded.
        """
        while True:
            if len(self.excluded) == len(self.paths):
                raise RuntimeError(
                    f"No usable {self.kind} file left in '{self.csv_file}': all "
                    f"{len(self.paths)} listed file(s) are unreadable or silent."
                )
            index = int(torch.randint(len(self.paths), (1,)))
            if index not in self.excluded:
                return index

    def exclude(self, index, reason):
        """Removes a row from the pool, with a warning naming the file (once per process)."""
        if index not in self.excluded:
            self.excluded.add(index)
            logger.warning(
                "Excluding %s file '%s' (listed in '%s'): %s",
                self.kind,
                self.paths[index],
                self.csv_file,
                reason,
            )

    def info(self, index):
        """``(frames, sample_rate, channels)`` of a row's file, cached; raises AudioLoadError."""
        if index not in self._info_cache:
            self._info_cache[index] = audio_info(self.paths[index])
        return self._info_cache[index]


class LazyFileList:
    """Class attribute giving an object's :class:`AudioFileList`, read from ``csv_file`` on first use.

    The recipe's YAML declares the pools before data preparation has written their CSVs, so a pool
    must not read its CSV when it is built; a missing or empty CSV is reported at first use.
    """

    def __init__(self, kind):
        self.kind = kind

    def __set_name__(self, owner, name):
        self.cache_name = "_" + name

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        files = instance.__dict__.get(self.cache_name)
        if files is None:
            files = AudioFileList(instance.csv_file, self.kind)
            instance.__dict__[self.cache_name] = files
        return files


class NoisePool:
    """Noise source for ``AddNoise(noise_funct=NoisePool(csv))``: random segments of random files.

    For each row of the batch a random file of the CSV is drawn (global torch RNG). A file longer than
    the utterance is read only over a random segment of the needed length; a shorter one is read whole
    and tiled (from a random circular offset). Channels are averaged and the noise is resampled to
    ``sample_rate``. Unreadable or silent files are excluded with a warning and another file is drawn.

    Arguments
    ---------
    csv_file : str
        SpeechBrain CSV (``ID,duration,wav,wav_format,wav_opts``) listing the noise files.
    sample_rate : int
        Sampling rate of the utterances.
    max_attempts : int
        Draws allowed for one noise segment before giving up (guards against pools that only give
        silent segments).

    Example
    -------
    >>> import tempfile, os, numpy, soundfile
    >>> folder = tempfile.mkdtemp()
    >>> soundfile.write(os.path.join(folder, "n.wav"), numpy.random.randn(4000, 2) * 0.1, 8000)
    >>> csv_path = os.path.join(folder, "noise.csv")
    >>> with open(csv_path, "w") as f:
    ...     _ = f.write("ID,duration,wav,wav_format,wav_opts\\nn,0.5,n.wav,wav,\\n")
    >>> NoisePool(csv_path)(torch.zeros(2, 20000)).shape
    torch.Size([2, 20000])
    """

    files = LazyFileList("noise")

    def __init__(self, csv_file, sample_rate=16000, max_attempts=1000):
        self.csv_file = str(csv_file)
        self.sample_rate = sample_rate
        self.max_attempts = max_attempts

    def __call__(self, waveforms):
        """Returns noise shaped like ``waveforms`` (``[batch, time]`` or ``[batch, time, channels]``)."""
        batch_size, num_samples = waveforms.shape[0], waveforms.shape[1]
        noise_wavs = torch.stack([self.draw(num_samples) for _ in range(batch_size)])
        if waveforms.dim() == 3:
            noise_wavs = noise_wavs.unsqueeze(-1).repeat(1, 1, waveforms.shape[2])
        return noise_wavs.to(device=waveforms.device, dtype=waveforms.dtype)

    def draw(self, num_samples):
        """Draws one non-silent mono noise segment of ``num_samples`` samples at ``sample_rate``."""
        for _ in range(self.max_attempts):
            index = self.files.draw_index()
            try:
                segment, whole_file = self._read_segment(index, num_samples)
                if _rms(segment) >= SILENCE_RMS:
                    return self._fit_length(segment, num_samples)
                if whole_file or _rms(self._read(index)) < SILENCE_RMS:
                    self.files.exclude(index, "the file is silent")
                # else: a silent stretch of a non-silent file; draw again.
            except AudioLoadError as error:
                self.files.exclude(index, str(error))
        raise RuntimeError(
            f"Could not draw a non-silent noise segment from '{self.csv_file}' in {self.max_attempts} attempts."
        )

    def _read(self, index, start=0, stop=None):
        return load_audio(self.files.paths[index], self.sample_rate, channel="mean", start=start, stop=stop)

    def _read_segment(self, index, num_samples):
        """Reads just enough of the file (random offset); returns (noise, whether it is the whole file)."""
        num_frames, file_rate, _ = self.files.info(index)
        needed_frames = math.ceil(num_samples * file_rate / self.sample_rate)
        if num_frames <= needed_frames:
            return self._read(index), True
        offset = int(torch.randint(num_frames - needed_frames + 1, (1,)))
        return self._read(index, offset, offset + needed_frames), False

    @staticmethod
    def _fit_length(noise, num_samples):
        """Crops, or tiles from a random circular offset, to exactly ``num_samples``."""
        if noise.numel() >= num_samples:
            return noise[:num_samples].contiguous()
        shift = int(torch.randint(noise.numel(), (1,)))
        noise = torch.roll(noise, shift)
        repeats = math.ceil(num_samples / noise.numel())
        return noise.repeat(repeats)[:num_samples].contiguous()


class PooledAddReverb(AddReverb):
    """SpeechBrain's ``AddReverb`` with a random RIR per call and linear (not circular) convolution.

    ``_load_rir`` draws a random row of the RIR CSV (global torch RNG), reads one random channel of a
    multichannel RIR and resamples it. ``forward`` zero-pads the input by the RIR length before
    SpeechBrain's :func:`~speechbrain.processing.signal_processing.reverberate` (FFT convolution is
    circular, so without padding the reverberation tail wraps around to the start, and an RIR longer
    than the utterance is cropped), crops back to the input length, and rescales to the input's average
    amplitude as ``AddReverb`` does. The output stays aligned on the direct path (the RIR's peak), whose
    polarity is made positive. One RIR is used for the whole batch (call it per utterance).

    Arguments
    ---------
    csv_file : str
        SpeechBrain CSV listing the RIR files (any channel count and sampling rate).
    sample_rate : int
        Sampling rate of the utterances.
    rir_scale_factor : float
        Compresses (< 1) or dilates (> 1) the RIR, as in ``AddReverb``.

    Example
    -------
    >>> import tempfile, os, numpy, soundfile
    >>> folder = tempfile.mkdtemp()
    >>> rir = numpy.zeros(800); rir[10] = 1.0; rir[300] = 0.5
    >>> soundfile.write(os.path.join(folder, "r.wav"), rir, 16000)
    >>> csv_path = os.path.join(folder, "rir.csv")
    >>> with open(csv_path, "w") as f:
    ...     _ = f.write("ID,duration,wav,wav_format,wav_opts\\nr,0.05,r.wav,wav,\\n")
    >>> PooledAddReverb(csv_path)(torch.randn(1, 500)).shape
    torch.Size([1, 500])
    """

    files = LazyFileList("RIR")

    def __init__(self, csv_file, sample_rate=16000, rir_scale_factor=1.0, max_attempts=1000):
        super().__init__(
            csv_file=str(csv_file),
            rir_scale_factor=rir_scale_factor,
            reverb_sample_rate=sample_rate,
            clean_sample_rate=sample_rate,
        )
        self.sample_rate = sample_rate
        self.max_attempts = max_attempts

    def _load_rir(self, waveforms):
        """Returns a random RIR shaped ``[1, time, 1]`` with the dtype and device of ``waveforms``."""
        for _ in range(self.max_attempts):
            index = self.files.draw_index()
            try:
                rir_wav = load_audio(self.files.paths[index], self.sample_rate, channel="random")
            except AudioLoadError as error:
                self.files.exclude(index, str(error))
                continue
            if _rms(rir_wav) < SILENCE_RMS:
                # Channels are drawn at random; only a file whose every channel is silent is excluded.
                if _rms(load_audio(self.files.paths[index], self.sample_rate)) < SILENCE_RMS:
                    self.files.exclude(index, "the file is silent")
                continue
            return rir_wav.view(1, -1, 1).to(device=waveforms.device, dtype=waveforms.dtype)
        raise RuntimeError(f"Could not draw a non-silent RIR from '{self.csv_file}' in {self.max_attempts} attempts.")

    def forward(self, waveforms):
        """Reverberates ``waveforms`` (``[batch, time]`` or ``[batch, time, channels]``), same shape."""
        channel_added = waveforms.dim() == 2
        if channel_added:
            waveforms = waveforms.unsqueeze(-1)
        rir_wav = self._load_rir(waveforms)
        if self.rir_scale_factor != 1:
            rir_wav = F.interpolate(
                rir_wav.transpose(1, -1),
                scale_factor=self.rir_scale_factor,
                mode="linear",
                align_corners=False,
            ).transpose(1, -1)
        direct_index = int(rir_wav[0, :, 0].abs().argmax())
        if rir_wav[0, direct_index, 0] < 0:
            rir_wav = -rir_wav
        num_samples = waveforms.shape[1]
        # Padding of >= len(rir) - 1 makes the circular convolution linear for both the tail (after
        # the direct path) and the part of the RIR before it; the padded length is FFT-friendly.
        # float64 makes the float32 result independent of the number of threads (main process vs
        # DataLoader worker).
        wavs64 = waveforms.double()
        padding = fast_fft_length(num_samples + rir_wav.shape[1]) - num_samples
        padded_wavs = F.pad(wavs64, (0, 0, 0, padding))
        reverbed_wavs = reverberate(padded_wavs, rir_wav.double(), rescale_amp=None)[:, :num_samples]
        input_amplitude = compute_amplitude(wavs64, num_samples, amp_type="avg")
        reverbed_wavs = rescale(reverbed_wavs, num_samples, input_amplitude, amp_type="avg")
        reverbed_wavs = reverbed_wavs.to(waveforms.dtype)
        return reverbed_wavs.squeeze(-1) if channel_added else reverbed_wavs


class CorruptedUtterance(NamedTuple):
    """What :class:`Corruptor` returns for one utterance."""

    noisy: torch.Tensor
    """Student input, ``[time]`` float32."""
    reference: torch.Tensor
    """Enhancement target: the clean utterance times the clean gain of the noise mixing."""
    condition: str
    """One of :data:`CONDITIONS`."""
    snr: float
    """SNR in dB of ``noisy`` vs ``reference`` before reverberation; NaN without noise."""
    noise_source: Optional[str]
    """``"file"``, ``"white"`` or None."""


def clean_gain_for_snr(snr):
    """The factor ``AddNoise`` applies to the clean signal at ``snr`` dB: ``1 - 1/(10^(snr/20)+1)``.

    Computed in float32 as ``AddNoise`` does, so ``clean * gain`` is exactly its scaled clean signal.

    Example
    -------
    >>> round(float(clean_gain_for_snr(0.0)), 4), round(float(clean_gain_for_snr(20.0)), 4)
    (0.5, 0.9091)
    """
    amplitude_ratio = 10 ** (torch.tensor([[float(snr)]], dtype=torch.float32) / 20)
    return (1 - 1 / (amplitude_ratio + 1))[0, 0]


class Corruptor:
    """Per-utterance corruption: draws a condition and applies SpeechBrain's adders to one utterance.

    All randomness of one call (condition, noise source, SNR, noise file and offset, white noise, RIR,
    RIR channel) comes from the global torch RNG inside ``torch.random.fork_rng`` seeded with
    :meth:`item_seed` ``(key)``: the same ``(seed, epoch, key)`` gives the same output in any process or
    DataLoader worker, whatever was called before, and the caller's RNG state is left untouched.

    Arguments
    ---------
    file_noise : speechbrain.augment.time_domain.AddNoise or None
        Adder for noise from files (``noise_funct: NoisePool``). Its ``snr_low``/``snr_high`` give the
        SNR range (declare ``snr_low: 0, snr_high: 20`` in the YAML; AddNoise's own default is 0, 0).
    white_noise : AddNoise or None
        Adder for white noise (default ``noise_funct=torch.randn_like``); SNR range as above.
    reverb : AddReverb or None
        Reverberation (normally :class:`PooledAddReverb`).
    condition_probs : dict, optional
        Probability of each of :data:`CONDITIONS` (missing keys count as 0); default 0.25 each.
        Must sum to 1.
    file_noise_prob : float
        Probability that a noisy condition uses ``file_noise`` rather than ``white_noise`` when both
        are given (only one given: that one is always used).
    seed : int
        Base seed of the per-utterance draws.

    Raises
    ------
    ValueError
        If the probabilities are invalid or a condition with non-zero probability needs an adder that
        is None.

    Note
    ----
    :meth:`set_epoch` changes this object only: DataLoader workers hold copies, so call it before the
    epoch's iterator is created and do not use ``persistent_workers=True`` (or put the epoch into the key).

    Example
    -------
    >>> from speechbrain.augment.time_domain import AddNoise
    >>> corruptor = Corruptor(None, AddNoise(snr_low=0, snr_high=20), None,
    ...                       condition_probs={"clean": 0.5, "noise": 0.5})
    >>> clean = torch.sin(torch.arange(16000) * 0.05)
    >>> out = corruptor(clean, key="utt1", condition="noise", snr=10.0)
    >>> out.condition, out.snr, out.noise_source, out.noisy.shape
    ('noise', 10.0, 'white', torch.Size([16000]))
    >>> torch.equal(corruptor(clean, key="utt1").noisy, corruptor(clean, key="utt1").noisy)
    True
    """

    def __init__(
        self,
        file_noise=None,
        white_noise=None,
        reverb=None,
        condition_probs=None,
        file_noise_prob=0.7,
        seed=1234,
    ):
        self.file_noise = file_noise
        self.white_noise = white_noise
        self.reverb = reverb
        self.condition_probs = self._check_probs(condition_probs)
        if not 0.0 <= float(file_noise_prob) <= 1.0:
            raise ValueError(f"file_noise_prob must be in [0, 1], got {file_noise_prob}.")
        self.file_noise_prob = float(file_noise_prob)
        self.seed = int(seed)
        self.epoch = 0
        for name in CONDITIONS:
            if self.condition_probs[name] > 0:
                self._check_adders(name)
        for name, adder in (("file_noise", file_noise), ("white_noise", white_noise)):
            if adder is not None:
                low, high = self._snr_range(adder)
                if low == high == 0:
                    logger.warning(
                        "%s has SNR range [0, 0] dB (AddNoise's default): declare snr_low/snr_high.",
                        name,
                    )

    @staticmethod
    def _check_probs(condition_probs):
        if condition_probs is None:
            return {name: 1.0 / len(CONDITIONS) for name in CONDITIONS}
        unknown = set(condition_probs) - set(CONDITIONS)
        if unknown:
            raise ValueError(f"Unknown condition(s) {sorted(unknown)} in condition_probs; known: {CONDITIONS}.")
        probs = {name: float(condition_probs.get(name, 0.0)) for name in CONDITIONS}
        if any(p < 0 or not math.isfinite(p) for p in probs.values()):
            raise ValueError(f"condition_probs must be non-negative, got {probs}.")
        if abs(sum(probs.values()) - 1.0) > 1e-6:
            raise ValueError(f"condition_probs must sum to 1, got {probs} (sum {sum(probs.values())}).")
        return probs

    def _check_adders(self, condition):
        if "noise" in condition and self.file_noise is None and self.white_noise is None:
            raise ValueError(f"Condition '{condition}' needs noise but both file_noise and white_noise are None.")
        if "reverb" in condition and self.reverb is None:
            raise ValueError(f"Condition '{condition}' needs reverberation but reverb is None.")

    @staticmethod
    def _snr_range(adder):
        return float(adder.snr_low), float(adder.snr_high)

    def set_epoch(self, epoch):
        """Sets the epoch mixed into the per-utterance seeds (new draws every epoch)."""
        self.epoch = int(epoch)

    def item_seed(self, key):
        """A stable 63-bit seed from ``(seed, epoch, key)`` (sha256; unlike ``hash``, not salted).

        Example
        -------
        >>> from speechbrain.augment.time_domain import AddNoise
        >>> corruptor = Corruptor(None, AddNoise(snr_low=0, snr_high=20), None,
        ...                       condition_probs={"noise": 1.0})
        >>> corruptor.item_seed("a") == corruptor.item_seed("a") != corruptor.item_seed("b")
        True
        """
        return hash_seed(self.seed, self.epoch, key)

    def _draw_condition(self, uniform):
        cumulative = 0.0
        for name in CONDITIONS:
            cumulative += self.condition_probs[name]
            if uniform < cumulative and self.condition_probs[name] > 0:
                return name
        return max(CONDITIONS, key=lambda name: self.condition_probs[name])  # rounding at 1.0

    def _choose_noise_adder(self, uniform):
        if self.file_noise is not None and self.white_noise is not None:
            use_file = uniform < self.file_noise_prob
        else:
            use_file = self.file_noise is not None
        return ("file", self.file_noise) if use_file else ("white", self.white_noise)

    @staticmethod
    def _add_noise(adder, clean_wav, snr):
        """Runs ``adder`` on one utterance with its SNR range fixed to ``snr``; returns (noisy, reference)."""
        saved = adder.snr_low, adder.snr_high, getattr(adder, "normalize", False)
        adder.snr_low = adder.snr_high = snr
        adder.normalize = False
        try:
            noisy_wav = adder(clean_wav.unsqueeze(0), torch.ones(1))[0]
        finally:
            adder.snr_low, adder.snr_high, adder.normalize = saved
        reference_wav = clean_wav * clean_gain_for_snr(snr)
        if saved[2]:  # AddNoise(normalize=True): peak-normalise both, keeping them consistent.
            peak_scale = noisy_wav.abs().max().clamp(min=1.0)
            noisy_wav, reference_wav = noisy_wav / peak_scale, reference_wav / peak_scale
        return noisy_wav, reference_wav

    def __call__(self, clean, key, condition=None, snr=None):
        """Corrupts one utterance.

        Arguments
        ---------
        clean : torch.Tensor
            ``[time]`` waveform (CPU).
        key : str or int
            Utterance identity (e.g. its ID, or ID plus crop offset) for the seed.
        condition : str, optional
            Force one of :data:`CONDITIONS` (evaluation sets).
        snr : float, optional
            Force the SNR in dB of the noise conditions.

        Returns
        -------
        CorruptedUtterance
            ``noisy`` and ``reference`` are float32 ``[time]`` on ``clean``'s device. A silent
            utterance (RMS below :data:`SILENCE_RMS`) is returned uncorrupted as condition "clean".
        """
        if clean.dim() != 1:
            raise ValueError(f"Corruptor expects a [time] waveform, got shape {tuple(clean.shape)}.")
        if condition is not None:
            if condition not in CONDITIONS:
                raise ValueError(f"Unknown condition '{condition}'; known: {CONDITIONS}.")
            self._check_adders(condition)
            if snr is not None and "noise" not in condition:
                raise ValueError(f"An SNR was forced for condition '{condition}', which has no noise.")
        device = clean.device
        clean_wav = clean.detach().to("cpu", torch.float32)
        if not torch.isfinite(clean_wav).all():
            raise ValueError(f"Utterance '{key}' contains NaN or infinite samples.")
        if _rms(clean_wav) < SILENCE_RMS:
            logger.debug("Utterance '%s' is silent: left uncorrupted.", key)
            return self._result(clean_wav, clean_wav, "clean", float("nan"), None, device)

        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(self.item_seed(key))
            # Fixed draw order, so forcing the condition or the SNR leaves the other draws unchanged.
            condition_uniform, source_uniform, snr_uniform = torch.rand(3).tolist()
            if condition is None:
                condition = self._draw_condition(condition_uniform)
            noisy_wav, reference_wav = clean_wav, clean_wav
            noise_source, drawn_snr = None, float("nan")
            if "noise" in condition:
                noise_source, adder = self._choose_noise_adder(source_uniform)
                if snr is None:
                    snr_low, snr_high = self._snr_range(adder)
                    snr = snr_low + snr_uniform * (snr_high - snr_low)
                drawn_snr = float(snr)
                noisy_wav, reference_wav = self._add_noise(adder, clean_wav, drawn_snr)
            if "reverb" in condition:
                noisy_wav = self.reverb(noisy_wav.unsqueeze(0))[0]
        return self._result(noisy_wav, reference_wav, condition, drawn_snr, noise_source, device)

    @staticmethod
    def _result(noisy_wav, reference_wav, condition, snr, noise_source, device):
        noisy_wav = noisy_wav.to(device=device, dtype=torch.float32).contiguous()
        reference_wav = reference_wav.to(device=device, dtype=torch.float32).contiguous()
        if not torch.isfinite(noisy_wav).all():
            raise RuntimeError(f"Corruption '{condition}' produced non-finite samples.")
        return CorruptedUtterance(noisy_wav, reference_wav, condition, snr, noise_source)
