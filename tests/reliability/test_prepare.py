"""Reliability of data preparation: nothing left out silently, list options, '$' paths, stale lists, crops.

Each case builds small folders of synthetic 1-s audio in ``tmp_path`` (or reads the session mini
corpus) and checks, with :func:`folder_snapshot`, that no input file changed.

Issue 20: folders that cannot be listed (simulated by making ``os.scandir`` raise ``PermissionError``
for them: the tests run as root, whom ``chmod 000`` does not stop) and symbolic links (link farms,
cycles) in every preparer; truncated FLAC files whose header is intact; transcripts that are not
UTF-8; downstream splits that are empty or hold labels training never sees.
"""

from pathlib import Path
import csv
import importlib.util
import json
import logging
import os
import re
import shutil

import numpy as np
import pytest
import soundfile
from speechbrain.dataio.dataio import load_data_csv

from tests.conftest import REPOSITORY_ROOT, folder_snapshot
from robustdistiller.data.audio import AudioLoadError, audio_info
from robustdistiller.data.corruption import Corruptor
from robustdistiller.data.files import REPEATED_FOLDER, UNREADABLE_FOLDER, FolderReadError, TextFileError
from robustdistiller.data.pipeline import load_listed_audio, make_distillation_dataset
from robustdistiller.downstream.data import SplitError, check_split_lists
from robustdistiller.runs.options import OptionError
from robustdistiller.data.prepare.librispeech import (
    MISSING_FLAC,
    NO_TRANSCRIPT,
    NOT_IN_SPEAKER_FOLDER,
    prepare_librispeech,
)
from robustdistiller.data.prepare.lists import DAMAGED_AUDIO, DOLLAR_IN_PATH, StaleListError, skipped_path
from robustdistiller.data.prepare.noise import TOO_SHORT_NOISE, prepare_noise
from robustdistiller.data.prepare.rirs import MISSING_RIR, prepare_rirs

RATE = 16000


def _audio(path, num_samples=RATE, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.random.default_rng(seed).uniform(-0.3, 0.3, num_samples), RATE)
    return path


def _transcript(folder, name, utterance_ids):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "w") as transcript:
        transcript.writelines(f"{utterance_id} SOME WORDS\n" for utterance_id in utterance_ids)


def _rows(csv_path):
    with open(csv_path, newline="") as csv_file:
        return list(csv.DictReader(csv_file))


def _skipped(csv_path):
    with open(skipped_path(csv_path)) as json_file:
        return {reason: entry["files"] for reason, entry in json.load(json_file)["by_reason"].items()}


def _warnings(caplog):
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


def _small_librispeech(root):
    """``LibriSpeech/train-clean-100`` with one regular chapter and every irregular case."""
    subset = root / "LibriSpeech" / "train-clean-100"
    chapter = subset / "11" / "22"
    _audio(chapter / "11-22-0001.flac")
    _audio(chapter / "11-22-0002.FLAC", seed=1)  # upper-case extension: kept
    _audio(chapter / "11-22-0009.flac", seed=2)  # no transcript line: left out
    _transcript(chapter, "11-22.trans.txt", ["11-22-0001", "11-22-0002", "11-22-0003"])  # 0003: no flac
    flat = subset / "33"  # extracted without the chapter level: kept, speaker 33
    _audio(flat / "33-44-0001.flac", seed=3)
    _transcript(flat, "33-44.trans.txt", ["33-44-0001"])
    _audio(subset / "55-66-0001.flac", seed=4)  # no speaker folder: left out
    return root / "LibriSpeech"


# --- 1. Nothing is left out silently -------------------------------------------------------------


def test_librispeech_irregular_files_are_kept_or_counted(tmp_path, caplog):
    librispeech = _small_librispeech(tmp_path / "data")
    before = folder_snapshot(str(librispeech))
    save = tmp_path / "save"
    with caplog.at_level(logging.INFO, logger="robustdistiller.data.prepare"):
        paths = prepare_librispeech(str(librispeech), str(save), ["train-clean-100"], [])
    rows = {row["ID"]: row for row in _rows(paths["train"])}
    assert sorted(rows) == ["11-22-0001", "11-22-0002", "33-44-0001"]
    assert rows["11-22-0002"]["wav"].endswith("11-22-0002.FLAC")
    assert (rows["33-44-0001"]["spk_id"], rows["11-22-0001"]["spk_id"]) == ("33", "11")
    assert _skipped(paths["train"]) == {NOT_IN_SPEAKER_FOLDER: 1, MISSING_FLAC: 1, NO_TRANSCRIPT: 1}
    warnings = _warnings(caplog)
    assert len(warnings) == 3
    train_csv = paths["train"]
    assert f"1 file left out of {train_csv}: {MISSING_FLAC} (e.g. " in " ".join(warnings)
    assert any(message.endswith("11-22-0003.flac)") for message in warnings)
    assert any(message.endswith("11-22-0009.flac)") and NO_TRANSCRIPT in message for message in warnings)
    assert any(message.endswith("55-66-0001.flac)") for message in warnings)
    assert len(load_data_csv(paths["train"])) == 3
    assert folder_snapshot(str(librispeech)) == before
    assert not any(name.endswith(".json") for _, _, names in os.walk(librispeech) for name in names)


def test_short_noises_are_left_out_and_counted(tmp_path, caplog):
    noises = tmp_path / "noises"
    _audio(noises / "long.wav")
    _audio(noises / "UPPER.WAV", seed=1)  # upper-case extension: kept
    _audio(noises / "exactly_0.1s.wav", num_samples=1600, seed=2)  # the shortest kept
    _audio(noises / "short.wav", num_samples=800, seed=3)  # 50 ms: would be tiled into a buzz
    _audio(noises / "one_sample.wav", num_samples=1, seed=4)
    before = folder_snapshot(str(noises))
    with caplog.at_level(logging.WARNING, logger="robustdistiller.data.prepare"):
        csv_path = prepare_noise(str(tmp_path / "save"), extra_folders=str(noises))  # a single string
    kept = sorted(os.path.basename(row["wav"]) for row in _rows(csv_path))
    assert kept == ["UPPER.WAV", "exactly_0.1s.wav", "long.wav"]
    assert _skipped(csv_path) == {TOO_SHORT_NOISE: 2}
    assert _warnings(caplog) == [
        f"2 files left out of {csv_path}: {TOO_SHORT_NOISE} (e.g. {noises / 'one_sample.wav'})"
    ]
    assert folder_snapshot(str(noises)) == before


