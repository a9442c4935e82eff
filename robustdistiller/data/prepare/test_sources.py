"""Noise and RIR sources of the peers' test protocols, read in their released layouts, into pool CSVs.

One function per corpus; each writes a SpeechBrain noise/RIR CSV (``ID,duration,wav,wav_format,wav_opts``,
the format of :mod:`.noise` and :mod:`.rirs`, readable by ``AddNoise``/``AddReverb`` and
:class:`robustdistiller.data.corruption.NoisePool`), with its ``<stem>_skipped.json`` (files left out and
why), ``<stem>_composition.json`` (files and hours per source) and prepared marker, only inside
``save_folder``; the source folders are only read. Layouts (the folder to give is in brackets):

- :func:`prepare_wham_noise`: [``wham_noise``]/``tt/*.wav`` (Huang ``2dis``; SRB ``env_noise_wham``);
- :func:`prepare_fsd50k`: [folder holding ``FSD50K.eval_audio``]/``FSD50K.eval_audio/*.wav`` (Huang ``fsd50k``);
- :func:`prepare_dns_noise`: [DNS root]/``datasets_fullband/noise_fullband/*.wav`` (Huang ``dns``);
- :func:`prepare_dns_rirs`: [DNS root]/``datasets_fullband/impulse_responses/**/*.wav`` (Huang ``dns``);
- :func:`prepare_ms_snsd`: [``MS-SNSD``]/``noise_test/*.wav`` (SRB ``env_noise``);
- :func:`prepare_esc50`: [``ESC-50-master``]/``audio/*.wav`` (SRB ``env_noise_esc50``);
- :func:`prepare_simulated_rirs`: [``RIRS_NOISES``]/``simulated_rirs/<size>room/Room<n>/*.wav`` (SRB ``rir``);
- :func:`prepare_real_rirs`: [``RIRS_NOISES``]/``real_rirs_isotropic_noises/rir_list`` (SRB ``real_rir``).

The RIR lists add columns: ``rt60`` (seconds) and ``severity`` (SRB's bins 1-4, 0: none; see
:func:`robustdistiller.data.room_acoustics.severity_bins`), and for real RIRs ``srmr``.

Disjointness from the distillation pool (MUSAN ``noise/``, UrbanSound8K minus two classes, white noise,
DNS-Challenge / SLR28 RIRs; ``docs/reference/robustdistiller.md`` "Corruption"):

- **Not disjoint**: the DNS-Challenge ``impulse_responses`` hold SLR26 and SLR28, and SLR28 *is*
  RIRS_NOISES: Huang's ``dns`` RIRs, SRB's ``rir`` (RIRS_NOISES simulated) and ``real_rir``
  (RIRS_NOISES real) all overlap the RIRs the students were distilled with. SRB's Gaussian noise is the
  same kind of noise as the white noise of the pool (different draws).
- **Possibly overlapping recordings**: FSD50K, ESC-50, MS-SNSD and the DNS noise all take clips from
  Freesound, as UrbanSound8K and MUSAN ``noise/free-sound`` do; a clip can be in two of them
  (FSD50K and UrbanSound8K name their files by Freesound ID: :func:`shared_freesound_ids` finds those).
- **Disjoint**: WHAM! noise (its own recordings), MUSAN ``music``/``speech`` (other MUSAN subsets).

Sources: ``docs/reference/peer_distortions.md`` "Noise and RIR corpora".
"""

import csv
import logging
import os
import re

from robustdistiller.data.audio import load_audio
from robustdistiller.data.files import list_folder, read_text_lines
from robustdistiller.data.prepare.lists import (
    LeftOutFiles,
    check_prep_flags,
    checked_folder,
    deduplicate_ids,
    find_files,
    leave_out_non_audio,
    make_id,
    mark_prepared,
    remove_marker,
    require_folder,
    skipped_path,
    use_prepared,
    write_csv,
    write_json,
)
from robustdistiller.data.prepare.noise import MIN_NOISE_SECONDS, TOO_SHORT_NOISE
from robustdistiller.data.prepare.pools import NOISE_HEADER, composition_path, pool_composition, pool_rows
from robustdistiller.data.prepare.rirs import read_kaldi_list
from robustdistiller.data.room_acoustics import rt60, sabine_rt60, severity_bins

