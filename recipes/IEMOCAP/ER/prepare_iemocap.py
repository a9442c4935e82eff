"""Data preparation of SUPERB emotion recognition (ER) on IEMOCAP, one leave-one-session-out fold.

Reads the real release layout (``docs/reference/corpora.md`` "IEMOCAP") without touching it::

    IEMOCAP_full_release/SessionN/sentences/wav/<dialog>/<utterance>.wav
    IEMOCAP_full_release/SessionN/dialog/EmoEvaluation/<dialog>.txt

where each label file holds one line per utterance ``[start - end]<TAB><utterance><TAB><emotion><TAB>[v, a, d]``
(the evaluators' lines in between are ignored). As in SUPERB (s3prl's ``emotion`` downstream), only
``neu``, ``hap``, ``ang`` and ``sad`` are kept, with ``exc`` merged into ``hap``; every other label
(``fru``, ``sur``, ``fea``, ``dis``, ``oth``, ``xxx``) is dropped. On the full release this gives
5,531 utterances, but no count is enforced.

Fold ``test_session = N``: test = every kept utterance of session N; the kept utterances of the four
other sessions (the pool) are split at random into train (``int((1 - valid_ratio) * n)`` utterances)
and dev (the rest), exactly like s3prl (``torch.manual_seed(0)`` then ``random_split`` with
``valid_ratio: 0.2``). Which utterances become dev depends on the order of the pool:

* ``dev_split_order: s3prl`` (default): s3prl's order, that of its published
  ``meta_data/SessionN/train_meta_data.json`` (a directory-listing order), shipped with the package
  (:func:`robustdistiller.downstream.s3prl_lists.iemocap_s3prl_pool`; or read from
  ``s3prl_meta_data_folder``): s3prl's train and dev sets exactly. The data must hold exactly
  s3prl's utterances with s3prl's labels (the full release: 5,531), else an error says what differs;
* ``dev_split_order: sorted``: the pool sorted by utterance id (any IEMOCAP-like data, e.g. a subset
  or the miniature fixture; the dev set is then not s3prl's).

macOS resource-fork files (``._*``) and any other non-wav files are skipped, with a logged count.
Folders are listed with :func:`robustdistiller.data.files.list_folder`: session and dialog folders may
be symbolic links (followed); the data folder, a session's ``sentences/wav`` and ``dialog/EmoEvaluation``
folders must be readable (else an error names the folder); a dialog folder that cannot be listed is
left out, counted and warned about, and named again in the error its labelled utterances then cause.
The summary lines of the label files must be UTF-8 (a byte that is not names the file and the line).
``train.csv``, ``dev.csv`` and ``test.csv`` (``ID,duration,wav,start,stop,emotion,speaker,session``)
are written to the save folder; nothing is written under ``data_folder``.
"""

import logging
import os
import re

import torch

from robustdistiller.data.audio import AudioLoadError, audio_info
from robustdistiller.data.files import SkippedFolders, decode_text, list_folder
from robustdistiller.downstream.s3prl_lists import ER_CLASSES, iemocap_s3prl_pool, read_s3prl_meta_data
from robustdistiller.downstream.data import check_split_lists
from robustdistiller.data.prepare.lists import is_prepared, mark_prepared, write_csv

logger = logging.getLogger(__name__)

