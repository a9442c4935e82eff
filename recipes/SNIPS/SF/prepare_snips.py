"""Data preparation of Audio-SNIPS for SUPERB slot filling (SF): one CSV per split, and the vocabulary.

Reads the release as s3prl's ``SnipsDataset`` does (``docs/reference/corpora.md`` "Audio-SNIPS",
``docs/reference/superb_tasks.md`` "SF")::

    SNIPS/
        all.iob.snips.txt   <id> BOS <UPPERCASE WORDS> EOS<TAB>O <slot name or O per word> <Intent>
        slots.txt           O, then one slot name per line
        train/ valid/ test/ <Speaker>-snips-<split>-<n>.wav (any depth)

Each split keeps the wavs of its folder whose id (file name without ``.wav``) starts with one of the
split's speaker names (SUPERB: train Ivy Joanna Joey Justin Kendra Kimberly Matthew Salli; valid Aditi
Amy Geraint Nicole; test Brian Emma Raveena Russell). Wavs without a line in ``all.iob.snips.txt`` are
skipped and counted (s3prl prints "Not Found").

Writes ``<save_folder>/{train,valid,test}.csv`` with ``ID, duration, wav, start, stop, speaker,
words, tags, intent`` (``words`` / ``tags`` space-separated, one tag per word) and
``<save_folder>/tokens.txt``: the 31 + 2 x (slot types) CTC outputs, one per line, in output order.
Nothing is written under the data folder. A second call with the same options does nothing.
"""

import csv
import json
import logging
import os

import soundfile

from robustdistiller.data.files import SkippedFolders, find_all_files, read_text_lines
from robustdistiller.downstream.data import check_split_lists
from robustdistiller.downstream.slot_filling import SlotTextEncoder, parse_iob_line, read_slot_types

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
LABEL_FILE, SLOTS_FILE = "all.iob.snips.txt", "slots.txt"
CSV_COLUMNS = ["ID", "duration", "wav", "start", "stop", "speaker", "words", "tags", "intent"]
OPTIONS_FILE = "prepare_snips.json"
LAYOUT = (
    "SNIPS/{all.iob.snips.txt, slots.txt, train/, valid/, test/} with "
    "<split>/<Speaker>-snips-<split>-<n>.wav (Audio-SNIPS as released for SUPERB)"
)


def read_labels(label_file):
    """``id -> (words, tags, intent)`` of ``all.iob.snips.txt`` (errors name the file and line).

    Raises
    ------
    ValueError
        A malformed line, or an id given twice.
    """
    labels = {}
    for number, line in enumerate(read_text_lines(label_file, "SNIPS label file"), start=1):
        if not line.strip():
            continue
        utterance_id, words, tags, intent = parse_iob_line(line, source=f"{label_file}, line {number}")
        if utterance_id in labels:
            raise ValueError(f"{label_file}, line {number}: id '{utterance_id}' given twice")
        labels[utterance_id] = (words, tags, intent)
    return labels


def check_layout(data_folder, splits=SPLITS):
    """Raises ``FileNotFoundError`` naming the first missing path and the expected layout."""
    for name in (LABEL_FILE, SLOTS_FILE) + tuple(splits):
        path = os.path.join(data_folder, name)
        exists = os.path.isdir(path) if name in splits else os.path.isfile(path)
        if not exists:
            raise FileNotFoundError(f"'{path}' not found: expected {LAYOUT}.")


def list_wavs(folder):
    """Every ``*.wav`` under ``folder``, sorted (s3prl globs recursively).

    Walked with :func:`robustdistiller.data.files.walk_folder`: symbolic links are followed, and folders
    that cannot be listed (or are reached twice through links) are left out, counted and warned about.
    """
    skipped = SkippedFolders(f"the SNIPS list of {folder}")
    found = [path for path in find_all_files(folder, skipped, "SNIPS split folder") if path.endswith(".wav")]
    skipped.warn()
    return sorted(found)


def speaker_of(utterance_id, speakers):
    """The first speaker whose name is a prefix of the id (s3prl's rule), or None.

    Example
    -------
    >>> speaker_of("Joanna-snips-train-12", ["Joey", "Joanna"]), speaker_of("Amy-snips-valid-1", ["Aditi"])
    ('Joanna', None)
    """
    for speaker in speakers:
        if utterance_id[: len(speaker)] == speaker:
            return speaker
    return None