logger = logging.getLogger(__name__)

RIR_HEADER = NOISE_HEADER + ["rt60", "severity"]
REAL_RIR_HEADER = NOISE_HEADER + ["rt60", "srmr", "severity"]
RT60_SOURCES = ("sabine", "measured")
MEASURE_SAMPLE_RATE = 16000
"""RIRs are measured at this rate (resampled when loaded), on their first channel."""
NO_ROOM_INFO = "no line for its room in the room_info file"
RT60_NOT_MEASURABLE = "its RT60 cannot be measured (T30 and T20 both refused: cut short or noise floor)"
_SIMULATED_LAYOUT = "RIRS_NOISES/simulated_rirs/<size>room/Room<n>/Room<n>-<k>.wav with <size>room/room_info"
_REAL_LAYOUT = "RIRS_NOISES/real_rirs_isotropic_noises/rir_list (and the .wav files it names)"
_FREESOUND_ID = re.compile(r"^(\d+)")


def _subfolder(folder, option_name, relative_paths, leaf_name, layout):
    """The first of ``relative_paths`` under ``folder`` that is a folder, or ``folder`` itself when its
    name is ``leaf_name``; otherwise an error naming the option and the layout expected."""
    require_folder(folder, option_name, layout)
    for relative_path in relative_paths:
        path = os.path.join(folder, relative_path)
        if os.path.isdir(path):
            return path
    if os.path.basename(os.path.normpath(folder)) == leaf_name:
        return folder
    raise FileNotFoundError(
        f"{option_name} '{folder}' holds none of {list(relative_paths)} and is not a '{leaf_name}' folder; "
        f"expected the layout {layout}."
    )


def _audio_entries(folder, prefix, left_out, recursive):
    """``(ID, path)`` of the audio files in ``folder`` (recursively or not); other files counted."""
    if recursive:
        audio_files, other_files = find_files(folder, left_out)
    else:
        _, names = list_folder(folder, "Audio folder")
        paths = [os.path.join(folder, name) for name in names]
        audio_files = [path for path in paths if _is_audio(path)]
        other_files = [path for path in paths if not _is_audio(path)]
    leave_out_non_audio(other_files, left_out)
    return [(make_id(os.path.relpath(path, folder), prefix), path) for path in audio_files]


def _is_audio(path):
    name = os.path.basename(path)
    return name.lower().endswith((".wav", ".flac", ".ogg")) and not name.startswith(".")


def _write_list(save_folder, csv_path, marker_name, options, header, rows, left_out, source, classify=None):
    """Writes the CSV, skipped and composition JSONs, then the marker (last: a crash prepares again)."""
    os.makedirs(save_folder, exist_ok=True)
    remove_marker(save_folder, marker_name)
    rows = deduplicate_ids(rows)
    write_csv(csv_path, header, rows)
    left_out.write()
    composition = pool_composition(
        "rirs" if "rt60" in header else "noise",
        csv_path,
        options,
        rows,
        classify or (lambda entry_id, path: (source, "")),
    )
    write_json(composition_path(csv_path), composition)
    mark_prepared(save_folder, marker_name, options)
    logger.info(
        "Wrote %s: %d %s files (%.1f min), %s left out (%s).",
        csv_path,
        len(rows),
        source,
        sum(float(row[1]) for row in rows) / 60,
        left_out.summary(),
        skipped_path(csv_path),
    )
    return composition


