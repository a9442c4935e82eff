"""Speech Robust Bench's released data set: its shards found in both hub layouts, and (with pyarrow) exported
to WAVs and a manifest the ASR recipe scores per condition and severity."""

import csv
import os

import numpy as np
import pytest
import soundfile

from robustdistiller.downstream.protocols import read_manifest
from robustdistiller.downstream.srb import SRB_SUBSET, export_srb, find_srb_shards
from robustdistiller.runs.options import OptionError


def touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").close()


def test_shards_are_found_by_condition_and_severity_in_both_layouts(tmp_path):
    folder = tmp_path / SRB_SUBSET
    touch(str(folder / "None.0-00000-of-00001-8a150d748ac13ca2.parquet"))
    touch(str(folder / "env_noise.3-00001-of-00002-d5217aca58dcea18.parquet"))
    touch(str(folder / "env_noise.3-00000-of-00002-891c5b45a3029f63.parquet"))
    touch(str(folder / "env_noise_musan.2" / "0001.parquet"))
    touch(str(folder / "env_noise_musan.2" / "0000.parquet"))
    touch(str(folder / "README.md"))
    shards = find_srb_shards(str(tmp_path))
    assert sorted(shards) == [("None", 0), ("env_noise", 3), ("env_noise_musan", 2)]
    assert [os.path.basename(path) for path in shards[("env_noise", 3)]] == [
        "env_noise.3-00000-of-00002-891c5b45a3029f63.parquet",
        "env_noise.3-00001-of-00002-d5217aca58dcea18.parquet",
    ]
    assert [os.path.basename(path) for path in shards[("env_noise_musan", 2)]] == ["0000.parquet", "0001.parquet"]
    with pytest.raises(OptionError, match="srb_folder"):
        find_srb_shards(str(tmp_path / "elsewhere"))


def test_export_writes_every_condition_and_severity_with_its_audio(tmp_path):
    pytest.importorskip("pyarrow")
    from robustdistiller.testing.fixtures.srb import UTTERANCES, generate_srb, utterance_audio

    root = generate_srb(str(tmp_path))
    manifest = export_srb(root, str(tmp_path / "out"))
    conditions, paths = read_manifest(manifest)
    assert list(conditions) == ["clean", "env_noise_wham_sev1", "gnoise_sev1", "gnoise_sev2"]
    with open(manifest, encoding="utf-8") as fin:
        assert len(list(csv.DictReader(fin))) == 4 * len(UTTERANCES)
    audio, rate = soundfile.read(paths[("gnoise_sev2", UTTERANCES[2])], dtype="float32")
    assert rate == 16000
    np.testing.assert_allclose(audio, utterance_audio(UTTERANCES[2], 2), atol=1 / 32768)  # FLAC 16-bit
    with pytest.raises(OptionError, match="rir"):
        export_srb(root, str(tmp_path / "other"), conditions=["rir"])
