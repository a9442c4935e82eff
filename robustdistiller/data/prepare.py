"""Data preparation: CSV manifests for LibriSpeech, noise collections and room impulse responses.

Each function reads a corpus in its real on-disk layout (``docs/reference/corpora.md``), writes CSV files
into ``save_folder`` and returns their paths. They never modify, split or delete anything under the
user's data folders (unlike SpeechBrain's ``write_csv(..., max_length=...)`` and
``prepare_dataset_from_URL``). A JSON marker next to the CSVs records the options; a second call
with the same options does nothing, a call with other options (or ``force_prep=True``) prepares
again. The functions are plain, so a recipe wraps them in ``speechbrain.utils.distributed.run_on_main``.

- :func:`prepare_librispeech`: ``ID,duration,wav,spk_id,wrd`` for the training and validation subsets.
- :func:`prepare_noise`: MUSAN, UrbanSound8K and any folders of audio into SpeechBrain's noise CSV
  format ``ID,duration,wav,wav_format,wav_opts`` (for ``AddNoise``).
- :func:`prepare_rirs`: RIRS_NOISES (OpenSLR 28), DNS-Challenge impulse responses or any folder of
  RIRs into the same format (for ``AddReverb``).

Next to each noise and RIR CSV, ``<csv stem>_composition.json`` (:func:`composition_path`) records
the pool's composition: files and hours per source (MUSAN subset, UrbanSound8K, each extra folder;
RIR folder with its kind, real or simulated) and the share of the uniform file draws each source
gets (its share of files: the pools draw a file uniformly). It is logged at every preparation, and
recomputed from the CSV if missing. It goes to ``save_folder`` only, like every derived file.

Files left out. Nothing is dropped silently: every file a preparation finds but does not list is
counted per reason (:class:`LeftOutFiles`), each reason gives one warning line
``N files left out of <list>: <reason> (e.g. <path>)``, and the counts with a few example paths
per reason go to ``<csv stem>_skipped.json`` next to each CSV (:func:`skipped_path`). Left out:
unreadable or empty audio, non-audio and hidden files, paths (or transcripts) containing ``$``
(SpeechBrain's CSV loader would read it as a variable), LibriSpeech utterances without a
transcript line, transcript lines whose ``.flac`` is missing (an interrupted extraction),
LibriSpeech files outside a speaker folder and utterances shorter than ``min_samples``, noise
files shorter than :data:`MIN_NOISE_SECONDS` (they would be tiled into a buzz), RIRs listed in a
``rir_list`` but missing. Extensions match case-insensitively (``.FLAC``, ``.WAV`` are audio).

Damaged audio. A file whose header is intact but whose data ends early (a truncated copy or
download: the FLAC header still promises the full length) is found at preparation, by decoding its
last block (:func:`robustdistiller.data.audio.audio_info` with ``check_end=True``, about 0.3 ms a file),
and left out, counted and warned about as damaged: it never reaches training.

Folders. Every folder is found by one walk (:func:`robustdistiller.data.files.walk_folder`), which
follows symbolic links (a link farm of speaker folders on several disks is read like one folder),
walks a folder reached twice through links (a cycle) once, and leaves out the folders it cannot
list. Those folders are counted per reason like files: one warning line
``N folders left out of <list>: <reason> (e.g. <path> (<error>))``, and they go to the skipped
JSON and to the per-subset ``left out:`` log line. Transcripts and lists that are not UTF-8 fail
with an error naming the file and the line (:func:`robustdistiller.data.files.read_text`).

Stale lists. When the lists already exist with the same options, every listed file must still
exist (:func:`check_listed_files_exist`, one ``stat`` per file): otherwise a :class:`StaleListError`
names the list, the count and an example, and says to re-run with ``--force_prep=True``.

Durations come from the file headers (fast). Multichannel and non-16-kHz noise and RIR files are
kept (the consumer converts them at load time with :func:`robustdistiller.data.audio.load_audio`) and
listed in the log.
"""

import collections
import csv
import json
import logging
import os
import re

from robustdistiller.data.audio import AudioLoadError, DamagedAudioError, audio_info
from robustdistiller.data.files import SkippedFolders, list_folder, read_text_lines, walk_folder
from robustdistiller.runs.options import OptionError, as_list, check_data_path, integer_at_least

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
LIBRISPEECH_LAYOUT = "LibriSpeech/<subset>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac"
LIBRISPEECH_HEADER = ["ID", "duration", "wav", "spk_id", "wrd"]
NOISE_HEADER = ["ID", "duration", "wav", "wav_format", "wav_opts"]
URBANSOUND_CLASSES = (
    "air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling",
    "engine_idling", "gun_shot", "jackhammer", "siren", "street_music",
)
URBANSOUND_NAME = re.compile(r"^\d+-(\d)-\d+-\d+$")
RIRS_NOISES_SUBSETS = ("real", "simulated")
RIR_FORMATS = ("rirs_noises", "dns", "folder")
EXPECTED_SAMPLE_RATE = 16000
MIN_NOISE_SECONDS = 0.1
"""Shortest noise file listed: a shorter one (or a one-sample file) would be tiled into a buzz."""

# Reasons for leaving a file out of a list (one warning line and one entry of the skipped JSON each)
NOT_AUDIO = "not an audio file (.wav/.flac/.ogg, any case) or a hidden file"
UNREADABLE_AUDIO = "unreadable audio"
DAMAGED_AUDIO = ("damaged audio: its header is intact but its data ends early, as in a truncated copy "
                 "(replace it with an intact copy, or remove it)")
EMPTY_AUDIO = "empty audio (0 samples)"
DOLLAR_IN_PATH = "'$' in its path or transcript (SpeechBrain's CSV loader reads it as a variable; rename it)"
NO_TRANSCRIPT = "no line for it in a trans.txt of its folder"
MISSING_FLAC = "listed in a trans.txt but its .flac is missing, as after an interrupted extraction"
NOT_IN_SPEAKER_FOLDER = "directly in the subset folder, not in a <spk>/ folder"
TOO_SHORT_NOISE = f"shorter than {MIN_NOISE_SECONDS} s (it would be tiled into a buzz)"
BAD_URBANSOUND_NAME = "not named <fsID>-<classID>-<occurrence>-<slice>"
MISSING_RIR = "listed in a rir_list but missing"
RIR_ALSO_NOISE = "listed in a rir_list but also in a noise_list"


