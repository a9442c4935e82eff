"""Signal distortions of the peers' test protocols (Huang et al. 2022, Speech Robust Bench).

Each function takes a ``[time]`` float waveform and returns a ``[time]`` float32 tensor of the same
length. They are deterministic given their arguments; the only randomness is an explicit
``torch.Generator`` (:func:`add_gaussian_noise`, :func:`noise_segment`, :func:`draw_huang_band`);
:func:`apply_rir` with ``keep_tail=True`` is the one exception to the same length.

- :func:`mix_at_snr`: additive mix of a given noise segment at an exact SNR, the peers' convention
  (the noise is scaled, the speech is kept); :func:`add_gaussian_noise` uses it with white noise.
- :func:`noise_segment`: the noise segment of an utterance's length (random offset; tiled if short,
  or Huang et al.'s sample-by-sample repetition); :func:`apply_rir`: convolution with an RIR as SRB
  (first 10 ms dropped, unit norm) or Huang et al. (RIR gain from an "RIR SNR") do.
- :func:`band_reject`: sox 14.4.2's ``sinc -a 120 <high>-<low>`` (two Kaiser-windowed sinc low-pass
  filters designed as sox designs them, one inverted, summed: a linear-phase band-reject FIR).
- :func:`pitch_shift`: a shift in cents that keeps the duration (phase vocoder, then FFT resampling).
- :func:`sox_reverb`: a port of sox 14.4.2's ``reverb`` effect (``src/reverb.c``, Freeverb: eight
  damped comb filters in parallel, four all-pass filters in series), mono out as
  ``sox ... reverb ... channels 1`` gives it (Huang et al.'s ``.reverb(...).channels()``).

The facts and their sources: ``docs/reference/peer_distortions.md``.
"""

import math

import numpy as np
import scipy.signal
import scipy.special
import torch
import torchaudio

HUANG_BAND_SCALER = 0.5
"""The band-reject width scaler of Huang et al.'s ``distortion_config.yaml`` (``bandrej.band_scaler``).

Their file marks the value ``# this is an error, value not provided``: the paper does not give it.
0.5 is the value in their file, used here as the documented default of :func:`draw_huang_band`.
"""
SOX_SINC_DEFAULT_TRANSITION = 0.05
"""sox ``sinc``'s transition band without ``-t``/``-n``: 5 % of the Nyquist frequency (``sinc.c``, ``lpf``)."""
_REVERB_COMB_LENGTHS = (1116, 1188, 1277, 1356, 1422, 1491, 1557, 1617)
_REVERB_ALLPASS_LENGTHS = (225, 341, 441, 556)
_REVERB_STEREO_ADJUST = 12
_REVERB_REFERENCE_RATE = 44100.0


def _as_waveform(waveform, name="waveform"):
    """Checks a ``[time]`` float tensor; returns it as a float64 NumPy array."""
    if not isinstance(waveform, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [time], got {type(waveform).__name__}.")
    if waveform.dim() != 1:
        raise ValueError(f"{name} must have shape [time], got {tuple(waveform.shape)}.")
    if not torch.is_floating_point(waveform):
        raise TypeError(f"{name} must be a float tensor, got {waveform.dtype}.")
    return waveform.detach().cpu().double().numpy()


def _to_tensor(array):
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _check_rate(sample_rate):
    if not (isinstance(sample_rate, (int, np.integer)) and sample_rate > 0):
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}.")


