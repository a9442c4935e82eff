"""Noise pools: MUSAN, UrbanSound8K and any folders of audio into one SpeechBrain noise CSV.

:func:`prepare_noise` lists MUSAN's chosen subsets (``musan/{noise,music,speech}/<source>/*.wav``),
UrbanSound8K's clips (``UrbanSound8K/audio/fold*/<fsID>-<classID>-<occurrence>-<slice>.wav``) without
the excluded classes, and every audio file of extra folders, in the pool format of :mod:`.pools`
(for ``AddNoise``); :func:`noise_composition` says how much of the uniform file draws each source gets.
Besides the shared reasons of :mod:`.lists`, files shorter than :data:`MIN_NOISE_SECONDS`
(:data:`TOO_SHORT_NOISE`) and UrbanSound8K files not named as in the release
(:data:`BAD_URBANSOUND_NAME`) are left out, counted and warned about.
"""

import logging
import os
import re

from robustdistiller.data.files import list_folder
from robustdistiller.data.prepare.lists import (
    LeftOutFiles,
    check_prep_flags,
    checked_folder,
    find_files,
    leave_out_non_audio,
    make_id,
    require_folder,
    skipped_path,
    unreadable_count,
    use_prepared,
)
from robustdistiller.data.prepare.pools import (
    format_counts,
    load_or_recompute_composition,
    log_composition,
    pool_composition,
    pool_rows,
    relative_parts,
    write_pool_csv,
)
from robustdistiller.runs.options import as_list

logger = logging.getLogger(__name__)

URBANSOUND_CLASSES = (
    "air_conditioner",
    "car_horn",
    "children_playing",
    "dog_bark",
    "drilling",
    "engine_idling",
    "gun_shot",
    "jackhammer",
    "siren",
    "street_music",
)
URBANSOUND_NAME = re.compile(r"^\d+-(\d)-\d+-\d+$")
MIN_NOISE_SECONDS = 0.1
"""Shortest noise file listed: a shorter one (or a one-sample file) would be tiled into a buzz."""
TOO_SHORT_NOISE = f"shorter than {MIN_NOISE_SECONDS} s (it would be tiled into a buzz)"
BAD_URBANSOUND_NAME = "not named <fsID>-<classID>-<occurrence>-<slice>"
_EXTRA_ID = re.compile(r"^extra(\d+)_")


def _musan_entries(musan_folder, subsets, left_out):
    entries = []
    require_folder(musan_folder, "MUSAN folder", "musan/{noise,music,speech}/<source>/*.wav")
    for subset in subsets:
        subset_folder = os.path.join(musan_folder, subset)
        require_folder(subset_folder, "MUSAN subset folder", f"musan/{subset}/<source>/*.wav")
        audio_files, other_files = find_files(subset_folder, left_out)
        leave_out_non_audio(other_files, left_out)
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
    require_folder(urbansound_folder, "UrbanSound8K folder", layout)
    audio_root = os.path.join(urbansound_folder, "audio")
    if not os.path.isdir(audio_root):
        audio_root = urbansound_folder  # the "audio" folder itself was given
    folds = [name for name in list_folder(audio_root, "UrbanSound8K audio folder")[0] if name.startswith("fold")]
    if not folds:
        raise FileNotFoundError(f"No fold* folder in '{audio_root}'; expected {layout}.")
    entries, excluded = [], {name: 0 for name in exclude}
    for fold in folds:
        audio_files, other_files = find_files(os.path.join(audio_root, fold), left_out)
        leave_out_non_audio(other_files, left_out)
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


def _urbansound_entries(urbansound_folder, exclude, left_out, excluded_counts=None):
    """``(ID, path)`` of the UrbanSound8K clips not in the ``exclude`` classes; logs the counts.

    ``excluded_counts``, a dict, receives the number of clips left out per class (by choice, so
    logged, not counted in ``left_out``).
    """
    entries, excluded = _scan_urbansound(urbansound_folder, exclude, left_out)
    logger.info(
        "UrbanSound8K: %d clips kept, %d excluded (%s).", len(entries), sum(excluded.values()), format_counts(excluded)
    )
    if excluded_counts is not None:
        excluded_counts.update(excluded)
    return entries