# ---------------------------------------------------------------------------------------------
# Shared helpers: option checks, left-out files, stale lists, markers, CSV writing, file discovery
# ---------------------------------------------------------------------------------------------

SKIPPED_SUFFIX = "_skipped.json"
MAX_RECORDED_EXAMPLES = 20


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
        _write_json(skipped_path(self.csv_path), {
            "csv": os.path.abspath(self.csv_path),
            "files_left_out": self.count(),
            "by_reason": self.by_reason,
            "folders_left_out": self.folder_count(),
            "folders_by_reason": self.folders_by_reason,
        })

    def summary(self):
        """``"N files left out"``, with ``" and M folders"`` when folders were left out."""
        folders = self.folder_count()
        return f"{self.count()} files" + (f" and {folders} folder{'s' if folders != 1 else ''}" if folders else "")


def _split_counts(before, after):
    """``"N reason, ..."`` of the counts added between two :meth:`LeftOutFiles.all_counts`."""
    added = {reason: count - before.get(reason, 0) for reason, count in after.items()}
    return ", ".join(f"{count} {reason}" for reason, count in added.items() if count) or "none"


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
    >>> write_csv(path, NOISE_HEADER, [["a", 1.0, "/nowhere/a.wav", "wav", ""]])
    >>> check_listed_files_exist(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    robustdistiller.data.prepare.StaleListError: 1 of the 1 files listed in '...noise.csv' no longer exist ...
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


def _check_prep_flags(skip_prep, force_prep):
    if skip_prep and force_prep:
        raise OptionError(
            "Options `skip_prep` and `force_prep` are both True: skip_prep uses the lists as they are, "
            "force_prep prepares them again; set one of them to False."
        )


def _checked_folder(folder, option_name):
    """The absolute path of a data folder option, refused if it contains ``$`` (None, "" unchanged)."""
    if not folder:
        return folder
    return check_data_path(os.path.abspath(folder), option_name)


def _use_prepared(save_folder, name, options, csv_paths, force_prep, description):
    """True when the lists are already prepared with ``options`` (and not forced) and still valid.

    Raises :class:`StaleListError` if a listed file has disappeared since.
    """
    if force_prep:
        logger.info("%s: force_prep is True, preparing again in %s.", description, save_folder)
        return False
    if not is_prepared(save_folder, name, options, csv_paths):
        return False
    for csv_path in csv_paths:
        check_listed_files_exist(csv_path, _marker_path(save_folder, name))
    logger.info("%s already prepared in %s with the same options: skipping (force_prep=True "
                "prepares again).", description, save_folder)
    return True


def _marker_path(save_folder, name):
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
    >>> _write_marker(folder, "demo", {"a": 1})
    >>> is_prepared(folder, "demo", {"a": 1}, []), is_prepared(folder, "demo", {"a": 2}, [])
    (True, False)
    """
    try:
        with open(_marker_path(save_folder, name), encoding="utf-8") as marker_file:
            recorded = json.load(marker_file)
    except (OSError, ValueError):
        return False
    same_options = recorded.get("options") == json.loads(json.dumps(options))
    return same_options and all(os.path.isfile(path) for path in output_paths)


def mark_prepared(save_folder, name, options):
    """Records that preparation ``name`` ran with ``options`` (what :func:`is_prepared` checks)."""
    _write_marker(save_folder, name, options)


def _write_marker(save_folder, name, options):
    path = _marker_path(save_folder, name)
    with open(path + ".tmp", "w", encoding="utf-8") as marker_file:
        json.dump({"options": options}, marker_file, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def _remove_marker(save_folder, name):
    if os.path.exists(_marker_path(save_folder, name)):
        os.remove(_marker_path(save_folder, name))


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


def _deduplicate_ids(rows):
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


def _require_folder(folder, description, expected):
    """Raises a clear error if ``folder`` is missing, not a folder, or empty."""
    if folder is None or not os.path.exists(folder):
        raise FileNotFoundError(f"{description} '{folder}' does not exist; expected {expected}.")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{description} '{folder}' is not a folder; expected {expected}.")
    subfolders, files = list_folder(folder, description)
    if not subfolders and not files:
        raise ValueError(f"{description} '{folder}' is empty; expected {expected}.")


def _read_header(path, left_out):
    """Returns ``(frames, rate, channels)``, or ``None`` with the file counted in ``left_out``."""
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


def _audio_rows(entries, source_description, left_out, min_seconds=0.0):
    """Reads headers of ``(ID, path)`` entries into noise/RIR CSV rows; logs unusual files.

    Files with ``$`` in their path, unreadable or empty files and files shorter than
    ``min_seconds`` are counted in ``left_out``. Returns the rows (``ID,duration,wav,wav_format,wav_opts``).
    """
    rows, unusual = [], []
    for entry_id, path in entries:
        if "$" in path:
            left_out.add(DOLLAR_IN_PATH, path)
            continue
        header = _read_header(path, left_out)
        if header is None:
            continue
        frames, rate, channels = header
        if frames < min_seconds * rate:
            left_out.add(TOO_SHORT_NOISE, path, detail=f"{frames} samples at {rate} Hz")
            continue
        if channels != 1 or rate != EXPECTED_SAMPLE_RATE:
            unusual.append(f"{path} ({channels} ch, {rate} Hz)")
        audio_format = os.path.splitext(path)[1].lstrip(".").lower()
        rows.append([entry_id, frames / rate, path, audio_format, ""])
    if unusual:
        logger.info(
            "%s: %d file(s) are multichannel or not %d Hz; they are converted when loaded: %s",
            source_description, len(unusual), EXPECTED_SAMPLE_RATE, "; ".join(unusual),
        )
    return rows


def _leave_out_non_audio(paths, left_out):
    for path in paths:
        left_out.add(NOT_AUDIO, path)


def _unreadable_count(left_out):
    return left_out.count(UNREADABLE_AUDIO) + left_out.count(DAMAGED_AUDIO) + left_out.count(EMPTY_AUDIO)


# ---------------------------------------------------------------------------------------------
# LibriSpeech
# ---------------------------------------------------------------------------------------------


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


def _librispeech_split_rows(data_folder, split, min_samples, left_out):
    """Returns the CSV rows of one LibriSpeech subset; counts what it leaves out in ``left_out``.

    Every folder under ``<subset>/<spk>/`` is read (the chapter folders, but also the speaker folder
    itself when its files were extracted without the chapter level): its ``.flac`` files (any case)
    with their lines of the folder's ``*.trans.txt``. The speaker is the ``<spk>`` folder, the ID
    the file name without extension (``<spk>-<chapter>-<utt>``, which names the chapter anyway).
    """
    split_folder = os.path.join(data_folder, split)
    if not os.path.isdir(split_folder):
        hint = ""
        nested = os.path.join(data_folder, "LibriSpeech", split)
        if os.path.isdir(nested):
            hint = f" (found '{nested}': pass '{os.path.join(data_folder, 'LibriSpeech')}')"
        raise FileNotFoundError(
            f"LibriSpeech subset folder '{split_folder}' does not exist{hint}; expected "
            f"{LIBRISPEECH_LAYOUT}."
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
            header = _read_header(path, left_out)
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
        split, len(rows), len(speakers), hours, _split_counts(counts_before, left_out.all_counts()),
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
    speaker and ID as usual). Left out, counted and warned about (see the module docstring): files
    without a transcript line, transcript lines whose ``.flac`` is missing, files directly in the
    subset folder (no speaker), unreadable or empty files, paths or transcripts with ``$``,
    utterances shorter than ``min_samples``.
    """
    _check_prep_flags(skip_prep, force_prep)
    train_splits = as_list(train_splits, "train_splits")
    valid_splits = as_list(valid_splits, "valid_splits")
    _checked_folder(save_folder, "save_folder")  # the lists keep the path as given
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
    data_folder = _checked_folder(data_folder, "data_folder")
    min_samples = integer_at_least(min_samples, "min_samples", 0)
    options = {"data_folder": data_folder, "train_splits": train_splits,
               "valid_splits": valid_splits, "min_samples": min_samples}
    outputs = [path for path in csv_paths.values() if path]
    if _use_prepared(save_folder, "librispeech", options, outputs, force_prep, "LibriSpeech"):
        return csv_paths
    _require_folder(data_folder, "LibriSpeech folder", LIBRISPEECH_LAYOUT)
    os.makedirs(save_folder, exist_ok=True)
    _remove_marker(save_folder, "librispeech")
    seen_ids = set()
    for key, splits in (("train", train_splits), ("valid", valid_splits)):
        if not splits:
            continue
        left_out = LeftOutFiles(csv_paths[key])
        rows = [
            row for split in splits for row in _librispeech_split_rows(data_folder, split, min_samples, left_out)
        ]
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
        logger.info("Wrote %s (%d utterances, %s left out: %s).", csv_paths[key], len(rows),
                    left_out.summary(), skipped_path(csv_paths[key]))
    _write_marker(save_folder, "librispeech", options)
    return csv_paths


# ---------------------------------------------------------------------------------------------
# Noise collections
# ---------------------------------------------------------------------------------------------


def _musan_entries(musan_folder, subsets, left_out):
    entries = []
    _require_folder(musan_folder, "MUSAN folder", "musan/{noise,music,speech}/<source>/*.wav")
    for subset in subsets:
        subset_folder = os.path.join(musan_folder, subset)
        _require_folder(subset_folder, "MUSAN subset folder", f"musan/{subset}/<source>/*.wav")
        audio_files, other_files = find_files(subset_folder, left_out)
        _leave_out_non_audio(other_files, left_out)
        entries += [(make_id(os.path.relpath(path, musan_folder), "musan"), path) for path in audio_files]
    return entries


def _scan_urbansound(urbansound_folder, exclude, left_out=None):
    """Lists the UrbanSound8K clips not in ``exclude``; returns ``(entries, excluded count per class)``.

    Only file names are read (``<fsID>-<classID>-<occurrence>-<slice>``), no audio header. Other
    files are counted in ``left_out`` (a :class:`LeftOutFiles`; None: not counted).
    """
    if left_out is None:
        left_out = LeftOutFiles("(UrbanSound8K recount)")
    unknown = sorted(set(exclude) - set(URBANSOUND_CLASSES))
    if unknown:
        raise ValueError(f"Unknown UrbanSound8K classes {unknown}; known: {list(URBANSOUND_CLASSES)}")
    layout = "UrbanSound8K/audio/fold*/<fsID>-<classID>-<occurrence>-<slice>.wav"
    _require_folder(urbansound_folder, "UrbanSound8K folder", layout)
    audio_root = os.path.join(urbansound_folder, "audio")
    if not os.path.isdir(audio_root):
        audio_root = urbansound_folder  # the "audio" folder itself was given
    folds = [name for name in list_folder(audio_root, "UrbanSound8K audio folder")[0] if name.startswith("fold")]
    if not folds:
        raise FileNotFoundError(f"No fold* folder in '{audio_root}'; expected {layout}.")
    entries, excluded = [], {name: 0 for name in exclude}
    for fold in folds:
        audio_files, other_files = find_files(os.path.join(audio_root, fold), left_out)
        _leave_out_non_audio(other_files, left_out)
        for path in audio_files:
            match = URBANSOUND_NAME.match(os.path.splitext(os.path.basename(path))[0])
            if match is None:
                left_out.add(BAD_URBANSOUND_NAME, path)
                continue
            class_name = URBANSOUND_CLASSES[int(match.group(1))]
            if class_name in excluded:
                excluded[class_name] += 1
                continue
            entries.append((make_id(os.path.relpath(path, audio_root), "urbansound"), path))
    return entries, excluded


def _format_counts(counts):
    return ", ".join(f"{name} {count}" for name, count in counts.items()) or "none"


def _urbansound_entries(urbansound_folder, exclude, left_out, excluded_counts=None):
    """``(ID, path)`` of the UrbanSound8K clips not in the ``exclude`` classes; logs the counts.

    ``excluded_counts``, a dict, receives the number of clips left out per class (by choice, so
    logged, not counted in ``left_out``).
    """
    entries, excluded = _scan_urbansound(urbansound_folder, exclude, left_out)
    logger.info("UrbanSound8K: %d clips kept, %d excluded (%s).", len(entries), sum(excluded.values()),
                _format_counts(excluded))
    if excluded_counts is not None:
        excluded_counts.update(excluded)
    return entries


def _folder_entries(folder, prefix, left_out):
    _require_folder(folder, "Audio folder", "a folder of .wav/.flac/.ogg files")
    audio_files, other_files = find_files(folder, left_out)
    _leave_out_non_audio(other_files, left_out)
    return [(make_id(os.path.relpath(path, folder), prefix), path) for path in audio_files]


def prepare_noise(
    save_folder,
    musan_folder=None,
    musan_subsets=("noise",),
    urbansound_folder=None,
    urbansound_exclude=("children_playing", "street_music"),
    extra_folders=(),
    csv_name="noise.csv",
    skip_prep=False,
    force_prep=False,
):
    """Writes a SpeechBrain noise CSV (``ID,duration,wav,wav_format,wav_opts``) from noise corpora.

    Arguments
    ---------
    save_folder : str
        Where the CSV and its marker ``<csv stem>.prepare.json`` are written.
    musan_folder : str, optional
        The ``musan`` folder; its ``musan_subsets`` are read recursively (``ANNOTATIONS``,
        ``LICENSE`` and other non-audio files are left out and counted).
    musan_subsets : sequence of str, or str
        Among ``"noise"``, ``"music"``, ``"speech"`` (a single string is a one-item list).
    urbansound_folder : str, optional
        The ``UrbanSound8K`` folder (``audio/fold*/<fsID>-<classID>-<occurrence>-<slice>.wav``).
    urbansound_exclude : sequence of str, or str
        UrbanSound8K classes left out (by default the ones holding speech-like sounds or music).
    extra_folders : sequence of str, or str
        Any other folders of audio files, read recursively.
    csv_name : str
        File name of the CSV.
    skip_prep : bool
        If True, do nothing and return the path.
    force_prep : bool
        If True, prepare again even if the CSV exists with the same options.

    Returns
    -------
    str
        Path of the CSV. Its composition (:func:`noise_composition`: files, hours and share of
        uniform file draws per source ``musan/<subset>``, ``urbansound8k``, ``extra<i>``, and the
        excluded UrbanSound8K clips per class) is logged and written to
        ``<csv stem>_composition.json`` in ``save_folder`` (:func:`read_composition` reads it).

    Raises
    ------
    FileNotFoundError, ValueError
        A folder is missing or empty, no source is given, or no usable audio file is found.
    StaleListError
        If the CSV is already prepared but names files that no longer exist.
    OptionError
        If a folder contains ``$`` or ``skip_prep`` and ``force_prep`` are both True.

    Notes
    -----
    Left out, counted and warned about (see the module docstring): non-audio and hidden files,
    unreadable or empty files, files shorter than :data:`MIN_NOISE_SECONDS` (0.1 s, one-sample
    files included: the pool would tile them into a buzz), paths with ``$``, UrbanSound8K files not
    named ``<fsID>-<classID>-<occurrence>-<slice>``. The excluded UrbanSound8K classes are left out
    by choice: logged and recorded in the composition, not warned about.

    The authors' pool is MUSAN ``noise/`` plus UrbanSound8K without children_playing and
    street_music (``urbansound_folder`` given), drawn uniformly over files: UrbanSound8K's 6,732
    kept clips against MUSAN's 930 noise files make about 88 % of the file draws UrbanSound8K.
    """
    _check_prep_flags(skip_prep, force_prep)
    musan_subsets = as_list(musan_subsets, "musan_subsets")
    urbansound_exclude = as_list(urbansound_exclude, "urbansound_exclude")
    extra_folders = as_list(extra_folders, "extra_folders")
    _checked_folder(save_folder, "save_folder")  # the lists keep the path as given
    csv_path = os.path.join(save_folder, csv_name)
    if skip_prep:
        return csv_path
    extra_folders = [_checked_folder(folder, "extra_folders") for folder in extra_folders]
    if musan_folder is None and urbansound_folder is None and not extra_folders:
        raise ValueError("prepare_noise needs musan_folder, urbansound_folder or extra_folders.")
    options = {
        "musan_folder": _checked_folder(musan_folder, "musan_folder"),
        "musan_subsets": musan_subsets,
        "urbansound_folder": _checked_folder(urbansound_folder, "urbansound_folder"),
        "urbansound_exclude": urbansound_exclude,
        "extra_folders": extra_folders,
    }
    marker_name = os.path.splitext(csv_name)[0]
    if _use_prepared(save_folder, marker_name, options, [csv_path], force_prep, f"Noise CSV {csv_path}"):
        _log_composition(_load_or_recompute_composition(csv_path, options, _recompute_noise_composition))
        return csv_path
    left_out = LeftOutFiles(csv_path)
    entries, excluded = [], None
    if musan_folder is not None:
        entries += _musan_entries(options["musan_folder"], musan_subsets, left_out)
    if urbansound_folder is not None:
        excluded = {}
        entries += _urbansound_entries(options["urbansound_folder"], urbansound_exclude, left_out, excluded)
    for index, folder in enumerate(extra_folders):
        entries += _folder_entries(folder, f"extra{index}", left_out)
    sources = [folder for folder in (options["musan_folder"], options["urbansound_folder"]) if folder]
    rows = _audio_rows(entries, "Noise", left_out, min_seconds=MIN_NOISE_SECONDS)
    left_out.warn()
    if not rows:
        raise ValueError(f"No usable noise audio file found under {sources + extra_folders}.")
    composition = _write_noise_style_csv(
        save_folder, csv_path, marker_name, options, rows, left_out,
        lambda rows: noise_composition(
            csv_path, options, rows, excluded=excluded, unreadable=_unreadable_count(left_out)
        ),
    )
    logger.info("Wrote %s: %d noise files (%.1f min), %s left out (%s), from %s.", csv_path,
                len(rows), sum(row[1] for row in rows) / 60, left_out.summary(), skipped_path(csv_path),
                sources + extra_folders)
    _log_composition(composition)
    return csv_path


def _write_noise_style_csv(save_folder, csv_path, marker_name, options, rows, left_out, make_composition):
    """Writes the CSV, its skipped and composition JSONs, then the marker; returns the composition."""
    os.makedirs(save_folder, exist_ok=True)
    _remove_marker(save_folder, marker_name)
    rows = _deduplicate_ids(rows)
    write_csv(csv_path, NOISE_HEADER, rows)
    left_out.write()
    composition = make_composition(rows)
    _write_json(composition_path(csv_path), composition)
    _write_marker(save_folder, marker_name, options)
    return composition


# ---------------------------------------------------------------------------------------------
# Pool composition: files and hours per source, share of uniform file draws
# ---------------------------------------------------------------------------------------------

COMPOSITION_SUFFIX = "_composition.json"
_EXTRA_ID = re.compile(r"^extra(\d+)_")
_ROOM_FOLDER = re.compile(r"^room\d+$", re.IGNORECASE)
_REAL_RIR_DATABASE = re.compile(r"^([A-Za-z0-9]+)_type\d")
RIR_KINDS = ("real", "simulated", "unknown")


def composition_path(csv_path):
    """Path of the composition JSON of a noise/RIR CSV: ``<csv folder>/<csv stem>_composition.json``.

    Example
    -------
    >>> composition_path("/save/noise.csv")
    '/save/noise_composition.json'
    """
    return os.path.splitext(csv_path)[0] + COMPOSITION_SUFFIX


def read_composition(csv_path):
    """Reads the composition JSON written next to a noise/RIR CSV; None if missing or unreadable."""
    try:
        with open(composition_path(csv_path), encoding="utf-8") as json_file:
            return json.load(json_file)
    except (OSError, ValueError):
        return None


def _write_json(path, content):
    with open(path + ".tmp", "w", encoding="utf-8") as json_file:
        json.dump(content, json_file, indent=2)
    os.replace(path + ".tmp", path)


def _relative_parts(path, folder):
    return os.path.relpath(path, folder).split(os.sep)


def _noise_source(entry_id, path, options):
    """``(source, part)`` of a noise CSV row, from the ID prefix :func:`prepare_noise` gives it.

    Sources: ``musan/<subset>`` (part: the MUSAN source folder, e.g. ``free-sound``),
    ``urbansound8k`` (part: the class), ``extra<i>`` (part: first sub-folder), ``other``.
    """
    if entry_id.startswith("musan_") and options.get("musan_folder"):
        parts = _relative_parts(path, options["musan_folder"])
        return f"musan/{parts[0]}", parts[1] if len(parts) > 2 else ""
    if entry_id.startswith("urbansound_"):
        match = URBANSOUND_NAME.match(os.path.splitext(os.path.basename(path))[0])
        return "urbansound8k", URBANSOUND_CLASSES[int(match.group(1))] if match else ""
    match = _EXTRA_ID.match(entry_id)
    if match and int(match.group(1)) < len(options.get("extra_folders", [])):
        parts = _relative_parts(path, options["extra_folders"][int(match.group(1))])
        return f"extra{match.group(1)}", parts[0] if len(parts) > 1 else ""
    return "other", ""


def _noise_source_folder(source, options):
    if source.startswith("musan/"):
        return os.path.join(options["musan_folder"], source.split("/", 1)[1])
    if source == "urbansound8k":
        return options["urbansound_folder"]
    if source.startswith("extra"):
        return options["extra_folders"][int(source[len("extra"):])]
    return None


def _rir_source(path, rir_folder):
    """``(source, part)`` of a RIR: its folder relative to ``rir_folder`` without ``RoomNNN`` levels.

    E.g. ``real_rirs_isotropic_noises``, ``simulated_rirs/smallroom`` (RIRS_NOISES),
    ``SLR26/simulated_rirs_48k/smallroom`` or ``SLR28/RIRS_NOISES/real_rirs_isotropic_noises`` (DNS);
    the part is the database of a real RIRS_NOISES file name (``RVB2014``, ``RWCP``, ``air``).
    """
    parts = _relative_parts(path, rir_folder)
    folders = [part for part in parts[:-1] if not _ROOM_FOLDER.match(part)]
    match = _REAL_RIR_DATABASE.match(parts[-1])
    return "/".join(folders) or ".", match.group(1) if match else ""


def _rir_kind(source):
    """``"simulated"``, ``"real"`` or ``"unknown"``, from the folder names of a RIR source."""
    lowered = source.lower()
    if "simulated" in lowered or "simulation" in lowered:
        return "simulated"
    if "real" in lowered:
        return "real"
    return "unknown"


def _shares(files, seconds, total_files, total_seconds):
    return {
        "files": files,
        "hours": round(seconds / 3600, 6),
        "seconds": round(seconds, 3),
        "draw_share": round(files / total_files, 6) if total_files else 0.0,
        "hours_share": round(seconds / total_seconds, 6) if total_seconds else 0.0,
    }


def _pool_composition(pool, csv_path, options, rows, classify):
    """Groups ``ID,duration,wav,...`` rows by source and part; counts files, hours and shares."""
    grouped = {}
    for row in rows:
        source, part = classify(str(row[0]), str(row[2]))
        entry = grouped.setdefault(source, {"files": 0, "seconds": 0.0, "parts": {}})
        entry["files"] += 1
        entry["seconds"] += float(row[1])
        if part:
            part_entry = entry["parts"].setdefault(part, [0, 0.0])
            part_entry[0] += 1
            part_entry[1] += float(row[1])
    total_files, total_seconds = len(rows), sum(float(row[1]) for row in rows)
    sources = {}
    for source in sorted(grouped):
        entry = grouped[source]
        sources[source] = _shares(entry["files"], entry["seconds"], total_files, total_seconds)
        if entry["parts"]:
            sources[source]["parts"] = {
                part: {"files": count, "hours": round(seconds / 3600, 6)}
                for part, (count, seconds) in sorted(entry["parts"].items())
            }
    return {
        "pool": pool,
        "csv": os.path.abspath(csv_path),
        "draw": "uniform over files: a source's share of file draws is its share of files",
        "options": json.loads(json.dumps(options)),
        "files": total_files,
        "hours": round(total_seconds / 3600, 6),
        "sources": sources,
    }


def noise_composition(csv_path, options, rows, excluded=None, unreadable=None):
    """Composition of a noise pool: files, hours and share of uniform file draws per source.

    Arguments
    ---------
    csv_path : str
        The noise CSV (recorded in the result).
    options : dict
        The options :func:`prepare_noise` records in its marker (source folders).
    rows : list of sequence
        CSV rows ``ID, duration, wav, ...`` (IDs as :func:`prepare_noise` builds them).
    excluded : dict, optional
        UrbanSound8K clips left out, per class.
    unreadable : int, optional
        Files skipped as unreadable (None: unknown).

    Returns
    -------
    dict
        ``{"pool": "noise", "csv", "draw", "options", "files", "hours", "sources": {source:
        {"folder", "files", "hours", "seconds", "draw_share", "hours_share", "parts"?,
        "excluded"?}}, "unreadable_skipped", "recomputed_from_csv"}``.

    Example
    -------
    >>> rows = [["musan_noise_free-sound_a", 2.0, "/m/noise/free-sound/a.wav"],
    ...         ["urbansound_fold1_1-3-0-0", 1.0, "/u/audio/fold1/1-3-0-0.wav"],
    ...         ["urbansound_fold2_2-7-0-0", 1.0, "/u/audio/fold2/2-7-0-0.wav"]]
    >>> options = {"musan_folder": "/m", "urbansound_folder": "/u", "extra_folders": []}
    >>> sources = noise_composition("n.csv", options, rows)["sources"]
    >>> {name: (s["files"], round(s["draw_share"], 3)) for name, s in sources.items()}
    {'musan/noise': (1, 0.333), 'urbansound8k': (2, 0.667)}
    >>> sources["urbansound8k"]["parts"]["dog_bark"]
    {'files': 1, 'hours': 0.000278}
    """
    composition = _pool_composition(
        "noise", csv_path, options, rows, lambda entry_id, path: _noise_source(entry_id, path, options)
    )
    for source, entry in composition["sources"].items():
        entry["folder"] = _noise_source_folder(source, options)
    if "urbansound8k" in composition["sources"] and excluded is not None:
        composition["sources"]["urbansound8k"]["excluded"] = dict(excluded)
    composition["unreadable_skipped"] = unreadable
    composition["recomputed_from_csv"] = False
    return composition


def rir_composition(csv_path, options, rows, unreadable=None):
    """Composition of a RIR pool: files, hours and share of uniform draws per folder and kind.

    Sources are the RIR folders relative to ``options["rir_folder"]`` without the ``RoomNNN``
    levels; each has a ``kind`` (``real``, ``simulated``, ``unknown``, from its folder names), and
    ``by_kind`` sums them.

    Example
    -------
    >>> rows = [["r", 0.5, "/R/real_rirs_isotropic_noises/RVB2014_type1_rir_x.wav"],
    ...         ["s1", 0.25, "/R/simulated_rirs/smallroom/Room001/Room001-00001.wav"],
    ...         ["s2", 0.25, "/R/simulated_rirs/smallroom/Room002/Room002-00001.wav"]]
    >>> composition = rir_composition("r.csv", {"rir_folder": "/R"}, rows)
    >>> {kind: entry["files"] for kind, entry in composition["by_kind"].items()}
    {'real': 1, 'simulated': 2}
    >>> sorted(composition["sources"]), composition["sources"]["real_rirs_isotropic_noises"]["parts"]
    (['real_rirs_isotropic_noises', 'simulated_rirs/smallroom'], {'RVB2014': {'files': 1, 'hours': 0.000139}})
    """
    rir_folder = options["rir_folder"]
    composition = _pool_composition(
        "rirs", csv_path, options, rows, lambda entry_id, path: _rir_source(path, rir_folder)
    )
    for source, entry in composition["sources"].items():
        entry["kind"] = _rir_kind(source)
        entry["folder"] = rir_folder if source == "." else os.path.join(rir_folder, *source.split("/"))
    kinds = {}
    for row in rows:
        totals = kinds.setdefault(_rir_kind(_rir_source(str(row[2]), rir_folder)[0]), [0, 0.0])
        totals[0] += 1
        totals[1] += float(row[1])
    total_seconds = sum(float(row[1]) for row in rows)
    composition["by_kind"] = {
        kind: _shares(kinds[kind][0], kinds[kind][1], len(rows), total_seconds)
        for kind in RIR_KINDS
        if kind in kinds
    }
    composition["unreadable_skipped"] = unreadable
    composition["recomputed_from_csv"] = False
    return composition


def _recompute_noise_composition(csv_path, options, rows):
    """:func:`noise_composition` of a prepared CSV, recounting the excluded UrbanSound8K clips."""
    excluded = None
    if options.get("urbansound_folder"):
        try:  # file names only: cheap
            _, excluded = _scan_urbansound(options["urbansound_folder"], options["urbansound_exclude"])
        except (OSError, ValueError) as error:
            logger.warning("Cannot recount the excluded UrbanSound8K clips (%s)", error)
    return noise_composition(csv_path, options, rows, excluded=excluded)


def _read_pool_rows(csv_path):
    with open(csv_path, newline="", encoding="utf-8") as csv_file:
        return [[row["ID"], float(row["duration"]), row["wav"]] for row in csv.DictReader(csv_file)]


def _load_or_recompute_composition(csv_path, options, builder):
    """The composition JSON of an already prepared CSV; recomputed from the CSV if missing or stale."""
    composition = read_composition(csv_path)
    if composition is not None and composition.get("options") == json.loads(json.dumps(options)):
        return composition
    composition = builder(csv_path, options, _read_pool_rows(csv_path))
    composition["recomputed_from_csv"] = True
    _write_json(composition_path(csv_path), composition)
    logger.info("Recomputed %s from %s (the CSV was already prepared).", composition_path(csv_path),
                csv_path)
    return composition


def _percent(share):
    return f"{100 * share:.1f} %"


def _hours(hours):
    return f"{hours:.3g} h"


def _log_composition(composition):
    """Logs a pool's composition: one line for the pool, one per source."""
    name = os.path.basename(composition["csv"])
    if composition["pool"] == "rirs":
        kinds = "; ".join(
            f"{kind} {entry['files']} files ({_percent(entry['draw_share'])} of draws, {_hours(entry['hours'])})"
            for kind, entry in composition["by_kind"].items()
        )
        logger.info("RIR pool %s: %d RIRs, %s, drawn uniformly over files: %s.", name,
                    composition["files"], _hours(composition["hours"]), kinds)
    else:
        logger.info("Noise pool %s: %d files, %s, drawn uniformly over files.", name,
                    composition["files"], _hours(composition["hours"]))
    for source, entry in composition["sources"].items():
        details = ""
        if entry.get("kind"):
            details += f" [{entry['kind']}]"
        if entry.get("parts"):
            details += " (" + ", ".join(f"{part} {value['files']}" for part, value in entry["parts"].items()) + ")"
        if entry.get("excluded") is not None:
            details += f"; excluded classes: {_format_counts(entry['excluded'])}"
        logger.info("  %s: %d files = %s of file draws, %s = %s of hours%s; %s", source,
                    entry["files"], _percent(entry["draw_share"]), _hours(entry["hours"]),
                    _percent(entry["hours_share"]), details, entry.get("folder"))


# ---------------------------------------------------------------------------------------------
# Room impulse responses
# ---------------------------------------------------------------------------------------------


def read_kaldi_list(list_path, rir_folder):
    """Reads a RIRS_NOISES ``rir_list`` or ``noise_list`` into ``[(id, absolute path)]``.

    Lines look like ``--rir-id <id> --room-id <room> RIRS_NOISES/<...>/<file>.wav``; the path is
    relative to the folder holding ``RIRS_NOISES``, and is resolved against ``rir_folder`` (the
    ``RIRS_NOISES`` folder itself, whatever its name).

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "rir_list")
    >>> _ = open(path, "w").write("--rir-id r1 --room-id a RIRS_NOISES/sim/r1.wav\\n")
    >>> [(entry_id, os.path.relpath(entry_path, folder)) for entry_id, entry_path in
    ...  read_kaldi_list(path, folder)]
    [('r1', 'sim/r1.wav')]
    """
    entries = []
    for line_number, line in enumerate(read_text_lines(list_path, "RIR list"), start=1):
        fields = line.split()
        if not fields:
            continue
        relative_path = fields[-1]
        entry_id = None
        for flag in ("--rir-id", "--noise-id"):
            if flag in fields[:-1]:
                entry_id = fields[fields.index(flag) + 1]
        if entry_id is None or not relative_path.lower().endswith(AUDIO_EXTENSIONS):
            logger.warning("Skipping malformed line %d of %s: %r", line_number, list_path,
                           line.strip())
            continue
        parts = relative_path.replace("\\", "/").split("/")
        entries.append((entry_id, os.path.join(rir_folder, *parts[1:])))
    return entries


def _noise_list_paths(list_paths):
    """Paths listed in the ``noise_list`` files ``list_paths``: never to be taken as RIRs.

    A ``noise_list`` sits one level below ``RIRS_NOISES`` (``pointsource_noises/``,
    ``real_rirs_isotropic_noises/``), so its paths resolve against the list's parent folder.
    """
    listed = set()
    for list_path in list_paths:
        if os.path.basename(list_path) == "noise_list":
            for _, path in read_kaldi_list(list_path, os.path.dirname(os.path.dirname(list_path))):
                listed.add(os.path.normpath(path))
    return listed


def _rirs_noises_entries(rir_folder, subsets, left_out):
    layout = "RIRS_NOISES/{real_rirs_isotropic_noises,simulated_rirs/<size>}/rir_list"
    _require_folder(rir_folder, "RIRS_NOISES folder", layout)
    unknown = sorted(set(subsets) - set(RIRS_NOISES_SUBSETS))
    if unknown or not subsets:
        raise ValueError(f"rirs_noises_subsets must be among {RIRS_NOISES_SUBSETS}, got {list(subsets)}")
    list_paths = []
    if "real" in subsets:
        list_paths.append(os.path.join(rir_folder, "real_rirs_isotropic_noises", "rir_list"))
    if "simulated" in subsets:
        simulated = os.path.join(rir_folder, "simulated_rirs")
        _require_folder(simulated, "Simulated RIR folder", "RIRS_NOISES/simulated_rirs/<size>/rir_list")
        list_paths += [
            os.path.join(simulated, size, "rir_list")
            for size in list_folder(simulated, "Simulated RIR folder")[0]
        ]
    _, other_files = find_files(rir_folder, left_out)
    noise_paths = _noise_list_paths(other_files)
    entries = []
    for list_path in list_paths:
        if not os.path.isfile(list_path):
            raise FileNotFoundError(f"RIR list '{list_path}' does not exist; expected {layout}.")
        for rir_id, path in read_kaldi_list(list_path, rir_folder):
            if os.path.normpath(path) in noise_paths:
                left_out.add(RIR_ALSO_NOISE, path, detail=list_path)
            elif not os.path.isfile(path):
                left_out.add(MISSING_RIR, path, detail=list_path)
            else:
                entries.append((make_id(rir_id), path))
    logger.info("RIRS_NOISES %s: %d RIRs listed in %d rir_list file(s).", list(subsets), len(entries),
                len(list_paths))
    return entries


def _rir_folder_entries(rir_folder, description, left_out):
    _require_folder(rir_folder, description, "a folder of RIR .wav/.flac files")
    audio_files, other_files = find_files(rir_folder, left_out)
    noise_paths = _noise_list_paths(other_files)
    kept = []
    for path in audio_files:
        relative = os.path.relpath(path, rir_folder)
        if os.path.normpath(path) in noise_paths or "pointsource_noises" in relative.split(os.sep):
            continue
        kept.append((make_id(relative), path))
    if len(kept) < len(audio_files):
        logger.info("%s: left out %d noise file(s) (listed in a noise_list or under "
                    "pointsource_noises).", rir_folder, len(audio_files) - len(kept))
    ignored = [path for path in other_files if os.path.basename(path) not in ("rir_list", "noise_list")]
    _leave_out_non_audio(ignored, left_out)
    return kept


def prepare_rirs(
    save_folder,
    rir_folder,
    rir_format="rirs_noises",
    rirs_noises_subsets=("real",),
    csv_name="rirs.csv",
    skip_prep=False,
    force_prep=False,
):
    """Writes a SpeechBrain RIR CSV (``ID,duration,wav,wav_format,wav_opts``) for ``AddReverb``.

    Arguments
    ---------
    save_folder : str
        Where the CSV and its marker ``<csv stem>.prepare.json`` are written.
    rir_folder : str
        ``"rirs_noises"``: the ``RIRS_NOISES`` folder (OpenSLR 28). ``"dns"``: the DNS-Challenge
        ``impulse_responses`` folder. ``"folder"``: any folder of RIR files.
    rir_format : str
        One of ``"rirs_noises"``, ``"dns"``, ``"folder"``.
    rirs_noises_subsets : sequence of str, or str
        For ``"rirs_noises"``: ``"real"`` (``real_rirs_isotropic_noises/rir_list``) and/or
        ``"simulated"`` (``simulated_rirs/*/rir_list``); a single string is a one-item list. Only the
        ``rir_list`` entries are taken: the isotropic and point-source noises of the same folders
        never are.
    csv_name : str
        File name of the CSV.
    skip_prep : bool
        If True, do nothing and return the path.
    force_prep : bool
        If True, prepare again even if the CSV exists with the same options.

    Returns
    -------
    str
        Path of the CSV. Its composition (:func:`rir_composition`: files, hours and share of
        uniform draws per RIR folder, e.g. ``real_rirs_isotropic_noises``,
        ``simulated_rirs/smallroom``, and per kind, real or simulated) is logged and written to
        ``<csv stem>_composition.json`` in ``save_folder``.

    Notes
    -----
    The authors took every file under the DNS-Challenge ``impulse_responses/SLR28`` folder,
    simulated *and* real RIRs (here ``rirs_noises_subsets=["simulated", "real"]``); uniform draws
    over files then give almost only simulated RIRs (see the composition). Our default is the real
    RIRs only. In the ``"dns"`` and ``"folder"`` formats every audio file found recursively is taken, except
    files listed in a ``noise_list`` and files under a ``pointsource_noises`` folder.
    Multichannel and non-16-kHz RIRs are kept and listed in the log; the consumer converts them.
    Left out, counted and warned about (see the module docstring): RIRs listed in a ``rir_list``
    but missing or also listed in a ``noise_list``, non-audio files (``"dns"``, ``"folder"``),
    unreadable or empty files, paths with ``$``.
    """
    _check_prep_flags(skip_prep, force_prep)
    rirs_noises_subsets = as_list(rirs_noises_subsets, "rirs_noises_subsets")
    _checked_folder(save_folder, "save_folder")  # the lists keep the path as given
    csv_path = os.path.join(save_folder, csv_name)
    if skip_prep:
        return csv_path
    if rir_format not in RIR_FORMATS:
        raise ValueError(f"rir_format must be one of {RIR_FORMATS}, got '{rir_format}'.")
    rir_folder = _checked_folder(rir_folder, "rir_folder")
    options = {"rir_folder": rir_folder, "rir_format": rir_format,
               "rirs_noises_subsets": sorted(rirs_noises_subsets) if rir_format == "rirs_noises" else []}
    marker_name = os.path.splitext(csv_name)[0]
    if _use_prepared(save_folder, marker_name, options, [csv_path], force_prep, f"RIR CSV {csv_path}"):
        _log_composition(_load_or_recompute_composition(csv_path, options, rir_composition))
        return csv_path
    left_out = LeftOutFiles(csv_path)
    if rir_format == "rirs_noises":
        entries = _rirs_noises_entries(rir_folder, rirs_noises_subsets, left_out)
    else:
        description = "DNS impulse_responses folder" if rir_format == "dns" else "RIR folder"
        entries = _rir_folder_entries(rir_folder, description, left_out)
    rows = _audio_rows(entries, "RIRs", left_out)
    left_out.warn()
    if not rows:
        raise ValueError(f"No usable RIR file found under '{rir_folder}' (format '{rir_format}').")
    composition = _write_noise_style_csv(
        save_folder, csv_path, marker_name, options, rows, left_out,
        lambda rows: rir_composition(csv_path, options, rows, unreadable=_unreadable_count(left_out)),
    )
    logger.info("Wrote %s: %d RIRs, %s left out (%s), from %s.", csv_path, len(rows),
                left_out.summary(), skipped_path(csv_path), rir_folder)
    _log_composition(composition)
    return csv_path
