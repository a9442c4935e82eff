"""Room impulse responses: RIRS_NOISES (OpenSLR 28), DNS-Challenge or any folder of RIRs into one CSV.

:func:`prepare_rirs` lists the ``rir_list`` entries of RIRS_NOISES (real and/or simulated; the
isotropic and point-source noises of the same folders never), or every audio file of a DNS-Challenge
``impulse_responses`` folder or any folder except those in a ``noise_list`` or under
``pointsource_noises``, in the pool format of :mod:`.pools` (for ``AddReverb``);
:func:`rir_composition` says how much of the uniform file draws each RIR folder and kind (real,
simulated) gets. Besides the shared reasons of :mod:`.lists`, RIRs listed in a ``rir_list`` but
missing (:data:`MISSING_RIR`) or also listed in a ``noise_list`` (:data:`RIR_ALSO_NOISE`) are left
out, counted and warned about.
"""

import logging
import os
import re

from robustdistiller.data.files import list_folder, read_text_lines
from robustdistiller.data.prepare.lists import (
    AUDIO_EXTENSIONS,
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
    load_or_recompute_composition,
    log_composition,
    pool_composition,
    pool_rows,
    relative_parts,
    shares,
    write_pool_csv,
)
from robustdistiller.runs.options import as_list

logger = logging.getLogger(__name__)

RIRS_NOISES_SUBSETS = ("real", "simulated")
RIR_FORMATS = ("rirs_noises", "dns", "folder")
MISSING_RIR = "listed in a rir_list but missing"
RIR_ALSO_NOISE = "listed in a rir_list but also in a noise_list"
RIR_KINDS = ("real", "simulated", "unknown")
_ROOM_FOLDER = re.compile(r"^room\d+$", re.IGNORECASE)
_REAL_RIR_DATABASE = re.compile(r"^([A-Za-z0-9]+)_type\d")


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
            logger.warning("Skipping malformed line %d of %s: %r", line_number, list_path, line.strip())
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
    require_folder(rir_folder, "RIRS_NOISES folder", layout)
    unknown = sorted(set(subsets) - set(RIRS_NOISES_SUBSETS))
    if unknown or not subsets:
        raise ValueError(f"rirs_noises_subsets must be among {RIRS_NOISES_SUBSETS}, got {list(subsets)}")
    list_paths = []
    if "real" in subsets:
        list_paths.append(os.path.join(rir_folder, "real_rirs_isotropic_noises", "rir_list"))
    if "simulated" in subsets:
        simulated = os.path.join(rir_folder, "simulated_rirs")
        require_folder(simulated, "Simulated RIR folder", "RIRS_NOISES/simulated_rirs/<size>/rir_list")
        list_paths += [
            os.path.join(simulated, size, "rir_list") for size in list_folder(simulated, "Simulated RIR folder")[0]
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
    logger.info("RIRS_NOISES %s: %d RIRs listed in %d rir_list file(s).", list(subsets), len(entries), len(list_paths))
    return entries


def _rir_folder_entries(rir_folder, description, left_out):
    require_folder(rir_folder, description, "a folder of RIR .wav/.flac files")
    audio_files, other_files = find_files(rir_folder, left_out)
    noise_paths = _noise_list_paths(other_files)
    kept = []
    for path in audio_files:
        relative = os.path.relpath(path, rir_folder)
        if os.path.normpath(path) in noise_paths or "pointsource_noises" in relative.split(os.sep):
            continue
        kept.append((make_id(relative), path))
    if len(kept) < len(audio_files):
        logger.info(
            "%s: left out %d noise file(s) (listed in a noise_list or under pointsource_noises).",
            rir_folder,
            len(audio_files) - len(kept),
        )
    ignored = [path for path in other_files if os.path.basename(path) not in ("rir_list", "noise_list")]
    leave_out_non_audio(ignored, left_out)
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
    Left out, counted and warned about (see :mod:`robustdistiller.data.prepare`): RIRs listed in a ``rir_list``
    but missing or also listed in a ``noise_list``, non-audio files (``"dns"``, ``"folder"``),
    unreadable or empty files, paths with ``$``.
    """
    check_prep_flags(skip_prep, force_prep)
    rirs_noises_subsets = as_list(rirs_noises_subsets, "rirs_noises_subsets")
    checked_folder(save_folder, "save_folder")  # the lists keep the path as given
    csv_path = os.path.join(save_folder, csv_name)
    if skip_prep:
        return csv_path
    if rir_format not in RIR_FORMATS:
        raise ValueError(f"rir_format must be one of {RIR_FORMATS}, got '{rir_format}'.")
    rir_folder = checked_folder(rir_folder, "rir_folder")
    options = {
        "rir_folder": rir_folder,
        "rir_format": rir_format,
        "rirs_noises_subsets": sorted(rirs_noises_subsets) if rir_format == "rirs_noises" else [],
    }
    marker_name = os.path.splitext(csv_name)[0]
    if use_prepared(save_folder, marker_name, options, [csv_path], force_prep, f"RIR CSV {csv_path}"):
        log_composition(load_or_recompute_composition(csv_path, options, rir_composition))
        return csv_path
    left_out = LeftOutFiles(csv_path)
    if rir_format == "rirs_noises":
        entries = _rirs_noises_entries(rir_folder, rirs_noises_subsets, left_out)
    else:
        description = "DNS impulse_responses folder" if rir_format == "dns" else "RIR folder"
        entries = _rir_folder_entries(rir_folder, description, left_out)
    rows = pool_rows(entries, "RIRs", left_out)
    left_out.warn()
    if not rows:
        raise ValueError(f"No usable RIR file found under '{rir_folder}' (format '{rir_format}').")
    composition = write_pool_csv(
        save_folder,
        csv_path,
        marker_name,
        options,
        rows,
        left_out,
        lambda rows: rir_composition(csv_path, options, rows, unreadable=unreadable_count(left_out)),
    )
    logger.info(
        "Wrote %s: %d RIRs, %s left out (%s), from %s.",
        csv_path,
        len(rows),
        left_out.summary(),
        skipped_path(csv_path),
        rir_folder,
    )
    log_composition(composition)
    return csv_path


def _rir_source(path, rir_folder):
    """``(source, part)`` of a RIR: its folder relative to ``rir_folder`` without ``RoomNNN`` levels.

    E.g. ``real_rirs_isotropic_noises``, ``simulated_rirs/smallroom`` (RIRS_NOISES),
    ``SLR26/simulated_rirs_48k/smallroom`` or ``SLR28/RIRS_NOISES/real_rirs_isotropic_noises`` (DNS);
    the part is the database of a real RIRS_NOISES file name (``RVB2014``, ``RWCP``, ``air``).
    """
    parts = relative_parts(path, rir_folder)
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
    composition = pool_composition(
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
        kind: shares(kinds[kind][0], kinds[kind][1], len(rows), total_seconds) for kind in RIR_KINDS if kind in kinds
    }
    composition["unreadable_skipped"] = unreadable
    composition["recomputed_from_csv"] = False
    return composition