def mix_at_snr(waveform, noise, snr_db):
    """Adds ``noise`` scaled so that ``10*log10(sum(x^2)/sum(n^2)) == snr_db`` over the whole utterance.

    The peers' convention (Huang et al.'s ``_snr_coeff``; Speech Robust Bench's additive noises): the
    speech is kept as it is and only the noise is scaled. SpeechBrain's ``AddNoise`` differs: it scales
    the *clean* signal down by ``1 - 1/(10^(SNR/20)+1)`` and sets the noise from amplitudes (mean absolute
    value), so its output has a different level and its SNR is defined on amplitudes, not on energies.

    Arguments
    ---------
    waveform : torch.Tensor
        Speech, ``[time]``.
    noise : torch.Tensor
        A noise segment of the same length (the caller picks and tiles it).
    snr_db : float
        Signal-to-noise ratio in dB (energy ratio over the whole utterance).

    Returns
    -------
    torch.Tensor
        ``waveform + gain * noise``, float32, ``[time]``. A silent ``waveform`` gets no noise (gain 0).

    Raises
    ------
    ValueError
        If the shapes differ, the noise is silent or ``snr_db`` is not finite.

    Example
    -------
    >>> speech = torch.ones(4)
    >>> noisy = mix_at_snr(speech, torch.tensor([1.0, -1.0, 1.0, -1.0]), snr_db=20.0)
    >>> round(10 * math.log10(speech.pow(2).sum().item() / (noisy - speech).pow(2).sum().item()), 4)
    20.0
    """
    speech = _as_waveform(waveform)
    noise_array = _as_waveform(noise, "noise")
    if noise_array.shape != speech.shape:
        raise ValueError(f"noise must have the waveform's shape {speech.shape}, got {noise_array.shape}.")
    if not math.isfinite(float(snr_db)):
        raise ValueError(f"snr_db must be a finite number, got {snr_db!r}.")
    noise_energy = float(np.sum(noise_array**2))
    if noise_energy == 0.0:
        raise ValueError("noise is silent (all zeros): no gain can give it an SNR.")
    gain = math.sqrt(float(np.sum(speech**2)) / noise_energy * 10.0 ** (-float(snr_db) / 10.0))
    return _to_tensor(speech + gain * noise_array)