def _folder_entries(folder, prefix, left_out):
    require_folder(folder, "Audio folder", "a folder of .wav/.flac/.ogg files")
    audio_files, other_files = find_files(folder, left_out)
    leave_out_non_audio(other_files, left_out)
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
    Left out, counted and warned about (see :mod:`robustdistiller.data.prepare`): non-audio and hidden files,
    unreadable or empty files, files shorter than :data:`MIN_NOISE_SECONDS` (0.1 s, one-sample
    files included: the pool would tile them into a buzz), paths with ``$``, UrbanSound8K files not
    named ``<fsID>-<classID>-<occurrence>-<slice>``. The excluded UrbanSound8K classes are left out
    by choice: logged and recorded in the composition, not warned about.

    The authors' pool is MUSAN ``noise/`` plus UrbanSound8K without children_playing and
    street_music (``urbansound_folder`` given), drawn uniformly over files: UrbanSound8K's 6,732
    kept clips against MUSAN's 930 noise files make about 88 % of the file draws UrbanSound8K.
    """
    check_prep_flags(skip_prep, force_prep)
    musan_subsets = as_list(musan_subsets, "musan_subsets")
    urbansound_exclude = as_list(urbansound_exclude, "urbansound_exclude")
    extra_folders = as_list(extra_folders, "extra_folders")
    checked_folder(save_folder, "save_folder")  # the lists keep the path as given
    csv_path = os.path.join(save_folder, csv_name)
    if skip_prep:
        return csv_path
    extra_folders = [checked_folder(folder, "extra_folders") for folder in extra_folders]
    if musan_folder is None and urbansound_folder is None and not extra_folders:
        raise ValueError("prepare_noise needs musan_folder, urbansound_folder or extra_folders.")
    options = {
        "musan_folder": checked_folder(musan_folder, "musan_folder"),
        "musan_subsets": musan_subsets,
        "urbansound_folder": checked_folder(urbansound_folder, "urbansound_folder"),
        "urbansound_exclude": urbansound_exclude,
        "extra_folders": extra_folders,
    }
    marker_name = os.path.splitext(csv_name)[0]
    if use_prepared(save_folder, marker_name, options, [csv_path], force_prep, f"Noise CSV {csv_path}"):
        log_composition(load_or_recompute_composition(csv_path, options, _recompute_noise_composition))
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
    rows = pool_rows(entries, "Noise", left_out, min_seconds=MIN_NOISE_SECONDS, too_short_reason=TOO_SHORT_NOISE)
    left_out.warn()
    if not rows:
        raise ValueError(f"No usable noise audio file found under {sources + extra_folders}.")
    composition = write_pool_csv(
        save_folder,
        csv_path,
        marker_name,
        options,
        rows,
        left_out,
        lambda rows: noise_composition(
            csv_path, options, rows, excluded=excluded, unreadable=unreadable_count(left_out)
        ),
    )
    logger.info(
        "Wrote %s: %d noise files (%.1f min), %s left out (%s), from %s.",
        csv_path,
        len(rows),
        sum(row[1] for row in rows) / 60,
        left_out.summary(),
        skipped_path(csv_path),
        sources + extra_folders,
    )
    log_composition(composition)
    return csv_path


def _noise_source(entry_id, path, options):
    """``(source, part)`` of a noise CSV row, from the ID prefix :func:`prepare_noise` gives it.

    Sources: ``musan/<subset>`` (part: the MUSAN source folder, e.g. ``free-sound``),
    ``urbansound8k`` (part: the class), ``extra<i>`` (part: first sub-folder), ``other``.
    """
    if entry_id.startswith("musan_") and options.get("musan_folder"):
        parts = relative_parts(path, options["musan_folder"])
        return f"musan/{parts[0]}", parts[1] if len(parts) > 2 else ""
    if entry_id.startswith("urbansound_"):
        match = URBANSOUND_NAME.match(os.path.splitext(os.path.basename(path))[0])
        return "urbansound8k", URBANSOUND_CLASSES[int(match.group(1))] if match else ""
    match = _EXTRA_ID.match(entry_id)
    if match and int(match.group(1)) < len(options.get("extra_folders", [])):
        parts = relative_parts(path, options["extra_folders"][int(match.group(1))])
        return f"extra{match.group(1)}", parts[0] if len(parts) > 1 else ""
    return "other", ""


def _noise_source_folder(source, options):
    if source.startswith("musan/"):
        return os.path.join(options["musan_folder"], source.split("/", 1)[1])
    if source == "urbansound8k":
        return options["urbansound_folder"]
    if source.startswith("extra"):
        return options["extra_folders"][int(source[len("extra") :])]
    return None


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
    composition = pool_composition(
        "noise", csv_path, options, rows, lambda entry_id, path: _noise_source(entry_id, path, options)
    )
    for source, entry in composition["sources"].items():
        entry["folder"] = _noise_source_folder(source, options)
    if "urbansound8k" in composition["sources"] and excluded is not None:
        composition["sources"]["urbansound8k"]["excluded"] = dict(excluded)
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
