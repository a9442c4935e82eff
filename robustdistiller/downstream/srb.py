"""Speech Robust Bench's released, pre-perturbed LibriSpeech test sets, for the ASR recipe.

SRB (Shah et al., arXiv 2403.07937) draws its noise files with a time-based seed, so only its released data set
``mshah1/speech_robust_bench`` on the Hugging Face hub (downloaded by the user, e.g. with
``huggingface_hub.snapshot_download(repo_id="mshah1/speech_robust_bench", repo_type="dataset",
allow_patterns="librispeech_asr-test.clean/*")``) gives its exact samples. Its folder
``librispeech_asr-test.clean`` holds one set of parquet shards per ``<condition>.<severity>``, in one of two
layouts seen in the hub's history: ``<condition>.<severity>-<k>-of-<n>[-<hash>].parquet`` (the uploads; the clean
set is ``None.0-...``) or ``<condition>.<severity>/<k>.parquet`` (the hub's parquet conversion).

:func:`find_srb_shards` lists the shards by condition and severity; :func:`export_srb` writes each utterance as
a 16 kHz WAV and a :mod:`robustdistiller.downstream.render_protocol` manifest whose condition names are
``<condition>_sev<severity>``, so the ASR recipe scores them per condition and severity with
``--test_audio_manifest=<folder>/manifest.csv`` (its ``test.csv``, LibriSpeech test-clean, gives the transcripts;
the utterance ids are LibriSpeech's ``<speaker>-<chapter>-<utterance>``, as the shards' ``id`` column).

Reading parquet needs ``pyarrow`` (not a dependency of this project: ``pip install pyarrow``). The columns read
are those of the hub's ``librispeech_asr`` data set, which SRB perturbs: ``id`` and ``audio`` (a struct of
encoded ``bytes`` and ``path``, or of decoded ``array`` and ``sampling_rate``). This layout was read from the
hub's file listings, not from a downloaded copy: check it on yours (:func:`find_srb_shards` names what it found).
"""

import csv
import io
import os
import re

import numpy as np
import scipy.io.wavfile
import soundfile
import torch
import torchaudio

from robustdistiller.downstream.render_protocol import MANIFEST_COLUMNS
from robustdistiller.runs.options import OptionError

SRB_SUBSET = "librispeech_asr-test.clean"
_SHARD = re.compile(r"^(?P<condition>[A-Za-z0-9_]+)\.(?P<severity>\d+)-\d+-of-\d+(-[0-9a-f]+)?\.parquet$")
_SHARD_FOLDER = re.compile(r"^(?P<condition>[A-Za-z0-9_]+)\.(?P<severity>\d+)$")


def find_srb_shards(srb_folder, subset=SRB_SUBSET):
    """``{(condition, severity): [parquet paths]}`` of a local copy of ``mshah1/speech_robust_bench``.

    The clean set is ``("None", 0)``. Both layouts (module docstring) are read; shards are sorted by name.

    Raises
    ------
    OptionError
        If ``srb_folder`` has no ``subset`` folder or it holds no shard (naming the layouts expected).

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, SRB_SUBSET, "gnoise.2"))
    >>> for name in ("gnoise.1-00000-of-00002-ab12.parquet", "gnoise.2/0000.parquet", "None.0-00000-of-00001.parquet"):
    ...     open(os.path.join(root, SRB_SUBSET, name), "w").close()
    >>> sorted(find_srb_shards(root))
    [('None', 0), ('gnoise', 1), ('gnoise', 2)]
    """
    folder = os.path.join(srb_folder, subset)
    if not os.path.isdir(folder):
        raise OptionError(
            f"Option `srb_folder`: '{srb_folder}' has no '{subset}' folder (a local copy of the hub data set "
            "mshah1/speech_robust_bench)."
        )
    shards = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        match = _SHARD.match(name)
        if match and os.path.isfile(path):
            shards.setdefault((match["condition"], int(match["severity"])), []).append(path)
            continue
        match = _SHARD_FOLDER.match(name)
        if match and os.path.isdir(path):
            parts = sorted(os.path.join(path, part) for part in os.listdir(path) if part.endswith(".parquet"))
            if parts:
                shards.setdefault((match["condition"], int(match["severity"])), []).extend(parts)
    if not shards:
        raise OptionError(
            f"Option `srb_folder`: '{folder}' holds no shard named <condition>.<severity>-<k>-of-<n>[-<hash>].parquet "
            "or <condition>.<severity>/<k>.parquet."
        )
    return shards


def _decode(audio, sample_rate):
    """The waveform of one ``audio`` cell (encoded bytes or a decoded array), mono float32 at ``sample_rate``."""
    if audio.get("bytes"):
        samples, rate = soundfile.read(io.BytesIO(audio["bytes"]), dtype="float32", always_2d=True)
        samples = samples.mean(axis=1)
    elif audio.get("array") is not None:
        samples, rate = np.asarray(audio["array"], dtype=np.float32), int(audio["sampling_rate"])
    else:
        raise ValueError(f"An SRB audio cell has neither bytes nor array: keys {sorted(audio)}.")
    waveform = torch.from_numpy(np.ascontiguousarray(samples))
    if rate != sample_rate:
        waveform = torchaudio.functional.resample(waveform, rate, sample_rate)
    return waveform.numpy().astype(np.float32)


def export_srb(srb_folder, output_folder, conditions=None, sample_rate=16000, subset=SRB_SUBSET):
    """Writes SRB's utterances as WAVs and a ``manifest.csv`` (conditions ``<condition>_sev<severity>``).

    Arguments
    ---------
    srb_folder : str
        The local copy of ``mshah1/speech_robust_bench``.
    output_folder : str
        Where ``<condition>_sev<severity>/<id>.wav`` and ``manifest.csv`` go (an existing manifest is an error).
    conditions : sequence of str, optional
        SRB condition names to export (e.g. ``["gnoise", "env_noise_wham"]``; None: all, clean included).
    sample_rate : int
        Sample rate of the WAVs.

    Returns
    -------
    str
        The manifest's path.
    """
    import pyarrow.parquet  # optional: only this function reads parquet

    manifest_path = os.path.join(output_folder, "manifest.csv")
    if os.path.exists(manifest_path):
        raise FileExistsError(f"'{manifest_path}' exists: export into a new folder (nothing is overwritten).")
    shards = find_srb_shards(srb_folder, subset)
    if conditions is not None:
        unknown = sorted(set(conditions) - {condition for condition, _ in shards})
        if unknown:
            raise OptionError(
                f"SRB conditions {unknown} are not in '{srb_folder}'; it has {sorted({c for c, _ in shards})}."
            )
        shards = {key: paths for key, paths in shards.items() if key[0] in conditions}
    rows = []
    for (condition, severity), paths in sorted(shards.items()):
        name = "clean" if condition == "None" else f"{condition}_sev{severity}"
        os.makedirs(os.path.join(output_folder, name), exist_ok=True)
        for path in paths:
            table = pyarrow.parquet.read_table(path, columns=["id", "audio"])
            for utterance, audio in zip(table.column("id").to_pylist(), table.column("audio").to_pylist()):
                relative = f"{name}/{utterance}.wav"
                scipy.io.wavfile.write(os.path.join(output_folder, relative), sample_rate, _decode(audio, sample_rate))
                rows.append(
                    {
                        "utterance": utterance,
                        "condition": name,
                        "wav": relative,
                        "parameters": f"srb {condition} {severity}",
                    }
                )
    with open(manifest_path, "w", newline="", encoding="utf-8") as fout:
        writer = csv.DictWriter(fout, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return manifest_path