def _small_rirs_noises(root):
    """``RIRS_NOISES/real_rirs_isotropic_noises`` whose rir_list names a missing and an upper-case file."""
    real = root / "RIRS_NOISES" / "real_rirs_isotropic_noises"
    _audio(real / "air_type1_rir_a.wav", num_samples=800)
    _audio(real / "air_type1_rir_b.WAV", num_samples=800, seed=1)
    lines = [
        f"--rir-id {name} --room-id r RIRS_NOISES/real_rirs_isotropic_noises/{name}.{ext}\n"
        for name, ext in (("air_type1_rir_a", "wav"), ("air_type1_rir_b", "WAV"), ("gone", "wav"))
    ]
    (real / "rir_list").write_text("".join(lines))
    return root / "RIRS_NOISES"


def test_missing_rirs_are_counted(tmp_path, caplog):
    rirs = _small_rirs_noises(tmp_path)
    before = folder_snapshot(str(rirs))
    with caplog.at_level(logging.WARNING, logger="robustdistiller.data.prepare"):
        csv_path = prepare_rirs(str(tmp_path / "save"), str(rirs), rirs_noises_subsets="real")
    assert sorted(row["ID"] for row in _rows(csv_path)) == ["air_type1_rir_a", "air_type1_rir_b"]
    assert _skipped(csv_path) == {MISSING_RIR: 1}
    gone = rirs / "real_rirs_isotropic_noises" / "gone.wav"
    assert _warnings(caplog) == [f"1 file left out of {csv_path}: {MISSING_RIR} (e.g. {gone})"]
    assert folder_snapshot(str(rirs)) == before


def test_skipped_json_is_written_even_when_nothing_is_left_out(tmp_path):
    noises = tmp_path / "noises"
    _audio(noises / "a.wav")
    csv_path = prepare_noise(str(tmp_path / "save"), extra_folders=[str(noises)])
    with open(skipped_path(csv_path)) as json_file:
        assert json.load(json_file) == {
            "csv": csv_path,
            "files_left_out": 0,
            "by_reason": {},
            "folders_left_out": 0,
            "folders_by_reason": {},
        }


# --- 2. A single string where a list is expected ---------------------------------------------------


def test_single_strings_are_one_item_lists(mini_corpus, tmp_path):
    before = folder_snapshot(*mini_corpus.values())
    as_lists, as_strings = tmp_path / "lists", tmp_path / "strings"
    expected = prepare_librispeech(mini_corpus["librispeech"], str(as_lists), ["train-clean-100"], ["dev-clean"])
    paths = prepare_librispeech(mini_corpus["librispeech"], str(as_strings), "train-clean-100", "dev-clean")
    assert _rows(paths["train"]) == _rows(expected["train"]) and _rows(paths["valid"]) == _rows(expected["valid"])
    noise_lists = prepare_noise(
        str(as_lists),
        musan_folder=mini_corpus["musan"],
        musan_subsets=["noise"],
        urbansound_folder=mini_corpus["urbansound"],
        urbansound_exclude=["siren"],
    )
    noise_strings = prepare_noise(
        str(as_strings),
        musan_folder=mini_corpus["musan"],
        musan_subsets="noise",
        urbansound_folder=mini_corpus["urbansound"],
        urbansound_exclude="siren",
    )
    assert _rows(noise_strings) == _rows(noise_lists)
    rirs_lists = prepare_rirs(str(as_lists), mini_corpus["rirs"], rirs_noises_subsets=["simulated"])
    rirs_strings = prepare_rirs(str(as_strings), mini_corpus["rirs"], rirs_noises_subsets="simulated")
    assert _rows(rirs_strings) == _rows(rirs_lists) and len(_rows(rirs_strings)) > 0
    assert folder_snapshot(*mini_corpus.values()) == before


# --- 3. '$' in a data path ---------------------------------------------------------------------------


def test_dollar_in_a_data_path_is_refused_naming_the_option(tmp_path):
    bad = str(tmp_path / "data$HOME")
    save = str(tmp_path / "save")
    cases = [
        ("data_folder", lambda: prepare_librispeech(bad, save, ["train-clean-100"], [])),
        ("save_folder", lambda: prepare_librispeech(str(tmp_path), bad, ["train-clean-100"], [])),
        ("musan_folder", lambda: prepare_noise(save, musan_folder=bad)),
        ("urbansound_folder", lambda: prepare_noise(save, urbansound_folder=bad)),
        ("extra_folders", lambda: prepare_noise(save, extra_folders=[str(tmp_path), bad])),
        ("save_folder", lambda: prepare_noise(bad, extra_folders=[str(tmp_path)])),
        ("rir_folder", lambda: prepare_rirs(save, bad)),
        ("save_folder", lambda: prepare_rirs(bad, str(tmp_path))),
    ]
    for option, call in cases:
        with pytest.raises(OptionError, match=rf"`{option}`.*contains '\$'"):
            call()
    assert not os.path.exists(save) and not os.path.exists(bad)


def test_found_files_with_dollar_are_left_out_and_counted(tmp_path, caplog):
    librispeech = _small_librispeech(tmp_path / "data")
    chapter = librispeech / "train-clean-100" / "11" / "22"
    _audio(chapter / "11-22-$x.flac", seed=5)
    with open(chapter / "11-22.trans.txt", "a") as transcript:
        transcript.write("11-22-$x WORDS\n")
    noises = tmp_path / "noises"
    _audio(noises / "ok.wav")
    _audio(noises / "price$tag.wav", seed=1)
    before = folder_snapshot(str(librispeech), str(noises))
    with caplog.at_level(logging.WARNING, logger="robustdistiller.data.prepare"):
        paths = prepare_librispeech(str(librispeech), str(tmp_path / "save"), "train-clean-100", [])
        noise_csv = prepare_noise(str(tmp_path / "save"), extra_folders=str(noises))
    assert _skipped(paths["train"])[DOLLAR_IN_PATH] == 1 and _skipped(noise_csv) == {DOLLAR_IN_PATH: 1}
    assert len(load_data_csv(paths["train"])) == 3 and len(load_data_csv(noise_csv)) == 1  # SpeechBrain reads them
    assert any("price$tag.wav" in message and DOLLAR_IN_PATH in message for message in _warnings(caplog))
    assert folder_snapshot(str(librispeech), str(noises)) == before


# --- 4. Stale lists ----------------------------------------------------------------------------------


