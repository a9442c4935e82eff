"""Deterministic generator of a small corpus laid out like LibriSpeech, MUSAN, RIRS_NOISES, UrbanSound8K.

The demo recipe and the tests cannot download the real corpora, so this module writes a miniature
copy of each in its *real* on-disk layout (``docs/reference/corpora.md``); the real preparation functions of
:mod:`robustdistiller.data.prepare` then run on it unchanged:

- ``LibriSpeech/<subset>/<spk>/<chapter>/<spk>-<chapter>-<utt:04d>.flac`` with
  ``<spk>-<chapter>.trans.txt`` and ``SPEAKERS.TXT``. The utterances are synthetic English speech from
  eSpeak NG (the ``espeakng-loader`` wheel ships the library and its voice data): every speaker is a
  distinct voice variant, accent, pitch and speaking rate; sentences are random words from a built-in
  list.
- ``musan/{noise,music,speech}/<source>/*.wav`` with ``ANNOTATIONS`` and ``LICENSE`` in every leaf:
  colored noises, machine hums and babble (mixed synthetic speech); synthesised chord music; read
  speech. One noise file is stereo at 44.1 kHz on purpose, to exercise load-time conversion.
- ``RIRS_NOISES/simulated_rirs/<size>room/RoomNNN/RoomNNN-NNNNN.wav`` with a ``rir_list`` per size
  (exponential-decay model), ``real_rirs_isotropic_noises/`` (multichannel RIRs *and* isotropic
  noises, with ``rir_list`` and ``noise_list``) and ``pointsource_noises/`` with its ``noise_list``.
- ``UrbanSound8K/audio/fold1..fold10/<fsID>-<classID>-<occurrenceID>-<sliceID>.wav`` and
  ``UrbanSound8K/metadata/UrbanSound8K.csv``: short synthetic clips (at most 1 s) of the ten classes
  (air conditioner hum, car horn, chattering "children", barks, drill, engine, shots, jackhammer,
  siren, street music), at varied sampling rates (8 to 96 kHz), channel counts and sample formats,
  as in the real data; children_playing and street_music are among them (the noise pool leaves
  them out).

Everything derives from ``seed``: the same seed and options give byte-identical files. eSpeak NG keeps
internal state from one synthesis to the next (its output depends on what it synthesised before in
the same process), so all speech is synthesised in a fresh Python subprocess, in a fixed order.

Command line: ``python -m robustdistiller.testing.mini_corpus OUTPUT_FOLDER [--seed N]``.
"""

import argparse
import ctypes
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile
from tqdm import tqdm

from robustdistiller import child_environment

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
ESPEAK_SAMPLE_RATE = 22050
MARKER_NAME = "mini_corpus.json"
GENERATOR_VERSION = 2
GENERATED_ROOTS = {"librispeech": "LibriSpeech", "musan": "musan", "rirs": "RIRS_NOISES",
                   "urbansound": "UrbanSound8K"}

# Built-in vocabulary: common English words that eSpeak pronounces well.
WORDS = """
the a of and to in is was he for it with as his on be at by had that not are but from or have an
they which one you were her all she there would their we him been has when who will more no if out
so said what up its about into than them can only other new some could time these two may then do
first any my now such like our over man me even most made after also did many before must through
back years where much your way well down should because each just those people how too little
state good very make world still own see men work long get here between both life being under
never day same another know while last might us great old year off come since against go came
right used take three himself few house use during without again place around however home small
found thought went say part once general high upon school every does got united left number course
war until always away something fact though water less public put think almost hand enough far took
head yet government system better set told nothing night end why called didn't eyes find going look
asked later knew point next city business give group toward young days let room president side
social given present several order national possible rather second face per among form important
often things looked early white case john become large big need four within felt children along
saw best church ever least power development light thing seemed family interest want members mind
country area others done turned although open god service problem certain kind different thus
began door help means sense whole matter perhaps itself york times law human line above name example
action company hands local show five history whether gave either today act feet across taken past
quite anything seen having death week experience body word half really field am car words already
themselves information tell together college shall money period held keep sure probably free real
seems behind cannot miss political air question making office brought whose special major heard
problems ago became federal moment study available known result street economic boy position
reason change south board individual job society areas west close turn love community true court
force full seem am garden river mountain window letter evening morning summer winter green quiet
""".split()
WORDS = sorted({word for word in WORDS if word.isalpha()})

ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-us-nyc", "en-029", "en-gb-x-gbclan")
# Voice variants that do not sound like a person (whispered, robotic, distorted) are left out.
EXCLUDED_VARIANTS = ("whisper", "whisperf", "demonic", "unirobot", "anikarobot", "croak")
MUSIC_SOURCES = ("fma", "fma-western-art", "hd-classical", "jamendo", "rfm")
NOISE_SOURCES = ("free-sound", "sound-bible")
ROOM_SIZES = {"smallroom": (0.2, 0.45), "mediumroom": (0.4, 0.8), "largeroom": (0.7, 1.2)}
URBANSOUND_CLASSES = (
    "air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
    "engine_idling", "gun_shot", "jackhammer", "siren", "street_music",
)
URBANSOUND_HEADER = "slice_file_name,fsID,start,end,salience,fold,classID,class"
# (sampling rate, channels, libsndfile subtype) of successive clips: the real data mixes them.
# No float WAV: libsndfile writes a time-stamped PEAK chunk into those (not byte-reproducible).
URBANSOUND_FORMATS = (
    (44100, 2, "PCM_16"), (48000, 2, "PCM_24"), (22050, 1, "PCM_16"), (16000, 1, "PCM_16"),
    (44100, 1, "PCM_32"), (96000, 2, "PCM_24"), (11025, 1, "PCM_U8"), (8000, 1, "PCM_16"),
    (44100, 2, "PCM_16"), (32000, 1, "PCM_16"),
)


