"""What the noise and RIR pools share: their CSV format, rows read from audio headers, their composition.

A pool list is SpeechBrain's noise CSV (``ID,duration,wav,wav_format,wav_opts``, :data:`NOISE_HEADER`),
read by ``AddNoise`` and ``AddReverb``; :mod:`.noise` and :mod:`.rirs` build theirs with
:func:`pool_rows` (durations from the headers; multichannel and non-16-kHz files kept and logged) and
:func:`write_pool_csv`. Next to each list, ``<csv stem>_composition.json`` (:func:`composition_path`)
records the pool's composition: files and hours per source and the share of the uniform file draws
each source gets (:func:`pool_composition`); it is logged at every preparation
(:func:`log_composition`) and recomputed from the CSV if missing (:func:`load_or_recompute_composition`).
"""

import csv
import json
import logging
import os

from robustdistiller.data.prepare.lists import (
    DOLLAR_IN_PATH,
    deduplicate_ids,
    mark_prepared,
    read_audio_header,
    remove_marker,
    write_csv,
    write_json,
)

logger = logging.getLogger(__name__)

NOISE_HEADER = ["ID", "duration", "wav", "wav_format", "wav_opts"]
EXPECTED_SAMPLE_RATE = 16000
"""Files at another rate (or multichannel) are kept, listed in the log and converted when loaded."""
COMPOSITION_SUFFIX = "_composition.json"


def pool_rows(entries, source_description, left_out, min_seconds=0.0, too_short_reason=None):
    """Reads headers of ``(ID, path)`` entries into noise/RIR CSV rows; logs unusual files.

    Files with ``$`` in their path, unreadable or empty files and files shorter than
    ``min_seconds`` are counted in ``left_out`` (the short ones for ``too_short_reason``, by default
    ``"shorter than <min_seconds> s"``). Returns the rows (``ID,duration,wav,wav_format,wav_opts``).
    """
    if too_short_reason is None:
        too_short_reason = f"shorter than {min_seconds} s"
    rows, unusual = [], []
    for entry_id, path in entries:
        if "$" in path:
            left_out.add(DOLLAR_IN_PATH, path)
            continue
        header = read_audio_header(path, left_out)
        if header is None:
            continue
        frames, rate, channels = header
        if frames < min_seconds * rate:
            left_out.add(too_short_reason, path, detail=f"{frames} samples at {rate} Hz")
            continue
        if channels != 1 or rate != EXPECTED_SAMPLE_RATE:
            unusual.append(f"{path} ({channels} ch, {rate} Hz)")
        audio_format = os.path.splitext(path)[1].lstrip(".").lower()
        rows.append([entry_id, frames / rate, path, audio_format, ""])
    if unusual:
        logger.info(
            "%s: %d file(s) are multichannel or not %d Hz; they are converted when loaded: %s",
            source_description,
            len(unusual),
            EXPECTED_SAMPLE_RATE,
            "; ".join(unusual),
        )
    return rows


def write_pool_csv(save_folder, csv_path, marker_name, options, rows, left_out, make_composition):
    """Writes the CSV, its skipped and composition JSONs, then the marker; returns the composition.

    The marker goes last (and the old one first), so an interrupted preparation is done again;
    repeated IDs get ``_2``, ``_3``... (:func:`~robustdistiller.data.prepare.lists.deduplicate_ids`);
    ``make_composition(rows)`` builds the composition.
    """
    os.makedirs(save_folder, exist_ok=True)
    remove_marker(save_folder, marker_name)
    rows = deduplicate_ids(rows)
    write_csv(csv_path, NOISE_HEADER, rows)
    left_out.write()
    composition = make_composition(rows)
    write_json(composition_path(csv_path), composition)
    mark_prepared(save_folder, marker_name, options)
    return composition


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


def relative_parts(path, folder):
    """The path components of ``path`` relative to ``folder``.

    Example
    -------
    >>> relative_parts("/m/noise/free-sound/a.wav", "/m")
    ['noise', 'free-sound', 'a.wav']
    """
    return os.path.relpath(path, folder).split(os.sep)


