"""The list toolkit every preparation shares: CSV writing, prepared markers, left-out files, stale lists.

:mod:`.librispeech`, :mod:`.noise`, :mod:`.rirs` and the ``prepare_*.py`` of the downstream recipes
build their lists with these pieces (the rules they follow are those of :mod:`robustdistiller.data.prepare`):

- writing: :func:`write_csv` and :func:`write_json` (atomic: a temporary file, then a rename),
  :func:`make_id` and :func:`deduplicate_ids` (safe, unique CSV IDs);
- prepared markers: :func:`is_prepared` / :func:`mark_prepared` (``<name>.prepare.json`` records the
  options), :func:`use_prepared` (skip, or :class:`StaleListError` if a listed file has gone since),
  :func:`check_prep_flags`, :func:`checked_folder`;
- files left out: :class:`LeftOutFiles` counts them per reason (the reasons :data:`NOT_AUDIO`,
  :data:`UNREADABLE_AUDIO`, :data:`DAMAGED_AUDIO`, :data:`EMPTY_AUDIO`, :data:`DOLLAR_IN_PATH` are shared),
  warns once per reason and writes ``<csv stem>_skipped.json`` (:func:`skipped_path`);
- finding audio: :func:`require_folder`, :func:`find_files`, :func:`read_audio_header` (damaged,
  unreadable and empty files counted).
"""

import csv
import json
import logging
import os
import re

from robustdistiller.data.audio import AudioLoadError, DamagedAudioError, audio_info
from robustdistiller.data.files import SkippedFolders, list_folder, walk_folder
from robustdistiller.runs.options import OptionError, check_data_path

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
# Reasons for leaving a file out of a list (one warning line and one entry of the skipped JSON each)
NOT_AUDIO = "not an audio file (.wav/.flac/.ogg, any case) or a hidden file"
UNREADABLE_AUDIO = "unreadable audio"
DAMAGED_AUDIO = (
    "damaged audio: its header is intact but its data ends early, as in a truncated copy "
    "(replace it with an intact copy, or remove it)"
)
EMPTY_AUDIO = "empty audio (0 samples)"
DOLLAR_IN_PATH = "'$' in its path or transcript (SpeechBrain's CSV loader reads it as a variable; rename it)"
SKIPPED_SUFFIX = "_skipped.json"
MAX_RECORDED_EXAMPLES = 20
"""Example paths a skipped JSON records per reason."""


class StaleListError(FileNotFoundError):
    """A prepared list names files that no longer exist; the message says how to prepare again."""


def skipped_path(csv_path):
    """Path of the JSON counting the files left out of a CSV: ``<csv folder>/<csv stem>_skipped.json``.

    Example
    -------
    >>> skipped_path("/save/train.csv")
    '/save/train_skipped.json'
    """
    return os.path.splitext(csv_path)[0] + SKIPPED_SUFFIX