# ---------------------------------------------------------------------------------------------
# Speech synthesis (eSpeak NG through ctypes)
# ---------------------------------------------------------------------------------------------


def list_voice_variants():
    """Returns the eSpeak NG voice variants shipped by ``espeakng-loader`` that are usable here.

    Left out: variants that do not sound like a person (whispered, robotic, distorted) and every
    variant with a ``breath`` setting, whose breath noise is not reproducible between processes.

    Returns
    -------
    dict
        ``{variant name: gender}`` (``"male"``, ``"female"``), sorted by name; a variant is used as
        ``"<language>+<variant>"``.

    Example
    -------
    >>> variants = list_voice_variants()
    >>> len(variants) > 50, variants["m3"], "f2" in variants
    (True, 'male', False)
    """
    import espeakng_loader

    variant_folder = os.path.join(espeakng_loader.get_data_path(), "voices", "!v")
    variants = {}
    for name in sorted(os.listdir(variant_folder)):
        if " " in name or name.lower() in EXCLUDED_VARIANTS:
            continue
        with open(os.path.join(variant_folder, name), encoding="utf-8", errors="replace") as file:
            settings = [line.split() for line in file if line.strip()]
        if any(fields[0] == "breath" for fields in settings):
            continue
        genders = [fields[1] for fields in settings if fields[0] == "gender" and len(fields) > 1]
        variants[name] = "female" if genders and genders[0] == "female" else "male"
    return variants


def _synthesize_in_this_process(requests):
    """Synthesises each request with eSpeak NG, in order; returns int16 arrays at 22,050 Hz.

    Must run in a fresh process: eSpeak NG keeps state between syntheses.
    """
    import espeakng_loader

    library = ctypes.CDLL(espeakng_loader.get_library_path())
    synchronous_output = 2
    rate = library.espeak_Initialize(
        synchronous_output, 0, espeakng_loader.get_data_path().encode(), 0
    )
    if rate != ESPEAK_SAMPLE_RATE:
        raise RuntimeError(f"eSpeak NG failed to initialise (returned {rate}).")
    callback_type = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
    )
    chunks = []

    def collect(samples, num_samples, events):
        if num_samples > 0:
            chunks.append(np.ctypeslib.as_array(samples, shape=(num_samples,)).copy())
        return 0

    callback = callback_type(collect)
    library.espeak_SetSynthCallback(callback)
    library.espeak_Synth.argtypes = [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
        ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
    ]
    rate_parameter, pitch_parameter, range_parameter = 1, 3, 4
    waveforms = []
    for request in requests:
        chunks.clear()
        if library.espeak_SetVoiceByName(request["voice"].encode()) != 0:
            raise RuntimeError(f"eSpeak NG has no voice '{request['voice']}'.")
        library.espeak_SetParameter(rate_parameter, int(request["rate"]), 0)
        library.espeak_SetParameter(pitch_parameter, int(request["pitch"]), 0)
        library.espeak_SetParameter(range_parameter, int(request["range"]), 0)
        text = request["text"].encode()
        status = library.espeak_Synth(text, len(text) + 1, 0, 0, 0, 0, None, None)
        library.espeak_Synchronize()
        if status != 0 or not chunks:
            raise RuntimeError(f"eSpeak NG could not synthesise {request!r} (status {status}).")
        waveforms.append(np.concatenate(chunks))
    return waveforms


def _synthesis_worker_main(requests_path, output_path):
    """Entry point of the synthesis subprocess: JSON requests in, ``.npz`` waveforms out."""
    with open(requests_path, encoding="utf-8") as requests_file:
        requests = json.load(requests_file)
    waveforms = _synthesize_in_this_process(requests)
    np.savez(output_path, *waveforms)


