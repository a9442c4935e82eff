"""Your own audio instead of LibriSpeech: the distillation recipe's utterance lists from a folder or a list.

``python train.py hparams/distill.yaml --train_audio=/data/my_speech ...`` distils on every audio file under a
folder (searched recursively), or on the files of a CSV (a ``wav`` column) or of a text list (one path per line);
paths in a list are relative to the list's folder unless absolute. Files may have any sample rate (the data
pipeline resamples them to 16 kHz on load) and any number of channels (averaged). :func:`prepare_own_audio`
reads each file's header once and writes ``train.csv`` and ``valid.csv`` (``ID,duration,wav``) into the run's
save folder, never next to your files; the validation list is ``valid_audio`` (same forms) or a share of the
training files (``valid_share``, drawn by a hash of each file's ID, so the same files every time). Left out,
counted and warned about: unreadable, damaged or empty files and files shorter than ``min_samples`` at 16 kHz.
A rerun reuses the lists only while the source lists the same files, unchanged (:func:`listing_fingerprint`:
paths, sizes, modification times); otherwise it lists them again, and the run signature, which holds the lists'
content, refuses to resume a run made with other audio.
"""

import csv
import hashlib
import logging
import os

from robustdistiller.data.files import read_text_lines
from robustdistiller.data.prepare.lists import (
    LeftOutFiles,
    check_prep_flags,
    checked_folder,
    deduplicate_ids,
    find_files,
    leave_out_non_audio,
    make_id,
    mark_prepared,
    read_audio_header,
    remove_marker,
    skipped_path,
    use_prepared,
    write_csv,
)
from robustdistiller.runs.options import OptionError, integer_at_least

logger = logging.getLogger(__name__)

OWN_AUDIO_HEADER = ["ID", "duration", "wav"]
OWN_AUDIO_FORMS = "a folder of audio files, a CSV with a `wav` column, or a text file with one audio path per line"
TOO_SHORT = "shorter than min_samples at 16 kHz"
TARGET_SAMPLE_RATE = 16000


def own_audio_options(hparams):
    """Adapts a loaded recipe to ``train_audio``: no LibriSpeech subsets; validation when a list will exist.

    With ``train_audio`` set, ``train_splits`` becomes ``[]`` and ``valid_splits`` ``["own audio"]`` when there
    will be a validation list (``valid_audio`` given or ``valid_share`` > 0), else ``[]``: the rest of the recipe
    reads them as today. Without it, nothing changes.

    Example
    -------
    >>> hparams = {"train_audio": "/data/a", "valid_audio": None, "valid_share": 0.02, "train_splits": ["x"]}
    >>> own_audio_options(hparams)["train_splits"], hparams["valid_splits"]
    ([], ['own audio'])
    """
    if not hparams.get("train_audio"):
        return hparams
    share = float(hparams.get("valid_share") or 0.0)
    if not 0.0 <= share < 1.0:
        raise OptionError(f"Option `valid_share` must be in [0, 1), got {hparams.get('valid_share')!r}.")
    hparams["train_splits"] = []
    hparams["valid_splits"] = ["own audio"] if hparams.get("valid_audio") or share > 0 else []
    return hparams


def overrides_without_librispeech(overrides):
    """Command-line overrides with ``data_folder: null`` added when ``train_audio`` is given and it is not.

    ``data_folder`` (LibriSpeech) is a required option of the recipes, but with ``--train_audio`` it is not used.

    Example
    -------
    >>> overrides_without_librispeech("train_audio: /data/a\\n").splitlines()
    ['train_audio: /data/a', 'data_folder: null']
    >>> overrides_without_librispeech("data_folder: /data/LibriSpeech\\n")
    'data_folder: /data/LibriSpeech\\n'
    """
    text = overrides or ""
    lines = [line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith((" ", "\t"))]
    given = {key.strip(): value.strip() for key, value in lines}
    if given.get("train_audio") not in (None, "", "null", "None", "~") and "data_folder" not in given:
        return (text if not text or text.endswith("\n") else text + "\n") + "data_folder: null"
    return text