class LeftOutFiles(SkippedFolders):
    """Counts the files (and folders) a preparation leaves out of one list, per reason, with examples.

    Every preparation records here what it finds but does not list; :meth:`warn` then logs one
    warning line per reason and :meth:`write` saves the counts next to the CSV
    (:func:`skipped_path`). Each file is also logged at DEBUG level. Folders that a walk leaves out
    (cannot be listed, reached twice through links) are recorded with :meth:`add_folder`
    (:class:`robustdistiller.data.files.SkippedFolders`) and warned about and written alike.

    Arguments
    ---------
    csv_path : str
        The list the files are left out of (named in the warnings).

    Example
    -------
    >>> left_out = LeftOutFiles("/save/noise.csv")
    >>> left_out.add("unreadable audio", "/noise/a.wav")
    >>> left_out.add("unreadable audio", "/noise/b.wav")
    >>> left_out.count(), left_out.counts()
    (2, {'unreadable audio': 2})
    >>> left_out.messages()
    ['2 files left out of /save/noise.csv: unreadable audio (e.g. /noise/a.wav)']
    """

    def __init__(self, csv_path):
        super().__init__(csv_path)
        self.csv_path = csv_path
        self.by_reason = {}

    def add(self, reason, path, detail=""):
        """Records ``path`` as left out for ``reason`` (``detail``, e.g. the error, is logged only)."""
        entry = self.by_reason.setdefault(reason, {"files": 0, "examples": []})
        entry["files"] += 1
        if len(entry["examples"]) < MAX_RECORDED_EXAMPLES:
            entry["examples"].append(str(path))
        logger.debug("Leaving %s out of %s: %s%s", path, self.csv_path, reason, f" ({detail})" if detail else "")

    def count(self, reason=None):
        """Files left out for ``reason`` (all reasons if None)."""
        if reason is None:
            return sum(entry["files"] for entry in self.by_reason.values())
        return self.by_reason.get(reason, {"files": 0})["files"]

    def counts(self):
        """``{reason: files}``."""
        return {reason: entry["files"] for reason, entry in self.by_reason.items()}

    def all_counts(self):
        """``{reason: count}`` of files and folders (the reasons tell which)."""
        return {**self.counts(), **self.folder_counts()}

    def messages(self):
        """One line per reason: ``N files left out of <list>: <reason> (e.g. <path>)``, then folders."""
        return [
            f"{entry['files']} file{'s' if entry['files'] != 1 else ''} left out of {self.csv_path}: "
            f"{reason} (e.g. {entry['examples'][0]})"
            for reason, entry in self.by_reason.items()
        ] + self.folder_messages()

    def write(self):
        """Writes the counts and up to 20 example paths per reason to :func:`skipped_path`.

        Files under ``files_left_out`` / ``by_reason``, folders under ``folders_left_out`` /
        ``folders_by_reason``.
        """
        write_json(
            skipped_path(self.csv_path),
            {
                "csv": os.path.abspath(self.csv_path),
                "files_left_out": self.count(),
                "by_reason": self.by_reason,
                "folders_left_out": self.folder_count(),
                "folders_by_reason": self.folders_by_reason,
            },
        )

    def summary(self):
        """``"N files left out"``, with ``" and M folders"`` when folders were left out."""
        folders = self.folder_count()
        return f"{self.count()} files" + (f" and {folders} folder{'s' if folders != 1 else ''}" if folders else "")


def check_listed_files_exist(csv_path, marker_path=None):
    """Raises :class:`StaleListError` if a file listed in a prepared CSV no longer exists.

    Only ``os.path.exists`` per row of the ``wav`` column (cheap), so a list whose audio was moved or
    deleted after preparation fails now, not hours into an epoch.

    Arguments
    ---------
    csv_path : str
        A prepared CSV with a ``wav`` column.
    marker_path : str, optional
        The list's marker, named in the error as the other way to prepare again.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "noise.csv")
    >>> write_csv(path, ["ID", "duration", "wav", "wav_format", "wav_opts"], [["a", 1.0, "/nowhere/a.wav", "wav", ""]])
    >>> check_listed_files_exist(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    robustdistiller.data.prepare.lists.StaleListError: 1 of the 1 files listed in '...noise.csv' no longer exist ...
    """
    with open(csv_path, newline="", encoding="utf-8") as csv_file:
        paths = [row["wav"] for row in csv.DictReader(csv_file) if row.get("wav")]
    missing = [path for path in paths if not os.path.exists(path)]
    if missing:
        alternative = f" (or delete '{marker_path}')" if marker_path else ""
        raise StaleListError(
            f"{len(missing)} of the {len(paths)} files listed in '{csv_path}' no longer exist "
            f"(e.g. '{missing[0]}'): the list is stale, its audio was moved or deleted after "
            f"preparation. Re-run with --force_prep=True{alternative} to prepare the lists again."
        )


def check_prep_flags(skip_prep, force_prep):
    """Raises :class:`~robustdistiller.runs.options.OptionError` if ``skip_prep`` and ``force_prep`` are both True."""
    if skip_prep and force_prep:
        raise OptionError(
            "Options `skip_prep` and `force_prep` are both True: skip_prep uses the lists as they are, "
            "force_prep prepares them again; set one of them to False."
        )