def synthesize_speech(requests):
    """Synthesises speech with eSpeak NG in a fresh subprocess, so the output is reproducible.

    Arguments
    ---------
    requests : list of dict
        Each with ``text``, ``voice`` (e.g. ``"en-us+m3"``), ``rate`` (words per minute), ``pitch``
        and ``range`` (0-100).

    Returns
    -------
    list of numpy.ndarray
        Float32 mono waveforms at 16 kHz, in the order of ``requests``.

    Example
    -------
    >>> request = {"text": "hello world", "voice": "en-us+m3", "rate": 170, "pitch": 50, "range": 50}
    >>> first, second = synthesize_speech([request, request])
    >>> first.dtype, first.shape[0] > 8000
    (dtype('float32'), True)
    """
    if not requests:
        return []
    environment = child_environment()
    with tempfile.TemporaryDirectory(prefix="espeak_") as work_folder:
        requests_path = os.path.join(work_folder, "requests.json")
        output_path = os.path.join(work_folder, "speech.npz")
        with open(requests_path, "w", encoding="utf-8") as requests_file:
            json.dump(requests, requests_file)
        command = [
            sys.executable,
            "-c",
            "import sys; from robustdistiller.testing.mini_corpus import _synthesis_worker_main; "
            "_synthesis_worker_main(sys.argv[1], sys.argv[2])",
            requests_path,
            output_path,
        ]
        result = subprocess.run(command, env=environment, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"Speech synthesis subprocess failed:\n{result.stderr[-4000:]}")
        with np.load(output_path) as archive:
            raw_waveforms = [archive[f"arr_{index}"] for index in range(len(requests))]
    return [_resample_to_16k(waveform) for waveform in raw_waveforms]


def _resample_to_16k(waveform_int16):
    """Converts an eSpeak int16 waveform at 22,050 Hz to float32 at 16 kHz (ratio 320/441)."""
    from scipy.signal import resample_poly  # imported here: keeps the synthesis subprocess light

    waveform = waveform_int16.astype(np.float64) / 32768.0
    return resample_poly(waveform, 320, 441).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Speakers and sentences
# ---------------------------------------------------------------------------------------------


def make_speakers(rng, num_speakers, used_ids=()):
    """Draws distinct synthetic speakers: LibriSpeech-like id, sex, eSpeak voice, pitch, rate.

    Arguments
    ---------
    rng : numpy.random.Generator
        Random source.
    num_speakers : int
        How many speakers.
    used_ids : collection of int
        Speaker ids that must not be reused (speakers of other subsets).

    Returns
    -------
    list of dict

    Example
    -------
    >>> speakers = make_speakers(np.random.default_rng(0), 3)
    >>> len({speaker["voice"] for speaker in speakers}), sorted(speakers[0])
    (3, ['id', 'pitch', 'range', 'rate', 'sex', 'voice'])
    """
    genders = list_voice_variants()
    variants = list(genders)
    speakers, taken_ids, taken_voices = [], set(used_ids), set()
    while len(speakers) < num_speakers:
        variant = variants[int(rng.integers(len(variants)))]
        accent = ACCENTS[int(rng.integers(len(ACCENTS)))]
        pitch = int(rng.integers(25, 76))
        voice_key = (variant, accent, pitch)
        speaker_id = int(rng.integers(10, 9000))
        if speaker_id in taken_ids or voice_key in taken_voices:
            continue
        taken_ids.add(speaker_id)
        taken_voices.add(voice_key)
        speakers.append(
            {
                "id": speaker_id,
                "sex": "F" if genders[variant] == "female" else "M",
                "voice": f"{accent}+{variant}",
                "pitch": pitch,
                "rate": int(rng.integers(145, 196)),
                "range": int(rng.integers(30, 81)),
            }
        )
    return speakers


def random_sentence(rng, min_words=5, max_words=10):
    """Returns a random sequence of lower-case words from the built-in vocabulary.

    Example
    -------
    >>> words = random_sentence(np.random.default_rng(0)).split()
    >>> 5 <= len(words) <= 10 and all(word in WORDS for word in words)
    True
    """
    num_words = int(rng.integers(min_words, max_words + 1))
    return " ".join(WORDS[int(index)] for index in rng.integers(len(WORDS), size=num_words))


def _speech_request(speaker, text):
    return {key: speaker[key] for key in ("voice", "rate", "pitch", "range")} | {"text": text}


# ---------------------------------------------------------------------------------------------
# Signal synthesis (noise, music, room impulse responses)
# ---------------------------------------------------------------------------------------------


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
    return _normalize(np.fft.irfft(spectrum, n=num_samples), peak=0.5)


def machine_hum(rng, num_samples, sample_rate=SAMPLE_RATE):
    """A machine-like hum: mains harmonics with a slow amplitude modulation and a noise floor."""
    time_axis = np.arange(num_samples) / sample_rate
    fundamental = float(rng.choice([50.0, 60.0])) * float(rng.uniform(0.98, 1.02))
    hum = sum(
        rng.uniform(0.2, 1.0) / harmonic * np.sin(2 * np.pi * fundamental * harmonic * time_axis)
        for harmonic in range(1, 9)
    )
    modulation = 1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.5, 4.0) * time_axis)
    return _normalize(hum * modulation + 0.05 * rng.standard_normal(num_samples), peak=0.5)


