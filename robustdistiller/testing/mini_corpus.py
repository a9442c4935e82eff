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

Everything derives from ``seed``: the same seed and options give byte-identical files. The speech
comes from :mod:`robustdistiller.testing.synthesis` (each batch synthesised in a fresh subprocess, in a
fixed order), the noises, music and RIRs from :mod:`robustdistiller.testing.signals`.

Command line: ``python -m robustdistiller.testing.mini_corpus OUTPUT_FOLDER [--seed N]``.
"""

import argparse
import json
import logging
import os
import shutil
import time

import numpy as np
import soundfile
from tqdm import tqdm

from robustdistiller.data.prepare.noise import URBANSOUND_CLASSES  # the release's ten classes
from robustdistiller.testing.signals import (
    SAMPLE_RATE,
    add_recording_conditions,
    babble,
    chord_music,
    colored_noise,
    exponential_decay_rir,
    machine_hum,
    urban_sound,
)
from robustdistiller.testing.synthesis import make_speakers, random_sentence, speech_request, synthesize_speech
from robustdistiller.testing.writing import write_audio, write_text

logger = logging.getLogger(__name__)

MARKER_NAME = "mini_corpus.json"
GENERATOR_VERSION = 2
GENERATED_ROOTS = {"librispeech": "LibriSpeech", "musan": "musan", "rirs": "RIRS_NOISES", "urbansound": "UrbanSound8K"}
MUSIC_SOURCES = ("fma", "fma-western-art", "hd-classical", "jamendo", "rfm")
NOISE_SOURCES = ("free-sound", "sound-bible")
ROOM_SIZES = {"smallroom": (0.2, 0.45), "mediumroom": (0.4, 0.8), "largeroom": (0.7, 1.2)}
URBANSOUND_HEADER = "slice_file_name,fsID,start,end,salience,fold,classID,class"
# (sampling rate, channels, libsndfile subtype) of successive clips: the real data mixes them.
# No float WAV: libsndfile writes a time-stamped PEAK chunk into those (not byte-reproducible).
URBANSOUND_FORMATS = (
    (44100, 2, "PCM_16"),
    (48000, 2, "PCM_24"),
    (22050, 1, "PCM_16"),
    (16000, 1, "PCM_16"),
    (44100, 1, "PCM_32"),
    (96000, 2, "PCM_24"),
    (11025, 1, "PCM_U8"),
    (8000, 1, "PCM_16"),
    (44100, 2, "PCM_16"),
    (32000, 1, "PCM_16"),
)


def _plan_librispeech(rng, subsets):
    """Chooses speakers, chapters and sentences for each subset; returns the utterance plan."""
    plan, used_ids = [], set()
    speakers_by_subset = {}
    for subset, (num_speakers, utterances_per_speaker) in subsets.items():
        speakers = make_speakers(rng, num_speakers, used_ids)
        used_ids.update(speaker["id"] for speaker in speakers)
        speakers_by_subset[subset] = speakers
        for speaker in speakers:
            chapters = sorted({int(rng.integers(10, 99999)) for _ in range(1 if utterances_per_speaker < 4 else 2)})
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
    speech = synthesize_speech([speech_request(speaker, text) for _, speaker, _, _, text in plan])
    transcripts = {}
    for (subset, speaker, chapter, utterance_id, text), waveform in zip(plan, speech):
        chapter_folder = os.path.join(librispeech, subset, str(speaker["id"]), str(chapter))
        write_audio(
            os.path.join(chapter_folder, f"{utterance_id}.flac"),
            add_recording_conditions(rng, waveform),
        )
        transcript_path = os.path.join(chapter_folder, f"{speaker['id']}-{chapter}.trans.txt")
        transcripts.setdefault(transcript_path, []).append(f"{utterance_id} {text.upper()}")
        progress.update(1)
    for transcript_path, lines in transcripts.items():
        write_text(transcript_path, "\n".join(lines) + "\n")
    speaker_lines = [";ID  |SEX| SUBSET           |MINUTES| NAME"]
    for subset, speakers in speakers_by_subset.items():
        for speaker in speakers:
            name = f"Synthetic {speaker['voice']} pitch {speaker['pitch']}"
            speaker_lines.append(f"{speaker['id']:<5}| {speaker['sex']} | {subset:<16} | 0.50 | {name}")
    write_text(os.path.join(librispeech, "SPEAKERS.TXT"), "\n".join(speaker_lines) + "\n")
    write_text(
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
        speech_request(voice, random_sentence(rng, 8, 14))
        for kind in noise_plan
        if kind == "babble"
        for voice in babble_voices
    ]
    reader_voices = make_speakers(rng, max(num_speech, 1))
    speech_requests = [
        speech_request(reader_voices[index], ". ".join(random_sentence(rng) for _ in range(3)))
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
        write_audio(path, waveform)
        files_by_leaf.setdefault(os.path.dirname(path), []).append((file_id, f"{kind} noise"))
        progress.update(1)
    # One stereo 44.1 kHz recording, as in real collections, to exercise load-time conversion.
    stereo_id = f"noise-{NOISE_SOURCES[0]}-{num_noises:04d}"
    stereo_samples = int(duration * 44100)
    stereo = np.stack([colored_noise(rng, stereo_samples, 1.0) for _ in range(2)], axis=1)
    stereo_path = os.path.join(musan, "noise", NOISE_SOURCES[0], f"{stereo_id}.wav")
    write_audio(stereo_path, stereo, sample_rate=44100)
    files_by_leaf.setdefault(os.path.dirname(stereo_path), []).append((stereo_id, "stereo 44.1 kHz pink noise"))
    progress.update(1)
    for index in range(num_music):
        source = MUSIC_SOURCES[index % len(MUSIC_SOURCES)]
        file_id = f"music-{source}-{index:04d}"
        path = os.path.join(musan, "music", source, f"{file_id}.wav")
        write_audio(path, chord_music(rng, num_samples))
        files_by_leaf.setdefault(os.path.dirname(path), []).append((file_id, "synthesised chords"))
        progress.update(1)
    for index, waveform in enumerate(read_speech):
        file_id = f"speech-librivox-{index:04d}"
        path = os.path.join(musan, "speech", "librivox", f"{file_id}.wav")
        write_audio(path, add_recording_conditions(rng, waveform))
        files_by_leaf.setdefault(os.path.dirname(path), []).append((file_id, "read speech"))
        progress.update(1)
    for folder, entries in files_by_leaf.items():
        annotations = "".join(f"{file_id} {description}\n" for file_id, description in entries)
        write_text(os.path.join(folder, "ANNOTATIONS"), annotations)
        write_text(
            os.path.join(folder, "LICENSE"),
            "Synthetic audio generated by robustdistiller.testing.mini_corpus; free for any use.\n",
        )
    write_text(os.path.join(musan, "README"), "Miniature MUSAN-like corpus (OpenSLR 17 layout).\n")
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
                write_audio(os.path.join(os.path.dirname(rirs), relative), exponential_decay_rir(rng, rt60))
                rir_id = f"{size}-{room}-{rir_number:05d}"
                list_lines.append(f"--rir-id {rir_id} --room-id {size}-{room} {relative}")
                count += 1
                progress.update(1)
            room_number += 1
        write_text(os.path.join(rirs, "simulated_rirs", size, "rir_list"), "\n".join(list_lines) + "\n")
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
        write_audio(os.path.join(folder, f"{stem}.wav"), rir, sample_rate=rate)
        rir_lines.append(f"--rir-id {stem} --room-id {room} {prefix}/{stem}.wav")
        progress.update(1)
    noise_lines = []
    for index, room in enumerate(["RVB2014_largeroom1", "RVB2014_smallroom1"], start=1):
        stem = f"RVB2014_type1_noise_{room.split('_')[1]}_{index}"
        noise = np.stack([colored_noise(rng, num_noise_samples, 1.5) for _ in range(4)], axis=1)
        write_audio(os.path.join(folder, f"{stem}.wav"), noise * 0.5)
        noise_lines.append(
            f"--noise-id {stem} --noise-type isotropic --bg-fg-type background "
            f"--room-linkage {room} {prefix}/{stem}.wav"
        )
        progress.update(1)
    write_text(os.path.join(folder, "rir_list"), "\n".join(rir_lines) + "\n")
    write_text(os.path.join(folder, "noise_list"), "\n".join(noise_lines) + "\n")
    return len(rir_lines), len(noise_lines)


def _generate_pointsource_noises(rirs, rng, num_noise_samples, progress):
    folder = os.path.join(rirs, "pointsource_noises")
    lines = []
    for index, kind in enumerate(["hum", "white"], start=1):
        stem = f"noise-free-sound-{index:04d}"
        waveform = machine_hum(rng, num_noise_samples) if kind == "hum" else colored_noise(rng, num_noise_samples, 0.0)
        write_audio(os.path.join(folder, f"{stem}.wav"), waveform)
        lines.append(
            f"--noise-id {stem} --noise-type point-source --bg-fg-type foreground "
            f"RIRS_NOISES/pointsource_noises/{stem}.wav"
        )
        progress.update(1)
    write_text(os.path.join(folder, "noise_list"), "\n".join(lines) + "\n")
    return len(lines)


def generate_rirs_noises(root, rng, rooms_per_size, rirs_per_room, noise_duration, progress):
    """Writes ``RIRS_NOISES/`` under ``root``; returns its path and a count per kind of file."""
    rirs = os.path.join(root, "RIRS_NOISES")
    num_noise_samples = int(noise_duration * SAMPLE_RATE)
    simulated = _generate_simulated_rirs(rirs, rng, rooms_per_size, rirs_per_room, progress)
    real, isotropic = _generate_real_rirs_and_noises(rirs, rng, num_noise_samples, progress)
    pointsource = _generate_pointsource_noises(rirs, rng, num_noise_samples, progress)
    write_text(os.path.join(rirs, "README"), "Miniature RIRS_NOISES-like corpus (OpenSLR 28).\n")
    return rirs, {"simulated": simulated, "real": real, "isotropic": isotropic, "pointsource": pointsource}


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
        lines.append(
            f"{name},{fs_id},{start:.6f},{start + num_samples / sample_rate:.6f},"
            f"{salience},{fold},{class_id},{class_name}"
        )
        counts[class_name] += 1
        progress.update(1)
    write_text(
        os.path.join(urbansound, "metadata", "UrbanSound8K.csv"), "\n".join([URBANSOUND_HEADER] + sorted(lines)) + "\n"
    )
    write_text(
        os.path.join(urbansound, "UrbanSound8K_README.txt"),
        "Miniature UrbanSound8K-like corpus of synthetic clips, made by "
        "robustdistiller.testing.mini_corpus. Same layout as UrbanSound8K.\n",
    )
    return urbansound, counts


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
    total_files = (
        num_utterances
        + num_noises
        + 1
        + num_music
        + num_speech
        + 3 * rooms_per_size * rirs_per_room
        + 3
        + 2
        + 2
        + num_urbansound
    )
    with tqdm(total=total_files, desc="Mini corpus", disable=not show_progress) as progress:
        _, utterance_count = generate_librispeech(output_folder, np.random.default_rng([seed, 1]), subsets, progress)
        _, musan_count = generate_musan(
            output_folder,
            np.random.default_rng([seed, 2]),
            num_noises,
            num_music,
            num_speech,
            noise_duration,
            progress,
        )
        _, rir_counts = generate_rirs_noises(
            output_folder,
            np.random.default_rng([seed, 3]),
            rooms_per_size,
            rirs_per_room,
            noise_duration,
            progress,
        )
        _, urbansound_counts = generate_urbansound(
            output_folder, np.random.default_rng([seed, 4]), num_urbansound, progress
        )
    summary = {
        "utterances": utterance_count,
        "musan_files": musan_count,
        **rir_counts,
        "urbansound_clips": urbansound_counts,
    }
    _write_marker(marker_path, {"status": "complete", "options": options, "summary": summary})
    logger.info(
        "Generated mini corpus in %s in %.1f s: %d utterances (%s), %d MUSAN files, "
        "%d simulated + %d real RIRs, %d isotropic + %d point-source noises, %d UrbanSound8K clips.",
        output_folder,
        time.time() - start_time,
        utterance_count,
        ", ".join(subsets),
        musan_count,
        rir_counts["simulated"],
        rir_counts["real"],
        rir_counts["isotropic"],
        rir_counts["pointsource"],
        sum(urbansound_counts.values()),
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