def test_stale_librispeech_list_is_refused_then_force_prep_prepares_again(tmp_path):
    librispeech = _small_librispeech(tmp_path / "data")
    save = str(tmp_path / "save")
    paths = prepare_librispeech(str(librispeech), save, ["train-clean-100"], [])
    deleted = librispeech / "train-clean-100" / "11" / "22" / "11-22-0001.flac"
    os.remove(deleted)  # deleted after preparation
    before = folder_snapshot(str(librispeech))
    with pytest.raises(StaleListError) as error:
        prepare_librispeech(str(librispeech), save, ["train-clean-100"], [])
    message = str(error.value)
    assert paths["train"] in message and "1 of the 3 files" in message and str(deleted) in message
    assert "--force_prep=True" in message and "librispeech.prepare.json" in message
    paths = prepare_librispeech(str(librispeech), save, ["train-clean-100"], [], force_prep=True)
    assert sorted(row["ID"] for row in _rows(paths["train"])) == ["11-22-0002", "33-44-0001"]
    assert _skipped(paths["train"])[MISSING_FLAC] == 2  # its transcript line is left, counted
    assert prepare_librispeech(str(librispeech), save, ["train-clean-100"], []) == paths  # fresh again
    assert folder_snapshot(str(librispeech)) == before
    with pytest.raises(OptionError, match="skip_prep.*force_prep"):
        prepare_librispeech(str(librispeech), save, ["train-clean-100"], [], skip_prep=True, force_prep=True)


def test_force_prep_prepares_again_even_when_the_lists_are_fresh(tmp_path):
    noises = tmp_path / "noises"
    _audio(noises / "a.wav")
    csv_path = prepare_noise(str(tmp_path / "save"), extra_folders=[str(noises)])
    os.utime(csv_path, (1_000_000_000, 1_000_000_000))
    prepare_noise(str(tmp_path / "save"), extra_folders=[str(noises)])
    assert os.stat(csv_path).st_mtime == 1_000_000_000  # reused
    prepare_noise(str(tmp_path / "save"), extra_folders=[str(noises)], force_prep=True)
    assert os.stat(csv_path).st_mtime != 1_000_000_000


def test_stale_noise_and_rir_lists_are_refused(tmp_path):
    noises = tmp_path / "noises"
    _audio(noises / "a.wav")
    _audio(noises / "b.wav", seed=1)
    rirs = _small_rirs_noises(tmp_path)
    save = str(tmp_path / "save")
    noise_csv = prepare_noise(save, extra_folders=[str(noises)])
    rir_csv = prepare_rirs(save, str(rirs))
    os.remove(noises / "b.wav")
    os.remove(rirs / "real_rirs_isotropic_noises" / "air_type1_rir_a.wav")
    before = folder_snapshot(str(noises), str(rirs))
    with pytest.raises(StaleListError, match=r"1 of the 2 files listed in .*noise\.csv.*b\.wav.*--force_prep=True"):
        prepare_noise(save, extra_folders=[str(noises)])
    with pytest.raises(StaleListError, match=r"1 of the 2 files listed in .*rirs\.csv.*rir_a\.wav.*--force_prep=True"):
        prepare_rirs(save, str(rirs))
    assert len(_rows(prepare_noise(save, extra_folders=[str(noises)], force_prep=True))) == 1
    assert len(_rows(prepare_rirs(save, str(rirs), force_prep=True))) == 1
    assert (noise_csv, rir_csv) == (os.path.join(save, "noise.csv"), os.path.join(save, "rirs.csv"))
    assert folder_snapshot(str(noises), str(rirs)) == before


def test_dataset_read_error_names_the_file_and_the_stale_list(tmp_path):
    librispeech = _small_librispeech(tmp_path / "data")
    paths = prepare_librispeech(str(librispeech), str(tmp_path / "save"), "train-clean-100", [])
    deleted = _rows(paths["train"])[0]["wav"]
    os.remove(deleted)
    dataset = make_distillation_dataset(
        paths["train"], Corruptor(condition_probs={"clean": 1.0}), max_crop_samples=8000
    )
    with pytest.raises(AudioLoadError) as error:
        dataset[0]
    message = str(error.value)
    assert deleted in message and paths["train"] in message and "stale" in message
    assert "--force_prep=True" in message
    dataset = make_distillation_dataset(
        paths["train"], Corruptor(condition_probs={"clean": 1.0}), max_crop_samples=8000
    )  # SpeechBrain's pipeline is spent after an error
    assert dataset[1]["clean_sig"].shape == (8000,)  # the other files still load
    unreadable = _rows(paths["train"])[1]["wav"]
    corrupted = tmp_path / "corrupted.csv"  # a listed file that exists but is not audio any more
    shutil.copy(paths["train"], corrupted)
    with open(unreadable, "wb") as audio_file:
        audio_file.write(b"not audio")
    dataset = make_distillation_dataset(str(corrupted), Corruptor(condition_probs={"clean": 1.0}))
    with pytest.raises(AudioLoadError, match=r"listed in '.*corrupted\.csv'.*--force_prep=True"):
        dataset[1]


# --- 5. Crops shorter than the CNN's receptive field --------------------------------------------------


def test_crop_shorter_than_the_receptive_field_is_refused_up_front(tmp_path):
    corruptor = Corruptor(condition_probs={"clean": 1.0})
    missing_csv = str(tmp_path / "not_read.csv")  # refused before the CSV is read
    for value in (300, "399", 0):
        with pytest.raises(OptionError, match=r"`max_crop_samples`.*at least 400 samples"):
            make_distillation_dataset(missing_csv, corruptor, max_crop_samples=value)
    with pytest.raises(OptionError, match="max_crop_samples"):
        make_distillation_dataset(missing_csv, corruptor, max_crop_samples=1000.5)
    noises = tmp_path / "noises"  # 400 samples and None are accepted
    _audio(noises / "a.wav")
    csv_path = prepare_noise(str(tmp_path / "save"), extra_folders=[str(noises)])
    assert make_distillation_dataset(csv_path, corruptor, max_crop_samples=400)[0]["clean_sig"].shape == (400,)
    assert make_distillation_dataset(csv_path, corruptor, max_crop_samples=None)[0]["clean_sig"].shape == (RATE,)


# --- 6. Folders that cannot be listed, symbolic links, cycles (issue 20, item 8) --------------------


def _block_listing(patch, *folders):
    """Makes ``os.scandir`` fail with ``PermissionError`` for ``folders``, as for an unreadable folder."""
    real_scandir, real_listdir = os.scandir, os.listdir
    blocked = {os.path.abspath(str(folder)) for folder in folders}

    def scandir(path="."):
        if os.path.abspath(os.fspath(path)) in blocked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    def listdir(path="."):  # as os.scandir: code that still lists with os.listdir meets the same folder
        if os.path.abspath(os.fspath(path)) in blocked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_listdir(path)

    patch.setattr(os, "scandir", scandir)
    patch.setattr(os, "listdir", listdir)


