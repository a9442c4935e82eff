"""Data preparation of SUPERB query by example (QbE) on QUESST 2014.

The SUPERB protocol (s3prl's ``quesst14_dtw`` downstream, ``docs/reference/superb_tasks.md`` "QbE"):

* documents: the entries of ``scoring/language_key_utterances.lst`` whose language is kept
  (``nnenglish``, non-native English, by default); queries: the kept entries of
  ``scoring/language_key_dev.lst`` (dev) and ``scoring/language_key_eval.lst`` (eval);
* each ``.lst`` line is ``<path> <language>``; as s3prl, everything up to the first ``/`` of the path
  (the release's own folder name, ``quesst14Database``) is dropped and the rest is joined to the
  data folder;
* the id of a document or query is its file name without extension (``quesst14_00001``,
  ``quesst14_dev_0001``), as in the ground truth and the stdlist the scorer reads.

Writes ``documents.csv``, ``dev_queries.csv`` and ``eval_queries.csv``
(``ID,duration,wav,start,stop,language``) to the save folder; nothing is written under the data folder.
The audio is 8 kHz; the recipe resamples it to 16 kHz when reading (s3prl uses sox ``rate 16000`` and a
-3 dB gain, which the upstreams' normalisation makes irrelevant).
"""

import logging
import os

from robustdistiller.data.audio import AudioLoadError, audio_info
from robustdistiller.data.files import read_text_lines
from robustdistiller.downstream.data import check_split_lists
from robustdistiller.data.prepare.lists import is_prepared, mark_prepared, write_csv

logger = logging.getLogger(__name__)

HEADER = ["ID", "duration", "wav", "start", "stop", "language"]
LISTS = {
    "documents": "language_key_utterances.lst",
    "dev_queries": "language_key_dev.lst",
    "eval_queries": "language_key_eval.lst",
}
LAYOUT = (
    "quesst14Database/{Audio/quesst14_NNNNN.wav, dev_queries/, eval_queries/, "
    "scoring/language_key_{utterances,dev,eval}.lst, scoring/groundtruth_quesst14_{dev,eval}/}"
)


def ground_truth_folder(data_folder, split):
    """``<data_folder>/scoring/groundtruth_quesst14_<split>`` (``split``: ``dev`` or ``eval``).

    Example
    -------
    >>> ground_truth_folder("/data/quesst14Database", "dev")
    '/data/quesst14Database/scoring/groundtruth_quesst14_dev'
    """
    return os.path.join(data_folder, "scoring", f"groundtruth_quesst14_{split}")


def resolve_listed_path(data_folder, listed):
    """The file a ``.lst`` path names: s3prl drops everything up to the first ``/``.

    Example
    -------
    >>> resolve_listed_path("/data/q14", "quesst14Database/Audio/quesst14_00001.wav")
    '/data/q14/Audio/quesst14_00001.wav'
    """
    relative = listed.split("/", 1)[1] if "/" in listed else listed
    return os.path.join(data_folder, relative)


def read_language_list(data_folder, list_name, languages):
    """Rows (``ID, duration, wav, start, stop, language``) of one ``.lst`` file, kept languages only.

    Raises
    ------
    FileNotFoundError
        The list or a kept file is missing or unreadable (named, with the line).
    ValueError
        A line is not ``<path> <language>``, or two kept entries share an id.
    """
    path = os.path.join(data_folder, "scoring", list_name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"QUESST14 list '{path}' is missing; expected the release layout {LAYOUT}")
    rows, seen = [], set()
    for number, line in enumerate(read_text_lines(path, "QUESST14 list"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ValueError(f"{path}, line {number}: expected '<path> <language>', got {line.strip()!r}")
        listed, language = fields
        if language not in languages:
            continue
        wav = resolve_listed_path(data_folder, listed)
        try:
            frames, sample_rate, _ = audio_info(wav)
        except AudioLoadError as error:
            raise FileNotFoundError(f"{path}, line {number}: {error}") from error
        utterance_id = os.path.splitext(os.path.basename(wav))[0]
        if utterance_id in seen:
            raise ValueError(f"{path}, line {number}: id '{utterance_id}' is listed twice")
        seen.add(utterance_id)
        rows.append([utterance_id, f"{frames / sample_rate:.3f}", wav, 0, -1, language])
    return rows


def prepare_quesst14(data_folder, save_folder, languages=("nnenglish",), csv_files=None, skip_prep=False):
    """Writes the QbE CSVs; returns ``{"documents", "dev_queries", "eval_queries"}`` paths.

    Arguments
    ---------
    data_folder : str
        The ``quesst14Database`` folder.
    save_folder : str
        Output folder of the CSVs.
    languages : sequence of str
        Languages of the ``.lst`` files to keep (SUPERB: ``nnenglish``).
    csv_files : dict, optional
        ``{"documents", "dev_queries", "eval_queries"}`` output paths (the recipe YAML's); default
        ``<save_folder>/<name>.csv``.
    skip_prep : bool
        Only return the paths.

    Returns
    -------
    dict

    Raises
    ------
    FileNotFoundError
        The data folder, a list, a ground-truth folder or a listed file is missing (named).
    ValueError
        A list is malformed, or a split keeps no entry.
    """
    paths = {name: os.path.join(save_folder, f"{name}.csv") for name in LISTS}
    paths.update(csv_files or {})
    if set(paths) != set(LISTS):
        raise ValueError(f"prepare_quesst14: csv_files must name {sorted(LISTS)}, got {sorted(csv_files)}")
    if skip_prep:
        return paths
    languages = [languages] if isinstance(languages, str) else list(languages)
    options = {
        "data_folder": os.path.abspath(data_folder),
        "languages": languages,
        "csv_files": {name: os.path.abspath(path) for name, path in paths.items()},
    }
    if is_prepared(save_folder, "quesst14_qbe", options, list(paths.values())):
        logger.info("QUESST14 QbE lists already prepared in %s", save_folder)
        return paths
    if not os.path.isdir(data_folder):
        raise FileNotFoundError(f"QUESST14 data folder '{data_folder}' does not exist; expected {LAYOUT}")
    for split in ("dev", "eval"):
        if not os.path.isdir(ground_truth_folder(data_folder, split)):
            raise FileNotFoundError(
                f"QUESST14 ground truth '{ground_truth_folder(data_folder, split)}' is missing; expected {LAYOUT}"
            )
    rows = {name: read_language_list(data_folder, list_name, set(languages)) for name, list_name in LISTS.items()}
    for name, found in rows.items():
        if not found:
            raise ValueError(f"QUESST14 list scoring/{LISTS[name]} has no entry of the languages {languages}")
    os.makedirs(save_folder, exist_ok=True)
    for name, found in rows.items():
        os.makedirs(os.path.dirname(os.path.abspath(paths[name])), exist_ok=True)
        write_csv(paths[name], HEADER, found)
        logger.info("Wrote %s: %d entries (%s)", paths[name], len(found), ", ".join(languages))
    check_split_lists(paths)  # every list has rows (names the empty one)
    mark_prepared(save_folder, "quesst14_qbe", options)
    return paths