def audio_source_paths(source, option_name):
    """The audio files ``source`` names (folder, CSV or text list), sorted, with their base folder.

    Arguments
    ---------
    source : str
        A folder, a ``.csv`` with a ``wav`` column, or a text file of paths (``#`` comments and blank lines
        ignored); relative paths in a list are relative to the list's folder.
    option_name : str
        The option that gave ``source``, for errors.

    Returns
    -------
    (list of str, list of str, str)
        The audio paths, the non-audio files met in a folder, and the base folder IDs are made relative to.

    Raises
    ------
    FileNotFoundError
        If ``source`` does not exist.
    ValueError
        If a CSV has no ``wav`` column, or nothing is listed.
    """
    if not os.path.exists(source):
        raise FileNotFoundError(f"Option `{option_name}`: '{source}' does not exist; expected {OWN_AUDIO_FORMS}.")
    if os.path.isdir(source):
        audio, other = find_files(source)
        base = source
    elif source.lower().endswith(".csv"):
        with open(source, newline="", encoding="utf-8") as fin:
            reader = csv.DictReader(fin)
            if not reader.fieldnames or "wav" not in reader.fieldnames:
                raise ValueError(
                    f"Option `{option_name}`: the CSV '{source}' has no `wav` column (columns: {reader.fieldnames})."
                )
            listed = [row["wav"] for row in reader if row.get("wav")]
        audio, other, base = _resolve(listed, source), [], os.path.dirname(os.path.abspath(source))
    else:
        lines = read_text_lines(source, f"Audio list of `{option_name}`")
        listed = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        audio, other, base = _resolve(listed, source), [], os.path.dirname(os.path.abspath(source))
    if not audio:
        raise ValueError(f"Option `{option_name}`: no audio file in '{source}'; expected {OWN_AUDIO_FORMS}.")
    return sorted(audio), other, base


def _resolve(paths, list_file):
    folder = os.path.dirname(os.path.abspath(list_file))
    return [path if os.path.isabs(path) else os.path.normpath(os.path.join(folder, path)) for path in paths]


def listing_fingerprint(listed):
    """What a source lists now: a SHA-256 over every audio path with its size and modification time.

    A file added to, removed from or rewritten in a folder (or list) changes it, so :func:`prepare_own_audio`
    lists the audio again instead of reusing lists made from other files (and a resume then sees other data).

    Arguments
    ---------
    listed : tuple
        What :func:`audio_source_paths` returns.

    Returns
    -------
    str
        ``"<count> files, sha256 <16 hex digits>"``.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = open(os.path.join(folder, "a.wav"), "wb").write(b"RIFF")
    >>> before = listing_fingerprint(audio_source_paths(folder, "train_audio"))
    >>> before.startswith("1 files, sha256 ")
    True
    >>> _ = open(os.path.join(folder, "b.wav"), "wb").write(b"RIFF")
    >>> listing_fingerprint(audio_source_paths(folder, "train_audio")) == before
    False
    """
    audio = listed[0]
    digest = hashlib.sha256()
    for path in audio:
        try:
            status = os.stat(path)
            state = f"{status.st_size} {status.st_mtime_ns}"
        except OSError as error:  # listed but missing or unreadable: counted when the lists are written
            state = type(error).__name__
        digest.update(f"{os.path.abspath(path)}\0{state}\n".encode("utf-8", "surrogateescape"))
    return f"{len(audio)} files, sha256 {digest.hexdigest()[:16]}"


def own_audio_rows(source, option_name, min_samples, left_out, listed=None):
    """``[ID, duration, wav]`` rows of the readable files of ``source`` long enough for one feature frame
    (``listed``: what :func:`audio_source_paths` returned for it, if already called)."""
    audio, other, base = listed or audio_source_paths(source, option_name)
    leave_out_non_audio(other, left_out)
    rows = []
    for path in audio:
        if not os.path.isfile(path):
            left_out.add("listed but missing", path)
            continue
        header = read_audio_header(path, left_out)
        if header is None:
            continue
        frames, rate, _ = header
        if frames * TARGET_SAMPLE_RATE / rate < min_samples:
            left_out.add(TOO_SHORT, path, detail=f"{frames} samples at {rate} Hz")
            continue
        relative = os.path.relpath(path, base)
        rows.append([make_id(relative if not relative.startswith("..") else path), frames / rate, path])
    return deduplicate_ids(rows)


def held_out(rows, share):
    """Splits rows into (train, valid): ``share`` of them (at least one) by the SHA-256 of their IDs.

    Example
    -------
    >>> rows = [[f"utt{index}", 1.0, f"{index}.wav"] for index in range(10)]
    >>> train, valid = held_out(rows, 0.2)
    >>> len(train), len(valid), held_out(rows, 0.2) == (train, valid)
    (8, 2, True)
    """
    if share <= 0:
        return rows, []
    ranked = sorted(rows, key=lambda row: hashlib.sha256(str(row[0]).encode("utf-8")).hexdigest())
    count = max(1, int(round(share * len(rows))))
    valid_ids = {row[0] for row in ranked[:count]}
    return [row for row in rows if row[0] not in valid_ids], [row for row in rows if row[0] in valid_ids]