def _folders_skipped(csv_path):
    with open(skipped_path(csv_path)) as json_file:
        return {reason: entry["folders"] for reason, entry in json.load(json_file)["folders_by_reason"].items()}


def _info_lines(caplog, prefix):
    return [record.getMessage() for record in caplog.records if record.getMessage().startswith(prefix)]


def test_unreadable_librispeech_folder_is_counted_and_warned(tmp_path, caplog, monkeypatch):
    librispeech = _small_librispeech(tmp_path / "data")
    chapter = librispeech / "train-clean-100" / "11" / "22"
    before = folder_snapshot(str(librispeech))
    with monkeypatch.context() as patch, caplog.at_level(logging.INFO, logger="robustdistiller.data.prepare"):
        _block_listing(patch, chapter)
        paths = prepare_librispeech(str(librispeech), str(tmp_path / "save"), "train-clean-100", [])
    assert [row["ID"] for row in _rows(paths["train"])] == ["33-44-0001"]
    assert _folders_skipped(paths["train"]) == {UNREADABLE_FOLDER: 1}
    assert _skipped(paths["train"]) == {NOT_IN_SPEAKER_FOLDER: 1}  # the chapter's files were never seen
    warning = f"1 folder left out of {paths['train']}: {UNREADABLE_FOLDER} (e.g. {chapter} ("
    assert any(message.startswith(warning) and "Permission denied" in message for message in _warnings(caplog))
    [summary] = _info_lines(caplog, "LibriSpeech train-clean-100:")
    assert summary.endswith(f"left out: 1 {NOT_IN_SPEAKER_FOLDER}, 1 {UNREADABLE_FOLDER}.")  # never "none"
    assert folder_snapshot(str(librispeech)) == before


def test_unreadable_subset_or_speaker_folders_are_named_not_no_flac(tmp_path, monkeypatch):
    librispeech = _small_librispeech(tmp_path / "data")
    subset = librispeech / "train-clean-100"
    (subset / "55-66-0001.flac").unlink()  # only the speaker folders hold audio
    before = folder_snapshot(str(librispeech))
    with monkeypatch.context() as patch:
        _block_listing(patch, subset / "11", subset / "33")
        with pytest.raises(ValueError, match=r"No \.flac file found .*2 folder\(s\) left out.*cannot be listed"):
            prepare_librispeech(str(librispeech), str(tmp_path / "save"), "train-clean-100", [])
    with monkeypatch.context() as patch:  # the subset folder itself: an error naming it
        _block_listing(patch, subset)
        with pytest.raises(FolderReadError, match=rf"'{subset}' cannot be listed \(Permission denied\)"):
            prepare_librispeech(str(librispeech), str(tmp_path / "save"), "train-clean-100", [])
    assert folder_snapshot(str(librispeech)) == before


def test_unreadable_noise_and_rir_folders_are_counted_and_warned(tmp_path, caplog, monkeypatch):
    noises = tmp_path / "noises"
    _audio(noises / "a.wav")
    _audio(noises / "locked" / "b.wav", seed=1)
    rirs = tmp_path / "rirs"
    _audio(rirs / "room1" / "r1.wav", num_samples=800)
    _audio(rirs / "room2" / "r2.wav", num_samples=800, seed=1)
    rirs_noises = _small_rirs_noises(tmp_path / "openslr")
    (rirs_noises / "pointsource_noises").mkdir()
    before = folder_snapshot(str(noises), str(rirs), str(rirs_noises))
    save = str(tmp_path / "save")
    with monkeypatch.context() as patch, caplog.at_level(logging.INFO, logger="robustdistiller.data.prepare"):
        _block_listing(patch, noises / "locked", rirs / "room2", rirs_noises / "pointsource_noises")
        noise_csv = prepare_noise(save, extra_folders=str(noises))
        rir_csv = prepare_rirs(save, str(rirs), rir_format="folder", csv_name="folder_rirs.csv")
        kaldi_csv = prepare_rirs(save, str(rirs_noises), rirs_noises_subsets="real")
    assert [os.path.basename(row["wav"]) for row in _rows(noise_csv)] == ["a.wav"]
    assert [os.path.basename(row["wav"]) for row in _rows(rir_csv)] == ["r1.wav"]
    assert len(_rows(kaldi_csv)) == 2  # its noise_list could not be read: said, not silent
    for csv_path, folder in (
        (noise_csv, noises / "locked"),
        (rir_csv, rirs / "room2"),
        (kaldi_csv, rirs_noises / "pointsource_noises"),
    ):
        assert _folders_skipped(csv_path) == {UNREADABLE_FOLDER: 1}
        assert any(
            message.startswith(f"1 folder left out of {csv_path}: {UNREADABLE_FOLDER} (e.g. {folder} (")
            for message in _warnings(caplog)
        )
    assert any(
        f"Wrote {noise_csv}: 1 noise files" in message and "0 files and 1 folder left out" in message
        for message in _info_lines(caplog, "Wrote")
    )
    assert folder_snapshot(str(noises), str(rirs), str(rirs_noises)) == before


def _link_farm(tmp_path):
    """Speakers on two "disks"; ``LibriSpeech/train-clean-100/<spk>`` are only links to them."""
    disk1, disk2 = tmp_path / "disk1", tmp_path / "disk2"
    _audio(disk1 / "11" / "22" / "11-22-0001.flac")
    _transcript(disk1 / "11" / "22", "11-22.trans.txt", ["11-22-0001"])
    _audio(disk2 / "33" / "44" / "33-44-0001.flac", seed=1)
    _transcript(disk2 / "33" / "44", "33-44.trans.txt", ["33-44-0001"])
    subset = tmp_path / "farm" / "LibriSpeech" / "train-clean-100"
    subset.mkdir(parents=True)
    os.symlink(disk1 / "11", subset / "11")
    os.symlink(disk2 / "33", subset / "33")
    return subset.parent, disk1, disk2


def test_symlinked_speaker_folders_are_read(tmp_path, caplog):
    librispeech, disk1, disk2 = _link_farm(tmp_path)
    before = folder_snapshot(str(disk1), str(disk2), str(librispeech))
    with caplog.at_level(logging.WARNING, logger="robustdistiller.data.prepare"):
        paths = prepare_librispeech(str(librispeech), str(tmp_path / "save"), "train-clean-100", [])
    rows = {row["ID"]: row for row in _rows(paths["train"])}
    assert sorted(rows) == ["11-22-0001", "33-44-0001"]
    assert rows["11-22-0001"]["wav"] == str(librispeech / "train-clean-100" / "11" / "22" / "11-22-0001.flac")
    assert (rows["11-22-0001"]["spk_id"], rows["33-44-0001"]["spk_id"]) == ("11", "33")
    assert _warnings(caplog) == [] and _folders_skipped(paths["train"]) == {}
    assert folder_snapshot(str(disk1), str(disk2), str(librispeech)) == before


