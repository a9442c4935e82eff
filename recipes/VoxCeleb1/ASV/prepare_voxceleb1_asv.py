"""Data preparation of SUPERB automatic speaker verification (ASV) on VoxCeleb1.

Reads VoxCeleb1 without touching it, in either layout of :mod:`robustdistiller.downstream.voxceleb1`
(one merged ``<data_folder>/wav/idNNNNN/<video>/NNNNN.wav``, or s3prl's ``<data_folder>/dev/wav/...`` +
``<data_folder>/test/wav/...``; every speaker folder of every such ``wav`` folder is read), and a
verification trial list (lines ``<1|0> <enrol> <test>``, paths relative to ``wav/``): ``trial_list="original"`` reads
``veri_test.txt`` (Vox1-O, 37,720 trials: what s3prl, and so SUPERB, scores), ``"cleaned"``
``veri_test2.txt`` (37,611 trials; ``trial_file`` names any other list). The speakers of the
trial list are the *test* speakers (``id10270``-``id10309`` in the real corpus); every other speaker
folder is a *dev* speaker (whichever ``wav`` folder holds it). Writes to the save folder:

* ``train.csv``: the utterances of the dev speakers the x-vector is trained on (utterances not
  longer than ``min_train_duration`` are left out, as s3prl's ``min_sec``; with ``trim_options``
  the rule applies to the length *after* silence removal, as in s3prl);
* ``valid.csv`` and ``valid_trials.csv``: ``valid_speakers`` dev speakers drawn with ``split_seed``
  are held out of training entirely; ``valid_utterances_per_speaker`` of their utterances and
  balanced trials between them (every same-speaker pair as a target trial, each paired with a
  non-target trial of the same enrolment utterance) select the checkpoint on an EER measured, like
  the test, on speakers never seen in training;
* ``test.csv`` and ``test_trials.csv``: every utterance of the trial list, and the trials.

Utterance CSVs have the columns ``ID, duration, wav, start, stop, speaker`` (``duration``: seconds
after silence removal when ``trim_options`` is given, else of the file); trial CSVs
``label, enrol, test`` (utterance IDs). An utterance ID is its path under ``wav/`` without ``.wav``,
``/`` replaced by ``_`` (``id10270_5r0dWxy17C8_00001``). Nothing is written under ``data_folder``.

Speaker and video folders may be symbolic links (followed); one that cannot be listed is left out,
counted and warned about (``N folders left out of the VoxCeleb1 ASV lists of <save_folder>: ...``), and
named again in any error it causes (e.g. too few dev speakers, missing trial files). The trial list
must be UTF-8: a byte that is not names the file and the line.
"""

import csv
import logging
import os
import random

from robustdistiller.data.audio import AudioLoadError, audio_info, load_audio
from robustdistiller.data.files import SkippedFolders, list_folder, read_text_lines
from robustdistiller.downstream.silence import trim_silence
from robustdistiller.downstream.voxceleb1 import (
    describe_wav_folders,
    resolve_listed_path,
    speaker_folders,
    voxceleb1_wav_folders,
)
from robustdistiller.runs.options import integer_at_least
from robustdistiller.downstream.data import check_split_lists
from robustdistiller.data.prepare.lists import is_prepared, mark_prepared, write_csv

logger = logging.getLogger(__name__)

UTTERANCE_HEADER = ["ID", "duration", "wav", "start", "stop", "speaker"]
TRIAL_HEADER = ["label", "enrol", "test"]
# trial_list -> file under data_folder. "original" is Vox1-O, which s3prl's voxceleb1_test_v2.txt
# reproduces (37,720 trials, 18,860 target); "cleaned" is the list with the mislabelled trials removed.
TRIAL_LISTS = {"original": "veri_test.txt", "cleaned": "veri_test2.txt"}
DEFAULT_TRIAL_LIST = "original"