def prepare_own_audio(
    train_audio,
    save_folder,
    valid_audio=None,
    valid_share=0.02,
    min_samples=400,
    skip_prep=False,
    force_prep=False,
):
    """Writes ``train.csv`` and ``valid.csv`` (``ID,duration,wav``) from your own audio.

    Arguments
    ---------
    train_audio : str
        A folder of audio files (recursive), a CSV with a ``wav`` column, or a text file of paths.
    save_folder : str
        Where the CSVs, their ``<csv stem>_skipped.json`` and the marker ``own_audio.prepare.json`` are written.
    valid_audio : str, optional
        The validation audio, in the same forms; None holds out ``valid_share`` of ``train_audio``.
    valid_share : float
        Share of the training files held out for validation when ``valid_audio`` is None (0: no validation).
    min_samples : int
        Files shorter than this at 16 kHz are left out (400: the CNN's receptive field).
    skip_prep : bool
        If True, do nothing and return the paths.
    force_prep : bool
        If True, prepare again even if the lists exist with the same options.

    Returns
    -------
    dict
        ``{"train": path, "valid": path or None}``.

    Raises
    ------
    FileNotFoundError, ValueError
        A source that does not exist or holds no usable audio (the option is named).

    Example
    -------
    >>> import tempfile, numpy, soundfile
    >>> folder, save = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> for index, rate in enumerate((8000, 22050, 44100)):
    ...     soundfile.write(os.path.join(folder, f"u{index}.wav"), numpy.zeros(rate // 2), rate)
    >>> paths = prepare_own_audio(folder, save, valid_share=0.34)
    >>> [len(open(paths[key]).read().splitlines()) - 1 for key in ("train", "valid")]
    [2, 1]
    """
    check_prep_flags(skip_prep, force_prep)
    checked_folder(save_folder, "save_folder")
    share = float(valid_share or 0.0)
    csv_paths = {
        "train": os.path.join(save_folder, "train.csv"),
        "valid": os.path.join(save_folder, "valid.csv") if valid_audio or share > 0 else None,
    }
    if skip_prep:
        return csv_paths
    min_samples = integer_at_least(min_samples, "min_samples", 0)
    train_listed = audio_source_paths(train_audio, "train_audio")
    valid_listed = audio_source_paths(valid_audio, "valid_audio") if valid_audio else None
    options = {
        "train_audio": os.path.abspath(train_audio),
        "valid_audio": os.path.abspath(valid_audio) if valid_audio else None,
        "valid_share": share,
        "min_samples": min_samples,
        # the files themselves: lists made from other files are never reused (and a resume sees other data)
        "train_audio_listing": listing_fingerprint(train_listed),
        "valid_audio_listing": listing_fingerprint(valid_listed) if valid_listed else None,
    }
    outputs = [path for path in csv_paths.values() if path]
    if use_prepared(save_folder, "own_audio", options, outputs, force_prep, "own audio"):
        return csv_paths
    os.makedirs(save_folder, exist_ok=True)
    remove_marker(save_folder, "own_audio")
    left_out = LeftOutFiles(csv_paths["train"])
    rows = own_audio_rows(train_audio, "train_audio", min_samples, left_out, train_listed)
    valid_left_out = LeftOutFiles(csv_paths["valid"]) if csv_paths["valid"] else None
    if valid_audio:
        valid_rows = own_audio_rows(valid_audio, "valid_audio", min_samples, valid_left_out, valid_listed)
        train_rows = rows
    else:
        train_rows, valid_rows = held_out(rows, share)
    for key, key_rows, record in (("train", train_rows, left_out), ("valid", valid_rows, valid_left_out)):
        if record is None:
            continue
        record.warn()
        if not key_rows:
            option = "train_audio" if key == "train" or not valid_audio else "valid_audio"
            raise ValueError(
                f"No usable audio for the {key} list from `{option}` ({left_out.summary()} left out; see the "
                f"warnings above){'; lower valid_share or give more files' if key == 'train' and share else ''}."
            )
        write_csv(csv_paths[key], OWN_AUDIO_HEADER, key_rows)
        record.write()
        logger.info(
            "Wrote %s (%d files, %.1f h, %s left out: %s).",
            csv_paths[key],
            len(key_rows),
            sum(row[1] for row in key_rows) / 3600,
            record.summary(),
            skipped_path(csv_paths[key]),
        )
    mark_prepared(save_folder, "own_audio", options)
    return csv_paths
