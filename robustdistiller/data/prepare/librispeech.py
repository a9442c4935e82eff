"""LibriSpeech (OpenSLR 12): the utterance lists of the distillation recipe.

:func:`prepare_librispeech` writes ``train.csv`` and ``valid.csv`` (``ID,duration,wav,spk_id,wrd``) from
``LibriSpeech/<subset>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` and the chapters'
``<spk>-<chapter>.trans.txt``; :func:`librispeech_split_rows` reads one subset (also used by the PR and
ASR recipes' lists, :mod:`robustdistiller.downstream.librispeech`). Left out, counted and warned about
(besides the shared reasons of :mod:`.lists`): utterances without a transcript line
(:data:`NO_TRANSCRIPT`), transcript lines whose ``.flac`` is missing (:data:`MISSING_FLAC`), files
directly in a subset folder (:data:`NOT_IN_SPEAKER_FOLDER`) and utterances shorter than ``min_samples``.
"""

import collections
import logging
import os

from robustdistiller.data.files import read_text_lines, walk_folder
from robustdistiller.data.prepare.lists import (
    DOLLAR_IN_PATH,
    NOT_AUDIO,
    LeftOutFiles,
    check_prep_flags,
    checked_folder,
    mark_prepared,
    read_audio_header,
    remove_marker,
    require_folder,
    skipped_path,
    use_prepared,
    write_csv,
)
from robustdistiller.runs.options import as_list, integer_at_least

logger = logging.getLogger(__name__)

LIBRISPEECH_LAYOUT = "LibriSpeech/<subset>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac"
LIBRISPEECH_HEADER = ["ID", "duration", "wav", "spk_id", "wrd"]
NO_TRANSCRIPT = "no line for it in a trans.txt of its folder"
MISSING_FLAC = "listed in a trans.txt but its .flac is missing, as after an interrupted extraction"
NOT_IN_SPEAKER_FOLDER = "directly in the subset folder, not in a <spk>/ folder"


def _split_counts(before, after):
    """``"N reason, ..."`` of the counts added between two :meth:`LeftOutFiles.all_counts`."""
    added = {reason: count - before.get(reason, 0) for reason, count in after.items()}
    return ", ".join(f"{count} {reason}" for reason, count in added.items() if count) or "none"


def _read_transcripts(folder, file_names):
    """Reads every ``*.trans.txt`` among ``file_names`` of ``folder`` into ``{utterance id: words}``.

    A transcript that is not UTF-8 raises :class:`robustdistiller.data.files.TextFileError` naming it
    and the line.
    """
    transcripts = {}
    for file_name in sorted(file_names):
        if not file_name.lower().endswith(".trans.txt"):
            continue
        for line in read_text_lines(os.path.join(folder, file_name), "LibriSpeech transcript"):
            fields = line.strip().split(maxsplit=1)
            if fields:
                transcripts[fields[0]] = fields[1] if len(fields) > 1 else ""
    return transcripts


def librispeech_split_rows(data_folder, split, min_samples, left_out):
    """Returns the CSV rows of one LibriSpeech subset; counts what it leaves out in ``left_out``.

    Every folder under ``<subset>/<spk>/`` is read (the chapter folders, but also the speaker folder
    itself when its files were extracted without the chapter level): its ``.flac`` files (any case)
    with their lines of the folder's ``*.trans.txt``. The speaker is the ``<spk>`` folder, the ID
    the file name without extension (``<spk>-<chapter>-<utt>``, which names the chapter anyway).

    Arguments
    ---------
    data_folder : str
        The ``LibriSpeech`` folder.
    split : str
        The subset (``train-clean-100``, ``dev-clean``...).
    min_samples : int
        Utterances with fewer samples are left out.
    left_out : LeftOutFiles
        Receives the files and folders left out.

    Returns
    -------
    list of list
        ``[ID, duration, wav, spk_id, words]`` rows.
    """
    split_folder = os.path.join(data_folder, split)
    if not os.path.isdir(split_folder):
        hint = ""
        nested = os.path.join(data_folder, "LibriSpeech", split)
        if os.path.isdir(nested):
            hint = f" (found '{nested}': pass '{os.path.join(data_folder, 'LibriSpeech')}')"
        raise FileNotFoundError(
            f"LibriSpeech subset folder '{split_folder}' does not exist{hint}; expected {LIBRISPEECH_LAYOUT}."
        )
    rows, speakers, flac_found = [], set(), 0
    counts_before = left_out.all_counts()
    folders_before = left_out.folder_count()
    too_short = f"shorter than {min_samples} samples (min_samples)"
    for directory, _, file_names in walk_folder(split_folder, left_out, "LibriSpeech subset folder"):
        relative = os.path.relpath(directory, split_folder)
        speaker = None if relative == "." else relative.split(os.sep)[0]
        flacs = {}
        for file_name in sorted(file_names):
            if file_name.lower().endswith(".flac"):
                flac_found += 1
                if file_name.startswith("."):
                    left_out.add(NOT_AUDIO, os.path.join(directory, file_name))
                else:
                    flacs[file_name[: -len(".flac")]] = os.path.join(directory, file_name)
        if speaker is None:
            for path in flacs.values():
                left_out.add(NOT_IN_SPEAKER_FOLDER, path)
            continue
        transcripts = _read_transcripts(directory, file_names)
        for utterance_id in sorted(set(transcripts) - set(flacs)):
            left_out.add(MISSING_FLAC, os.path.join(directory, utterance_id + ".flac"))
        for utterance_id, path in flacs.items():
            if utterance_id not in transcripts:
                left_out.add(NO_TRANSCRIPT, path)
                continue
            if "$" in path or "$" in transcripts[utterance_id]:
                left_out.add(DOLLAR_IN_PATH, path)
                continue
            header = read_audio_header(path, left_out)
            if header is None:
                continue
            frames, rate, _ = header
            if frames < min_samples:
                left_out.add(too_short, path, detail=f"{frames} samples")
                continue
            rows.append([utterance_id, frames / rate, path, speaker, transcripts[utterance_id]])
            speakers.add(speaker)
    if flac_found == 0:
        unread = left_out.folder_count() - folders_before
        raise ValueError(
            f"No .flac file found under '{split_folder}'"
            + (f" ({unread} folder(s) left out: {'; '.join(left_out.folder_messages())})" if unread else "")
            + f"; expected {LIBRISPEECH_LAYOUT}."
        )
    hours = sum(row[1] for row in rows) / 3600
    logger.info(
        "LibriSpeech %s: %d utterances from %d speakers (%.2f h); left out: %s.",
        split,
        len(rows),
        len(speakers),
        hours,
        _split_counts(counts_before, left_out.all_counts()),
    )
    return rows