def split_rows(data_folder, split, speakers, labels, encoder):
    """CSV rows of one split (sorted by id); checks that every tag is a slot of ``slots.txt``."""
    rows, unlabelled = [], 0
    for path in list_wavs(os.path.join(data_folder, split)):
        utterance_id = os.path.basename(path)[: -len(".wav")]
        if utterance_id not in labels:
            unlabelled += 1
            continue
        speaker = speaker_of(utterance_id, speakers)
        if speaker is None:
            continue
        words, tags, intent = labels[utterance_id]
        try:
            encoder.encode(words, tags)
        except KeyError as error:
            raise ValueError(f"{os.path.join(data_folder, LABEL_FILE)}: {utterance_id}: {error.args[0]}") from None
        try:
            duration = soundfile.info(path).duration
        except RuntimeError as error:
            raise RuntimeError(f"'{path}' is not a readable audio file ({error})") from None
        rows.append(
            {
                "ID": utterance_id,
                "duration": f"{duration:.3f}",
                "wav": path,
                "start": 0,
                "stop": -1,
                "speaker": speaker,
                "words": " ".join(words),
                "tags": " ".join(tags),
                "intent": intent,
            }
        )
    if unlabelled:
        logger.warning("%d wav files of %s/ have no line in %s: skipped (as s3prl does)", unlabelled, split, LABEL_FILE)
    if not rows:
        raise ValueError(
            f"No utterance of the speakers {list(speakers)} in '{os.path.join(data_folder, split)}' "
            f"(file names must start with the speaker's name: <Speaker>-snips-{split}-<n>.wav, "
            f"with a line in {LABEL_FILE})."
        )
    found = {row["speaker"] for row in rows}
    missing = [speaker for speaker in speakers if speaker not in found]
    if missing:
        logger.warning("%s: no utterance of the speakers %s", split, missing)
    rows.sort(key=lambda row: row["ID"])
    return rows


def _write_csv(path, rows):
    temporary = path + ".tmp"
    with open(temporary, "w", newline="", encoding="utf-8") as fout:
        writer = csv.DictWriter(fout, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, path)


def prepare_snips(data_folder, save_folder, speakers, csv_files=None, skip_prep=False):
    """Writes the CSVs of the three splits and ``tokens.txt``; returns ``{split: csv path}``.

    Arguments
    ---------
    data_folder : str
        The ``SNIPS`` folder (see the module docstring).
    save_folder : str
        Where the CSVs and ``tokens.txt`` go.
    speakers : dict
        ``{"train": [...], "valid": [...], "test": [...]}`` speaker names (file-name prefixes).
    csv_files : dict, optional
        ``split -> csv path`` (default ``<save_folder>/<split>.csv``).
    skip_prep : bool
        Only return the paths.

    Returns
    -------
    dict
    """
    csv_files = dict(csv_files or {split: os.path.join(save_folder, f"{split}.csv") for split in SPLITS})
    if skip_prep:
        return csv_files
    options = {
        "data_folder": os.path.abspath(data_folder),
        "speakers": {s: list(speakers[s]) for s in SPLITS},
        "csv_files": {split: os.path.abspath(csv_files[split]) for split in SPLITS},
    }
    options_path = os.path.join(save_folder, OPTIONS_FILE)
    if all(os.path.isfile(path) for path in csv_files.values()) and os.path.isfile(options_path):
        with open(options_path, encoding="utf-8") as fin:
            if json.load(fin) == options:
                logger.info("SNIPS CSVs already prepared in %s: skipping", save_folder)
                return csv_files
    check_layout(data_folder)
    overlap = set(speakers["train"]) & (set(speakers["valid"]) | set(speakers["test"]))
    if overlap or set(speakers["valid"]) & set(speakers["test"]):
        logger.warning(
            "Speakers shared between splits: %s", sorted(overlap | (set(speakers["valid"]) & set(speakers["test"])))
        )
    encoder = SlotTextEncoder(read_slot_types(os.path.join(data_folder, SLOTS_FILE)))
    labels = read_labels(os.path.join(data_folder, LABEL_FILE))
    rows = {split: split_rows(data_folder, split, speakers[split], labels, encoder) for split in SPLITS}
    os.makedirs(save_folder, exist_ok=True)
    for split in SPLITS:
        os.makedirs(os.path.dirname(os.path.abspath(csv_files[split])), exist_ok=True)
        _write_csv(csv_files[split], rows[split])
        logger.info(
            "%s: %d utterances of %d speakers -> %s",
            split,
            len(rows[split]),
            len({row["speaker"] for row in rows[split]}),
            csv_files[split],
        )
    with open(os.path.join(save_folder, "tokens.txt"), "w", encoding="utf-8") as fout:
        fout.write("".join(f"{token}\n" for token in encoder.tokens))
    logger.info(
        "%d CTC outputs (%d slot types) written to %s",
        encoder.vocab_size,
        len(encoder.slot_types),
        os.path.join(save_folder, "tokens.txt"),
    )
    check_split_lists(csv_files)  # every split has rows (names the empty one)
    with open(options_path, "w", encoding="utf-8") as fout:
        json.dump(options, fout, indent=2)
    return csv_files