def shares(files, seconds, total_files, total_seconds):
    """Files, hours and seconds of a source, with its share of the file draws and of the hours.

    Example
    -------
    >>> shares(1, 1800.0, 4, 3600.0)
    {'files': 1, 'hours': 0.5, 'seconds': 1800.0, 'draw_share': 0.25, 'hours_share': 0.5}
    """
    return {
        "files": files,
        "hours": round(seconds / 3600, 6),
        "seconds": round(seconds, 3),
        "draw_share": round(files / total_files, 6) if total_files else 0.0,
        "hours_share": round(seconds / total_seconds, 6) if total_seconds else 0.0,
    }


def pool_composition(pool, csv_path, options, rows, classify):
    """Groups ``ID,duration,wav,...`` rows by source and part; counts files, hours and shares.

    ``classify(ID, path)`` gives a row's ``(source, part)`` (part ``""``: none); ``pool`` is ``"noise"``
    or ``"rirs"``. :func:`~robustdistiller.data.prepare.noise.noise_composition` and
    :func:`~robustdistiller.data.prepare.rirs.rir_composition` add what is particular to their pool.
    """
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
        sources[source] = shares(entry["files"], entry["seconds"], total_files, total_seconds)
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


def _read_pool_rows(csv_path):
    with open(csv_path, newline="", encoding="utf-8") as csv_file:
        return [[row["ID"], float(row["duration"]), row["wav"]] for row in csv.DictReader(csv_file)]


def load_or_recompute_composition(csv_path, options, builder):
    """The composition JSON of an already prepared CSV; recomputed from the CSV if missing or stale."""
    composition = read_composition(csv_path)
    if composition is not None and composition.get("options") == json.loads(json.dumps(options)):
        return composition
    composition = builder(csv_path, options, _read_pool_rows(csv_path))
    composition["recomputed_from_csv"] = True
    write_json(composition_path(csv_path), composition)
    logger.info("Recomputed %s from %s (the CSV was already prepared).", composition_path(csv_path), csv_path)
    return composition


def format_counts(counts):
    """``"name count, ..."`` of a ``{name: count}`` dict, ``"none"`` if empty.

    Example
    -------
    >>> format_counts({"siren": 2, "dog_bark": 0}), format_counts({})
    ('siren 2, dog_bark 0', 'none')
    """
    return ", ".join(f"{name} {count}" for name, count in counts.items()) or "none"


def _percent(share):
    return f"{100 * share:.1f} %"


def _hours(hours):
    return f"{hours:.3g} h"


def log_composition(composition):
    """Logs a pool's composition: one line for the pool, one per source."""
    name = os.path.basename(composition["csv"])
    if composition["pool"] == "rirs":
        kinds = "; ".join(
            f"{kind} {entry['files']} files ({_percent(entry['draw_share'])} of draws, {_hours(entry['hours'])})"
            for kind, entry in composition["by_kind"].items()
        )
        logger.info(
            "RIR pool %s: %d RIRs, %s, drawn uniformly over files: %s.",
            name,
            composition["files"],
            _hours(composition["hours"]),
            kinds,
        )
    else:
        logger.info(
            "Noise pool %s: %d files, %s, drawn uniformly over files.",
            name,
            composition["files"],
            _hours(composition["hours"]),
        )
    for source, entry in composition["sources"].items():
        details = ""
        if entry.get("kind"):
            details += f" [{entry['kind']}]"
        if entry.get("parts"):
            details += " (" + ", ".join(f"{part} {value['files']}" for part, value in entry["parts"].items()) + ")"
        if entry.get("excluded") is not None:
            details += f"; excluded classes: {format_counts(entry['excluded'])}"
        logger.info(
            "  %s: %d files = %s of file draws, %s = %s of hours%s; %s",
            source,
            entry["files"],
            _percent(entry["draw_share"]),
            _hours(entry["hours"]),
            _percent(entry["hours_share"]),
            details,
            entry.get("folder"),
        )
