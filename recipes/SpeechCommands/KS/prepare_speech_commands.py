"""Data preparation of SUPERB keyword spotting (KS) on Speech Commands v0.01.

The SUPERB protocol (s3prl's ``speech_commands`` downstream, ``docs/reference/s3prl_settings.md`` "KS settings",
``docs/reference/corpora.md`` "Speech Commands"):

* 12 classes: the ten commands ``yes no up down left right on off stop go``, ``_unknown_`` (every
  other word folder) and ``_silence_``.
* Train / dev split of ``speech_commands_v0.01/<word>/<speaker>_nohash_<n>.wav`` by the hash of the
  speaker id (the part of the file name before ``_nohash_``): TensorFlow's ``which_set`` rule with 10 %
  validation and 10 % testing (:func:`which_set`). The *validation* band is the dev set, the *testing*
  band is discarded (as in s3prl), the rest is the training set. ``validation_list.txt`` and
  ``testing_list.txt`` are not used to split; they were generated with the same rule, so the
  discarded band is exactly the utterances of ``testing_list.txt``. As a safeguard, any utterance
  listed in ``testing_list.txt`` is also kept out of train and dev when the list exists (a no-op on
  the real corpus; the log says how many it removed).
* ``_silence_``: 1-s windows of the ``_background_noise_/*.wav`` files (``start``/``stop`` columns).
  s3prl puts every background file into both train and dev and crops a random second each time;
  here the non-overlapping 1-s windows are split instead, every tenth one to dev and the others to
  train, so dev never hears the training audio.
* Test: the separate archive ``speech_commands_test_set_v0.01/<label>/*.wav`` whose folders are the 12
  labels (including ``_unknown_`` and ``_silence_``).

Writes ``train.csv``, ``dev.csv`` and ``test.csv`` (``ID,duration,wav,start,stop,label,word,speaker``)
to the save folder; nothing is written under the data folders. Folders are listed with
:func:`robustdistiller.data.files.list_folder` (symbolic links followed; a word or label folder that
cannot be listed is left out, counted and warned about). Before the lists are marked prepared,
:func:`robustdistiller.downstream.data.check_split_lists` checks that train, dev and test have rows and
that every dev and test label occurs in train (e.g. no speaker in the dev band: the error names dev.csv).
"""

import hashlib
import logging
import os
import re

from robustdistiller.data.audio import AudioLoadError, audio_info
from robustdistiller.data.files import SkippedFolders, list_folder, read_text_lines
from robustdistiller.downstream.data import check_split_lists
from robustdistiller.data.prepare.lists import is_prepared, mark_prepared, write_csv

logger = logging.getLogger(__name__)

COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN_LABEL = "_unknown_"
SILENCE_LABEL = "_silence_"
CLASSES = COMMANDS + (UNKNOWN_LABEL, SILENCE_LABEL)  # s3prl's class order
BACKGROUND_FOLDER = "_background_noise_"
HEADER = ["ID", "duration", "wav", "start", "stop", "label", "word", "speaker"]

# TensorFlow speech_commands input_data.py: MAX_NUM_WAVS_PER_CLASS and the 10 % / 10 % split
MAX_NUM_WAVS_PER_CLASS = 2**27 - 1
VALIDATION_PERCENTAGE = 10.0
TESTING_PERCENTAGE = 10.0
SILENCE_WINDOW_SECONDS = 1.0
SILENCE_DEV_PERIOD = 10  # every tenth background-noise window goes to dev
VERSION_2_ONLY_WORDS = ("backward", "follow", "forward", "learn", "visual")
LAYOUT = "<word>/<8-hex speaker>_nohash_<n>.wav"


def speaker_of(file_name):
    """The speaker id of a Speech Commands file name: everything before ``_nohash_``.

    Example
    -------
    >>> speaker_of("a69b9b3e_nohash_0.wav")
    'a69b9b3e'
    """
    return re.sub(r"_nohash_.*$", "", os.path.basename(file_name))


