"""Speaker-diarization (SD) lists of s3prl's LibriMix variant, or of prepared Kaldi-style folders.

Two inputs (``data_format``; ``auto`` detects which):

* ``librimix``: the generated ``Libri2Mix`` folder of s3prl's fork (``docs/reference/corpora.md``
  "Libri2Mix for diarization"),
  ``wav16k/max/{train-100,dev,test}/{mix_both,s1,s2,noise}/<id>.wav`` and
  ``wav16k/max/metadata/mixture_<split>_mix_both.csv`` (``mixture_ID, mixture_path, source_1_path,
  source_2_path, noise_path, length``), plus the fork's per-utterance VAD RTTMs
  ``metadata/LibriSpeech/{train_clean_100,dev_clean,test_clean}.rttm`` (``vad_rttm_folder``; keyed
  ``<chapter>-<utt>``, speaker = LibriSpeech speaker id). The mixture ``<spk>-<chap>-<utt>_<spk>-<chap>-<utt>``
  has both sources from t = 0 (``max`` mode), so source ``i``'s turns are its utterance's VAD turns.
  Audio is found by mixture ID in the split folders (the metadata's absolute paths are those of the
  machine that generated the data).
* ``kaldi``: the folders s3prl's ``prepare_diarization.py`` writes, ``<data_folder>/{train,dev,test}/``
  with ``wav.scp`` (``<recording> <path>``; relative paths are relative to ``data_folder``),
  ``segments`` (``<segment> <recording> <start> <end>``), ``utt2spk`` (``<segment> <speaker>``),
  ``reco2dur`` and ``rttm``. The turns come from ``segments`` + ``utt2spk`` (what s3prl's data loader
  reads; its ``rttm`` holds the same turns). These lists have no sources (``s1_wav``, ``s2_wav`` empty).

Each split's CSV has ``ID, duration, wav (mix_both), s1_wav, s2_wav, segments`` (JSON ``{speaker:
[[start, end], ...]}``), and its reference RTTM (``<csv without .csv>.rttm``) is written next to it.
Nothing is written under the data folders.
"""

import csv
import json
import logging
import os

import soundfile

from robustdistiller.downstream.der import read_rttm, write_rttm
from robustdistiller.data.files import read_text_lines
from robustdistiller.downstream.data import check_split_lists
from robustdistiller.data.prepare.lists import is_prepared, mark_prepared, write_csv

logger = logging.getLogger(__name__)

LIBRIMIX_LAYOUT = (
    "Libri2Mix/wav16k/max/{train-100,dev,test}/{mix_both,s1,s2,noise}/<id>.wav and "
    "Libri2Mix/wav16k/max/metadata/mixture_<split>_mix_both.csv"
)
KALDI_LAYOUT = "<data_folder>/{train,dev,test}/{wav.scp,segments,utt2spk,reco2dur,rttm}"
KALDI_FILES = ("wav.scp", "segments", "utt2spk", "reco2dur", "rttm")
CSV_HEADER = ["ID", "duration", "wav", "s1_wav", "s2_wav", "segments"]


def reference_rttm_path(csv_file):
    """The reference RTTM written next to a split's CSV (``save/test.csv`` -> ``save/test.rttm``)."""
    return os.path.splitext(csv_file)[0] + ".rttm"


def detect_format(data_folder, kaldi_splits):
    """``librimix`` when ``wav16k/max/metadata`` exists, ``kaldi`` when ``<split>/wav.scp`` does."""
    if os.path.isdir(os.path.join(data_folder, "wav16k", "max", "metadata")):
        return "librimix"
    if any(os.path.isfile(os.path.join(data_folder, split, "wav.scp")) for split in kaldi_splits.values()):
        return "kaldi"
    raise FileNotFoundError(
        f"data_folder '{data_folder}' is neither a Libri2Mix folder of s3prl's SD variant ({LIBRIMIX_LAYOUT}) "
        f"nor prepared Kaldi-style folders ({KALDI_LAYOUT}); set data_format to librimix or kaldi to get the "
        f"missing file named."
    )