def checked_folder(folder, option_name):
    """The absolute path of a data folder option, refused if it contains ``$`` (None, "" unchanged)."""
    if not folder:
        return folder
    return check_data_path(os.path.abspath(folder), option_name)


def use_prepared(save_folder, name, options, csv_paths, force_prep, description):
    """True when the lists are already prepared with ``options`` (and not forced) and still valid.

    Raises :class:`StaleListError` if a listed file has disappeared since. ``description`` names the
    lists in the log lines.
    """
    if force_prep:
        logger.info("%s: force_prep is True, preparing again in %s.", description, save_folder)
        return False
    if not is_prepared(save_folder, name, options, csv_paths):
        return False
    for csv_path in csv_paths:
        check_listed_files_exist(csv_path, prepared_marker_path(save_folder, name))
    logger.info(
        "%s already prepared in %s with the same options: skipping (force_prep=True prepares again).",
        description,
        save_folder,
    )
    return True


def prepared_marker_path(save_folder, name):
    """Path of the marker of preparation ``name``: ``<save_folder>/<name>.prepare.json``.

    Example
    -------
    >>> prepared_marker_path("/save", "librispeech")
    '/save/librispeech.prepare.json'
    """
    return os.path.join(save_folder, f"{name}.prepare.json")


def is_prepared(save_folder, name, options, output_paths):
    """Tells whether a preparation ran already with these options and its outputs still exist.

    Arguments
    ---------
    save_folder : str
        Folder holding the CSVs and the marker ``<name>.prepare.json``.
    name : str
        Name of the preparation (one marker per name).
    options : dict
        JSON-serialisable options; any difference means "not prepared".
    output_paths : list of str
        Files the preparation writes; all must exist.

    Returns
    -------
    bool

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> is_prepared(folder, "demo", {"a": 1}, [])
    False
    >>> mark_prepared(folder, "demo", {"a": 1})
    >>> is_prepared(folder, "demo", {"a": 1}, []), is_prepared(folder, "demo", {"a": 2}, [])
    (True, False)
    """
    try:
        with open(prepared_marker_path(save_folder, name), encoding="utf-8") as marker_file:
            recorded = json.load(marker_file)
    except (OSError, ValueError):
        return False
    same_options = recorded.get("options") == json.loads(json.dumps(options))
    return same_options and all(os.path.isfile(path) for path in output_paths)