def _prepare_noise_source(
    save_folder, folder, option_name, relative_paths, layout, source, csv_name, recursive, skip_prep, force_prep
):
    """The shared body of the noise corpora: list, read headers, write; returns the CSV path."""
    check_prep_flags(skip_prep, force_prep)
    checked_folder(save_folder, "save_folder")
    csv_path = os.path.join(save_folder, csv_name)
    if skip_prep:
        return csv_path
    folder = checked_folder(folder, option_name)
    audio_folder = _subfolder(folder, option_name, relative_paths, os.path.basename(relative_paths[0]), layout)
    options = {option_name: folder, "layout": layout}
    marker_name = os.path.splitext(csv_name)[0]
    if use_prepared(save_folder, marker_name, options, [csv_path], force_prep, f"{source} list {csv_path}"):
        return csv_path
    left_out = LeftOutFiles(csv_path)
    entries = _audio_entries(audio_folder, source.replace("/", "_"), left_out, recursive)
    rows = pool_rows(entries, source, left_out, min_seconds=MIN_NOISE_SECONDS, too_short_reason=TOO_SHORT_NOISE)
    left_out.warn()
    if not rows:
        raise ValueError(f"No usable audio file in '{audio_folder}' ({option_name}); expected the layout {layout}.")
    _write_list(save_folder, csv_path, marker_name, options, NOISE_HEADER, rows, left_out, source)
    return csv_path


def prepare_wham_noise(save_folder, wham_folder, subset="tt", csv_name=None, skip_prep=False, force_prep=False):
    """Lists WHAM! noise ``<wham_noise>/<subset>/*.wav`` (Huang et al. and SRB test on ``tt``).

    Arguments
    ---------
    save_folder : str
        Where the CSV, its skipped/composition JSONs and marker go.
    wham_folder : str
        The ``wham_noise`` folder (holding ``tr``, ``cv``, ``tt``), or the subset folder itself.
    subset : str
        ``"tt"`` (test), ``"cv"`` or ``"tr"``.
    csv_name : str, optional
        Default ``wham_<subset>.csv``.
    skip_prep, force_prep : bool
        As every preparation: do nothing / prepare again even if prepared with the same options.

    Returns
    -------
    str
        The CSV path.

    Example
    -------
    >>> import tempfile
    >>> from robustdistiller.testing.fixtures.peer_sources import generate_peer_sources
    >>> sources = generate_peer_sources(tempfile.mkdtemp())
    >>> path = prepare_wham_noise(tempfile.mkdtemp(), sources["wham"])
    >>> len(open(path).read().splitlines()) - 1
    3
    """
    if subset not in ("tt", "cv", "tr"):
        raise ValueError(f"subset must be 'tt', 'cv' or 'tr' (the WHAM! noise folders), got {subset!r}.")
    return _prepare_noise_source(
        save_folder,
        wham_folder,
        "wham_folder",
        [subset],
        f"wham_noise/{subset}/*.wav",
        f"wham/{subset}",
        csv_name or f"wham_{subset}.csv",
        False,
        skip_prep,
        force_prep,
    )


def prepare_fsd50k(save_folder, fsd50k_folder, csv_name="fsd50k_eval.csv", skip_prep=False, force_prep=False):
    """Lists FSD50K's evaluation clips ``FSD50K.eval_audio/*.wav`` (all classes, as Huang et al.'s ``fsd50k``).

    ``fsd50k_folder`` holds ``FSD50K.eval_audio`` (or is it). Clips are named ``<Freesound ID>.wav``.
    Other arguments and the return value as :func:`prepare_wham_noise`.
    """
    return _prepare_noise_source(
        save_folder,
        fsd50k_folder,
        "fsd50k_folder",
        ["FSD50K.eval_audio"],
        "FSD50K.eval_audio/*.wav",
        "fsd50k/eval",
        csv_name,
        False,
        skip_prep,
        force_prep,
    )