SESSIONS = (1, 2, 3, 4, 5)
# IEMOCAP label -> SUPERB class (exc is merged into hap; every other label is dropped)
EMOTION_CLASSES = {"neu": "neu", "hap": "hap", "exc": "hap", "ang": "ang", "sad": "sad"}
# The classifier's output order: s3prl's map (neu 0, hap 1, ang 2, sad 3)
EMOTION_LABELS = ER_CLASSES
DEV_SPLIT_ORDERS = ("s3prl", "sorted")
SPLITS = ("train", "dev", "test")
HEADER = ["ID", "duration", "wav", "start", "stop", "emotion", "speaker", "session"]
WAV_SUBFOLDER = os.path.join("sentences", "wav")
LABEL_SUBFOLDER = os.path.join("dialog", "EmoEvaluation")
LABEL_LINE = re.compile(r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(\S+)\s+(\S+)\s+\[")


def is_macos_junk(name):
    """True for macOS resource-fork files (``._<name>``) that the real release contains.

    Example
    -------
    >>> is_macos_junk("._Ses01F_impro01_F000.wav"), is_macos_junk("Ses01F_impro01_F000.wav")
    (True, False)
    """
    return name.startswith("._")


def read_emo_evaluation(label_file):
    """``{utterance id: IEMOCAP emotion label}`` of one ``EmoEvaluation/<dialog>.txt`` file.

    Only the summary lines ``[start - end]<TAB><utterance><TAB><emotion><TAB>[v, a, d]`` are read.

    Raises
    ------
    ValueError
        A line starting with ``[`` that is not a summary line (file and line number named).
    robustdistiller.data.files.TextFileError
        A summary line holds a byte that is not UTF-8 (file and line named).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "Ses01F_impro01.txt")
    >>> _ = open(path, "w").write("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\\n\\n"
    ...     "[6.2901 - 8.2357]\\tSes01F_impro01_F000\\tneu\\t[2.5000, 2.5000, 2.5000]\\n"
    ...     "C-E2:\\tNeutral;\\t()\\n")
    >>> read_emo_evaluation(path)
    {'Ses01F_impro01_F000': 'neu'}
    """
    with open(label_file, "rb") as fin:
        content = fin.read()
    # Only the summary lines ("[" first) are decoded, strictly: a byte that is not UTF-8 there would
    # garble an utterance id or a label, so the error names the file and the line. The other lines
    # (the header, the evaluators' free-text "C-E1: ...; (comment)" lines) are never used and are not
    # decoded at all, so whatever bytes the annotators' comments hold cannot stop a preparation, as
    # with the earlier reader (errors="replace" over the whole file): that every free-text line of the
    # release is UTF-8 is not relied on.
    lines = content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")  # universal newlines, as before
    summary_only = b"\n".join(line if line.startswith(b"[") else b"" for line in lines)
    labels = {}
    for number, line in enumerate(decode_text(summary_only, label_file, "IEMOCAP label file").split("\n"), start=1):
        if not line.startswith("["):
            continue
        match = LABEL_LINE.match(line)
        if match is None:
            raise ValueError(
                f"{label_file}:{number}: expected '[start - end]<TAB><utterance><TAB><emotion><TAB>[v, a, d]', "
                f"got {line.rstrip()!r}"
            )
        labels[match.group(3)] = match.group(4)
    return labels


def utterance_speaker(utterance_id):
    """Speaker of an utterance: session and the sex letter of its last field.

    In ``Ses01F_impro01_M000`` the dialog's ``F`` names who wore the motion-capture markers; the
    speaker of the utterance is the ``M`` of ``M000``.

    Example
    -------
    >>> utterance_speaker("Ses01F_impro01_M000"), utterance_speaker("Ses03M_script02_1_F012")
    ('Ses01M', 'Ses03F')
    """
    return utterance_id[:5] + utterance_id.rsplit("_", 1)[-1][0]


def scan_session(data_folder, session, skipped_folders=None):
    """All labelled utterances of one session, with the number of skipped non-wav files.

    Arguments
    ---------
    data_folder : str
        The ``IEMOCAP_full_release`` folder.
    session : int
        1 to 5.
    skipped_folders : robustdistiller.data.files.SkippedFolders, optional
        Receives the dialog folders that cannot be listed (None: they are warned about here).

    Returns
    -------
    utterances : list of dict
        ``id``, ``wav`` (absolute path), ``label`` (the IEMOCAP label), sorted by id.
    skipped : dict
        ``{"macos_junk": int, "other": int}`` files that were not utterance wav files.

    Raises
    ------
    FileNotFoundError
        The session's ``sentences/wav`` or ``dialog/EmoEvaluation`` folder is missing, a dialog has
        no label file, or a kept utterance of a label file has no wav file (all named, with the dialog
        folders that could not be listed).
    ValueError
        A wav file has no label line (named).
    robustdistiller.data.files.FolderReadError
        The session folder, its ``sentences/wav`` or its ``dialog/EmoEvaluation`` cannot be listed (named).
    """
    own_record = skipped_folders is None
    if own_record:
        skipped_folders = SkippedFolders(f"the IEMOCAP lists of {data_folder}")
    session_folder = os.path.join(data_folder, f"Session{session}")
    list_folder(session_folder, "IEMOCAP session folder")  # unreadable: an error naming it, not "not found"
    wav_root = os.path.join(session_folder, WAV_SUBFOLDER)
    label_root = os.path.join(session_folder, LABEL_SUBFOLDER)
    for folder, expected in (
        (wav_root, "sentences/wav/<dialog>/<utterance>.wav"),
        (label_root, "dialog/EmoEvaluation/<dialog>.txt"),
    ):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"IEMOCAP folder '{folder}' not found (expected Session{session}/{expected})")
    skipped = {"macos_junk": 0, "other": 0}

    def count_skipped(name):
        skipped["macos_junk" if is_macos_junk(name) else "other"] += 1

    label_files = {}
    # subfolders (Attribute/, Categorical/, Self-evaluation/: per-evaluator files) are not used
    for name in list_folder(label_root, "IEMOCAP label folder")[1]:
        if is_macos_junk(name) or not name.endswith(".txt"):
            count_skipped(name)
            continue
        label_files[name[: -len(".txt")]] = os.path.join(label_root, name)
    wav_files = {}
    dialogs, other_files = list_folder(wav_root, "IEMOCAP wav folder")
    for name in other_files:
        count_skipped(name)
    for dialog in dialogs:
        dialog_folder = os.path.join(wav_root, dialog)
        files = {}
        for name in list_folder(dialog_folder, skipped=skipped_folders)[1]:  # unreadable: counted
            if is_macos_junk(name) or not name.lower().endswith(".wav"):
                count_skipped(name)
                continue
            files[name[: -len(".wav")]] = os.path.join(dialog_folder, name)
        wav_files[dialog] = files
    if own_record:
        skipped_folders.warn()
    without_labels = sorted(set(wav_files) - set(label_files))
    if without_labels:
        raise FileNotFoundError(
            f"{len(without_labels)} dialogs of '{wav_root}' have no label file in '{label_root}', e.g. "
            f"{os.path.join(label_root, without_labels[0] + '.txt')}"
        )
    utterances, missing_wavs = [], []
    for dialog, label_file in label_files.items():
        labels = read_emo_evaluation(label_file)
        files = wav_files.get(dialog, {})
        unlabelled = sorted(set(files) - set(labels))
        if unlabelled:
            raise ValueError(
                f"{len(unlabelled)} wav files of '{os.path.join(wav_root, dialog)}' have no line in {label_file}, "
                f"e.g. {files[unlabelled[0]]}"
            )
        for utterance_id, label in labels.items():
            if utterance_id in files:
                utterances.append({"id": utterance_id, "wav": os.path.abspath(files[utterance_id]), "label": label})
            elif label in EMOTION_CLASSES:
                missing_wavs.append(os.path.join(wav_root, dialog, utterance_id + ".wav"))
    if missing_wavs:
        raise FileNotFoundError(
            f"{len(missing_wavs)} utterances labelled in {label_root} have no wav file, e.g. {missing_wavs[:3]}"
            f"{skipped_folders.error_note()}"
        )
    return sorted(utterances, key=lambda utterance: utterance["id"]), skipped


def split_train_dev(utterance_ids, valid_ratio=0.2, seed=0):
    """Splits the pool of the four training sessions into train and dev as s3prl does.

    ``int((1 - valid_ratio) * n)`` utterances go to train, the rest to dev, by
    ``torch.utils.data.random_split`` with a generator seeded by ``seed`` (identical to s3prl's
    ``torch.manual_seed(0)``, then ``random_split``).

    Returns
    -------
    (list, list)
        Train and dev ids (in the order the random permutation gives).

    Example
    -------
    >>> train, dev = split_train_dev([f"u{index}" for index in range(10)])
    >>> len(train), len(dev), sorted(train + dev) == sorted(f"u{index}" for index in range(10))
    (8, 2, True)
    """
    utterance_ids = list(utterance_ids)
    num_train = int((1 - valid_ratio) * len(utterance_ids))
    train, dev = torch.utils.data.random_split(
        range(len(utterance_ids)),
        [num_train, len(utterance_ids) - num_train],
        generator=torch.Generator().manual_seed(int(seed)),
    )
    return [utterance_ids[index] for index in train.indices], [utterance_ids[index] for index in dev.indices]


def s3prl_pool_order(pool_labels, test_session, meta_data_folder=None):
    """The pool's utterance ids in s3prl's order (packaged list, or s3prl's ``meta_data`` folder).

    Arguments
    ---------
    pool_labels : dict
        ``{utterance id: class}`` of the four training sessions found in the data.
    test_session : int
        The fold.
    meta_data_folder : str, optional
        s3prl's ``downstream/emotion/meta_data``; default the list shipped with the package.

    Raises
    ------
    ValueError
        The data's utterances or labels are not s3prl's (counts and examples named).
    """
    if meta_data_folder:
        order, source = read_s3prl_meta_data(meta_data_folder, test_session), f"'{meta_data_folder}'"
    else:
        order, source = iemocap_s3prl_pool(test_session), "s3prl 0.4.18's published metadata (package list)"
    listed = {utterance for utterance, _ in order}
    unknown = sorted(listed - set(pool_labels))
    absent = sorted(set(pool_labels) - listed)
    relabelled = sorted(
        utterance
        for utterance, label in order
        if label is not None and utterance in pool_labels and pool_labels[utterance] != label
    )
    if unknown or absent or relabelled or len(order) != len(listed):
        raise ValueError(
            f"s3prl's split of session {test_session} ({source}) does not match the data: {len(unknown)} listed "
            f"utterances not found (e.g. {unknown[:3]}), {len(absent)} utterances not listed (e.g. {absent[:3]}), "
            f"{len(relabelled)} with another label (e.g. {relabelled[:3]}), {len(order) - len(listed)} listed "
            f"twice. s3prl's split needs the full IEMOCAP release; for other data set dev_split_order: sorted"
        )
    return [utterance for utterance, _ in order]


def prepare_iemocap(
    data_folder,
    save_folder,
    test_session=1,
    valid_ratio=0.2,
    split_seed=0,
    s3prl_meta_data_folder=None,
    skip_prep=False,
    dev_split_order="s3prl",
):
    """Writes the CSVs of one leave-one-session-out fold; returns ``{"train", "dev", "test"}`` paths.

    Arguments
    ---------
    data_folder : str
        The ``IEMOCAP_full_release`` folder (holding ``Session1`` ... ``Session5``).
    save_folder : str
        Output folder of the CSVs.
    test_session : int
        The held-out session (1 to 5); the others give train and dev.
    valid_ratio : float
        Share of the four training sessions' utterances used as dev (s3prl: 0.2).
    split_seed : int
        Seed of the random train/dev split (s3prl: 0).
    s3prl_meta_data_folder : str, optional
        s3prl's ``downstream/emotion/meta_data`` folder, read instead of the packaged copy of its order
        (``dev_split_order: s3prl`` only).
    skip_prep : bool
        Only return the paths.
    dev_split_order : str
        Order of the pool before the seeded split: ``s3prl`` (s3prl's dev set; needs the full
        release) or ``sorted`` (by utterance id, any data).

    Raises
    ------
    ValueError
        ``test_session``, ``valid_ratio`` or ``dev_split_order`` invalid, or the s3prl list does not
        match the data.
    FileNotFoundError
        The data folder, a session folder, a label file or a wav file is missing (all named).
    """
    paths = {split: os.path.join(save_folder, f"{split}.csv") for split in SPLITS}
    if skip_prep:
        return paths
    if not isinstance(test_session, int) or test_session not in SESSIONS:
        raise ValueError(f"test_session must be one of {SESSIONS}, got {test_session!r}")
    if not 0 < float(valid_ratio) < 1:
        raise ValueError(f"valid_ratio must be between 0 and 1 (exclusive), got {valid_ratio!r}")
    if dev_split_order not in DEV_SPLIT_ORDERS:
        raise ValueError(f"dev_split_order must be one of {DEV_SPLIT_ORDERS}, got {dev_split_order!r}")
    if s3prl_meta_data_folder and dev_split_order != "s3prl":
        raise ValueError(
            f"s3prl_meta_data_folder gives s3prl's order: it needs dev_split_order: s3prl, got {dev_split_order!r}"
        )
    options = {
        "data_folder": os.path.abspath(data_folder),
        "test_session": test_session,
        "valid_ratio": float(valid_ratio),
        "split_seed": int(split_seed),
        "s3prl_meta_data_folder": os.path.abspath(s3prl_meta_data_folder) if s3prl_meta_data_folder else None,
        "dev_split_order": dev_split_order,
    }
    if is_prepared(save_folder, "iemocap_er", options, list(paths.values())):
        logger.info("IEMOCAP ER lists (test session %d) already prepared in %s", test_session, save_folder)
        return paths
    if not os.path.isdir(data_folder):
        raise FileNotFoundError(f"IEMOCAP folder '{data_folder}' not found (expected IEMOCAP_full_release/)")
    top_folders = list_folder(data_folder, "IEMOCAP folder (data_folder)")[0]  # links to folders included
    missing_sessions = [f"Session{session}" for session in SESSIONS if f"Session{session}" not in top_folders]
    if missing_sessions:
        hint = ""
        if "IEMOCAP_full_release" in top_folders:
            hint = f" (did you mean '{os.path.join(data_folder, 'IEMOCAP_full_release')}'?)"
        raise FileNotFoundError(f"IEMOCAP folder '{data_folder}' has no {', '.join(missing_sessions)}{hint}")

    rows = {split: [] for split in SPLITS}
    pool, dropped, skipped = {}, {}, {"macos_junk": 0, "other": 0}
    skipped_folders = SkippedFolders(f"the IEMOCAP lists of {save_folder}")
    try:
        scanned = [scan_session(data_folder, session, skipped_folders) for session in SESSIONS]
    finally:
        skipped_folders.warn()  # one warning per reason, also when a scan fails
    for session, (utterances, session_skipped) in zip(SESSIONS, scanned):
        for key, count in session_skipped.items():
            skipped[key] += count
        for utterance in utterances:
            emotion = EMOTION_CLASSES.get(utterance["label"])
            if emotion is None:
                dropped[utterance["label"]] = dropped.get(utterance["label"], 0) + 1
                continue
            row = _csv_row(utterance, emotion, session)
            if session == test_session:
                rows["test"].append(row)
            else:
                pool[utterance["id"]] = row
    logger.info(
        "IEMOCAP: skipped %d macOS '._*' files and %d other non-wav files; %d folders could not be listed; "
        "dropped labels (not neu/hap/exc/ang/sad): %s",
        skipped["macos_junk"],
        skipped["other"],
        skipped_folders.folder_count(),
        dict(sorted(dropped.items())) or "none",
    )
    if dev_split_order == "s3prl":
        pool_ids = s3prl_pool_order(
            {utterance: row[5] for utterance, row in pool.items()}, test_session, s3prl_meta_data_folder
        )
    else:
        pool_ids = sorted(pool)
    train_ids, dev_ids = split_train_dev(pool_ids, valid_ratio=valid_ratio, seed=split_seed)
    rows["train"] = sorted(pool[utterance_id] for utterance_id in train_ids)
    rows["dev"] = sorted(pool[utterance_id] for utterance_id in dev_ids)
    os.makedirs(save_folder, exist_ok=True)
    for split in SPLITS:
        if not rows[split]:
            raise ValueError(f"IEMOCAP fold {test_session}: the {split} split is empty (data in '{data_folder}')")
        write_csv(paths[split], HEADER, rows[split])
        counts = {}
        for row in rows[split]:
            counts[row[5]] = counts.get(row[5], 0) + 1
        logger.info("Wrote %s: %d utterances %s", paths[split], len(rows[split]), dict(sorted(counts.items())))
    check_split_lists(paths, "emotion")  # rows in every split, dev / test emotions known to training
    mark_prepared(save_folder, "iemocap_er", options)
    return paths


def _csv_row(utterance, emotion, session):
    try:
        frames, sample_rate, _ = audio_info(utterance["wav"])
    except AudioLoadError as error:
        raise FileNotFoundError(f"IEMOCAP utterance {utterance['id']}: {error}") from error
    speaker = utterance_speaker(utterance["id"])
    return [utterance["id"], f"{frames / sample_rate:.3f}", utterance["wav"], 0, -1, emotion, speaker, session]