def utterance_id(relative_path):
    """The utterance ID of a path relative to ``wav/``.

    Example
    -------
    >>> utterance_id("id10270/5r0dWxy17C8/00001.wav")
    'id10270_5r0dWxy17C8_00001'
    """
    return os.path.splitext(relative_path)[0].replace("/", "_")


def read_trials(trial_file):
    """The trials of a VoxCeleb verification list, as ``(label, enrol path, test path)``.

    Arguments
    ---------
    trial_file : str
        ``veri_test2.txt``-style list: ``<1|0> idNNNNN/<video>/NNNNN.wav idNNNNN/<video>/NNNNN.wav``.

    Returns
    -------
    list of (int, str, str)

    Raises
    ------
    ValueError
        A malformed line (the file and line number are named) or an empty list.
    robustdistiller.data.files.TextFileError
        A byte that is not UTF-8 (the file and line are named).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "trials.txt")
    >>> lines = ["1 id10270/a/00001.wav id10270/b/00002.wav", "0 id10270/a/00001.wav id10271/c/00001.wav"]
    >>> _ = open(path, "w").write("\\n".join(lines))
    >>> read_trials(path)[1]
    (0, 'id10270/a/00001.wav', 'id10271/c/00001.wav')
    """
    trials = []
    for number, line in enumerate(read_text_lines(trial_file, "Verification trial list"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or fields[0] not in ("0", "1") or any(path.count("/") != 2 for path in fields[1:]):
            raise ValueError(
                f"{trial_file}:{number}: expected '<1|0> idNNNNN/<video>/NNNNN.wav idNNNNN/<video>/NNNNN.wav', "
                f"got {line.strip()!r}"
            )
        trials.append((int(fields[0]), fields[1], fields[2]))
    if not trials:
        raise ValueError(f"Trial file '{trial_file}' lists no trials")
    return trials


def read_trial_csv(path):
    """``[(label, enrol ID, test ID), ...]`` from a ``valid_trials.csv`` / ``test_trials.csv``."""
    with open(path, encoding="utf-8", newline="") as fin:
        return [(int(row["label"]), row["enrol"], row["test"]) for row in csv.DictReader(fin)]


def list_speaker_utterances(owners, skipped=None):
    """``{speaker: [path relative to wav/, ...]}`` of every ``idNNNNN/<video>/NNNNN.wav``, sorted.

    Arguments
    ---------
    owners : dict
        ``{speaker: wav folder}`` (:func:`~robustdistiller.downstream.voxceleb1.speaker_folders`).
    skipped : robustdistiller.data.files.SkippedFolders, optional
        Receives the speaker and video folders that cannot be listed (None: warned about here).

    Hidden files and folders (``._*`` macOS junk) are ignored; symbolic links are followed.

    Example
    -------
    >>> import tempfile
    >>> wav = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(wav, "id10001", "v1"))
    >>> _ = open(os.path.join(wav, "id10001", "v1", "00001.wav"), "wb").close()
    >>> list_speaker_utterances({"id10001": wav})
    {'id10001': ['id10001/v1/00001.wav']}
    """
    own_record = skipped is None
    skipped = SkippedFolders("the VoxCeleb1 speaker list") if own_record else skipped
    utterances = {}
    for speaker in sorted(owners):
        speaker_folder = os.path.join(owners[speaker], speaker)
        for video in list_folder(speaker_folder, skipped=skipped)[0]:
            if video.startswith("."):
                continue
            for name in list_folder(os.path.join(speaker_folder, video), skipped=skipped)[1]:
                if name.endswith(".wav") and not name.startswith("."):
                    utterances.setdefault(speaker, []).append(f"{speaker}/{video}/{name}")
    if own_record:
        skipped.warn()
    return utterances


def split_held_out_speakers(dev_speakers, valid_speakers, split_seed):
    """Draws the held-out (validation) dev speakers; returns ``(train speakers, valid speakers)``, sorted.

    Example
    -------
    >>> train, valid = split_held_out_speakers([f"id{10001 + index}" for index in range(6)], 2, 1986)
    >>> len(train), len(valid), sorted(train + valid) == [f"id{10001 + index}" for index in range(6)]
    (4, 2, True)
    """
    dev_speakers = sorted(dev_speakers)
    held_out = set(random.Random(split_seed).sample(dev_speakers, valid_speakers))
    return [spk for spk in dev_speakers if spk not in held_out], sorted(held_out)


def build_valid_trials(utterances_by_speaker, seed):
    """Balanced verification trials between held-out speakers.

    Every pair of utterances of a speaker is a target trial; each is matched by a non-target trial
    with the same enrolment utterance and a random utterance of another speaker.

    Arguments
    ---------
    utterances_by_speaker : dict
        ``speaker -> [utterance ID, ...]`` (at least two speakers).
    seed : int
        Seed of the non-target draws.

    Returns
    -------
    list of (int, str, str)

    Example
    -------
    >>> trials = build_valid_trials({"a": ["a1", "a2", "a3"], "b": ["b1", "b2"]}, seed=0)
    >>> sum(label for label, _, _ in trials), len(trials)
    (4, 8)
    >>> all((enrol[0] == test[0]) == bool(label) for label, enrol, test in trials)
    True
    """
    rng = random.Random(seed)
    speakers = sorted(utterances_by_speaker)
    trials = []
    for speaker in speakers:
        utterances = utterances_by_speaker[speaker]
        others = [other for other in speakers if other != speaker]
        for first in range(len(utterances)):
            for second in range(first + 1, len(utterances)):
                trials.append((1, utterances[first], utterances[second]))
                other = others[rng.randrange(len(others))]
                impostor = utterances_by_speaker[other][rng.randrange(len(utterances_by_speaker[other]))]
                trials.append((0, utterances[first], impostor))
    return trials


def _utterance_rows(locate, relative_paths, unreadable, trim_options=None, sample_rate=16000):
    """CSV rows and the length in samples of each (after silence removal with ``trim_options``).

    ``locate``: path relative to ``wav/`` -> absolute path.
    """
    rows, lengths = [], []
    for relative in relative_paths:
        path = locate(relative)
        try:
            if trim_options is None:
                frames, file_rate, _ = audio_info(path)
                seconds = frames / file_rate
                length = int(round(seconds * sample_rate))
            else:
                length = int(
                    trim_silence(load_audio(path, sample_rate=sample_rate), sample_rate, **trim_options).shape[0]
                )
                seconds = length / sample_rate
        except AudioLoadError:
            unreadable.append(path)
            continue
        rows.append([utterance_id(relative), f"{seconds:.3f}", path, 0, -1, relative.split("/")[0]])
        lengths.append(length)
    return rows, lengths


def trial_file_path(data_folder, trial_list=DEFAULT_TRIAL_LIST, trial_file=None):
    """The trial list to score: ``trial_file`` if given, else ``<data_folder>/<TRIAL_LISTS[trial_list]>``.

    Example
    -------
    >>> trial_file_path("/data/VoxCeleb1")
    '/data/VoxCeleb1/veri_test.txt'
    >>> trial_file_path("/data/VoxCeleb1", "cleaned")
    '/data/VoxCeleb1/veri_test2.txt'
    """
    if trial_file:
        return trial_file
    if trial_list not in TRIAL_LISTS:
        raise ValueError(f"trial_list must be one of {sorted(TRIAL_LISTS)} (or set trial_file), got {trial_list!r}")
    return os.path.join(data_folder, TRIAL_LISTS[trial_list])


def prepare_voxceleb1_asv(
    data_folder,
    save_folder,
    trial_file=None,
    valid_speakers=40,
    valid_utterances_per_speaker=20,
    min_train_duration=2.0,
    split_seed=1986,
    skip_prep=False,
    trial_list=DEFAULT_TRIAL_LIST,
    trim_options=None,
    sample_rate=16000,
):
    """Writes the ASV CSVs; returns the paths ``{"train", "valid", "valid_trials", "test", "test_trials"}``.

    Arguments
    ---------
    data_folder : str
        VoxCeleb1 folder holding ``wav/`` (both archives unzipped into it) or s3prl's ``dev/wav/`` and
        ``test/wav/`` and, unless ``trial_file`` is given, the trial list of ``trial_list``.
    save_folder : str
        Output folder of the CSVs.
    trial_file : str, optional
        Another trial list; overrides ``trial_list``. Its speakers are the test speakers, all other
        speakers of the wav folders are dev speakers.
    valid_speakers : int
        Dev speakers held out of training for checkpoint selection (at least 2).
    valid_utterances_per_speaker : int
        Utterances of each held-out speaker used in the validation trials (drawn with ``split_seed``;
        all when a speaker has fewer).
    min_train_duration : float
        Shorter training utterances (seconds) are left out.
    split_seed : int
        Seed of the held-out speakers, their utterances and the non-target validation trials.
    skip_prep : bool
        Only return the paths.
    trial_list : str
        ``"original"`` (``veri_test.txt``, s3prl's list) or ``"cleaned"`` (``veri_test2.txt``).
    trim_options : dict, optional
        Options of :func:`robustdistiller.downstream.silence.trim_silence`: durations (and the
        ``min_train_duration`` rule) are measured after silence removal. None: file durations.
    sample_rate : int
        Sample rate the recipe reads the audio at (lengths are counted in it).

    Returns
    -------
    dict

    Raises
    ------
    FileNotFoundError
        No wav folder (both layouts named) or the trial file is missing, or an utterance of the trial
        list is (all named, with the folders that could not be listed).
    ValueError
        A malformed trial file, unreadable audio, too few dev speakers for ``valid_speakers``.
    robustdistiller.data.files.TextFileError
        The trial list is not UTF-8 (file and line named).
    robustdistiller.data.files.FolderReadError
        ``data_folder`` or a wav folder cannot be listed (named).
    """
    names = ("train", "valid", "valid_trials", "test", "test_trials")
    paths = {name: os.path.join(save_folder, f"{name}.csv") for name in names}
    if skip_prep:
        return paths
    trial_file = trial_file_path(data_folder, trial_list, trial_file)
    skipped = SkippedFolders(f"the VoxCeleb1 ASV lists of {save_folder}")
    wav_folders = voxceleb1_wav_folders(data_folder, skipped)
    # two held-out speakers for non-target trials, two utterances of each for target trials
    valid_speakers = integer_at_least(valid_speakers, "valid_speakers", 2)
    valid_utterances_per_speaker = integer_at_least(valid_utterances_per_speaker, "valid_utterances_per_speaker", 2)
    options = {
        "data_folder": os.path.abspath(data_folder),
        "trial_file": os.path.abspath(trial_file),
        "valid_speakers": int(valid_speakers),
        "valid_utterances_per_speaker": int(valid_utterances_per_speaker),
        "min_train_duration": float(min_train_duration),
        "split_seed": int(split_seed),
        "trim_options": None if trim_options is None else dict(sorted(trim_options.items())),
        "sample_rate": int(sample_rate),
        "wav_folders": [os.path.abspath(folder) for folder in wav_folders],
    }
    if is_prepared(save_folder, "voxceleb1_asv", options, list(paths.values())):
        logger.info("VoxCeleb1 ASV lists already prepared in %s", save_folder)
        skipped.warn()
        return paths
    if not os.path.isfile(trial_file):
        raise FileNotFoundError(
            f"Verification trial file '{trial_file}' not found (expected VoxCeleb1's veri_test.txt for "
            f"trial_list: original, veri_test2.txt for trial_list: cleaned, or set trial_file)"
        )
    trials = read_trials(trial_file)
    test_paths = list(dict.fromkeys(path for _, enrol, test in trials for path in (enrol, test)))
    test_speakers = {path.split("/")[0] for path in test_paths}
    owners = speaker_folders(wav_folders)
    wav_folder = describe_wav_folders(wav_folders)

    def locate(relative):
        return resolve_listed_path(relative, owners, wav_folders)

    utterances = list_speaker_utterances(owners, skipped)
    skipped.warn()
    dev_speakers = sorted(set(utterances) - test_speakers)
    if len(dev_speakers) < valid_speakers + 1:
        raise ValueError(
            f"{wav_folder} holds {len(dev_speakers)} dev speakers (speaker folders not in {trial_file}); "
            f"training needs more than valid_speakers={valid_speakers}{skipped.error_note()}"
        )
    train_speakers, held_out_speakers = split_held_out_speakers(dev_speakers, valid_speakers, split_seed)
    logger.info(
        "%d test speakers in %s; %d dev speakers in %s: %d for training, %d held out for validation",
        len(test_speakers),
        trial_file,
        len(dev_speakers),
        wav_folder,
        len(train_speakers),
        len(held_out_speakers),
    )

    os.makedirs(save_folder, exist_ok=True)
    unreadable = []
    measure = {"trim_options": trim_options, "sample_rate": sample_rate}
    train_rows, train_lengths = _utterance_rows(
        locate, [path for spk in train_speakers for path in utterances[spk]], unreadable, **measure
    )
    # s3prl keeps a training utterance if its (trimmed) length is > min_sec * 16000 samples.
    min_samples = float(min_train_duration) * sample_rate
    short = [row for row, length in zip(train_rows, train_lengths) if not length > min_samples]
    train_rows = [row for row, length in zip(train_rows, train_lengths) if length > min_samples]
    rng = random.Random(split_seed)
    valid_paths = []
    for speaker in held_out_speakers:
        chosen = utterances[speaker]
        if len(chosen) > valid_utterances_per_speaker:
            chosen = sorted(rng.sample(chosen, valid_utterances_per_speaker))
        valid_paths += chosen
    valid_rows, _ = _utterance_rows(locate, valid_paths, unreadable, **measure)
    if unreadable:
        raise ValueError(f"{len(unreadable)} audio files under {wav_folder} are unreadable, e.g. {unreadable[:3]}")

    missing = [locate(path) for path in test_paths if not os.path.isfile(locate(path))]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} files listed in {trial_file} are missing under {wav_folder}, e.g. {missing[:3]}"
            f"{skipped.error_note()}"
        )
    test_rows, _ = _utterance_rows(locate, test_paths, unreadable, **measure)
    if unreadable:
        raise ValueError(f"{len(unreadable)} files listed in {trial_file} are unreadable, e.g. {unreadable[:3]}")

    valid_by_speaker = {}
    for row in valid_rows:
        valid_by_speaker.setdefault(row[5], []).append(row[0])
    valid_trials = build_valid_trials(valid_by_speaker, split_seed)

    write_csv(paths["train"], UTTERANCE_HEADER, train_rows)
    write_csv(paths["valid"], UTTERANCE_HEADER, valid_rows)
    write_csv(paths["valid_trials"], TRIAL_HEADER, valid_trials)
    write_csv(paths["test"], UTTERANCE_HEADER, test_rows)
    write_csv(
        paths["test_trials"],
        TRIAL_HEADER,
        [(label, utterance_id(enrol), utterance_id(test)) for label, enrol, test in trials],
    )
    logger.info(
        "Wrote %s (%d utterances, %d not longer than %.1f s%s left out), %s (%d utterances, %d trials), "
        "%s (%d utterances, %d trials); %d folders could not be listed",
        paths["train"],
        len(train_rows),
        len(short),
        min_train_duration,
        "" if trim_options is None else " after silence removal",
        paths["valid"],
        len(valid_rows),
        len(valid_trials),
        paths["test"],
        len(test_rows),
        len(trials),
        skipped.folder_count(),
    )
    check_split_lists(paths)  # every list has rows (its speakers are disjoint by design: no label check)
    mark_prepared(save_folder, "voxceleb1_asv", options)
    return paths