def prepare_dns_noise(save_folder, dns_folder, csv_name="dns_noise.csv", skip_prep=False, force_prep=False):
    """Lists the DNS-Challenge noise ``datasets_fullband/noise_fullband/*.wav`` (Huang et al.'s ``dns``).

    ``dns_folder`` is the DNS-Challenge root (holding ``datasets_fullband``), ``datasets_fullband`` or
    ``noise_fullband`` itself. The files are 48 kHz: they are listed as they are and resampled when loaded.
    """
    return _prepare_noise_source(
        save_folder,
        dns_folder,
        "dns_folder",
        [os.path.join("datasets_fullband", "noise_fullband"), "noise_fullband"],
        "datasets_fullband/noise_fullband/*.wav",
        "dns/noise_fullband",
        csv_name,
        False,
        skip_prep,
        force_prep,
    )


def prepare_ms_snsd(save_folder, ms_snsd_folder, csv_name="ms_snsd_noise_test.csv", skip_prep=False, force_prep=False):
    """Lists MS-SNSD's test noise ``noise_test/*.wav`` (SRB's ``env_noise``); ``ms_snsd_folder``: ``MS-SNSD``."""
    return _prepare_noise_source(
        save_folder,
        ms_snsd_folder,
        "ms_snsd_folder",
        ["noise_test"],
        "MS-SNSD/noise_test/*.wav",
        "ms_snsd/noise_test",
        csv_name,
        False,
        skip_prep,
        force_prep,
    )


def prepare_esc50(save_folder, esc50_folder, csv_name="esc50.csv", skip_prep=False, force_prep=False):
    """Lists ESC-50's clips ``audio/*.wav`` (all 2,000, SRB's ``env_noise_esc50``); ``esc50_folder``: ``ESC-50-master``."""
    return _prepare_noise_source(
        save_folder,
        esc50_folder,
        "esc50_folder",
        ["audio"],
        "ESC-50-master/audio/*.wav",
        "esc50",
        csv_name,
        False,
        skip_prep,
        force_prep,
    )


def prepare_dns_rirs(save_folder, dns_folder, csv_name="dns_rirs.csv", skip_prep=False, force_prep=False):
    """Lists the DNS-Challenge RIRs ``datasets_fullband/impulse_responses/**/*.wav`` (Huang et al.'s ``dns``).

    They include SLR26 and SLR28 (= RIRS_NOISES): not disjoint from the distillation pool's RIRs. The
    composition JSON counts files per first sub-folder (``SLR26``, ``SLR28``...). Columns as the noise lists.
    """
    check_prep_flags(skip_prep, force_prep)
    checked_folder(save_folder, "save_folder")
    csv_path = os.path.join(save_folder, csv_name)
    if skip_prep:
        return csv_path
    layout = "datasets_fullband/impulse_responses/**/*.wav"
    folder = checked_folder(dns_folder, "dns_folder")
    rir_folder = _subfolder(
        folder,
        "dns_folder",
        [os.path.join("datasets_fullband", "impulse_responses"), "impulse_responses"],
        "impulse_responses",
        layout,
    )
    options = {"dns_folder": folder, "layout": layout}
    marker_name = os.path.splitext(csv_name)[0]
    if use_prepared(save_folder, marker_name, options, [csv_path], force_prep, f"DNS RIR list {csv_path}"):
        return csv_path
    left_out = LeftOutFiles(csv_path)
    entries = _audio_entries(rir_folder, "dns_rir", left_out, recursive=True)
    rows = pool_rows(entries, "DNS RIRs", left_out)
    left_out.warn()
    if not rows:
        raise ValueError(f"No usable RIR in '{rir_folder}' (dns_folder); expected the layout {layout}.")

    def classify(entry_id, path):
        parts = os.path.relpath(path, rir_folder).split(os.sep)
        return "dns/impulse_responses", parts[0] if len(parts) > 1 else ""

    _write_list(save_folder, csv_path, marker_name, options, NOISE_HEADER, rows, left_out, "DNS RIR", classify)
    return csv_path