def _librimix_split(data_folder, split, vad_rttm):
    metadata = os.path.join(data_folder, "wav16k", "max", "metadata", f"mixture_{split}_mix_both.csv")
    if not os.path.isfile(metadata):
        raise FileNotFoundError(
            f"Libri2Mix metadata '{metadata}' does not exist; expected {LIBRIMIX_LAYOUT} "
            f"(s3prl's LibriMix fork, generate_librimix_sd.sh)"
        )
    if not os.path.isfile(vad_rttm):
        raise FileNotFoundError(
            f"VAD RTTM '{vad_rttm}' does not exist; expected the fork's "
            f"metadata/LibriSpeech/<subset>.rttm (option vad_rttm_folder)"
        )
    vad = read_rttm(vad_rttm)
    with open(metadata, newline="", encoding="utf-8") as fin:
        mixtures = list(csv.DictReader(fin))
    rows = []
    for mixture in mixtures:
        mixture_id = mixture["mixture_ID"]
        paths = {
            folder: os.path.join(data_folder, "wav16k", "max", split, folder, f"{mixture_id}.wav")
            for folder in ("mix_both", "s1", "s2")
        }
        for path in paths.values():
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"'{path}' (mixture {mixture_id} of {metadata}) does not exist; expected {LIBRIMIX_LAYOUT}"
                )
        duration = int(mixture["length"]) / 16000
        turns = {}
        for utterance in mixture_id.split("_"):
            key = utterance.split("-", 1)[1]  # <chapter>-<utt>
            if key not in vad:
                raise KeyError(
                    f"Utterance '{utterance}' of mixture {mixture_id} has no turn in {vad_rttm} "
                    f"(key '{key}'); the VAD RTTM must be the fork's file of this split"
                )
            for speaker, speaker_turns in vad[key].items():
                clipped = [(start, min(end, duration)) for start, end in speaker_turns if start < duration]
                turns.setdefault(speaker, []).extend(clipped)
        rows.append([mixture_id, duration, paths["mix_both"], paths["s1"], paths["s2"], _turns_json(turns)])
    return rows


def _read_table(path, fields, description):
    table = []
    for number, line in enumerate(read_text_lines(path, "Kaldi-style SD file"), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < fields:
            raise ValueError(f"{path} line {number}: expected {description}, got {line!r}")
        table.append(parts)
    return table


def _kaldi_split(data_folder, split):
    folder = os.path.join(data_folder, split)
    for name in KALDI_FILES:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Kaldi-style SD file '{path}' does not exist; expected {KALDI_LAYOUT} "
                f"(s3prl's prepare_diarization.py output)"
            )
    wavs = {}
    for parts in _read_table(os.path.join(folder, "wav.scp"), 2, "'<recording> <wav path>'"):
        if len(parts) > 2 or parts[-1].endswith("|"):
            raise ValueError(
                f"{os.path.join(folder, 'wav.scp')}: recording {parts[0]} is a command, not a file; "
                f"this recipe reads '<recording> <wav path>' lines"
            )
        wavs[parts[0]] = parts[1] if os.path.isabs(parts[1]) else os.path.join(data_folder, parts[1])
    reco2dur = _read_table(os.path.join(folder, "reco2dur"), 2, "'<recording> <seconds>'")
    durations = {recording: float(seconds) for recording, seconds, *_ in reco2dur}
    speakers = {
        segment: speaker
        for segment, speaker, *_ in _read_table(os.path.join(folder, "utt2spk"), 2, "'<segment> <speaker>'")
    }
    turns = {recording: {} for recording in wavs}
    segments_file = os.path.join(folder, "segments")
    for segment, recording, start, end, *_ in _read_table(segments_file, 4, "'<segment> <recording> <start> <end>'"):
        if recording not in wavs or segment not in speakers:
            raise KeyError(
                f"{segments_file}: segment {segment} names recording '{recording}' or has a speaker "
                f"that wav.scp / utt2spk lack"
            )
        turns[recording].setdefault(speakers[segment], []).append((float(start), float(end)))
    rows = []
    for recording in sorted(wavs):
        if recording not in durations:
            raise KeyError(f"{os.path.join(folder, 'reco2dur')} has no duration for recording '{recording}'")
        if not os.path.isfile(wavs[recording]):
            raise FileNotFoundError(f"'{wavs[recording]}' (recording {recording} of {folder}/wav.scp) does not exist")
        rows.append([recording, durations[recording], wavs[recording], "", "", _turns_json(turns[recording])])
    return rows