def test_link_cycles_are_walked_once_and_counted(tmp_path, caplog):
    librispeech, disk1, disk2 = _link_farm(tmp_path)
    loop = disk1 / "11" / "22" / "back"
    os.symlink(librispeech / "train-clean-100", loop)  # a link to an ancestor: a cycle
    noises = tmp_path / "noises"
    _audio(noises / "a.wav")
    os.symlink(noises, noises / "again")  # the noise folder inside itself
    before = folder_snapshot(str(disk1), str(disk2), str(noises))
    with caplog.at_level(logging.WARNING, logger="robustdistiller.data.prepare"):
        paths = prepare_librispeech(str(librispeech), str(tmp_path / "save"), "train-clean-100", [])
        noise_csv = prepare_noise(str(tmp_path / "save"), extra_folders=str(noises))
    assert sorted(row["ID"] for row in _rows(paths["train"])) == ["11-22-0001", "33-44-0001"]  # once each
    assert [os.path.basename(row["wav"]) for row in _rows(noise_csv)] == ["a.wav"]
    assert _folders_skipped(paths["train"]) == {REPEATED_FOLDER: 1}
    assert _folders_skipped(noise_csv) == {REPEATED_FOLDER: 1}
    looped = librispeech / "train-clean-100" / "11" / "22" / "back"
    expected = f"1 folder left out of {paths['train']}: {REPEATED_FOLDER} (e.g. {looped} (-> "
    assert expected in " ".join(_warnings(caplog))
    assert folder_snapshot(str(disk1), str(disk2), str(noises)) == before


# --- 7. Truncated FLAC with an intact header (issue 20, item 10) -----------------------------------


def _truncate(path, removed_bytes=100):
    content = path.read_bytes()
    path.write_bytes(content[:-removed_bytes])


def test_truncated_flac_is_left_out_as_damaged_and_counted(tmp_path, caplog):
    librispeech = _small_librispeech(tmp_path / "data")
    chapter = librispeech / "train-clean-100" / "11" / "22"
    damaged = _audio(chapter / "11-22-0004.flac", seed=7)
    with open(chapter / "11-22.trans.txt", "a") as transcript:
        transcript.write("11-22-0004 MORE WORDS\n")
    _truncate(damaged)
    assert audio_info(str(damaged)) == (RATE, RATE, 1)  # the header still promises the whole second
    noises = tmp_path / "noises"
    _audio(noises / "ok.wav")
    damaged_noise = _audio(noises / "cut.flac", seed=1)
    _truncate(damaged_noise, removed_bytes=5000)
    before = folder_snapshot(str(librispeech), str(noises))
    with caplog.at_level(logging.WARNING, logger="robustdistiller.data.prepare"):
        paths = prepare_librispeech(str(librispeech), str(tmp_path / "save"), "train-clean-100", [])
        noise_csv = prepare_noise(str(tmp_path / "save"), extra_folders=str(noises))
    assert "11-22-0004" not in {row["ID"] for row in _rows(paths["train"])}
    assert _skipped(paths["train"])[DAMAGED_AUDIO] == 1 and _skipped(noise_csv) == {DAMAGED_AUDIO: 1}
    warnings = " ".join(_warnings(caplog))
    assert f"1 file left out of {paths['train']}: {DAMAGED_AUDIO} (e.g. {damaged})" in warnings
    assert f"1 file left out of {noise_csv}: {DAMAGED_AUDIO} (e.g. {damaged_noise})" in warnings
    assert folder_snapshot(str(librispeech), str(noises)) == before


def test_flac_damaged_after_preparation_is_named_and_force_prep_leaves_it_out(tmp_path):
    librispeech = _small_librispeech(tmp_path / "data")
    save = str(tmp_path / "save")
    paths = prepare_librispeech(str(librispeech), save, "train-clean-100", [])
    damaged = librispeech / "train-clean-100" / "11" / "22" / "11-22-0001.flac"
    _truncate(damaged)
    before = folder_snapshot(str(librispeech))
    with pytest.raises(AudioLoadError) as error:
        load_listed_audio(str(damaged), paths["train"])
    message = str(error.value)
    assert f"'{damaged}' is damaged" in message and "truncated" in message and paths["train"] in message
    assert "Replace it" in message and "--force_prep=True" in message
    paths = prepare_librispeech(str(librispeech), save, "train-clean-100", [], force_prep=True)  # the advice works
    assert sorted(row["ID"] for row in _rows(paths["train"])) == ["11-22-0002", "33-44-0001"]
    assert _skipped(paths["train"])[DAMAGED_AUDIO] == 1
    assert folder_snapshot(str(librispeech)) == before


# --- 8. Text that is not UTF-8 (issue 20, item 11) -----------------------------------------------------


def test_transcript_that_is_not_utf8_names_the_file_and_the_line(tmp_path):
    librispeech = _small_librispeech(tmp_path / "data")
    transcript = librispeech / "train-clean-100" / "11" / "22" / "11-22.trans.txt"
    with open(transcript, "ab") as transcript_file:
        transcript_file.write(b"11-22-0004 CAF\xc9 AU LAIT\n")  # Latin-1, line 4
    rirs = _small_rirs_noises(tmp_path / "openslr")
    rir_list = rirs / "real_rirs_isotropic_noises" / "rir_list"
    rir_list.write_bytes(b"\xff\xfe" + rir_list.read_bytes())  # a byte-order mark of UTF-16, line 1
    before = folder_snapshot(str(librispeech), str(rirs))
    with pytest.raises(TextFileError, match=rf"transcript '{transcript}', line 4: byte 0xc9 at column 15 is not UTF-8"):
        prepare_librispeech(str(librispeech), str(tmp_path / "save"), "train-clean-100", [])
    with pytest.raises(TextFileError, match=rf"'{rir_list}', line 1: byte 0xff at column 1 is not UTF-8"):
        prepare_rirs(str(tmp_path / "save"), str(rirs))
    assert folder_snapshot(str(librispeech), str(rirs)) == before


# --- 9. Downstream splits: rows in every split, evaluation labels known to training (item 15) ----------