def read_room_info(path):
    """Reads a RIRS_NOISES ``room_info`` file: ``{room name: Sabine RT60 (s)}``.

    Lines are ``<room name> <length> <width> <height> <receiver x> <receiver y> <receiver z> <absorption>``
    (space separated, the columns SRB's ``compute_rir_t60.py`` reads), e.g. ``small-Room001``.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "room_info")
    >>> _ = open(path, "w").write("small-Room001 10 5 3 1 1 1 0.5\\n")
    >>> {name: round(value, 4) for name, value in read_room_info(path).items()}
    {'small-Room001': 0.2542}
    """
    rooms = {}
    for line_number, line in enumerate(read_text_lines(path, "room_info file"), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            length, width, height = (float(value) for value in fields[1:4])
            absorption = float(fields[7])
        except (ValueError, IndexError) as error:
            raise ValueError(
                f"{path}, line {line_number}: expected '<room> <length> <width> <height> <x> <y> <z> "
                f"<absorption>', got {line!r}"
            ) from error
        rooms[fields[0]] = sabine_rt60(length, width, height, absorption)
    return rooms


def _measured_rt60(path):
    """RT60 of an RIR file by Schroeder integration (T30, else T20); None if neither can be measured."""
    response = load_audio(path, sample_rate=MEASURE_SAMPLE_RATE, channel=0)
    for method in ("T30", "T20"):
        try:
            return rt60(response, MEASURE_SAMPLE_RATE, method)
        except ValueError:
            continue
    return None


def _with_severity(rows, values_column, higher_is_worse):
    """Appends SRB's severity (over all rows having a value; 0 for the others) to each row."""
    values = [row[values_column] for row in rows if row[values_column] != ""]
    severities = iter(severity_bins(values, higher_is_worse)) if values else iter(())
    for row in rows:
        row.append(next(severities) if row[values_column] != "" else 0)
    return rows


def prepare_simulated_rirs(
    save_folder,
    rirs_noises_folder,
    rt60_source="sabine",
    csv_name="rirs_noises_simulated.csv",
    skip_prep=False,
    force_prep=False,
):
    """Lists RIRS_NOISES' simulated RIRs with their RT60 and SRB's ``rir`` severity (1-4).

    Arguments
    ---------
    save_folder : str
        Where the CSV (``ID,duration,wav,wav_format,wav_opts,rt60,severity``) and its JSONs go.
    rirs_noises_folder : str
        The ``RIRS_NOISES`` folder (``simulated_rirs/<size>room/Room<n>/Room<n>-<k>.wav``, a
        ``room_info`` per size folder).
    rt60_source : str
        ``"sabine"``: ``0.161 V / (S a)`` of the room in ``room_info``, as SRB does (its bins are made
        on these values); ``"measured"``: Schroeder T30 (else T20) of each file
        (:func:`robustdistiller.data.room_acoustics.rt60`).
    csv_name, skip_prep, force_prep
        As :func:`prepare_wham_noise`.

    Returns
    -------
    str
        The CSV path. Severities are SRB's: four equal-width RT60 bins between the smallest and the
        largest RT60 listed (so they are those of SRB only when the whole release is listed); the
        smallest RT60 is in none (severity 0). Files whose room has no ``room_info`` line (sabine) or
        whose RT60 cannot be measured are left out and reported.
    """
    if rt60_source not in RT60_SOURCES:
        raise ValueError(f"rt60_source must be one of {RT60_SOURCES}, got {rt60_source!r}.")
    check_prep_flags(skip_prep, force_prep)
    checked_folder(save_folder, "save_folder")
    csv_path = os.path.join(save_folder, csv_name)
    if skip_prep:
        return csv_path
    folder = checked_folder(rirs_noises_folder, "rirs_noises_folder")
    simulated = _subfolder(folder, "rirs_noises_folder", ["simulated_rirs"], "simulated_rirs", _SIMULATED_LAYOUT)
    options = {"rirs_noises_folder": folder, "rt60_source": rt60_source}
    marker_name = os.path.splitext(csv_name)[0]
    if use_prepared(save_folder, marker_name, options, [csv_path], force_prep, f"Simulated RIR list {csv_path}"):
        return csv_path
    left_out = LeftOutFiles(csv_path)
    size_folders = list_folder(simulated, "Simulated RIR folder")[0]
    if not size_folders:
        raise FileNotFoundError(f"No <size>room folder in '{simulated}'; expected {_SIMULATED_LAYOUT}.")
    rows = []
    for size_folder in size_folders:
        size_path = os.path.join(simulated, size_folder)
        rooms = {}
        if rt60_source == "sabine":
            room_info = os.path.join(size_path, "room_info")
            if not os.path.isfile(room_info):
                raise FileNotFoundError(
                    f"'{room_info}' does not exist: rt60_source='sabine' needs it ({_SIMULATED_LAYOUT}); "
                    "rt60_source='measured' does not."
                )
            rooms = read_room_info(room_info)
        audio_files, other_files = find_files(size_path, left_out)
        leave_out_non_audio(
            [path for path in other_files if os.path.basename(path) not in ("room_info", "rir_list")], left_out
        )
        entries = [(make_id(os.path.relpath(path, simulated), "sim"), path) for path in audio_files]
        for row in pool_rows(entries, f"Simulated RIRs ({size_folder})", left_out):
            if rt60_source == "sabine":
                # SRB: room name = "<size folder without 'room'>-<Room folder>", e.g. small-Room001
                room_name = size_folder.replace("room", "") + "-" + os.path.basename(os.path.dirname(row[2]))
                if room_name not in rooms:
                    left_out.add(NO_ROOM_INFO, row[2], detail=room_name)
                    continue
                value = rooms[room_name]
            else:
                value = _measured_rt60(row[2])
                if value is None:
                    left_out.add(RT60_NOT_MEASURABLE, row[2])
                    continue
            rows.append(row + [round(value, 6)])
    left_out.warn()
    if not rows:
        raise ValueError(f"No usable simulated RIR under '{simulated}'; expected {_SIMULATED_LAYOUT}.")
    rows = _with_severity(rows, 5, higher_is_worse=True)

    def classify(entry_id, path):
        return "rirs_noises/simulated", os.path.relpath(path, simulated).split(os.sep)[0]

    _write_list(save_folder, csv_path, marker_name, options, RIR_HEADER, rows, left_out, "simulated RIR", classify)
    return csv_path


def read_srmr_csv(path):
    """Reads SRMR values per RIR from a CSV with a ``srmr`` column and a ``filename`` or ``wav`` column.

    SRB's ``rir_snr.csv`` (``filename,srmr``) has this form; keys are base names of the files.
    """
    values = {}
    with open(path, newline="", encoding="utf-8") as csv_file:
        reader = csv.DictReader(csv_file)
        columns = reader.fieldnames or []
        name_column = "filename" if "filename" in columns else "wav" if "wav" in columns else None
        if name_column is None or "srmr" not in columns:
            raise ValueError(
                f"SRMR file '{path}' needs a 'srmr' column and a 'filename' or 'wav' column, has {columns}."
            )
        for row in reader:
            values[os.path.basename(row[name_column])] = float(row["srmr"])
    return values


def prepare_real_rirs(
    save_folder, rirs_noises_folder, srmr_csv=None, csv_name="rirs_noises_real.csv", skip_prep=False, force_prep=False
):
    """Lists RIRS_NOISES' real RIRs (``real_rirs_isotropic_noises/rir_list``) with RT60, SRMR and severity.

    Arguments
    ---------
    save_folder : str
        Where the CSV (``ID,duration,wav,wav_format,wav_opts,rt60,srmr,severity``) and its JSONs go.
    rirs_noises_folder : str
        The ``RIRS_NOISES`` folder.
    srmr_csv : str, optional
        SRMR of each RIR (:func:`read_srmr_csv`), e.g. computed with the ``srmrpy`` package as SRB's
        ``compute_rir_srmr.py`` does. SRB's ``real_rir`` severities are SRMR bins; without this file the
        ``srmr`` column is empty and every severity is 0: SRMR is not computed by this project.
    csv_name, skip_prep, force_prep
        As :func:`prepare_wham_noise`.

    Returns
    -------
    str
        The CSV path. ``rt60`` is measured (T30, else T20; empty when neither can be measured: the
        file is kept). The isotropic noises of the same folder (``noise_list``) are never listed.
    """
    check_prep_flags(skip_prep, force_prep)
    checked_folder(save_folder, "save_folder")
    csv_path = os.path.join(save_folder, csv_name)
    if skip_prep:
        return csv_path
    folder = checked_folder(rirs_noises_folder, "rirs_noises_folder")
    require_folder(folder, "rirs_noises_folder", _REAL_LAYOUT)
    list_path = os.path.join(folder, "real_rirs_isotropic_noises", "rir_list")
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"'{list_path}' does not exist; expected {_REAL_LAYOUT}.")
    srmr_path = checked_folder(srmr_csv, "srmr_csv")
    options = {"rirs_noises_folder": folder, "srmr_csv": srmr_path}
    marker_name = os.path.splitext(csv_name)[0]
    if use_prepared(save_folder, marker_name, options, [csv_path], force_prep, f"Real RIR list {csv_path}"):
        return csv_path
    srmr = read_srmr_csv(srmr_path) if srmr_path else {}
    if not srmr_path:
        logger.warning(
            "prepare_real_rirs: no srmr_csv given; the 'srmr' column stays empty and no real RIR gets an SRB "
            "severity (SRB bins real RIRs by SRMR, which this project does not compute)."
        )
    left_out = LeftOutFiles(csv_path)
    entries = []
    for rir_id, path in read_kaldi_list(list_path, folder):
        if os.path.isfile(path):
            entries.append((make_id(rir_id), path))
        else:
            left_out.add("listed in the rir_list but missing", path, detail=list_path)
    rows = []
    for row in pool_rows(entries, "Real RIRs", left_out):
        value = _measured_rt60(row[2])
        rows.append(row + ["" if value is None else round(value, 6), srmr.get(os.path.basename(row[2]), "")])
    left_out.warn()
    if not rows:
        raise ValueError(f"No usable real RIR listed in '{list_path}'.")
    rows = _with_severity(rows, 6, higher_is_worse=False)

    def classify(entry_id, path):
        return "rirs_noises/real", os.path.basename(path).split("_")[0]

    _write_list(save_folder, csv_path, marker_name, options, REAL_RIR_HEADER, rows, left_out, "real RIR", classify)
    return csv_path