def percentage_hash(file_name):
    """TensorFlow's stable percentage in ``[0, 100]`` of a file's speaker (SHA-1 of the speaker id).

    Example
    -------
    >>> round(percentage_hash("right/a69b9b3e_nohash_0.wav"), 4)
    4.8811
    """
    hashed = hashlib.sha1(speaker_of(file_name).encode("utf-8")).hexdigest()
    return (int(hashed, 16) % (MAX_NUM_WAVS_PER_CLASS + 1)) * (100.0 / MAX_NUM_WAVS_PER_CLASS)


def which_set(file_name, validation_percentage=VALIDATION_PERCENTAGE, testing_percentage=TESTING_PERCENTAGE):
    """``"validation"``, ``"testing"`` or ``"training"``: TensorFlow's ``which_set`` rule (as s3prl).

    All utterances of a speaker fall in the same set.

    Example
    -------
    >>> which_set("right/a69b9b3e_nohash_0.wav"), which_set("yes/a69b9b3e_nohash_3.wav")
    ('validation', 'validation')
    """
    percentage = percentage_hash(file_name)
    if percentage < validation_percentage:
        return "validation"
    if percentage < validation_percentage + testing_percentage:
        return "testing"
    return "training"


def label_of(word):
    """The KS class of a word folder: the word for the ten commands, else ``_unknown_``.

    Example
    -------
    >>> label_of("yes"), label_of("marvin")
    ('yes', '_unknown_')
    """
    return word if word in COMMANDS else UNKNOWN_LABEL


def _duration(path, unreadable):
    try:
        frames, sample_rate, _ = audio_info(path)
    except AudioLoadError:
        unreadable.append(path)
        return None
    return frames, sample_rate


def _read_list(path):
    """Relative paths (``word/file.wav``) of ``testing_list.txt``; empty if the file does not exist."""
    if not os.path.isfile(path):
        return set()
    return {line.strip().replace("\\", "/") for line in read_text_lines(path, "Speech Commands list") if line.strip()}


def _check_data_folder(data_folder):
    if not os.path.isdir(data_folder):
        raise FileNotFoundError(
            f"Speech Commands folder '{data_folder}' does not exist (expected the extracted "
            f"speech_commands_v0.01 archive: {LAYOUT}, {BACKGROUND_FOLDER}/)"
        )
    missing = [word for word in COMMANDS if not os.path.isdir(os.path.join(data_folder, word))]
    if missing:
        raise FileNotFoundError(
            f"Speech Commands folder '{data_folder}' has no folder for the command(s) {missing} "
            f"(expected {LAYOUT} for each of {list(COMMANDS)})"
        )
    if not os.path.isdir(os.path.join(data_folder, BACKGROUND_FOLDER)):
        raise FileNotFoundError(
            f"Speech Commands folder '{data_folder}' has no {BACKGROUND_FOLDER}/ folder (its long noise "
            f"recordings are the _silence_ class)"
        )
    newer_words = [word for word in VERSION_2_ONLY_WORDS if os.path.isdir(os.path.join(data_folder, word))]
    if newer_words:
        logger.warning(
            "'%s' has the folders %s, which only Speech Commands v0.02 has; SUPERB KS uses v0.01 "
            "(they are counted as _unknown_)",
            data_folder,
            newer_words,
        )


