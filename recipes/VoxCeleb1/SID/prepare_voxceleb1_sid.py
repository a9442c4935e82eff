"""Data preparation of SUPERB speaker identification (SID) on VoxCeleb1.

Reads ``<data_folder>/iden_split.txt`` (``1`` train, ``2`` dev, ``3`` test; lines
``1 id10001/1zcIwhmdeo4/00001.wav``) and the wav files in either layout of
:mod:`robustdistiller.downstream.voxceleb1`: one merged ``<data_folder>/wav/``, or s3prl's
``<data_folder>/dev/wav/`` + ``<data_folder>/test/wav/`` (any ``<data_folder>/*/wav/``; a listed file is
looked up in the folder of its speaker). Writes ``train.csv``, ``dev.csv`` and ``test.csv``
(``ID,duration,wav,start,stop,speaker``) to the save folder. Nothing is written under ``data_folder``.

Folders may be symbolic links (followed); a ``<data_folder>/*`` folder that cannot be listed is left
out, counted and warned about, and named again if a listed file is then missing. ``iden_split.txt``
must be UTF-8: a byte that is not names the file and the line.
"""

import logging
import os

from robustdistiller.data.audio import AudioLoadError, audio_info
from robustdistiller.data.files import SkippedFolders, read_text_lines
from robustdistiller.downstream.voxceleb1 import (
    describe_wav_folders,
    resolve_listed_path,
    speaker_folders,
    voxceleb1_wav_folders,
)
from robustdistiller.downstream.data import check_split_lists
from robustdistiller.data.prepare.lists import is_prepared, mark_prepared, write_csv

logger = logging.getLogger(__name__)

SPLITS = {"1": "train", "2": "dev", "3": "test"}
HEADER = ["ID", "duration", "wav", "start", "stop", "speaker"]


def read_iden_split(split_file):
    """``{"train": [...], "dev": [...], "test": [...]}`` of relative wav paths from ``iden_split.txt``.

    Raises
    ------
    ValueError
        A malformed line (the file and line number are named).
    robustdistiller.data.files.TextFileError
        A byte that is not UTF-8 (the file and line are named).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "iden_split.txt")
    >>> _ = open(path, "w").write("1 id10001/a/00001.wav\\n3 id10001/a/00002.wav\\n")
    >>> read_iden_split(path)
    {'train': ['id10001/a/00001.wav'], 'dev': [], 'test': ['id10001/a/00002.wav']}
    """
    splits = {name: [] for name in SPLITS.values()}
    for number, line in enumerate(read_text_lines(split_file, "VoxCeleb1 identification split file"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[0] not in SPLITS or fields[1].count("/") != 2:
            raise ValueError(
                f"{split_file}:{number}: expected '<1|2|3> idNNNNN/<video>/NNNNN.wav', got {line.strip()!r}"
            )
        splits[SPLITS[fields[0]]].append(fields[1])
    return splits


def prepare_voxceleb1_sid(data_folder, save_folder, split_file=None, skip_prep=False):
    """Writes the SID CSVs; returns ``{"train", "dev", "test"}`` paths.

    Arguments
    ---------
    data_folder : str
        VoxCeleb1 folder holding ``wav/``, or ``dev/wav/`` and ``test/wav/`` (s3prl's layout), and
        ``iden_split.txt`` unless ``split_file`` is given.
    save_folder : str
        Output folder of the CSVs.
    split_file : str, optional
        ``iden_split.txt`` elsewhere.
    skip_prep : bool
        Only return the paths.

    Raises
    ------
    FileNotFoundError
        No wav folder (both layouts named) or the split file is missing, or a listed wav file is
        (all named, with the folders that could not be listed).
    robustdistiller.data.files.TextFileError
        ``iden_split.txt`` is not UTF-8 (file and line named).
    robustdistiller.data.files.FolderReadError
        ``data_folder`` or a wav folder cannot be listed (named).
    """
    paths = {split: os.path.join(save_folder, f"{split}.csv") for split in SPLITS.values()}
    if skip_prep:
        return paths
    split_file = split_file or os.path.join(data_folder, "iden_split.txt")
    skipped = SkippedFolders(f"the VoxCeleb1 SID lists of {save_folder}")
    wav_folders = voxceleb1_wav_folders(data_folder, skipped)
    skipped.warn()
    options = {
        "data_folder": os.path.abspath(data_folder),
        "split_file": os.path.abspath(split_file),
        "wav_folders": [os.path.abspath(folder) for folder in wav_folders],
    }
    if is_prepared(save_folder, "voxceleb1_sid", options, list(paths.values())):
        logger.info("VoxCeleb1 SID lists already prepared in %s", save_folder)
        return paths
    if not os.path.isfile(split_file):
        raise FileNotFoundError(f"Identification split file '{split_file}' not found (iden_split.txt of VoxCeleb1)")
    os.makedirs(save_folder, exist_ok=True)
    splits = read_iden_split(split_file)
    owners = speaker_folders(wav_folders)
    logger.info("VoxCeleb1 wav folders: %s (%d speakers)", describe_wav_folders(wav_folders), len(owners))
    missing = []
    for split, relative_paths in splits.items():
        rows = []
        for relative in relative_paths:
            path = resolve_listed_path(relative, owners, wav_folders)
            try:
                frames, sample_rate, _ = audio_info(path)
            except AudioLoadError:
                missing.append(path)
                continue
            utterance_id = relative[: -len(".wav")].replace("/", "_")
            rows.append([utterance_id, f"{frames / sample_rate:.3f}", path, 0, -1, relative.split("/")[0]])
        write_csv(paths[split], HEADER, rows)
        logger.info("Wrote %s: %d utterances", paths[split], len(rows))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} files listed in {split_file} are missing or unreadable in "
            f"{describe_wav_folders(wav_folders)}, e.g. {missing[:3]}"
            f"{skipped.error_note()}"
        )
    check_split_lists(paths, "speaker", hint=f"Every speaker of {split_file} needs training utterances (1).")
    mark_prepared(save_folder, "voxceleb1_sid", options)
    return paths