def babble(rng, speech_waveforms, num_samples):
    """Mixes several speech waveforms at random offsets and gains into one babble noise."""
    mixture = np.zeros(num_samples)
    for waveform in speech_waveforms:
        looped = np.tile(waveform, int(np.ceil(num_samples / len(waveform))) + 1)
        offset = int(rng.integers(len(waveform)))
        mixture += rng.uniform(0.5, 1.0) * looped[offset : offset + num_samples]
    return _normalize(mixture, peak=0.5)


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
    return _normalize(music, peak=0.6)


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


def _normalize(waveform, peak):
    return (waveform * (peak / max(float(np.abs(waveform).max()), 1e-9))).astype(np.float32)


def _add_recording_conditions(rng, speech):
    """Pads speech with 0.1-0.3 s of near silence and adds a faint noise floor, like a recording."""
    lead, trail = (int(SAMPLE_RATE * rng.uniform(0.1, 0.3)) for _ in range(2))
    padded = np.concatenate([np.zeros(lead), speech * rng.uniform(0.5, 0.9), np.zeros(trail)])
    return (padded + 3e-4 * rng.standard_normal(len(padded))).astype(np.float32)


def _write_audio(path, waveform, sample_rate=SAMPLE_RATE, audio_format=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(path, np.clip(waveform, -1.0, 1.0), sample_rate, subtype="PCM_16",
                    format=audio_format)


def _write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as text_file:
        text_file.write(text)


# ---------------------------------------------------------------------------------------------
# The corpora
# ---------------------------------------------------------------------------------------------


def _plan_librispeech(rng, subsets):
    """Chooses speakers, chapters and sentences for each subset; returns the utterance plan."""
    plan, used_ids = [], set()
    speakers_by_subset = {}
    for subset, (num_speakers, utterances_per_speaker) in subsets.items():
        speakers = make_speakers(rng, num_speakers, used_ids)
        used_ids.update(speaker["id"] for speaker in speakers)
        speakers_by_subset[subset] = speakers
        for speaker in speakers:
            chapters = sorted(
                {int(rng.integers(10, 99999)) for _ in range(1 if utterances_per_speaker < 4 else 2)}
            )
            for index in range(utterances_per_speaker):
                chapter = chapters[index % len(chapters)]
                utterance_number = index // len(chapters)
                utterance_id = f"{speaker['id']}-{chapter}-{utterance_number:04d}"
                text = random_sentence(rng)
                plan.append((subset, speaker, chapter, utterance_id, text))
    return plan, speakers_by_subset


def generate_librispeech(root, rng, subsets, progress):
    """Writes ``LibriSpeech/`` under ``root``; returns its path and the number of utterances."""
    librispeech = os.path.join(root, "LibriSpeech")
    plan, speakers_by_subset = _plan_librispeech(rng, subsets)
    speech = synthesize_speech([_speech_request(speaker, text) for _, speaker, _, _, text in plan])
    transcripts = {}
    for (subset, speaker, chapter, utterance_id, text), waveform in zip(plan, speech):
        chapter_folder = os.path.join(librispeech, subset, str(speaker["id"]), str(chapter))
        _write_audio(
            os.path.join(chapter_folder, f"{utterance_id}.flac"),
            _add_recording_conditions(rng, waveform),
        )
        transcript_path = os.path.join(chapter_folder, f"{speaker['id']}-{chapter}.trans.txt")
        transcripts.setdefault(transcript_path, []).append(f"{utterance_id} {text.upper()}")
        progress.update(1)
    for transcript_path, lines in transcripts.items():
        _write_text(transcript_path, "\n".join(lines) + "\n")
    speaker_lines = [";ID  |SEX| SUBSET           |MINUTES| NAME"]
    for subset, speakers in speakers_by_subset.items():
        for speaker in speakers:
            name = f"Synthetic {speaker['voice']} pitch {speaker['pitch']}"
            speaker_lines.append(f"{speaker['id']:<5}| {speaker['sex']} | {subset:<16} | 0.50 | {name}")
    _write_text(os.path.join(librispeech, "SPEAKERS.TXT"), "\n".join(speaker_lines) + "\n")
    _write_text(
        os.path.join(librispeech, "README.TXT"),
        "Miniature LibriSpeech-like corpus of synthetic eSpeak NG speech, made by "
        "robustdistiller.testing.mini_corpus. Same layout as LibriSpeech (OpenSLR 12).\n",
    )
    return librispeech, len(plan)


def generate_musan(root, rng, num_noises, num_music, num_speech, duration, progress):
    """Writes ``musan/`` under ``root``; returns its path and the number of audio files."""
    musan = os.path.join(root, "musan")
    num_samples = int(duration * SAMPLE_RATE)
    babble_voices = make_speakers(rng, 5)
    noise_kinds = ["white", "pink", "brown", "hum", "babble"]
    noise_plan = [noise_kinds[index % len(noise_kinds)] for index in range(num_noises)]
    babble_requests = [
        _speech_request(voice, random_sentence(rng, 8, 14))
        for kind in noise_plan
        if kind == "babble"
        for voice in babble_voices
    ]
    reader_voices = make_speakers(rng, max(num_speech, 1))
    speech_requests = [
        _speech_request(reader_voices[index], ". ".join(random_sentence(rng) for _ in range(3)))
        for index in range(num_speech)
    ]
    synthesized = synthesize_speech(babble_requests + speech_requests)
    babble_speech, read_speech = synthesized[: len(babble_requests)], synthesized[len(babble_requests) :]

    files_by_leaf = {}
    exponents = {"white": 0.0, "pink": 1.0, "brown": 2.0}
    for index, kind in enumerate(noise_plan):
        source = NOISE_SOURCES[index % len(NOISE_SOURCES)]
        file_id = f"noise-{source}-{index:04d}"
        if kind in exponents:
            waveform = colored_noise(rng, num_samples, exponents[kind])
        elif kind == "hum":
            waveform = machine_hum(rng, num_samples)
        else:
            voices = len(babble_voices)
            waveform = babble(rng, babble_speech[:voices], num_samples)
            babble_speech = babble_speech[voices:]
        path = os.path.join(musan, "noise", source, f"{file_id}.wav")
        _write_audio(path, waveform)
        files_by_leaf.setdefault(os.path.dirname(path), []).append((file_id, f"{kind} noise"))
        progress.update(1)
    # One stereo 44.1 kHz recording, as in real collections, to exercise load-time conversion.
    stereo_id = f"noise-{NOISE_SOURCES[0]}-{num_noises:04d}"
    stereo_samples = int(duration * 44100)
    stereo = np.stack([colored_noise(rng, stereo_samples, 1.0) for _ in range(2)], axis=1)
    stereo_path = os.path.join(musan, "noise", NOISE_SOURCES[0], f"{stereo_id}.wav")
    _write_audio(stereo_path, stereo, sample_rate=44100)
    files_by_leaf.setdefault(os.path.dirname(stereo_path), []).append(
        (stereo_id, "stereo 44.1 kHz pink noise")
    )
    progress.update(1)
    for index in range(num_music):
        source = MUSIC_SOURCES[index % len(MUSIC_SOURCES)]
        file_id = f"music-{source}-{index:04d}"
        path = os.path.join(musan, "music", source, f"{file_id}.wav")
        _write_audio(path, chord_music(rng, num_samples))
        files_by_leaf.setdefault(os.path.dirname(path), []).append((file_id, "synthesised chords"))
        progress.update(1)
    for index, waveform in enumerate(read_speech):
        file_id = f"speech-librivox-{index:04d}"
        path = os.path.join(musan, "speech", "librivox", f"{file_id}.wav")
        _write_audio(path, _add_recording_conditions(rng, waveform))
        files_by_leaf.setdefault(os.path.dirname(path), []).append((file_id, "read speech"))
        progress.update(1)
    for folder, entries in files_by_leaf.items():
        annotations = "".join(f"{file_id} {description}\n" for file_id, description in entries)
        _write_text(os.path.join(folder, "ANNOTATIONS"), annotations)
        _write_text(
            os.path.join(folder, "LICENSE"),
            "Synthetic audio generated by robustdistiller.testing.mini_corpus; free for any use.\n",
        )
    _write_text(os.path.join(musan, "README"), "Miniature MUSAN-like corpus (OpenSLR 17 layout).\n")
    return musan, num_noises + 1 + num_music + len(read_speech)


def _generate_simulated_rirs(rirs, rng, rooms_per_size, rirs_per_room, progress):
    count = 0
    room_number = 1
    for size, (min_rt60, max_rt60) in ROOM_SIZES.items():
        list_lines = []
        for _ in range(rooms_per_size):
            room = f"Room{room_number:03d}"
            rt60 = float(rng.uniform(min_rt60, max_rt60))
            for rir_number in range(1, rirs_per_room + 1):
                file_name = f"{room}-{rir_number:05d}.wav"
                relative = f"RIRS_NOISES/simulated_rirs/{size}/{room}/{file_name}"
                _write_audio(os.path.join(os.path.dirname(rirs), relative),
                             exponential_decay_rir(rng, rt60))
                rir_id = f"{size}-{room}-{rir_number:05d}"
                list_lines.append(f"--rir-id {rir_id} --room-id {size}-{room} {relative}")
                count += 1
                progress.update(1)
            room_number += 1
        _write_text(os.path.join(rirs, "simulated_rirs", size, "rir_list"), "\n".join(list_lines) + "\n")
    return count


def _generate_real_rirs_and_noises(rirs, rng, num_noise_samples, progress):
    """Multichannel 'real' RIRs and isotropic noises sharing a folder, as in OpenSLR 28."""
    folder = os.path.join(rirs, "real_rirs_isotropic_noises")
    prefix = "RIRS_NOISES/real_rirs_isotropic_noises"
    rir_specs = [  # (file stem, room, channels, sampling rate, RT60)
        ("RVB2014_type1_rir_largeroom1_near_angla", "RVB2014_largeroom1", 4, 16000, 0.7),
        ("RVB2014_type1_rir_smallroom1_far_anglb", "RVB2014_smallroom1", 4, 16000, 0.3),
        ("air_type1_air_binaural_lecture_0_1", "air_lecture", 2, 48000, 0.8),
    ]
    rir_lines = []
    for stem, room, channels, rate, rt60 in rir_specs:
        rir = exponential_decay_rir(rng, rt60 * float(rng.uniform(0.9, 1.1)), rate, channels)
        _write_audio(os.path.join(folder, f"{stem}.wav"), rir, sample_rate=rate)
        rir_lines.append(f"--rir-id {stem} --room-id {room} {prefix}/{stem}.wav")
        progress.update(1)
    noise_lines = []
    for index, room in enumerate(["RVB2014_largeroom1", "RVB2014_smallroom1"], start=1):
        stem = f"RVB2014_type1_noise_{room.split('_')[1]}_{index}"
        noise = np.stack([colored_noise(rng, num_noise_samples, 1.5) for _ in range(4)], axis=1)
        _write_audio(os.path.join(folder, f"{stem}.wav"), noise * 0.5)
        noise_lines.append(
            f"--noise-id {stem} --noise-type isotropic --bg-fg-type background "
            f"--room-linkage {room} {prefix}/{stem}.wav"
        )
        progress.update(1)
    _write_text(os.path.join(folder, "rir_list"), "\n".join(rir_lines) + "\n")
    _write_text(os.path.join(folder, "noise_list"), "\n".join(noise_lines) + "\n")
    return len(rir_lines), len(noise_lines)


def _generate_pointsource_noises(rirs, rng, num_noise_samples, progress):
    folder = os.path.join(rirs, "pointsource_noises")
    lines = []
    for index, kind in enumerate(["hum", "white"], start=1):
        stem = f"noise-free-sound-{index:04d}"
        waveform = machine_hum(rng, num_noise_samples) if kind == "hum" else colored_noise(
            rng, num_noise_samples, 0.0
        )
        _write_audio(os.path.join(folder, f"{stem}.wav"), waveform)
        lines.append(
            f"--noise-id {stem} --noise-type point-source --bg-fg-type foreground "
            f"RIRS_NOISES/pointsource_noises/{stem}.wav"
        )
        progress.update(1)
    _write_text(os.path.join(folder, "noise_list"), "\n".join(lines) + "\n")
    return len(lines)


def generate_rirs_noises(root, rng, rooms_per_size, rirs_per_room, noise_duration, progress):
    """Writes ``RIRS_NOISES/`` under ``root``; returns its path and a count per kind of file."""
    rirs = os.path.join(root, "RIRS_NOISES")
    num_noise_samples = int(noise_duration * SAMPLE_RATE)
    simulated = _generate_simulated_rirs(rirs, rng, rooms_per_size, rirs_per_room, progress)
    real, isotropic = _generate_real_rirs_and_noises(rirs, rng, num_noise_samples, progress)
    pointsource = _generate_pointsource_noises(rirs, rng, num_noise_samples, progress)
    _write_text(os.path.join(rirs, "README"), "Miniature RIRS_NOISES-like corpus (OpenSLR 28).\n")
    return rirs, {"simulated": simulated, "real": real, "isotropic": isotropic,
                  "pointsource": pointsource}


def _envelope(rng, num_samples, sample_rate, num_events, event_seconds, decay):
    """Sum of ``num_events`` sharp-onset exponentially decaying envelopes at random times."""
    envelope = np.zeros(num_samples)
    time_axis = np.arange(num_samples) / sample_rate
    for _ in range(num_events):
        start = float(rng.uniform(0, max(time_axis[-1] - event_seconds, 1e-3)))
        local = time_axis - start
        envelope += np.where(local >= 0, np.exp(-np.maximum(local, 0) * decay), 0.0) * (
            local < event_seconds
        )
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
        return sum(np.sin(h * phase) / h for h in range(1, harmonics + 1)
                   if h * float(np.max(frequencies)) < nyquist)

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
    return _normalize(signal, peak=float(rng.uniform(0.3, 0.8)))


def generate_urbansound(root, rng, num_clips, progress):
    """Writes ``UrbanSound8K/`` under ``root``; returns its path and the number of clips per class.

    Clip ``i`` is in fold ``i % 10 + 1`` and of class ``(3 i + 2) % 10``: ten clips cover the ten
    folds and the ten classes, the first being children_playing and the tenth street_music.
    Successive clips cycle through :data:`URBANSOUND_FORMATS` (stereo 44.1 kHz first).
    """
    urbansound = os.path.join(root, "UrbanSound8K")
    for fold in range(1, 11):
        os.makedirs(os.path.join(urbansound, "audio", f"fold{fold}"), exist_ok=True)
    used_ids, lines, counts = set(), [], {name: 0 for name in URBANSOUND_CLASSES}
    for index in range(num_clips):
        fold, class_id = index % 10 + 1, (3 * index + 2) % 10
        class_name = URBANSOUND_CLASSES[class_id]
        fs_id = int(rng.integers(1000, 200000))
        while fs_id in used_ids:
            fs_id = int(rng.integers(1000, 200000))
        used_ids.add(fs_id)
        occurrence, slice_id = int(rng.integers(0, 3)), int(rng.integers(0, 6))
        sample_rate, channels, subtype = URBANSOUND_FORMATS[index % len(URBANSOUND_FORMATS)]
        duration = float(rng.uniform(0.3, 1.0))
        num_samples = int(duration * sample_rate)
        clip = urban_sound(rng, class_name, num_samples, sample_rate)
        if channels == 2:  # the second microphone: attenuated, delayed copy plus its own noise floor
            delay = int(rng.integers(1, 40))
            second = 0.8 * np.concatenate([np.zeros(delay), clip[:-delay]])
            clip = np.stack([clip, second + 1e-3 * rng.standard_normal(num_samples)], axis=1)
        name = f"{fs_id}-{class_id}-{occurrence}-{slice_id}.wav"
        path = os.path.join(urbansound, "audio", f"fold{fold}", name)
        soundfile.write(path, np.clip(clip, -1.0, 1.0), sample_rate, subtype=subtype)
        start = slice_id * 4.0 + float(rng.uniform(0, 1))
        salience = int(rng.integers(1, 3))
        lines.append(f"{name},{fs_id},{start:.6f},{start + num_samples / sample_rate:.6f},"
                     f"{salience},{fold},{class_id},{class_name}")
        counts[class_name] += 1
        progress.update(1)
    _write_text(os.path.join(urbansound, "metadata", "UrbanSound8K.csv"),
                "\n".join([URBANSOUND_HEADER] + sorted(lines)) + "\n")
    _write_text(os.path.join(urbansound, "UrbanSound8K_README.txt"),
                "Miniature UrbanSound8K-like corpus of synthetic clips, made by "
                "robustdistiller.testing.mini_corpus. Same layout as UrbanSound8K.\n")
    return urbansound, counts


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------


def _read_marker(marker_path):
    try:
        with open(marker_path, encoding="utf-8") as marker_file:
            return json.load(marker_file)
    except (OSError, ValueError):
        return None


def _write_marker(marker_path, content):
    temporary_path = marker_path + ".tmp"
    with open(temporary_path, "w", encoding="utf-8") as marker_file:
        json.dump(content, marker_file, indent=2, sort_keys=True)
    os.replace(temporary_path, marker_path)


def _clear_previous_generation(output_folder, marker):
    """Removes the roots of an earlier generation; refuses to touch folders it did not write."""
    roots = {name: os.path.join(output_folder, folder) for name, folder in GENERATED_ROOTS.items()}
    existing = [path for path in roots.values() if os.path.exists(path)]
    if existing and marker is None:
        raise FileExistsError(
            f"'{output_folder}' already holds {existing} but no '{MARKER_NAME}': these folders "
            "were not written by generate_mini_corpus; refusing to overwrite them. "
            "Choose an empty output folder."
        )
    for path in existing:
        shutil.rmtree(path)


def generate_mini_corpus(
    output_folder,
    seed=0,
    train_speakers=8,
    valid_speakers=3,
    utterances_per_speaker=12,
    valid_utterances_per_speaker=6,
    train_subset="train-clean-100",
    valid_subset="dev-clean",
    num_noises=10,
    num_music=4,
    num_speech=2,
    rooms_per_size=2,
    rirs_per_room=2,
    noise_duration=4.0,
    num_urbansound=10,
    show_progress=True,
):
    """Generates the miniature LibriSpeech, MUSAN, RIRS_NOISES and UrbanSound8K corpora.

    Nothing is done when ``output_folder`` already holds a complete generation with the same
    options (recorded in ``output_folder/mini_corpus.json``); a generation with other options is
    replaced. Folders not written by this function are never overwritten.

    Arguments
    ---------
    output_folder : str
        Where ``LibriSpeech/``, ``musan/``, ``RIRS_NOISES/`` and ``UrbanSound8K/`` are written.
    seed : int
        Everything derives from it: the same seed and options give byte-identical files.
    train_speakers, valid_speakers : int
        Number of speakers of the training and validation subsets (no speaker is in both).
    utterances_per_speaker, valid_utterances_per_speaker : int
        Utterances per speaker in the training and validation subsets (about 2-4 s each).
    train_subset, valid_subset : str
        LibriSpeech subset folder names.
    num_noises : int
        Mono 16 kHz MUSAN noises (white, pink, brown, hum, babble in turn); one stereo 44.1 kHz
        noise is added on top.
    num_music, num_speech : int
        MUSAN music and speech files.
    rooms_per_size, rirs_per_room : int
        Simulated rooms per room size (small, medium, large) and RIRs per room.
    noise_duration : float
        Duration in seconds of each MUSAN and RIRS_NOISES noise/music file.
    num_urbansound : int
        UrbanSound8K clips (0.3-1 s each, varied rates and channels); ten cover every class and
        fold, children_playing and street_music included.
    show_progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    dict
        ``{"librispeech": path, "musan": path, "rirs": path, "urbansound": path}`` (the
        ``LibriSpeech``, ``musan``, ``RIRS_NOISES`` and ``UrbanSound8K`` folders).

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> roots = generate_mini_corpus(folder, train_speakers=1, valid_speakers=1,
    ...     utterances_per_speaker=1, valid_utterances_per_speaker=1, num_noises=1, num_music=1,
    ...     num_speech=0, rooms_per_size=1, rirs_per_room=1, noise_duration=1.0,
    ...     show_progress=False)
    >>> sorted(roots), os.path.basename(roots["rirs"])
    (['librispeech', 'musan', 'rirs', 'urbansound'], 'RIRS_NOISES')
    """
    options = {
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "train_speakers": int(train_speakers),
        "valid_speakers": int(valid_speakers),
        "utterances_per_speaker": int(utterances_per_speaker),
        "valid_utterances_per_speaker": int(valid_utterances_per_speaker),
        "train_subset": str(train_subset),
        "valid_subset": str(valid_subset),
        "num_noises": int(num_noises),
        "num_music": int(num_music),
        "num_speech": int(num_speech),
        "rooms_per_size": int(rooms_per_size),
        "rirs_per_room": int(rirs_per_room),
        "noise_duration": float(noise_duration),
        "num_urbansound": int(num_urbansound),
    }
    if train_subset == valid_subset:
        raise ValueError(f"train_subset and valid_subset must differ (both '{train_subset}').")
    if min(train_speakers, valid_speakers, utterances_per_speaker, valid_utterances_per_speaker) < 1:
        raise ValueError("Speaker and utterance counts must be at least 1.")
    if num_urbansound < 0:
        raise ValueError(f"num_urbansound must be at least 0, got {num_urbansound}.")
    output_folder = os.path.abspath(output_folder)
    roots = {name: os.path.join(output_folder, folder) for name, folder in GENERATED_ROOTS.items()}
    marker_path = os.path.join(output_folder, MARKER_NAME)
    marker = _read_marker(marker_path)
    if (
        marker is not None
        and marker.get("status") == "complete"
        and marker.get("options") == options
        and all(os.path.isdir(path) for path in roots.values())
    ):
        logger.info("Mini corpus already generated in %s (same options): skipping.", output_folder)
        return roots

    _clear_previous_generation(output_folder, marker)
    os.makedirs(output_folder, exist_ok=True)
    _write_marker(marker_path, {"status": "generating", "options": options})
    start_time = time.time()
    subsets = {
        train_subset: (train_speakers, utterances_per_speaker),
        valid_subset: (valid_speakers, valid_utterances_per_speaker),
    }
    num_utterances = sum(speakers * utterances for speakers, utterances in subsets.values())
    total_files = (num_utterances + num_noises + 1 + num_music + num_speech
                   + 3 * rooms_per_size * rirs_per_room + 3 + 2 + 2 + num_urbansound)
    with tqdm(total=total_files, desc="Mini corpus", disable=not show_progress) as progress:
        _, utterance_count = generate_librispeech(
            output_folder, np.random.default_rng([seed, 1]), subsets, progress
        )
        _, musan_count = generate_musan(
            output_folder, np.random.default_rng([seed, 2]), num_noises, num_music, num_speech,
            noise_duration, progress,
        )
        _, rir_counts = generate_rirs_noises(
            output_folder, np.random.default_rng([seed, 3]), rooms_per_size, rirs_per_room,
            noise_duration, progress,
        )
        _, urbansound_counts = generate_urbansound(
            output_folder, np.random.default_rng([seed, 4]), num_urbansound, progress
        )
    summary = {"utterances": utterance_count, "musan_files": musan_count, **rir_counts,
               "urbansound_clips": urbansound_counts}
    _write_marker(marker_path, {"status": "complete", "options": options, "summary": summary})
    logger.info(
        "Generated mini corpus in %s in %.1f s: %d utterances (%s), %d MUSAN files, "
        "%d simulated + %d real RIRs, %d isotropic + %d point-source noises, %d UrbanSound8K clips.",
        output_folder, time.time() - start_time, utterance_count, ", ".join(subsets),
        musan_count, rir_counts["simulated"], rir_counts["real"], rir_counts["isotropic"],
        rir_counts["pointsource"], sum(urbansound_counts.values()),
    )
    return roots


def main(argv=None):
    """Command line: ``python -m robustdistiller.testing.mini_corpus OUTPUT_FOLDER [--seed N]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output_folder", help="Folder receiving LibriSpeech/, musan/, RIRS_NOISES/, UrbanSound8K/")
    parser.add_argument("--seed", type=int, default=0, help="Random seed (default 0)")
    parser.add_argument("--train-speakers", type=int, default=8)
    parser.add_argument("--valid-speakers", type=int, default=3)
    parser.add_argument("--utterances-per-speaker", type=int, default=12)
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    roots = generate_mini_corpus(
        arguments.output_folder,
        seed=arguments.seed,
        train_speakers=arguments.train_speakers,
        valid_speakers=arguments.valid_speakers,
        utterances_per_speaker=arguments.utterances_per_speaker,
    )
    for name, path in roots.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