def speech_rows(data_folder, excluded_files=(), skipped=None):
    """Rows of every word utterance, split into ``{"train", "dev"}`` by :func:`which_set`.

    Arguments
    ---------
    data_folder : str
        The ``speech_commands_v0.01`` folder.
    excluded_files : collection of str
        Relative paths (``word/file.wav``) kept out of both sets (``testing_list.txt``).
    skipped : robustdistiller.data.files.SkippedFolders, optional
        Receives the word folders that cannot be listed (None: they are warned about here).

    Returns
    -------
    rows : dict
        ``{"train": [...], "dev": [...]}`` CSV rows.
    counts : dict
        Utterances per outcome (``train``, ``dev``, ``testing band``, ``testing list``).
    unreadable : list of str
        Files that could not be read.
    """
    own_record = skipped is None
    skipped = SkippedFolders(f"the Speech Commands lists of {data_folder}") if own_record else skipped
    rows, unreadable = {"train": [], "dev": []}, []
    counts = {"train": 0, "dev": 0, "testing band": 0, "testing list": 0}
    words = [
        entry
        for entry in list_folder(data_folder, "Speech Commands folder")[0]
        if entry != BACKGROUND_FOLDER and not entry.startswith(".")
    ]
    # s3prl's class order first (the label encoder follows the order of the training CSV)
    words.sort(key=lambda word: CLASSES.index(label_of(word)))
    for word in words:
        for file_name in list_folder(os.path.join(data_folder, word), skipped=skipped)[1]:
            if not file_name.lower().endswith(".wav") or file_name.startswith("."):
                continue
            relative = f"{word}/{file_name}"
            split = which_set(relative)
            if split == "testing":
                counts["testing band"] += 1
                continue
            if relative in excluded_files:
                counts["testing list"] += 1
                continue
            path = os.path.join(data_folder, word, file_name)
            info = _duration(path, unreadable)
            if info is None:
                continue
            frames, sample_rate = info
            stem = os.path.splitext(file_name)[0]
            name = "train" if split == "training" else "dev"
            rows[name].append(
                [f"{word}_{stem}", f"{frames / sample_rate:.3f}", path, 0, -1, label_of(word), word, speaker_of(stem)]
            )
            counts[name] += 1
    if own_record:
        skipped.warn()
    return rows, counts, unreadable