def prepare_librispeech(
    data_folder,
    save_folder,
    train_splits,
    valid_splits,
    min_samples=400,
    skip_prep=False,
    force_prep=False,
):
    """Writes ``train.csv`` and ``valid.csv`` (``ID,duration,wav,spk_id,wrd``) for LibriSpeech.

    Arguments
    ---------
    data_folder : str
        The ``LibriSpeech`` folder holding the subsets (``train-clean-100/``, ``dev-clean/``...).
    save_folder : str
        Where the CSVs, their ``<csv stem>_skipped.json`` and the marker ``librispeech.prepare.json``
        are written.
    train_splits, valid_splits : list of str, or str
        Subsets for training and validation (``valid_splits`` may be empty: no ``valid.csv``). A
        single string is a one-subset list.
    min_samples : int
        Utterances with fewer samples are left out (400: the CNN feature extractor's receptive
        field).
    skip_prep : bool
        If True, do nothing and return the paths.
    force_prep : bool
        If True, prepare again even if the lists exist with the same options (after audio files
        were moved, deleted or added).

    Returns
    -------
    dict
        ``{"train": path, "valid": path or None}``.

    Raises
    ------
    FileNotFoundError
        If ``data_folder`` or a subset folder is missing.
    StaleListError
        If the lists are already prepared but name files that no longer exist.
    OptionError
        If a folder contains ``$`` or ``skip_prep`` and ``force_prep`` are both True.
    ValueError
        If ``data_folder`` or a subset holds no ``.flac``, a subset is both in training and
        validation, or no utterance is usable.

    Notes
    -----
    Kept: ``.flac`` in any case (``.FLAC``), files directly in a speaker folder (extracted without
    the chapter level: their transcript lines are read from a ``*.trans.txt`` of the same folder;
    speaker and ID as usual). Left out, counted and warned about (see :mod:`robustdistiller.data.prepare`): files
    without a transcript line, transcript lines whose ``.flac`` is missing, files directly in the
    subset folder (no speaker), unreadable or empty files, paths or transcripts with ``$``,
    utterances shorter than ``min_samples``.
    """
    check_prep_flags(skip_prep, force_prep)
    train_splits = as_list(train_splits, "train_splits")
    valid_splits = as_list(valid_splits, "valid_splits")
    checked_folder(save_folder, "save_folder")  # the lists keep the path as given
    csv_paths = {
        "train": os.path.join(save_folder, "train.csv"),
        "valid": os.path.join(save_folder, "valid.csv") if valid_splits else None,
    }
    if skip_prep:
        return csv_paths
    if not train_splits:
        raise ValueError("prepare_librispeech needs at least one training subset.")
    overlap = sorted(set(train_splits) & set(valid_splits))
    if overlap:
        raise ValueError(f"Subsets {overlap} are both in train_splits and valid_splits.")
    data_folder = checked_folder(data_folder, "data_folder")
    min_samples = integer_at_least(min_samples, "min_samples", 0)
    options = {
        "data_folder": data_folder,
        "train_splits": train_splits,
        "valid_splits": valid_splits,
        "min_samples": min_samples,
    }
    outputs = [path for path in csv_paths.values() if path]
    if use_prepared(save_folder, "librispeech", options, outputs, force_prep, "LibriSpeech"):
        return csv_paths
    require_folder(data_folder, "LibriSpeech folder", LIBRISPEECH_LAYOUT)
    os.makedirs(save_folder, exist_ok=True)
    remove_marker(save_folder, "librispeech")
    seen_ids = set()
    for key, splits in (("train", train_splits), ("valid", valid_splits)):
        if not splits:
            continue
        left_out = LeftOutFiles(csv_paths[key])
        rows = [row for split in splits for row in librispeech_split_rows(data_folder, split, min_samples, left_out)]
        left_out.warn()
        if not rows:
            raise ValueError(f"No usable utterance in LibriSpeech subsets {splits} under '{data_folder}'.")
        id_counts = collections.Counter(row[0] for row in rows)
        repeated = {utterance_id for utterance_id, count in id_counts.items() if count > 1}
        duplicates = sorted(repeated | (set(id_counts) & seen_ids))
        if duplicates:
            raise ValueError(f"Utterance IDs appear twice in {splits}: {duplicates[:10]}")
        seen_ids.update(id_counts)
        write_csv(csv_paths[key], LIBRISPEECH_HEADER, rows)
        left_out.write()
        logger.info(
            "Wrote %s (%d utterances, %s left out: %s).",
            csv_paths[key],
            len(rows),
            left_out.summary(),
            skipped_path(csv_paths[key]),
        )
    mark_prepared(save_folder, "librispeech", options)
    return csv_paths