def _recipe_module(relative_path, name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPOSITORY_ROOT, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


KS_COMMANDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
KS_TRAINING_SPEAKER, KS_VALIDATION_SPEAKER = "0a7c2a8d", "a69b9b3e"  # TensorFlow's training / validation band


def _tiny_speech_commands(root, speakers_by_word):
    data_folder, test_folder = root / "speech_commands_v0.01", root / "test_set"
    for word, speakers in speakers_by_word.items():
        for speaker in speakers:
            _audio(data_folder / word / f"{speaker}_nohash_0.wav", num_samples=8000)
    _audio(data_folder / "_background_noise_" / "noise.wav", num_samples=40000)  # windows 0 and 1: train
    for label in KS_COMMANDS + ["_unknown_", "_silence_"]:
        _audio(test_folder / label / "c0ffee00_nohash_0.wav", num_samples=8000)
    return data_folder, test_folder


def test_ks_without_a_dev_speaker_or_with_an_untrained_label_fails_at_preparation(tmp_path, caplog, monkeypatch):
    ks = _recipe_module("recipes/SpeechCommands/KS/prepare_speech_commands.py", "ks_prepare_issue20")
    no_dev = {word: [KS_TRAINING_SPEAKER] for word in KS_COMMANDS + ["marvin"]}
    data_folder, test_folder = _tiny_speech_commands(tmp_path / "a", no_dev)
    before = folder_snapshot(str(tmp_path / "a"))
    save = tmp_path / "save_a"
    with pytest.raises(SplitError, match=rf"the dev split is empty: '{save / 'dev.csv'}' has no row.*10 % validation"):
        ks.prepare_speech_commands(str(data_folder), str(test_folder), str(save))
    assert not (save / "speech_commands_ks.prepare.json").exists()  # a second call checks again
    assert folder_snapshot(str(tmp_path / "a")) == before

    no_unknown = {word: [KS_TRAINING_SPEAKER, KS_VALIDATION_SPEAKER] for word in KS_COMMANDS}  # no other word
    data_folder, test_folder = _tiny_speech_commands(tmp_path / "b", no_unknown)
    save = tmp_path / "save_b"
    with pytest.raises(
        SplitError,
        match=rf"the test split \('{save / 'test.csv'}'\) has 1 label value never seen in "
        rf"the train split .*'_unknown_' \(first in row test__unknown__c0ffee00",
    ):
        ks.prepare_speech_commands(str(data_folder), str(test_folder), str(save))

    both = {word: [KS_TRAINING_SPEAKER, KS_VALIDATION_SPEAKER] for word in KS_COMMANDS + ["marvin", "bed"]}
    data_folder, test_folder = _tiny_speech_commands(tmp_path / "c", both)
    before = folder_snapshot(str(tmp_path / "c"))
    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING):
        _block_listing(patch, data_folder / "bed")  # an unreadable word folder: counted, warned, the rest kept
        paths = ks.prepare_speech_commands(str(data_folder), str(test_folder), str(tmp_path / "save_c"))
    assert not any(row["word"] == "bed" for row in _rows(paths["train"]))
    assert any(
        message.startswith("1 folder left out of the Speech Commands lists") and str(data_folder / "bed") in message
        for message in _warnings(caplog)
    )
    assert folder_snapshot(str(tmp_path / "c")) == before


def test_sid_test_speaker_without_training_utterance_fails_at_preparation(tmp_path):
    sid = _recipe_module("recipes/VoxCeleb1/SID/prepare_voxceleb1_sid.py", "sid_prepare_issue20")
    voxceleb = tmp_path / "VoxCeleb1"
    split_lines = []
    for speaker, splits in (("id10001", "123"), ("id10002", "123"), ("id10003", "3")):  # id10003: test only
        for number, split in enumerate(splits, start=1):
            _audio(voxceleb / "wav" / speaker / "video" / f"{number:05d}.wav", num_samples=8000, seed=number)
            split_lines.append(f"{split} {speaker}/video/{number:05d}.wav\n")
    (voxceleb / "iden_split.txt").write_text("".join(split_lines))
    before = folder_snapshot(str(voxceleb))
    save = tmp_path / "save"
    with pytest.raises(SplitError) as error:
        sid.prepare_voxceleb1_sid(str(voxceleb), str(save))
    message = str(error.value)
    assert f"the test split ('{save / 'test.csv'}') has 1 speaker value never seen in the train split" in message
    assert "'id10003' (first in row id10003_video_00001, line 4)" in message and "dev split" not in message
    assert not (save / "voxceleb1_sid.prepare.json").exists()
    assert folder_snapshot(str(voxceleb)) == before


def test_split_check_names_every_problem(tmp_path):
    files = {split: str(tmp_path / f"{split}.csv") for split in ("train", "valid", "test")}
    contents = {
        "train": "ID,action,object\nt1,activate,lights\nt2,bring,socks\n",
        "valid": "ID,action,object\n",
        "test": "ID,action,object\ne1,activate,shoes\ne2,decrease,shoes\ne3,decrease,lights\n",
    }
    for split, content in contents.items():
        with open(files[split], "w") as fout:
            fout.write(content)
    with pytest.raises(SplitError) as error:
        check_split_lists(files, ["action", "object"])
    message = str(error.value)
    assert f"the valid split is empty: '{files['valid']}' has no row" in message
    assert "1 action value never seen in the train split" in message
    assert "'decrease' (first in row e2, line 3)" in message
    assert "1 object value never seen" in message and "'shoes' (first in row e1, line 2)" in message
    check_split_lists({"train": files["train"], "test": files["train"]}, ["action"])  # all known: no error


# --- 10. VoxCeleb1, IEMOCAP, the PR lexicon: links, unreadable folders, non-UTF-8 text (items 8, 11) ---


SID_MODULE = "recipes/VoxCeleb1/SID/prepare_voxceleb1_sid.py"
ASV_MODULE = "recipes/VoxCeleb1/ASV/prepare_voxceleb1_asv.py"
ER_MODULE = "recipes/IEMOCAP/ER/prepare_iemocap.py"


def _voxceleb1(folder, layout="merged", dev_speakers=3):
    """The fixture's VoxCeleb1: one video of three utterances per speaker (train, dev, test of SID)."""
    from robustdistiller.testing.fixtures.voxceleb1 import generate_voxceleb1

    return generate_voxceleb1(
        str(folder),
        seed=0,
        dev_speakers=dev_speakers,
        test_speakers=2,
        videos_per_speaker=1,
        utterances_per_video=3,
        layout=layout,
    )


def _voxceleb1_link_farm(corpus, farm):
    """``farm`` mirrors ``corpus``: its lists and every speaker folder are symbolic links into ``corpus``.

    In the s3prl layout ``test`` itself is one link (a whole archive on another disk).
    """
    os.makedirs(farm)
    for name in sorted(os.listdir(corpus)):
        source = os.path.join(corpus, name)
        if os.path.isfile(source):
            os.symlink(source, os.path.join(farm, name))
        elif name == "test":
            os.symlink(source, os.path.join(farm, name))
        else:
            wav = os.path.join(source, "wav") if name != "wav" else source
            farm_wav = os.path.join(farm, name, "wav") if name != "wav" else os.path.join(farm, "wav")
            os.makedirs(farm_wav)
            for speaker in sorted(os.listdir(wav)):
                os.symlink(os.path.join(wav, speaker), os.path.join(farm_wav, speaker))
    return farm


