"""Signal generators of the test corpora: colored noises, hums, babble, chords, room impulse responses.

Numpy only, and deterministic given the ``numpy.random.Generator`` passed in: :func:`colored_noise`,
:func:`machine_hum`, :func:`babble` (mixed speech), :func:`chord_music`, :func:`exponential_decay_rir`,
:func:`urban_sound` (crude clips of the ten UrbanSound8K classes) and :func:`add_recording_conditions`
(silence and a noise floor around synthetic speech). Used by :mod:`robustdistiller.testing.mini_corpus`
and the generators of :mod:`robustdistiller.testing.fixtures`.
"""

import numpy as np

SAMPLE_RATE = 16000
"""Sampling rate of the generated speech, noises and RIRs (unless a generator is told another)."""


def colored_noise(rng, num_samples, exponent):
    """Gaussian noise with a ``1 / f**exponent`` power spectrum (0 white, 1 pink, 2 brown).

    Example
    -------
    >>> noise = colored_noise(np.random.default_rng(0), 16000, 1.0)
    >>> noise.shape, round(float(np.abs(noise).max()), 2)
    ((16000,), 0.5)
    """
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    frequencies = np.fft.rfftfreq(num_samples)
    frequencies[0] = frequencies[1]
    spectrum = spectrum / frequencies ** (exponent / 2)
    return normalize(np.fft.irfft(spectrum, n=num_samples), peak=0.5)


def machine_hum(rng, num_samples, sample_rate=SAMPLE_RATE):
    """A machine-like hum: mains harmonics with a slow amplitude modulation and a noise floor."""
    time_axis = np.arange(num_samples) / sample_rate
    fundamental = float(rng.choice([50.0, 60.0])) * float(rng.uniform(0.98, 1.02))
    hum = sum(
        rng.uniform(0.2, 1.0) / harmonic * np.sin(2 * np.pi * fundamental * harmonic * time_axis)
        for harmonic in range(1, 9)
    )
    modulation = 1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.5, 4.0) * time_axis)
    return normalize(hum * modulation + 0.05 * rng.standard_normal(num_samples), peak=0.5)


def babble(rng, speech_waveforms, num_samples):
    """Mixes several speech waveforms at random offsets and gains into one babble noise."""
    mixture = np.zeros(num_samples)
    for waveform in speech_waveforms:
        looped = np.tile(waveform, int(np.ceil(num_samples / len(waveform))) + 1)
        offset = int(rng.integers(len(waveform)))
        mixture += rng.uniform(0.5, 1.0) * looped[offset : offset + num_samples]
    return normalize(mixture, peak=0.5)


def chord_music(rng, num_samples, sample_rate=SAMPLE_RATE):
    """Synthesised music: a random chord progression of harmonic tones with note envelopes."""
    music = np.zeros(num_samples)
    note_length = int(sample_rate * rng.uniform(0.25, 0.6))
    root = int(rng.integers(45, 60))  # MIDI note of the key
    progression = [0, 5, 7, 9, 4, 2]
    for note_start in range(0, num_samples, note_length):
        chord_root = root + progression[int(rng.integers(len(progression)))]
        length = min(note_length, num_samples - note_start)
        time_axis = np.arange(length) / sample_rate
        envelope = np.exp(-time_axis * rng.uniform(2.0, 6.0)) * np.minimum(1.0, time_axis * 200)
        for interval in (0, 4, 7, 12):
            frequency = 440.0 * 2 ** ((chord_root + interval - 69) / 12)
            for harmonic in range(1, 5):
                music[note_start : note_start + length] += (
                    envelope / harmonic**1.5 * np.sin(2 * np.pi * frequency * harmonic * time_axis)
                )
    return normalize(music, peak=0.6)


def exponential_decay_rir(rng, rt60, sample_rate=SAMPLE_RATE, num_channels=1):
    """A room impulse response: a direct-path impulse, then an exponentially decaying noise tail.

    Arguments
    ---------
    rng : numpy.random.Generator
        Random source.
    rt60 : float
        Reverberation time in seconds (time for a 60 dB decay).
    sample_rate : int
        Sampling rate of the response.
    num_channels : int
        Number of microphones; each channel gets its own delay and tail.

    Returns
    -------
    numpy.ndarray
        Shape ``[time]`` (one channel) or ``[time, channels]``, peak 1 on the direct path.

    Example
    -------
    >>> rir = exponential_decay_rir(np.random.default_rng(0), rt60=0.3)
    >>> int(np.argmax(np.abs(rir))) < 0.011 * 16000, float(np.abs(rir).max())
    (True, 1.0)
    """
    num_samples = int(sample_rate * (rt60 + 0.05))
    time_axis = np.arange(num_samples) / sample_rate
    channels = []
    for _ in range(num_channels):
        delay = int(sample_rate * rng.uniform(0.002, 0.010))
        tail = rng.standard_normal(num_samples) * np.exp(-6.9078 * time_axis / rt60)
        tail[: delay + 1] = 0.0
        response = tail * rng.uniform(0.2, 0.5) / max(np.abs(tail).max(), 1e-9)
        response[delay] = 1.0
        channels.append(response)
    stacked = np.stack(channels, axis=1)
    return stacked[:, 0] if num_channels == 1 else stacked