def shared_freesound_ids(fsd50k_csv, urbansound_folder):
    """Freesound IDs both in an FSD50K list (``<id>.wav``) and in UrbanSound8K (``<id>-<class>-...wav``).

    A non-empty answer means the ``fsd50k`` test noise shares recordings with the distillation pool.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(folder, "audio", "fold1"))
    >>> _ = open(os.path.join(folder, "audio", "fold1", "100-3-0-0.wav"), "w").close()
    >>> listing = os.path.join(folder, "fsd.csv")
    >>> _ = open(listing, "w").write("ID,duration,wav\\na,1.0,/x/100.wav\\nb,1.0,/x/7.wav\\n")
    >>> shared_freesound_ids(listing, folder)
    ['100']
    """
    with open(fsd50k_csv, newline="", encoding="utf-8") as csv_file:
        fsd_ids = {os.path.splitext(os.path.basename(row["wav"]))[0] for row in csv.DictReader(csv_file)}
    urban_ids = set()
    for directory, _, names in os.walk(urbansound_folder):
        for name in names:
            match = _FREESOUND_ID.match(name)
            if match and name.lower().endswith(".wav"):
                urban_ids.add(match.group(1))
    return sorted(fsd_ids & urban_ids, key=lambda value: (len(value), value))


__all__ = [
    "prepare_dns_noise",
    "prepare_dns_rirs",
    "prepare_esc50",
    "prepare_fsd50k",
    "prepare_ms_snsd",
    "prepare_real_rirs",
    "prepare_simulated_rirs",
    "prepare_wham_noise",
    "read_room_info",
    "read_srmr_csv",
    "shared_freesound_ids",
]