@pytest.mark.parametrize("layout", ["merged", "s3prl"])
def test_voxceleb1_link_farm_of_speaker_folders_is_read(tmp_path, caplog, layout):
    sid = _recipe_module(SID_MODULE, "sid_prepare_links")
    asv = _recipe_module(ASV_MODULE, "asv_prepare_links")
    corpus = _voxceleb1(tmp_path / "disk", layout)
    farm = _voxceleb1_link_farm(corpus, str(tmp_path / "farm" / "VoxCeleb1"))
    before = folder_snapshot(corpus, farm)
    tables = {}
    with caplog.at_level(logging.WARNING):
        for name, root in (("real", corpus), ("farm", farm)):
            sid_paths = sid.prepare_voxceleb1_sid(root, str(tmp_path / name / "sid"))
            asv_paths = asv.prepare_voxceleb1_asv(
                root, str(tmp_path / name / "asv"), valid_speakers=2, min_train_duration=0.0
            )
            tables[name] = {
                f"{task}_{split}": _rows(path)
                for task, paths in (("sid", sid_paths), ("asv", asv_paths))
                for split, path in paths.items()
            }
    assert _warnings(caplog) == []
    for key, rows in tables["real"].items():
        farm_rows = tables["farm"][key]
        assert rows and [row.get("ID", row.get("enrol")) for row in rows] == [
            row.get("ID", row.get("enrol")) for row in farm_rows
        ], key
        for row, farm_row in zip(rows, farm_rows):
            if "wav" in row:  # the same relative path, under the farm (the links are kept in the paths)
                assert farm_row["wav"] == os.path.join(farm, os.path.relpath(row["wav"], corpus))
    assert {row["speaker"] for row in tables["farm"]["sid_test"]} == {
        "id10001",
        "id10002",
        "id10003",
        "id10270",
        "id10271",
    }
    assert folder_snapshot(corpus, farm) == before


def test_voxceleb1_unreadable_folders_are_counted_warned_and_named(tmp_path, caplog, monkeypatch):
    asv = _recipe_module(ASV_MODULE, "asv_prepare_unreadable")
    sid = _recipe_module(SID_MODULE, "sid_prepare_unreadable")
    corpus = _voxceleb1(tmp_path / "merged", dev_speakers=4)
    wav = os.path.join(corpus, "wav")
    before = folder_snapshot(corpus)
    save = tmp_path / "asv"
    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING):
        _block_listing(patch, os.path.join(wav, "id10002"))  # a dev speaker folder
        paths = asv.prepare_voxceleb1_asv(corpus, str(save), valid_speakers=2, min_train_duration=0.0)
    speakers = {row["speaker"] for split in ("train", "valid") for row in _rows(paths[split])}
    assert speakers == {"id10001", "id10003", "id10004"}
    warning = f"1 folder left out of the VoxCeleb1 ASV lists of {save}: {UNREADABLE_FOLDER} (e.g. {wav}/id10002 ("
    assert any(message.startswith(warning) and "Permission denied" in message for message in _warnings(caplog))

    video = next(entry.path for entry in os.scandir(os.path.join(wav, "id10003")) if entry.is_dir())
    with monkeypatch.context() as patch:  # a video folder: one dev speaker too few, and the error says why
        _block_listing(patch, video)
        with pytest.raises(
            ValueError,
            match=rf"holds 3 dev speakers .*valid_speakers=3 \(1 folder\(s\) left out: "
            rf".*{re.escape(UNREADABLE_FOLDER)} "
            rf"\(e.g. {re.escape(video)} ",
        ):
            asv.prepare_voxceleb1_asv(corpus, str(tmp_path / "asv2"), valid_speakers=3, min_train_duration=0.0)
    with monkeypatch.context() as patch:  # the wav folder itself: an error naming it, for both recipes
        _block_listing(patch, wav)
        for prepare in (
            lambda: asv.prepare_voxceleb1_asv(corpus, str(tmp_path / "asv3"), valid_speakers=2),
            lambda: sid.prepare_voxceleb1_sid(corpus, str(tmp_path / "sid3")),
        ):
            with pytest.raises(FolderReadError, match=rf"VoxCeleb1 wav folder '{re.escape(wav)}' cannot be listed"):
                prepare()
    assert folder_snapshot(corpus) == before

    s3prl = _voxceleb1(tmp_path / "s3prl", layout="s3prl")  # s3prl's layout: the unreadable test/ archive
    test_archive = os.path.join(s3prl, "test")
    caplog.clear()
    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING):
        _block_listing(patch, test_archive)
        with pytest.raises(
            FileNotFoundError,
            match=rf"missing or unreadable .*1 folder\(s\) left out: "
            rf".*\(e.g. {re.escape(test_archive)} \(",
        ):
            sid.prepare_voxceleb1_sid(s3prl, str(tmp_path / "sid4"))
    assert any(f"{UNREADABLE_FOLDER} (e.g. {test_archive} (" in message for message in _warnings(caplog))


def test_voxceleb1_lists_and_lexicon_that_are_not_utf8_name_the_file_and_the_line(tmp_path):
    from robustdistiller.downstream.librispeech import read_lexicon_files

    sid = _recipe_module(SID_MODULE, "sid_prepare_utf8")
    asv = _recipe_module(ASV_MODULE, "asv_prepare_utf8")
    corpus = _voxceleb1(tmp_path / "data")
    split_file, trial_file = os.path.join(corpus, "iden_split.txt"), os.path.join(corpus, "veri_test.txt")
    split_lines = Path(split_file).read_bytes().count(b"\n")
    with open(split_file, "ab") as fout:
        fout.write(b"1 id10001/caf\xe9/00009.wav\n")  # Latin-1 in the last line
    trial_bytes = Path(trial_file).read_bytes().split(b"\n")
    trial_bytes[1] = trial_bytes[1].replace(b"/", b"\xff/", 1)  # line 2
    Path(trial_file).write_bytes(b"\n".join(trial_bytes))
    column = trial_bytes[1].index(b"\xff") + 1
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_bytes(b"HELLO\tHH AH0 L OW1\nNAIVE\tN AY0 IY1 V\nNA\xefVE\tN AY0 IY1 V\n")
    before = folder_snapshot(corpus)
    with pytest.raises(
        TextFileError,
        match=rf"split file '{split_file}', line {split_lines + 1}: byte 0xe9 at "
        r"column 14 is not UTF-8",
    ):
        sid.prepare_voxceleb1_sid(corpus, str(tmp_path / "sid"))
    with pytest.raises(TextFileError, match=rf"trial list '{trial_file}', line 2: byte 0xff at column {column} "):
        asv.prepare_voxceleb1_asv(corpus, str(tmp_path / "asv"), valid_speakers=2)
    with pytest.raises(
        TextFileError,
        match=rf"Lexicon file \(lexicon_files\) '{lexicon}', line 3: byte 0xef at "
        r"column 3 is not UTF-8",
    ):
        read_lexicon_files([str(lexicon)])
    assert folder_snapshot(corpus) == before