def _turns_json(turns):
    return json.dumps(
        {
            str(speaker): [[round(start, 6), round(end, 6)] for start, end in sorted(speaker_turns)]
            for speaker, speaker_turns in sorted(turns.items())
        }
    )


def prepare_librimix_sd(
    data_folder,
    save_folder,
    csv_files,
    splits,
    kaldi_splits,
    vad_rttm_folder=None,
    vad_rttm_files=None,
    data_format="auto",
    skip_prep=False,
):
    """Writes the SD CSVs and reference RTTMs of the train / valid / test splits.

    Arguments
    ---------
    data_folder : str
        The ``Libri2Mix`` folder, or the folder of the Kaldi-style split folders.
    save_folder : str
        Holds the marker (the CSVs and RTTMs go where ``csv_files`` say).
    csv_files : dict
        ``{"train", "valid", "test"} -> CSV path``.
    splits : dict
        ``{"train", "valid", "test"} -> Libri2Mix split`` (``train-100``, ``dev``, ``test``).
    kaldi_splits : dict
        ``{"train", "valid", "test"} -> Kaldi folder`` (``train``, ``dev``, ``test``).
    vad_rttm_folder : str, optional
        The fork's ``metadata/LibriSpeech`` (needed by ``librimix``).
    vad_rttm_files : dict, optional
        ``{"train", "valid", "test"} -> RTTM file name`` in ``vad_rttm_folder``.
    data_format : str
        ``auto``, ``librimix`` or ``kaldi``.
    skip_prep : bool
        Only return the paths.

    Returns
    -------
    dict
        ``csv_files``.
    """
    if skip_prep:
        return csv_files
    if data_format == "auto":
        data_format = detect_format(data_folder, kaldi_splits)
    if data_format not in ("librimix", "kaldi"):
        raise ValueError(f"Option data_format must be auto, librimix or kaldi, got {data_format!r}")
    if data_format == "librimix" and not vad_rttm_folder:
        raise ValueError(
            "Option vad_rttm_folder (s3prl's LibriMix fork metadata/LibriSpeech, with "
            "train_clean_100.rttm, dev_clean.rttm, test_clean.rttm) is needed with Libri2Mix data"
        )
    options = {
        "data_folder": os.path.abspath(data_folder),
        "format": data_format,
        "csv_files": dict(csv_files),
        "splits": dict(splits),
        "kaldi_splits": dict(kaldi_splits),
        "vad_rttm_folder": vad_rttm_folder and os.path.abspath(vad_rttm_folder),
        "vad_rttm_files": dict(vad_rttm_files or {}),
    }
    outputs = list(csv_files.values()) + [reference_rttm_path(path) for path in csv_files.values()]
    if is_prepared(save_folder, "librimix_sd", options, outputs):
        logger.info("LibriMix SD lists already prepared in %s", save_folder)
        return csv_files
    for key, csv_file in csv_files.items():
        if data_format == "librimix":
            rows = _librimix_split(data_folder, splits[key], os.path.join(vad_rttm_folder, vad_rttm_files[key]))
        else:
            rows = _kaldi_split(data_folder, kaldi_splits[key])
        if not rows:
            raise ValueError(f"No recording in the {key} split of '{data_folder}' ({data_format} layout)")
        for row in rows:  # the duration the audio really has
            row[1] = round(soundfile.info(row[2]).frames / soundfile.info(row[2]).samplerate, 4)
        os.makedirs(os.path.dirname(os.path.abspath(csv_file)), exist_ok=True)
        write_csv(csv_file, CSV_HEADER, rows)
        write_rttm(reference_rttm_path(csv_file), {row[0]: json.loads(row[5]) for row in rows})
        logger.info("SD %s: %d recordings -> %s", key, len(rows), csv_file)
    check_split_lists(csv_files)  # every split has rows (names the empty one)
    mark_prepared(save_folder, "librimix_sd", options)
    return csv_files