def silence_rows(background_folder):
    """1-s ``_silence_`` windows of the background noise files, ``{"train", "dev"}``.

    Windows ``k = 0, 1, ...`` cover ``[k, k + 1)`` seconds of each file; every tenth window
    (``k % 10 == 9``) goes to dev, the others to train.

    Returns
    -------
    rows : dict
        ``{"train": [...], "dev": [...]}`` CSV rows (``start``/``stop`` in samples of the file).
    unreadable : list of str
        Files that could not be read.
    """
    rows, unreadable = {"train": [], "dev": []}, []
    noise_files = [
        name
        for name in list_folder(background_folder, "Speech Commands background noise folder")[1]
        if name.lower().endswith(".wav") and not name.startswith(".")
    ]
    if not noise_files:
        raise FileNotFoundError(f"No .wav file in '{background_folder}' (the _silence_ class is cut from them)")
    for file_name in noise_files:
        path = os.path.join(background_folder, file_name)
        info = _duration(path, unreadable)
        if info is None:
            continue
        frames, sample_rate = info
        window = int(round(SILENCE_WINDOW_SECONDS * sample_rate))
        stem = os.path.splitext(file_name)[0]
        for index in range(frames // window):
            split = "dev" if index % SILENCE_DEV_PERIOD == SILENCE_DEV_PERIOD - 1 else "train"
            rows[split].append(
                [
                    f"silence_{stem}_{index:04d}",
                    f"{SILENCE_WINDOW_SECONDS:.3f}",
                    path,
                    index * window,
                    (index + 1) * window,
                    SILENCE_LABEL,
                    SILENCE_LABEL,
                    "",
                ]
            )
    return rows, unreadable


def read_test_archive(test_folder, skipped=None):
    """Rows of the test archive ``<label>/*.wav`` (folders must be KS labels).

    ``skipped`` (a :class:`~robustdistiller.data.files.SkippedFolders`) receives the label folders that
    cannot be listed (None: they are warned about here).

    Raises
    ------
    FileNotFoundError
        The folder is missing or holds no wav file.
    ValueError
        A sub-folder is not one of the 12 labels.
    """
    if not os.path.isdir(test_folder):
        raise FileNotFoundError(
            f"Speech Commands test folder '{test_folder}' does not exist (expected the extracted "
            f"speech_commands_test_set_v0.01 archive: <label>/*.wav with labels {list(CLASSES)})"
        )
    own_record = skipped is None
    skipped = SkippedFolders(f"the Speech Commands test list of {test_folder}") if own_record else skipped
    labels = [
        entry for entry in list_folder(test_folder, "Speech Commands test folder")[0] if not entry.startswith(".")
    ]
    unexpected = [label for label in labels if label not in CLASSES]
    if unexpected:
        raise ValueError(
            f"Test folder '{test_folder}' has the folder(s) {unexpected}, which are not KS labels "
            f"{list(CLASSES)}; is it speech_commands_test_set_v0.01?"
        )
    missing_labels = [label for label in CLASSES if label not in labels]
    if missing_labels:
        logger.warning("Test folder '%s' has no folder for %s", test_folder, missing_labels)
    rows, unreadable = [], []
    for label in sorted(labels, key=CLASSES.index):
        for file_name in list_folder(os.path.join(test_folder, label), skipped=skipped)[1]:
            if not file_name.lower().endswith(".wav") or file_name.startswith("."):
                continue
            path = os.path.join(test_folder, label, file_name)
            info = _duration(path, unreadable)
            if info is None:
                continue
            frames, sample_rate = info
            stem = os.path.splitext(file_name)[0]
            speaker = speaker_of(stem) if "_nohash_" in stem else ""
            rows.append([f"test_{label}_{stem}", f"{frames / sample_rate:.3f}", path, 0, -1, label, label, speaker])
    if own_record:
        skipped.warn()
    if not rows and not unreadable:
        raise FileNotFoundError(f"Test folder '{test_folder}' holds no <label>/*.wav file")
    return rows, unreadable


def prepare_speech_commands(data_folder, test_folder, save_folder, skip_prep=False):
    """Writes the KS CSVs; returns ``{"train", "dev", "test"}`` paths.

    Arguments
    ---------
    data_folder : str
        The ``speech_commands_v0.01`` folder (word folders, ``_background_noise_``).
    test_folder : str
        The ``speech_commands_test_set_v0.01`` folder (``<label>/*.wav``).
    save_folder : str
        Output folder of the CSVs.
    skip_prep : bool
        Only return the paths.

    Returns
    -------
    dict

    Raises
    ------
    FileNotFoundError
        A folder is missing (named), or files are unreadable (listed).
    ValueError
        The test folder has a folder that is not a KS label.
    robustdistiller.downstream.data.SplitError
        A split is empty, or a dev / test label never occurs in train (the split, file and label are named).
    """
    paths = {split: os.path.join(save_folder, f"{split}.csv") for split in ("train", "dev", "test")}
    if skip_prep:
        return paths
    options = {"data_folder": os.path.abspath(data_folder), "test_folder": os.path.abspath(test_folder)}
    if is_prepared(save_folder, "speech_commands_ks", options, list(paths.values())):
        logger.info("Speech Commands KS lists already prepared in %s", save_folder)
        return paths
    _check_data_folder(data_folder)
    listed_tests = _read_list(os.path.join(data_folder, "testing_list.txt"))
    skipped = SkippedFolders(f"the Speech Commands lists of {save_folder}")
    rows, counts, unreadable = speech_rows(data_folder, excluded_files=listed_tests, skipped=skipped)
    silence, unreadable_noise = silence_rows(os.path.join(data_folder, BACKGROUND_FOLDER))
    test, unreadable_test = read_test_archive(test_folder, skipped=skipped)
    skipped.warn()
    unreadable += unreadable_noise + unreadable_test
    if unreadable:
        raise FileNotFoundError(f"{len(unreadable)} Speech Commands files are unreadable, e.g. {unreadable[:3]}")
    logger.info(
        "Speech Commands split by speaker hash: %d train, %d dev, %d in the discarded testing band, %d more "
        "listed in testing_list.txt",
        counts["train"],
        counts["dev"],
        counts["testing band"],
        counts["testing list"],
    )
    os.makedirs(save_folder, exist_ok=True)
    for split in ("train", "dev"):
        write_csv(paths[split], HEADER, rows[split] + silence[split])
        logger.info(
            "Wrote %s: %d utterances + %d _silence_ windows", paths[split], len(rows[split]), len(silence[split])
        )
    write_csv(paths["test"], HEADER, test)
    logger.info("Wrote %s: %d utterances", paths["test"], len(test))
    check_split_lists(
        paths,
        "label",
        hint=(
            f"Speech Commands' dev split is every speaker whose hash falls in TensorFlow's 10 % validation band, plus "
            f"every tenth 1-s _silence_ window of {BACKGROUND_FOLDER}/; train is the other speakers. Use the full "
            f"speech_commands_v0.01 folder '{data_folder}' (a subset may have no dev speaker or miss a class)."
        ),
    )
    mark_prepared(save_folder, "speech_commands_ks", options)
    return paths