def _iemocap(folder):
    from robustdistiller.testing.fixtures.iemocap import generate_iemocap

    return generate_iemocap(str(folder), seed=0, utterances_per_emotion=1, dialogs_per_session=1, words=(2, 3))


def test_iemocap_symlinked_sessions_unreadable_dialogs_and_non_utf8_labels(tmp_path, caplog, monkeypatch):
    er = _recipe_module(ER_MODULE, "er_prepare_issue20")
    release = _iemocap(tmp_path / "disk")
    farm = tmp_path / "farm" / "IEMOCAP_full_release"
    farm.mkdir(parents=True)
    for session in range(1, 6):  # a link farm of sessions (e.g. each on its own disk)
        os.symlink(os.path.join(release, f"Session{session}"), farm / f"Session{session}")
    before = folder_snapshot(release, str(farm))
    with caplog.at_level(logging.WARNING):
        real = er.prepare_iemocap(release, str(tmp_path / "real"), dev_split_order="sorted")
        linked = er.prepare_iemocap(str(farm), str(tmp_path / "linked"), dev_split_order="sorted")
    assert _warnings(caplog) == []
    for split in ("train", "dev", "test"):
        rows, farm_rows = _rows(real[split]), _rows(linked[split])
        assert rows and [row["ID"] for row in rows] == [row["ID"] for row in farm_rows]
        assert [row["wav"] for row in farm_rows] == [str(farm / os.path.relpath(row["wav"], release)) for row in rows]

    dialog = farm / "Session2" / "sentences" / "wav" / "Ses02F_impro01"
    with monkeypatch.context() as patch, caplog.at_level(logging.WARNING):
        _block_listing(patch, dialog)  # its labelled utterances have "no wav file": the error says why
        with pytest.raises(
            FileNotFoundError,
            match=rf"have no wav file.*1 folder\(s\) left out: "
            rf".*{re.escape(UNREADABLE_FOLDER)} "
            rf"\(e.g. {re.escape(str(dialog))} \(",
        ):
            er.prepare_iemocap(str(farm), str(tmp_path / "save"), dev_split_order="sorted")
    assert any(f"{UNREADABLE_FOLDER} (e.g. {dialog} (" in message for message in _warnings(caplog))
    with monkeypatch.context() as patch:  # a session folder: an error naming it, not "not found"
        _block_listing(patch, farm / "Session3")
        with pytest.raises(FolderReadError, match=rf"IEMOCAP session folder '{farm / 'Session3'}' cannot be listed"):
            er.prepare_iemocap(str(farm), str(tmp_path / "save"), dev_split_order="sorted")
    assert folder_snapshot(release, str(farm)) == before

    label_file = os.path.join(release, "Session4", "dialog", "EmoEvaluation", "Ses04F_impro01.txt")
    content = Path(label_file).read_bytes()
    lines = content.split(b"\n")
    evaluator = next(number for number, line in enumerate(lines) if line.startswith(b"C-E"))
    lines[evaluator] += b" (tr\xe8s triste)"  # a free-text evaluator line: never used, still read as before
    Path(label_file).write_bytes(b"\n".join(lines))
    before = folder_snapshot(release)
    paths = er.prepare_iemocap(release, str(tmp_path / "comment"), dev_split_order="sorted")
    assert sorted(row["ID"] for split in paths.values() for row in _rows(split)) == sorted(
        row["ID"] for split in real.values() for row in _rows(split)
    )
    assert folder_snapshot(release) == before
    summary = next(number for number, line in enumerate(lines) if line.startswith(b"[") and b"\tneu\t" in line)
    lines[summary] = lines[summary].replace(b"\tneu\t", b"\tn\xe9u\t")  # a label: an error naming file and line
    Path(label_file).write_bytes(b"\n".join(lines))
    column = lines[summary].index(b"\xe9") + 1
    before = folder_snapshot(release)
    with pytest.raises(
        TextFileError,
        match=rf"IEMOCAP label file '{label_file}', line {summary + 1}: byte 0xe9 at "
        rf"column {column} is not UTF-8",
    ):
        er.prepare_iemocap(release, str(tmp_path / "labels"), dev_split_order="sorted")
    assert folder_snapshot(release) == before


def test_s3prl_er_lists_that_are_not_utf8_or_json_name_the_file(tmp_path):
    from robustdistiller.downstream.s3prl_lists import read_iemocap_s3prl_order, read_s3prl_meta_data

    order = tmp_path / "order.tsv"
    order.write_bytes(b"# s3prl order\nSes02F_impro01_F000\tneu\nSes02F_impro01_F00\xb9\tsad\n")
    with pytest.raises(
        TextFileError,
        match=rf"s3prl order file '{re.escape(str(order))}', line 3: byte 0xb9 at "
        r"column 19 is not UTF-8",
    ):
        read_iemocap_s3prl_order(str(order))
    meta_data = tmp_path / "meta_data" / "Session1" / "train_meta_data.json"
    meta_data.parent.mkdir(parents=True)
    meta_data.write_bytes(
        b'{"meta_data": [\n{"path": "Ses02F_impro01/Ses02F_impro01_F000.wav", "label": "neu"},\n'
        b'{"path": "Ses02F_impro01/Ses02F_impro01_F001.wav", "label": "h\xe4p"}]}\n'
    )
    before = folder_snapshot(str(tmp_path))
    with pytest.raises(TextFileError, match=rf"'{re.escape(str(meta_data))}', line 3: byte 0xe4 at column 63 "):
        read_s3prl_meta_data(str(tmp_path / "meta_data"), 1)
    assert folder_snapshot(str(tmp_path)) == before
    meta_data.write_text('{"meta_data": [')
    with pytest.raises(ValueError, match=rf"s3prl split file '{re.escape(str(meta_data))}' is not JSON"):
        read_s3prl_meta_data(str(tmp_path / "meta_data"), 1)
