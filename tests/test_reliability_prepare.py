"""Reliability of data preparation: nothing left out silently, list options, '$' paths, stale lists, crops.

Each case builds small folders of synthetic 1-s audio in ``tmp_path`` (or reads the session mini
corpus) and checks, with :func:`folder_snapshot`, that no input file changed.
"""

import csv
import json
import logging
import os
import shutil

import numpy as np
import pytest
import soundfile
from speechbrain.dataio.dataio import load_data_csv

from conftest import folder_snapshot
from robustdistiller.audio import AudioLoadError
from robustdistiller.corruption import Corruptor
from robustdistiller.dataio import make_distillation_dataset
from robustdistiller.options import OptionError
from robustdistiller.prepare import (
    DOLLAR_IN_PATH,
    MISSING_FLAC,
    MISSING_RIR,
    NO_TRANSCRIPT,
    NOT_IN_SPEAKER_FOLDER,
    TOO_SHORT_NOISE,
    StaleListError,
    prepare_librispeech,
    prepare_noise,
    prepare_rirs,
    skipped_path,
)

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
    with caplog.at_level(logging.INFO, logger="robustdistiller.prepare"):
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
    with caplog.at_level(logging.WARNING, logger="robustdistiller.prepare"):
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
    lines = [f"--rir-id {name} --room-id r RIRS_NOISES/real_rirs_isotropic_noises/{name}.{ext}\n"
             for name, ext in (("air_type1_rir_a", "wav"), ("air_type1_rir_b", "WAV"), ("gone", "wav"))]
    (real / "rir_list").write_text("".join(lines))
    return root / "RIRS_NOISES"


def test_missing_rirs_are_counted(tmp_path, caplog):
    rirs = _small_rirs_noises(tmp_path)
    before = folder_snapshot(str(rirs))
    with caplog.at_level(logging.WARNING, logger="robustdistiller.prepare"):
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
        assert json.load(json_file) == {"csv": csv_path, "files_left_out": 0, "by_reason": {}}


# --- 2. A single string where a list is expected ---------------------------------------------------


def test_single_strings_are_one_item_lists(mini_corpus, tmp_path):
    before = folder_snapshot(*mini_corpus.values())
    as_lists, as_strings = tmp_path / "lists", tmp_path / "strings"
    expected = prepare_librispeech(mini_corpus["librispeech"], str(as_lists), ["train-clean-100"], ["dev-clean"])
    paths = prepare_librispeech(mini_corpus["librispeech"], str(as_strings), "train-clean-100", "dev-clean")
    assert _rows(paths["train"]) == _rows(expected["train"]) and _rows(paths["valid"]) == _rows(expected["valid"])
    noise_lists = prepare_noise(str(as_lists), musan_folder=mini_corpus["musan"], musan_subsets=["noise"],
                                urbansound_folder=mini_corpus["urbansound"], urbansound_exclude=["siren"])
    noise_strings = prepare_noise(str(as_strings), musan_folder=mini_corpus["musan"], musan_subsets="noise",
                                  urbansound_folder=mini_corpus["urbansound"], urbansound_exclude="siren")
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
    with caplog.at_level(logging.WARNING, logger="robustdistiller.prepare"):
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
    dataset = make_distillation_dataset(paths["train"], Corruptor(condition_probs={"clean": 1.0}),
                                        max_crop_samples=8000)
    with pytest.raises(AudioLoadError) as error:
        dataset[0]
    message = str(error.value)
    assert deleted in message and paths["train"] in message and "stale" in message
    assert "--force_prep=True" in message
    dataset = make_distillation_dataset(paths["train"], Corruptor(condition_probs={"clean": 1.0}),
                                        max_crop_samples=8000)  # SpeechBrain's pipeline is spent after an error
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