def mark_prepared(save_folder, name, options):
    """Records that preparation ``name`` ran with ``options`` (what :func:`is_prepared` checks).

    The marker ``<save_folder>/<name>.prepare.json`` (:func:`prepared_marker_path`) is written atomically.
    """
    path = prepared_marker_path(save_folder, name)
    with open(path + ".tmp", "w", encoding="utf-8") as marker_file:
        json.dump({"options": options}, marker_file, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def remove_marker(save_folder, name):
    """Removes the marker of preparation ``name`` (before its lists are rewritten), if there is one."""
    if os.path.exists(prepared_marker_path(save_folder, name)):
        os.remove(prepared_marker_path(save_folder, name))


def write_csv(path, header, rows):
    """Writes a CSV atomically (temporary file, then rename): never a half-written manifest.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "x.csv")
    >>> write_csv(path, ["ID", "wrd"], [["a", "HELLO, WORLD"]])
    >>> open(path).read().splitlines()
    ['ID,wrd', 'a,"HELLO, WORLD"']
    """
    temporary_path = path + ".tmp"
    with open(temporary_path, "w", newline="", encoding="utf-8") as csv_file:
        writer = csv.writer(csv_file, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(temporary_path, path)


def write_json(path, content):
    """Writes ``content`` as indented JSON atomically (temporary file, then rename)."""
    with open(path + ".tmp", "w", encoding="utf-8") as json_file:
        json.dump(content, json_file, indent=2)
    os.replace(path + ".tmp", path)


def find_files(folder, skipped=None):
    """Lists the files under ``folder`` recursively, sorted, split into audio and other files.

    Hidden files and folders (``.DS_Store``, ``._*`` macOS junk) count as "other" files. Symbolic
    links are followed, each real folder once (:func:`robustdistiller.data.files.walk_folder`).

    Arguments
    ---------
    folder : str
        The folder (it must be readable).
    skipped : LeftOutFiles or SkippedFolders, optional
        Receives the sub-folders left out (cannot be listed, reached twice through links); None:
        they are warned about here.

    Returns
    -------
    tuple of (list of str, list of str)
        Audio files (by extension: wav, flac, ogg) and all other files, as absolute paths.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> for name in ("a.wav", "LICENSE", "b.FLAC"):
    ...     _ = open(os.path.join(folder, name), "w").close()
    >>> audio, other = find_files(folder)
    >>> [os.path.basename(path) for path in audio], [os.path.basename(path) for path in other]
    (['a.wav', 'b.FLAC'], ['LICENSE'])
    """
    own_record = skipped is None
    if own_record:
        skipped = SkippedFolders(folder)
    audio_files, other_files = [], []
    for directory, _, file_names in walk_folder(folder, skipped, "Audio folder"):
        for file_name in file_names:
            path = os.path.join(directory, file_name)
            is_audio = file_name.lower().endswith(AUDIO_EXTENSIONS)
            if is_audio and not file_name.startswith("."):
                audio_files.append(path)
            else:
                other_files.append(path)
    if own_record:
        skipped.warn()
    return audio_files, other_files


def make_id(relative_path, prefix=""):
    """Builds a safe CSV ID from a relative path: no separators, no dots, no spaces.

    SpeechBrain IDs break on file names with several dots; here the extension is dropped and every
    separator, dot or space becomes ``_``.

    Example
    -------
    >>> make_id("noise/free-sound/a.b.c.wav", prefix="musan")
    'musan_noise_free-sound_a_b_c'
    """
    stem = os.path.splitext(relative_path)[0]
    safe = re.sub(r"[\\/.\s,]+", "_", stem).strip("_")
    return f"{prefix}_{safe}" if prefix else safe


def deduplicate_ids(rows):
    """Makes the first column unique by appending ``_2``, ``_3``... to repeated IDs."""
    used_ids = set()
    for row in rows:
        candidate, repeat = row[0], 1
        while candidate in used_ids:
            repeat += 1
            candidate = f"{row[0]}_{repeat}"
        used_ids.add(candidate)
        row[0] = candidate
    return rows


def require_folder(folder, description, expected):
    """Raises a clear error if ``folder`` is missing, not a folder, or empty."""
    if folder is None or not os.path.exists(folder):
        raise FileNotFoundError(f"{description} '{folder}' does not exist; expected {expected}.")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{description} '{folder}' is not a folder; expected {expected}.")
    subfolders, files = list_folder(folder, description)
    if not subfolders and not files:
        raise ValueError(f"{description} '{folder}' is empty; expected {expected}.")


def read_audio_header(path, left_out):
    """Returns ``(frames, rate, channels)``, or ``None`` with the file counted in ``left_out``.

    The last block is decoded too (``check_end``), so a truncated file counts as :data:`DAMAGED_AUDIO`;
    a file that cannot be read as :data:`UNREADABLE_AUDIO`, one of 0 samples as :data:`EMPTY_AUDIO`.
    """
    try:
        frames, rate, channels = audio_info(path, check_end=True)  # one block decoded: ~0.3 ms a file
    except DamagedAudioError as error:
        left_out.add(DAMAGED_AUDIO, path, detail=str(error))
        return None
    except AudioLoadError as error:
        left_out.add(UNREADABLE_AUDIO, path, detail=str(error))
        return None
    if frames <= 0:
        left_out.add(EMPTY_AUDIO, path)
        return None
    return frames, rate, channels


def leave_out_non_audio(paths, left_out):
    """Counts each of ``paths`` in ``left_out`` as :data:`NOT_AUDIO`."""
    for path in paths:
        left_out.add(NOT_AUDIO, path)


def unreadable_count(left_out):
    """Files of ``left_out`` whose audio could not be used: unreadable, damaged or empty."""
    return left_out.count(UNREADABLE_AUDIO) + left_out.count(DAMAGED_AUDIO) + left_out.count(EMPTY_AUDIO)