def _envelope(rng, num_samples, sample_rate, num_events, event_seconds, decay):
    """Sum of ``num_events`` sharp-onset exponentially decaying envelopes at random times."""
    envelope = np.zeros(num_samples)
    time_axis = np.arange(num_samples) / sample_rate
    for _ in range(num_events):
        start = float(rng.uniform(0, max(time_axis[-1] - event_seconds, 1e-3)))
        local = time_axis - start
        envelope += np.where(local >= 0, np.exp(-np.maximum(local, 0) * decay), 0.0) * (local < event_seconds)
    return envelope


def urban_sound(rng, class_name, num_samples, sample_rate):
    """A crude synthetic clip of an UrbanSound8K class (numpy only: fast).

    Noises are pink or brown, not white, so most of the energy stays below 8 kHz and survives the
    resampling to 16 kHz even for a 96 kHz clip.

    Example
    -------
    >>> clip = urban_sound(np.random.default_rng(0), "siren", 8000, 16000)
    >>> clip.shape, clip.dtype, float(np.abs(clip).max()) <= 0.8
    ((8000,), dtype('float32'), True)
    """
    time_axis = np.arange(num_samples) / sample_rate
    nyquist = sample_rate / 2

    def tone(frequencies, harmonics=4):
        phase = 2 * np.pi * np.cumsum(np.broadcast_to(frequencies, time_axis.shape)) / sample_rate
        return sum(np.sin(h * phase) / h for h in range(1, harmonics + 1) if h * float(np.max(frequencies)) < nyquist)

    if class_name == "air_conditioner":
        signal = colored_noise(rng, num_samples, 2.0) + 0.5 * machine_hum(rng, num_samples, sample_rate)
    elif class_name == "car_horn":
        base = float(rng.uniform(380, 480))
        signal = (tone(base, 6) + tone(base * 1.26, 6)) * (time_axis > 0.05)
    elif class_name == "children_playing":  # several high voices with pitch glides and syllables
        signal = sum(
            tone(rng.uniform(250, 400) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(1, 3) * time_axis)), 5)
            * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 6) * time_axis + rng.uniform(0, 6)))
            for _ in range(3)
        )
    elif class_name == "dog_bark":
        signal = (tone(float(rng.uniform(400, 700)), 6) + colored_noise(rng, num_samples, 1.0)) * (
            _envelope(rng, num_samples, sample_rate, 2, 0.15, 20.0)
        )
    elif class_name == "drilling":
        signal = tone(float(rng.uniform(1200, 2500)), 3) * (
            1 + 0.5 * np.sin(2 * np.pi * 30 * time_axis)
        ) + 0.3 * colored_noise(rng, num_samples, 0.0)
    elif class_name == "engine_idling":
        firing = float(rng.uniform(20, 40))
        pulses = np.maximum(np.sin(2 * np.pi * firing * time_axis), 0) ** 8
        signal = pulses * colored_noise(rng, num_samples, 1.5) + 0.3 * tone(firing, 8)
    elif class_name == "gun_shot":
        signal = colored_noise(rng, num_samples, 1.5) * _envelope(rng, num_samples, sample_rate, 2, 0.4, 15.0)
    elif class_name == "jackhammer":
        rate = float(rng.uniform(12, 25))
        hits = (np.sin(2 * np.pi * rate * time_axis) > 0.7).astype(float)
        signal = hits * colored_noise(rng, num_samples, 1.0) + 0.2 * colored_noise(rng, num_samples, 2.0)
    elif class_name == "siren":
        low, high = float(rng.uniform(500, 700)), float(rng.uniform(1100, 1500))
        sweep = (low + high) / 2 + (high - low) / 2 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * time_axis)
        signal = tone(sweep, 3)
    elif class_name == "street_music":
        signal = chord_music(rng, num_samples, sample_rate)
    else:
        raise ValueError(f"Unknown UrbanSound8K class '{class_name}'")
    signal = signal + 1e-3 * rng.standard_normal(num_samples)
    return normalize(signal, peak=float(rng.uniform(0.3, 0.8)))


def normalize(waveform, peak):
    """``waveform`` scaled to the absolute peak ``peak``, as float32.

    Example
    -------
    >>> normalize(np.array([0.5, -2.0]), peak=0.5)
    array([ 0.125, -0.5  ], dtype=float32)
    """
    return (waveform * (peak / max(float(np.abs(waveform).max()), 1e-9))).astype(np.float32)


def add_recording_conditions(rng, speech):
    """Pads speech with 0.1-0.3 s of near silence and adds a faint noise floor, like a recording.

    ``speech`` is a 16 kHz waveform (:data:`SAMPLE_RATE`); its gain is drawn in [0.5, 0.9].
    """
    lead, trail = (int(SAMPLE_RATE * rng.uniform(0.1, 0.3)) for _ in range(2))
    padded = np.concatenate([np.zeros(lead), speech * rng.uniform(0.5, 0.9), np.zeros(trail)])
    return (padded + 3e-4 * rng.standard_normal(len(padded))).astype(np.float32)
