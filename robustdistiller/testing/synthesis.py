"""Synthetic English speech from eSpeak NG: speakers, sentences and their synthesis at 16 kHz.

:func:`make_speakers` draws distinct speakers (an eSpeak NG voice variant and accent, pitch, rate and
range: :func:`list_voice_variants`), :func:`random_sentence` a sentence of words of a built-in list
(:data:`WORDS`), :func:`speech_request` makes their request and :func:`synthesize_speech` speaks a batch
of requests. eSpeak NG keeps internal state from one synthesis to the next (its output depends on what
it synthesised before in the same process), so every batch is synthesised in a fresh Python subprocess
(:mod:`robustdistiller.testing.espeak_worker`), in a fixed order: the same requests give the same samples.
"""

import json
import os
import subprocess
import sys
import tempfile

import espeakng_loader
import numpy as np
from scipy.signal import resample_poly

from robustdistiller import child_environment

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
        command = [sys.executable, "-m", "robustdistiller.testing.espeak_worker", requests_path, output_path]
        result = subprocess.run(command, env=environment, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"Speech synthesis subprocess failed:\n{result.stderr[-4000:]}")
        with np.load(output_path) as archive:
            raw_waveforms = [archive[f"arr_{index}"] for index in range(len(requests))]
    return [_resample_to_16k(waveform) for waveform in raw_waveforms]


def _resample_to_16k(waveform_int16):
    """Converts an eSpeak int16 waveform at 22,050 Hz to float32 at 16 kHz (ratio 320/441)."""
    waveform = waveform_int16.astype(np.float64) / 32768.0
    return resample_poly(waveform, 320, 441).astype(np.float32)


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


def speech_request(speaker, text):
    """The synthesis request (for :func:`synthesize_speech`) of ``text`` spoken by ``speaker``.

    Example
    -------
    >>> speaker = {"id": 1, "sex": "M", "voice": "en-us+m3", "pitch": 50, "rate": 170, "range": 50}
    >>> speech_request(speaker, "hello")
    {'voice': 'en-us+m3', 'rate': 170, 'pitch': 50, 'range': 50, 'text': 'hello'}
    """
    return {key: speaker[key] for key in ("voice", "rate", "pitch", "range")} | {"text": text}
