"""The peers' noise and RIR sources read in their released layouts (on generated miniatures)."""

import csv
import json
import os

import pytest

from robustdistiller.data.prepare import test_sources
from robustdistiller.data.prepare.lists import EMPTY_AUDIO, NOT_AUDIO
from robustdistiller.data.room_acoustics import sabine_rt60, severity_bins
from robustdistiller.testing.fixtures.peer_sources import (
    REAL_RIR_RT60,
    RIRS_PER_ROOM,
    SIMULATED_ROOMS,
    generate_peer_sources,
)
from tests.conftest import folder_snapshot

NOISE_PREPARATIONS = [
    # function, folder key, expected files, expected ID prefix
    (test_sources.prepare_wham_noise, "wham", 3, "wham_tt_"),
    (test_sources.prepare_fsd50k, "fsd50k", 3, "fsd50k_eval_"),
    (test_sources.prepare_dns_noise, "dns", 3, "dns_noise_fullband_"),
    (test_sources.prepare_ms_snsd, "ms_snsd", 2, "ms_snsd_noise_test_"),
    (test_sources.prepare_esc50, "esc50", 3, "esc50_"),
    (test_sources.prepare_dns_rirs, "dns", 4, "dns_rir_"),
]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return generate_peer_sources(str(tmp_path_factory.mktemp("peer")))


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as csv_file:
        return list(csv.DictReader(csv_file))


def read_skipped(csv_path):
    with open(os.path.splitext(csv_path)[0] + "_skipped.json", encoding="utf-8") as json_file:
        return json.load(json_file)


@pytest.mark.parametrize("prepare, key, expected_files, prefix", NOISE_PREPARATIONS)
def test_each_source_is_listed_from_its_layout_without_touching_it(
    sources, tmp_path, prepare, key, expected_files, prefix
):
    before = folder_snapshot(sources["root"])
    csv_path = prepare(str(tmp_path / "lists"), sources[key])
    assert folder_snapshot(sources["root"]) == before
    assert all(path.startswith(str(tmp_path / "lists")) for path in _files(tmp_path))
    rows = read_rows(csv_path)
    assert list(rows[0]) == ["ID", "duration", "wav", "wav_format", "wav_opts"]
    assert len(rows) == expected_files
    assert all(row["ID"].startswith(prefix) and os.path.isfile(row["wav"]) for row in rows)
    assert all(float(row["duration"]) > 0 for row in rows)
    with open(os.path.splitext(csv_path)[0] + "_composition.json", encoding="utf-8") as json_file:
        assert json.load(json_file)["files"] == expected_files


def _files(folder):
    return [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]


def test_only_the_test_subsets_are_read_and_junk_is_reported(sources, tmp_path):
    wham = read_rows(test_sources.prepare_wham_noise(str(tmp_path), sources["wham"]))
    assert all(f"{os.sep}tt{os.sep}" in row["wav"] for row in wham)
    assert NOT_AUDIO in json.dumps(read_skipped(str(tmp_path / "wham_tt.csv")))
    ms_snsd = read_rows(test_sources.prepare_ms_snsd(str(tmp_path), sources["ms_snsd"]))
    assert all("noise_test" in row["wav"] for row in ms_snsd)
    assert EMPTY_AUDIO in json.dumps(read_skipped(str(tmp_path / "ms_snsd_noise_test.csv")))


def test_a_wrong_folder_is_named_with_the_layout_expected(sources, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"esc50_folder '.*wham_noise'.*ESC-50-master/audio/\*\.wav"):
        test_sources.prepare_esc50(str(tmp_path), sources["wham"])
    with pytest.raises(FileNotFoundError, match=r"wham_folder '.*missing' does not exist"):
        test_sources.prepare_wham_noise(str(tmp_path), str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="subset"):
        test_sources.prepare_wham_noise(str(tmp_path), sources["wham"], subset="test")


def test_simulated_rirs_get_srb_rt60_and_severity(sources, tmp_path):
    rows = read_rows(test_sources.prepare_simulated_rirs(str(tmp_path), sources["rirs_noises"]))
    assert len(rows) == len(SIMULATED_ROOMS) * RIRS_PER_ROOM
    for row in rows:
        size, room = row["wav"].split(os.sep)[-3:-1]
        expected = sabine_rt60(*SIMULATED_ROOMS[f"{size.replace('room', '')}-{room}"])
        assert float(row["rt60"]) == pytest.approx(expected, abs=1e-6)
    assert [int(row["severity"]) for row in rows] == severity_bins([float(row["rt60"]) for row in rows])
    assert {int(row["severity"]) for row in rows} >= {0, 1, 4}


def test_measured_rt60_of_simulated_rirs_agrees_with_their_rooms(sources, tmp_path):
    # The fixture draws each RIR with its room's Sabine RT60; Schroeder T30 on Gaussian noise under the
    # envelope is within a few percent (tests/unit/data/test_room_acoustics.py: 5 %).
    path = test_sources.prepare_simulated_rirs(str(tmp_path), sources["rirs_noises"], rt60_source="measured")
    for row in read_rows(path):
        size, room = row["wav"].split(os.sep)[-3:-1]
        expected = sabine_rt60(*SIMULATED_ROOMS[f"{size.replace('room', '')}-{room}"])
        assert float(row["rt60"]) == pytest.approx(expected, rel=0.05)


def test_real_rirs_leave_the_noises_out_and_take_srmr_bins_from_a_file(sources, tmp_path):
    srmr_csv = tmp_path / "rir_srmr.csv"
    srmr_values = dict(zip(REAL_RIR_RT60, (9.0, 6.0, 3.0)))
    srmr_csv.write_text(
        "filename,srmr\n" + "".join(f"/any/{name}.wav,{value}\n" for name, value in srmr_values.items())
    )
    rows = read_rows(test_sources.prepare_real_rirs(str(tmp_path), sources["rirs_noises"], srmr_csv=str(srmr_csv)))
    assert sorted(os.path.splitext(os.path.basename(row["wav"]))[0] for row in rows) == sorted(REAL_RIR_RT60)
    for row in rows:
        name = os.path.splitext(os.path.basename(row["wav"]))[0]
        assert float(row["rt60"]) == pytest.approx(REAL_RIR_RT60[name], rel=0.05)
        assert float(row["srmr"]) == srmr_values[name]
    # SRMR edges 9, 7.5, 6, 4.5, 3: the largest SRMR is in no bin (SRB's strict bound), 6 in 2, 3 in 4.
    assert {float(row["srmr"]): int(row["severity"]) for row in rows} == {9.0: 0, 6.0: 2, 3.0: 4}


def test_real_rirs_without_srmr_have_no_severity(sources, tmp_path):
    rows = read_rows(test_sources.prepare_real_rirs(str(tmp_path), sources["rirs_noises"]))
    assert all(row["srmr"] == "" and row["severity"] == "0" for row in rows)


def test_fsd50k_clips_shared_with_urbansound_are_found(sources, tmp_path):
    csv_path = test_sources.prepare_fsd50k(str(tmp_path), sources["fsd50k"])
    assert test_sources.shared_freesound_ids(csv_path, sources["urbansound"]) == ["100"]