def add_gaussian_noise(waveform, snr_db, generator):
    """Adds white Gaussian noise at ``snr_db`` (energy ratio over the whole utterance, :func:`mix_at_snr`).

    Arguments
    ---------
    waveform : torch.Tensor
        Speech, ``[time]``.
    snr_db : float
        Signal-to-noise ratio in dB.
    generator : torch.Generator
        The only source of randomness (CPU generator): same seed, same noise.

    Returns
    -------
    torch.Tensor
        The noisy waveform, float32, ``[time]``.

    Example
    -------
    >>> speech = torch.sin(torch.arange(1600) / 5.0)
    >>> noisy = add_gaussian_noise(speech, 10.0, torch.Generator().manual_seed(0))
    >>> round(10 * math.log10(speech.pow(2).sum().item() / (noisy - speech).pow(2).sum().item()), 3)
    10.0
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}.")
    _as_waveform(waveform)
    noise = torch.randn(waveform.shape[0], generator=generator, dtype=torch.float64)
    return mix_at_snr(waveform, noise, snr_db)


def noise_segment(noise, num_samples, generator, short_noise="tile", offset="random"):
    """A ``num_samples`` segment of ``noise`` as the peers cut one: random offset, or repeated if short.

    A longer noise is cut at an offset drawn uniformly in ``[0, len(noise) - num_samples]`` (Huang et
    al.'s ``add_real_noise``; ``offset="random"``) or from its first sample (Speech Robust Bench's
    ``EnvNoise``; ``offset="start"``). A shorter one is repeated: ``"tile"`` repeats the whole file
    (``[a, b, a, b, ...]``); ``"huang"`` reproduces Huang et al.'s ``numpy.repeat``, which repeats each
    *sample* (``[a, a, b, b, ...]``, slowing the noise down), then cuts.

    Arguments
    ---------
    noise : torch.Tensor
        ``[time]``, at least one sample.
    num_samples : int
        Length wanted.
    generator : torch.Generator
        Draws the offset.
    short_noise : str
        ``"tile"`` (SRB, and our default) or ``"huang"``.
    offset : str
        ``"random"`` or ``"start"``.

    Returns
    -------
    torch.Tensor
        Float32, ``[num_samples]``.

    Example
    -------
    >>> noise_segment(torch.tensor([1.0, 2.0]), 5, torch.Generator(), short_noise="huang").tolist()
    [1.0, 1.0, 1.0, 2.0, 2.0]
    >>> noise_segment(torch.tensor([1.0, 2.0]), 5, torch.Generator()).tolist()
    [1.0, 2.0, 1.0, 2.0, 1.0]
    """
    samples = _as_waveform(noise, "noise")
    if short_noise not in ("tile", "huang"):
        raise ValueError(f"short_noise must be 'tile' or 'huang', got {short_noise!r}.")
    if offset not in ("random", "start"):
        raise ValueError(f"offset must be 'random' or 'start', got {offset!r}.")
    if samples.size == 0 or num_samples < 0:
        raise ValueError(f"noise must have samples and num_samples be >= 0, got {samples.size} and {num_samples}.")
    if samples.size >= num_samples:
        start = 0
        if offset == "random":
            start = int(torch.randint(0, samples.size - num_samples + 1, (1,), generator=generator))
        return _to_tensor(samples[start : start + num_samples])
    repeats = num_samples // samples.size + 1
    repeated = np.repeat(samples, repeats) if short_noise == "huang" else np.tile(samples, repeats)
    return _to_tensor(repeated[:num_samples])


def apply_rir(waveform, rir, sample_rate, convention="srb", rir_snr_db=None, keep_tail=False):
    """Convolves with a room impulse response as one of the peers does (linear, not circular, convolution).

    - ``"srb"`` (Speech Robust Bench's ``RIR`` / ``RealRIR``): the first 10 ms of the RIR are dropped,
      the rest scaled to unit L2 norm, then convolved; SRB keeps the whole output (``keep_tail=True``).
    - ``"huang"`` (Huang et al.'s ``add_real_rir``, condition ``dns``): the RIR is scaled so that
      ``10 log10(sum(x^2) / sum(h^2)) == rir_snr_db`` (they draw it from 10-19 dB; it sets only the output
      level), convolved, and cut to the input's length.

    Arguments
    ---------
    waveform, rir : torch.Tensor
        ``[time]`` each (a multichannel RIR: pick a channel first; SRB takes the first).
    sample_rate : int
        Hz (for the 10 ms SRB drops).
    convention : str
        ``"srb"`` or ``"huang"``.
    rir_snr_db : float, optional
        Required by ``"huang"``.
    keep_tail : bool
        Return ``len(waveform) + len(rir) - 1`` samples (the reverberation tail) instead of ``len(waveform)``.

    Returns
    -------
    torch.Tensor
        Float32.

    Example
    -------
    >>> rir = torch.zeros(400)
    >>> rir[160] = 2.0  # 10 ms at 16 kHz: SRB drops what comes before
    >>> apply_rir(torch.tensor([1.0, 0.5]), rir, 16000).tolist()
    [1.0, 0.5]
    """
    signal = _as_waveform(waveform)
    response = _as_waveform(rir, "rir")
    _check_rate(sample_rate)
    if convention == "srb":
        response = response[int(sample_rate * 0.01) :]
        norm = float(np.sqrt(np.sum(response**2)))
        if norm == 0.0:
            raise ValueError("rir is silent after its first 10 ms (SRB drops them): it cannot be normalised.")
        response = response / norm
    elif convention == "huang":
        if rir_snr_db is None:
            raise ValueError("apply_rir(convention='huang') needs rir_snr_db (Huang et al. draw 10-19 dB).")
        energy = float(np.sum(response**2))
        if energy == 0.0:
            raise ValueError("rir is silent.")
        response = response * math.sqrt(float(np.sum(signal**2)) / energy * 10.0 ** (-float(rir_snr_db) / 10.0))
    else:
        raise ValueError(f"convention must be 'srb' or 'huang', got {convention!r}.")
    if signal.size == 0 or response.size == 0:
        return _to_tensor(signal)
    convolved = scipy.signal.fftconvolve(signal, response, mode="full")
    return _to_tensor(convolved if keep_tail else convolved[: signal.size])


def _sox_kaiser_beta(attenuation_db, transition_width):
    """sox 14.4.2 ``lsx_kaiser_beta`` (``effects_i_dsp.c``): Kaiser beta for an attenuation and width."""
    if attenuation_db >= 60:
        coefficients = (
            (-6.784957e-10, 1.02856e-05, 0.1087556, -0.8988365 + 0.001),
            (-6.897885e-10, 1.027433e-05, 0.10876, -0.8994658 + 0.002),
            (-1.000683e-09, 1.030092e-05, 0.1087677, -0.9007898 + 0.003),
            (-3.654474e-10, 1.040631e-05, 0.1087085, -0.8977766 + 0.006),
            (8.106988e-09, 6.983091e-06, 0.1091387, -0.9172048 + 0.015),
            (9.519571e-09, 7.272678e-06, 0.1090068, -0.9140768 + 0.025),
            (-5.626821e-09, 1.342186e-05, 0.1083999, -0.9065452 + 0.05),
            (-9.965946e-08, 5.073548e-05, 0.1040967, -0.7672778 + 0.085),
            (1.604808e-07, -5.856462e-05, 0.1185998, -1.34824 + 0.1),
            (-1.511964e-07, 6.363034e-05, 0.1064627, -0.9876665 + 0.18),
        )
        realm = math.log(transition_width / 0.0005) / math.log(2.0)
        last = len(coefficients) - 1
        first_row = coefficients[min(max(int(realm), 0), last)]
        second_row = coefficients[min(max(1 + int(realm), 0), last)]

        def cubic(row):
            return ((row[0] * attenuation_db + row[1]) * attenuation_db + row[2]) * attenuation_db + row[3]

        return cubic(first_row) + (cubic(second_row) - cubic(first_row)) * (realm - int(realm))
    if attenuation_db > 50:
        return 0.1102 * (attenuation_db - 8.7)
    if attenuation_db > 20.96:
        return 0.58417 * (attenuation_db - 20.96) ** 0.4 + 0.07886 * (attenuation_db - 20.96)
    return 0.0


def _sox_lowpass(cutoff, attenuation_db, beta):
    """sox ``sinc``'s low-pass design (``sinc.c`` ``lpf``, ``lsx_kaiser_params``, ``lsx_make_lpf``).

    ``cutoff`` is normalised to the Nyquist frequency; ``beta`` None: computed (sox computes it for the
    first filter and reuses it for the second). Returns ``(taps, beta)``.
    """
    transition_width = SOX_SINC_DEFAULT_TRANSITION * 0.5
    if beta is None:
        beta = _sox_kaiser_beta(attenuation_db, transition_width * 0.5 / cutoff)
    if attenuation_db < 60:
        width_factor = (attenuation_db - 7.95) / (2.285 * math.pi * 2)
    else:
        width_factor = ((0.0007528358 - 1.577737e-05 * beta) * beta + 0.6248022) * beta + 0.06186902
    num_taps = min(max(math.ceil(width_factor / transition_width + 1), 11), 32767) | 1
    middle = num_taps - 1
    position = np.arange(num_taps) - 0.5 * middle
    angle = position * math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        taps = np.where(angle == 0, cutoff, np.sin(cutoff * angle) / np.where(angle == 0, 1.0, angle))
    window = scipy.special.i0(beta * np.sqrt(np.clip(1 - (position / (0.5 * middle)) ** 2, 0, None)))
    return taps * window / scipy.special.i0(beta), beta


def sox_band_reject_taps(sample_rate, low_hz, high_hz, attenuation_db=120.0):
    """The FIR of sox 14.4.2's ``sinc -a <attenuation_db> <high_hz>-<low_hz>`` (linear phase, odd length).

    sox designs a low-pass at ``high_hz``, inverts it into a high-pass, adds a low-pass at ``low_hz``
    (the shorter filter centred on the longer one); each is a windowed sinc with a Kaiser window whose
    beta and length follow from the attenuation and the default transition band (5 % of Nyquist).

    Example
    -------
    >>> taps = sox_band_reject_taps(16000, 1000.0, 2000.0)
    >>> len(taps) % 2, round(float(taps.sum()), 6)
    (1, 1.0)
    """
    _check_rate(sample_rate)
    nyquist = sample_rate / 2.0
    if not 0 < low_hz < high_hz < nyquist:
        raise ValueError(
            f"band_reject needs 0 < low_hz < high_hz < sample_rate/2 = {nyquist} Hz, got {low_hz}-{high_hz} Hz."
        )
    if not 40 <= attenuation_db <= 180:
        raise ValueError(f"attenuation_db must be in [40, 180] (sox sinc -a), got {attenuation_db}.")
    highpass, beta = _sox_lowpass(high_hz / nyquist, attenuation_db, None)
    highpass = -highpass
    highpass[(len(highpass) - 1) // 2] += 1.0
    lowpass, _ = _sox_lowpass(low_hz / nyquist, attenuation_db, beta)
    longer, shorter = (lowpass, highpass) if len(lowpass) > len(highpass) else (highpass, lowpass)
    taps = longer.copy()
    start = (len(longer) - len(shorter)) // 2
    taps[start : start + len(shorter)] += shorter
    return taps


def band_reject(waveform, sample_rate, low_hz, high_hz, attenuation_db=120.0):
    """Removes the band ``low_hz``-``high_hz`` as sox's ``sinc -a 120 <high>-<low>`` (Huang et al.'s band-reject).

    The FIR is :func:`sox_band_reject_taps`; it is applied with zero phase (centred, as sox's
    ``dft_filter`` delays by half the filter length and compensates), so the output is aligned with the
    input and has its length. Huang et al. draw the band per utterance (:func:`draw_huang_band`).

    Arguments
    ---------
    waveform : torch.Tensor
        ``[time]``.
    sample_rate : int
        Hz.
    low_hz, high_hz : float
        The rejected band, ``0 < low_hz < high_hz < sample_rate / 2``.
    attenuation_db : float
        Stop-band attenuation of sox's design (``-a``), 40 to 180 dB.

    Returns
    -------
    torch.Tensor
        Float32, ``[time]``.

    Example
    -------
    >>> time = torch.arange(16000) / 16000
    >>> tone = torch.sin(2 * math.pi * 1500 * time)
    >>> float(band_reject(tone, 16000, 1000.0, 2000.0)[4000:12000].abs().max()) < 1e-3
    True
    """
    signal = _as_waveform(waveform)
    taps = sox_band_reject_taps(sample_rate, low_hz, high_hz, attenuation_db)
    filtered = scipy.signal.fftconvolve(signal, taps, mode="full")
    delay = (len(taps) - 1) // 2
    return _to_tensor(filtered[delay : delay + len(signal)])


def draw_huang_band(sample_rate, generator, band_scaler=HUANG_BAND_SCALER):
    """Draws a rejected band ``(low_hz, high_hz)`` as Huang et al.'s ``SpecAugmentBand`` does.

    The width on the mel scale is uniform in ``[0, mel(sample_rate/2) * 27 * band_scaler / 256]`` and
    its start uniform below ``mel(sample_rate/2) - width`` (SpecAugment's F = 27 of 256 channels). Their
    ``band_scaler`` is not published (:data:`HUANG_BAND_SCALER`); 0.5 gives bands up to about 670 mel.

    Example
    -------
    >>> low, high = draw_huang_band(16000, torch.Generator().manual_seed(0))
    >>> 0 <= low <= high <= 8000
    True
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}.")
    draws = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
    mel_max = 2595.0 * math.log10(1 + sample_rate / 2 / 700.0)
    mel_width = draws[0] * mel_max * 27.0 * band_scaler / 256.0
    mel_start = draws[1] * (mel_max - mel_width)

    def to_hz(mel):
        return (10.0 ** (mel / 2595.0) - 1) * 700.0

    return to_hz(mel_start), to_hz(mel_start + mel_width)


def pitch_shift(waveform, sample_rate, cents, n_fft=512):
    """Shifts the pitch by ``cents`` (1/100 semitone) and keeps the duration.

    As ``torchaudio.functional.pitch_shift`` (phase vocoder time stretch by ``2^(cents/1200)``, then
    resampling back to the original length), but the resampling is done in the Fourier domain to the
    exact length: torchaudio's polyphase resampler needs ``sample_rate / rate`` as an integer ratio,
    which for most cent values is a huge one (15 s for one second of audio). sox's ``pitch`` (what Huang
    et al. call) uses WSOLA instead of a phase vocoder: the pitch change is the same, the artefacts differ.

    Arguments
    ---------
    waveform : torch.Tensor
        ``[time]``.
    sample_rate : int
        Hz (the frequency resolution of the phase vocoder is ``sample_rate / n_fft``).
    cents : float
        Shift; Huang et al. draw integers in ``[-500, 500)``; 0 returns a copy.
    n_fft : int
        STFT size of the phase vocoder (hop ``n_fft // 4``, Hann window), torchaudio's default.

    Returns
    -------
    torch.Tensor
        Float32, ``[time]``.

    Example
    -------
    >>> tone = torch.sin(2 * math.pi * 500 * torch.arange(16000) / 16000)
    >>> shifted = pitch_shift(tone, 16000, 1200.0)
    >>> int(torch.fft.rfft(shifted).abs().argmax())
    1000
    """
    signal = _as_waveform(waveform)
    _check_rate(sample_rate)
    if not math.isfinite(float(cents)):
        raise ValueError(f"cents must be a finite number, got {cents!r}.")
    length = len(signal)
    if cents == 0 or length == 0:
        return _to_tensor(signal)
    ratio = 2.0 ** (float(cents) / 1200.0)
    hop = n_fft // 4
    window = torch.hann_window(n_fft, dtype=torch.float64)
    spectrum = torch.stft(
        torch.from_numpy(signal), n_fft, hop_length=hop, window=window, return_complex=True, center=True
    )
    phase_advance = torch.linspace(0, math.pi * hop, spectrum.shape[0], dtype=torch.float64)[..., None]
    stretched = torchaudio.functional.phase_vocoder(spectrum, 1.0 / ratio, phase_advance)
    stretched_length = max(int(round(length * ratio)), 1)
    stretched_signal = torch.istft(stretched, n_fft, hop_length=hop, window=window, length=stretched_length)
    return _to_tensor(_fourier_resample(stretched_signal.numpy(), length))


def _fourier_resample(signal, length):
    """Resamples to exactly ``length`` samples by truncating or zero-padding the spectrum."""
    if len(signal) == length:
        return signal
    spectrum = np.fft.rfft(signal)
    kept = min(len(spectrum), length // 2 + 1)
    resized = np.zeros(length // 2 + 1, dtype=complex)
    resized[:kept] = spectrum[:kept]
    return np.fft.irfft(resized, n=length) * (length / len(signal))


_BLOCK_FILTER_MIN_DELAY = 90
"""Delays from this many samples are filtered block by block; shorter ones by ``scipy.signal.lfilter``.

A block of ``delay`` samples depends only on earlier blocks, so it is computed with array operations; the
cost per sample is one block's overhead divided by the delay, against ``lfilter``'s cost growing with the
delay (the two meet near 90 samples on an x86-64 core)."""


def _comb_filter(signal, size, feedback, damping):
    """sox's damped comb (``comb_process``): ``o[n] = x[n-N] + feedback * s[n-N]``, ``s = (1-d) o + d s[n-1]``."""
    if size < _BLOCK_FILTER_MIN_DELAY:
        numerator = np.zeros(size + 2)
        numerator[size], numerator[size + 1] = 1.0, -damping
        denominator = np.zeros(size + 1)
        denominator[0], denominator[1] = 1.0, -damping
        denominator[size] -= feedback * (1.0 - damping)
        return scipy.signal.lfilter(numerator, denominator, signal)
    output, store, last_store = np.zeros(len(signal)), np.zeros(len(signal)), 0.0
    for start in range(size, len(signal), size):
        stop = min(start + size, len(signal))
        block = signal[start - size : stop - size] + feedback * store[start - size : stop - size]
        output[start:stop] = block
        store[start:stop], _ = scipy.signal.lfilter([1.0 - damping], [1.0, -damping], block, zi=[damping * last_store])
        last_store = store[stop - 1]
    return output


def _allpass_filter(signal, size):
    """sox's all-pass (``allpass_process``): ``o[n] = x[n-M] + o[n-M] / 2``, output ``o - x``."""
    if size < _BLOCK_FILTER_MIN_DELAY:
        numerator = np.zeros(size + 1)
        numerator[0], numerator[size] = -1.0, 1.5
        denominator = np.zeros(size + 1)
        denominator[0], denominator[size] = 1.0, -0.5
        return scipy.signal.lfilter(numerator, denominator, signal)
    delayed = np.zeros(len(signal))
    for start in range(size, len(signal), size):
        stop = min(start + size, len(signal))
        delayed[start:stop] = signal[start - size : stop - size] + 0.5 * delayed[start - size : stop - size]
    return delayed - signal


def sox_reverb_settings(
    sample_rate, reverberance=50.0, hf_damping=50.0, room_scale=100.0, stereo_depth=100.0, wet_gain_db=0.0
):
    """The filter settings sox 14.4.2's ``reverb`` derives from its percentages (``reverb_create``).

    Returns
    -------
    dict
        ``feedback`` (of every comb), ``hf_damping`` (one-pole damping of the comb feedback), ``gain``
        (of the wet path), ``comb_sizes`` and ``allpass_sizes``: one tuple of delay lengths in samples
        per output channel of sox (two when ``stereo_depth > 0``).

    Example
    -------
    >>> settings = sox_reverb_settings(44100, room_scale=100.0, stereo_depth=0.0)
    >>> round(settings["feedback"], 4), settings["comb_sizes"][0][:2], settings["allpass_sizes"][0]
    (0.8817, (1116, 1188), (225, 341, 441, 556))
    """
    _check_rate(sample_rate)
    for name, value in (
        ("reverberance", reverberance),
        ("hf_damping", hf_damping),
        ("room_scale", room_scale),
        ("stereo_depth", stereo_depth),
    ):
        if not 0 <= value <= 100:
            raise ValueError(f"sox reverb: {name} must be a percentage in [0, 100], got {value}.")
    if not -10 <= wet_gain_db <= 10:
        raise ValueError(f"sox reverb: wet_gain_db must be in [-10, 10] dB, got {wet_gain_db}.")
    scale = room_scale / 100.0 * 0.9 + 0.1
    depth = stereo_depth / 100.0
    a = -1.0 / math.log(1 - 0.3)
    b = 100.0 / (math.log(1 - 0.98) * a + 1)
    rate_factor = sample_rate * (1 / _REVERB_REFERENCE_RATE)
    comb_sizes, allpass_sizes = [], []
    for channel in range(int(math.ceil(depth)) + 1):
        offset = channel * depth
        combs = []
        for length in _REVERB_COMB_LENGTHS:
            combs.append(int(scale * rate_factor * (length + _REVERB_STEREO_ADJUST * offset) + 0.5))
            offset = -offset
        allpasses = []
        for length in _REVERB_ALLPASS_LENGTHS:
            allpasses.append(int(rate_factor * (length + _REVERB_STEREO_ADJUST * offset) + 0.5))
            offset = -offset
        comb_sizes.append(tuple(combs))
        allpass_sizes.append(tuple(allpasses))
    return {
        "feedback": 1 - math.exp((reverberance - b) / (a * b)),
        "hf_damping": hf_damping / 100.0 * 0.3 + 0.2,
        "gain": 10.0 ** (wet_gain_db / 20.0) * 0.015,
        "comb_sizes": comb_sizes,
        "allpass_sizes": allpass_sizes,
    }


def sox_reverb(
    waveform,
    sample_rate,
    reverberance=50.0,
    hf_damping=50.0,
    room_scale=100.0,
    stereo_depth=100.0,
    pre_delay_ms=0.0,
    wet_gain_db=0.0,
    wet_only=False,
):
    """sox 14.4.2's ``reverb`` effect on a mono waveform, mixed down to mono (``... reverb ... channels 1``).

    A port of ``src/reverb.c`` (Freeverb): the input, delayed by ``pre_delay_ms``, goes through eight
    comb filters in parallel (delays 1116...1617 samples at 44.1 kHz, times ``0.1 + 0.9 * room_scale/100``;
    feedback ``1 - exp((reverberance - b) / (a b))`` with ``a = -1/ln(0.7)``, ``b = 100/(a ln(0.02) + 1)``;
    the fed-back signal low-passed by a one-pole filter of coefficient ``0.2 + 0.3 * hf_damping/100``),
    then four all-pass filters (gain 0.5) in series, times ``0.015 * 10^(wet_gain_db/20)``. With
    ``stereo_depth > 0`` sox makes a second wet channel whose delays are shifted by ``12 * depth``
    samples (alternating signs); sox outputs ``dry + wet[c]`` per channel, and ``channels 1`` averages
    them: this function returns ``dry + (wet[0] + wet[1]) / 2`` (``wet_only``: no dry term). As in sox,
    the output has the input's length (the tail after the input ends is not added). Every filter is
    computed in float64, block by block (a block as long as the filter's delay depends only on earlier
    blocks) or, for short delays, as a rational filter (``scipy.signal.lfilter``); sox computes in
    float32 and clips to [-1, 1] when it writes integer samples; this function does not clip.

    Arguments
    ---------
    waveform : torch.Tensor
        ``[time]``.
    sample_rate : int
        Hz.
    reverberance, hf_damping, room_scale, stereo_depth : float
        Percentages, as sox's arguments (Huang et al.: 50, 50, drawn from 0-100, default 100).
    pre_delay_ms : float
        0 to 500 ms.
    wet_gain_db : float
        -10 to 10 dB.
    wet_only : bool
        sox's ``-w``.

    Returns
    -------
    torch.Tensor
        Float32, ``[time]``.

    Example
    -------
    >>> impulse = torch.zeros(8000)
    >>> impulse[0] = 1.0
    >>> response = sox_reverb(impulse, 16000, wet_only=True)
    >>> first = int(torch.nonzero(response).min())
    >>> first == min(sox_reverb_settings(16000)["comb_sizes"][0])
    True
    """
    signal = _as_waveform(waveform)
    if not 0 <= pre_delay_ms <= 500:
        raise ValueError(f"sox reverb: pre_delay_ms must be in [0, 500] ms, got {pre_delay_ms}.")
    settings = sox_reverb_settings(sample_rate, reverberance, hf_damping, room_scale, stereo_depth, wet_gain_db)
    delay = int(pre_delay_ms / 1000.0 * sample_rate + 0.5)
    delayed = np.concatenate([np.zeros(delay), signal])[: len(signal)]
    wet_channels = []
    for comb_sizes, allpass_sizes in zip(settings["comb_sizes"], settings["allpass_sizes"]):
        wet = np.zeros(len(signal))
        for size in comb_sizes:
            wet += _comb_filter(delayed, size, settings["feedback"], settings["hf_damping"])
        for size in reversed(allpass_sizes):
            wet = _allpass_filter(wet, size)
        wet_channels.append(wet * settings["gain"])
    wet_mix = np.mean(wet_channels, axis=0)
    return _to_tensor(wet_mix if wet_only else signal + wet_mix)


def sox_reverb_command(reverberance=50.0, hf_damping=50.0, room_scale=100.0, stereo_depth=100.0, wet_only=False):
    """The sox effect arguments :func:`sox_reverb` reproduces, for comparisons with the binary.

    Example
    -------
    >>> sox_reverb_command(room_scale=30)
    ['reverb', '50.0', '50.0', '30', '100.0', 'channels', '1']
    """
    arguments = ["reverb"] + (["-w"] if wet_only else [])
    arguments += [str(value) for value in (reverberance, hf_damping, room_scale, stereo_depth)]
    return arguments + ["channels", "1"]


__all__ = [
    "HUANG_BAND_SCALER",
    "add_gaussian_noise",
    "apply_rir",
    "band_reject",
    "draw_huang_band",
    "mix_at_snr",
    "noise_segment",
    "pitch_shift",
    "sox_band_reject_taps",
    "sox_reverb",
    "sox_reverb_command",
    "sox_reverb_settings",
]
