"""Data preparation of SUPERB intent classification (IC) on Fluent Speech Commands.

Reads the release's split files ``<data_folder>/data/{train,valid,test}_data.csv`` (header
``,path,speakerId,transcription,action,object,location``, the first column an unnamed index; ``path``
relative to ``data_folder``, e.g. ``wavs/speakers/<speakerId>/<uuid>.wav``; ``docs/reference/corpora.md``
"Fluent Speech Commands") and writes ``train.csv``, ``valid.csv`` and ``test.csv``
(``ID,duration,wav,start,stop,speaker,transcription,action,object,location``) to the save folder. The splits are the
release's (their speakers are disjoint); the value set of each slot is the one of the training CSV, as in s3prl's
``fluent_commands``, so a dev or test value never seen in training is an error. Nothing is written under
``data_folder``.
"""

import csv
import io
import logging
import os

from robustdistiller.data.audio import AudioLoadError, audio_info
from robustdistiller.data.files import read_text
from robustdistiller.downstream.data import check_split_lists
from robustdistiller.data.prepare.lists import is_prepared, make_id, mark_prepared, write_csv

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
SLOTS = ("action", "object", "location")
RELEASE_COLUMNS = ("path", "speakerId", "transcription") + SLOTS
HEADER = ["ID", "duration", "wav", "start", "stop", "speaker", "transcription", *SLOTS]


def read_release_csv(csv_file):
    """Reads one split file of the release into a list of dicts (keys :data:`RELEASE_COLUMNS`).

    Arguments
    ---------
    csv_file : str
        ``data/<split>_data.csv`` of the release.

    Returns
    -------
    list of dict

    Raises
    ------
    ValueError
        A missing column or an empty field (the file and line number are named).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "train_data.csv")
    >>> _ = open(path, "w").write(",path,speakerId,transcription,action,object,location\\n"
    ...                           "0,wavs/speakers/s1/u1.wav,s1,Lights on,activate,lights,none\\n")
    >>> read_release_csv(path)[0]["action"]
    'activate'
    """
    with io.StringIO(read_text(csv_file, "Fluent Speech Commands split file"), newline="") as fin:
        reader = csv.DictReader(fin)  # read_text: a byte that is not UTF-8 names the file and line
        missing = [column for column in RELEASE_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{csv_file}: missing column(s) {missing}; expected the Fluent Speech Commands header "
                f"',{','.join(RELEASE_COLUMNS)}', got {reader.fieldnames}"
            )
        rows = []
        for row in reader:
            entry = {column: (row[column] or "").strip() for column in RELEASE_COLUMNS}
            empty = [column for column in RELEASE_COLUMNS if column != "transcription" and not entry[column]]
            if empty:
                raise ValueError(f"{csv_file}:{reader.line_num}: empty field(s) {empty} in {dict(row)}")
            rows.append(entry)
    return rows


def slot_values(rows):
    """Values of each slot in order of first appearance (s3prl's label order).

    Example
    -------
    >>> slot_values([{"action": "bring", "object": "socks", "location": "none"},
    ...              {"action": "activate", "object": "lights", "location": "kitchen"},
    ...              {"action": "bring", "object": "shoes", "location": "none"}])["action"]
    ['bring', 'activate']
    """
    values = {slot: [] for slot in SLOTS}
    for row in rows:
        for slot in SLOTS:
            if row[slot] not in values[slot]:
                values[slot].append(row[slot])
    return values


def prepare_fluent_speech_commands(data_folder, save_folder, skip_prep=False):
    """Writes the IC CSVs; returns ``{"train", "valid", "test"}`` paths.

    Arguments
    ---------
    data_folder : str
        The release folder holding ``data/`` and ``wavs/`` (``fluent_speech_commands_dataset``).
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
        ``data_folder``, a split file or a listed wav file is missing (all named).
    ValueError
        A malformed split file, or a dev / test slot value that the training split does not have.
    """
    paths = {split: os.path.join(save_folder, f"{split}.csv") for split in SPLITS}
    if skip_prep:
        return paths
    options = {"data_folder": os.path.abspath(data_folder)}
    if is_prepared(save_folder, "fluent_speech_commands", options, list(paths.values())):
        logger.info("Fluent Speech Commands lists already prepared in %s", save_folder)
        return paths
    if not os.path.isdir(data_folder):
        raise FileNotFoundError(
            f"Fluent Speech Commands folder '{data_folder}' does not exist (expected the release folder "
            f"with data/{{train,valid,test}}_data.csv and wavs/speakers/)"
        )
    release = {}
    for split in SPLITS:
        csv_file = os.path.join(data_folder, "data", f"{split}_data.csv")
        if not os.path.isfile(csv_file):
            raise FileNotFoundError(f"Split file '{csv_file}' not found (data/{split}_data.csv of the release)")
        release[split] = read_release_csv(csv_file)
    known = slot_values(release["train"])
    for split in ("valid", "test"):
        for slot, values in slot_values(release[split]).items():
            unseen = [value for value in values if value not in known[slot]]
            if unseen:
                raise ValueError(
                    f"{os.path.join(data_folder, 'data', f'{split}_data.csv')}: {slot} value(s) {unseen} do not "
                    f"occur in train_data.csv, whose {slot} values are {known[slot]}"
                )

    missing, rows = [], {}
    for split in SPLITS:
        rows[split], seen = [], set()
        for entry in release[split]:
            if entry["path"] in seen:
                logger.warning("%s_data.csv lists %s twice; keeping the first row", split, entry["path"])
                continue
            seen.add(entry["path"])
            path = os.path.join(data_folder, entry["path"])
            try:
                frames, sample_rate, _ = audio_info(path)
            except AudioLoadError:
                missing.append(path)
                continue
            utterance_id = make_id(os.path.relpath(entry["path"], os.path.join("wavs", "speakers")))
            rows[split].append(
                [
                    utterance_id,
                    f"{frames / sample_rate:.3f}",
                    os.path.abspath(path),
                    0,
                    -1,
                    entry["speakerId"],
                    entry["transcription"],
                ]
                + [entry[slot] for slot in SLOTS]
            )
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} wav files listed in {os.path.join(data_folder, 'data')}/*_data.csv are missing or "
            f"unreadable, e.g. {missing[:3]}"
        )
    os.makedirs(save_folder, exist_ok=True)
    for split in SPLITS:
        write_csv(paths[split], HEADER, rows[split])
        logger.info(
            "Wrote %s: %d utterances, %d speakers", paths[split], len(rows[split]), len({row[5] for row in rows[split]})
        )
    logger.info(
        "Slot values (from train_data.csv): %s", "; ".join(f"{slot}: {len(values)}" for slot, values in known.items())
    )
    check_split_lists(paths, SLOTS)  # every split has rows, every valid / test slot value is a training one
    mark_prepared(save_folder, "fluent_speech_commands", options)
    return paths
