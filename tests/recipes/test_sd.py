"""SD recipe (s3prl's LibriMix diarization variant): the preparation of both input layouts and its errors, and
prepare -> train -> dev-chosen decoding -> every test condition on the fixture with a tiny upstream (one run)."""

from pathlib import Path
import csv
import json
import os
import shutil
import sys

import pytest

from tests.conftest import REPOSITORY_ROOT, corruption_overrides, folder_snapshot, run_recipe_script

from robustdistiller.downstream.der import DEFAULT_MEDIANS, DEFAULT_THRESHOLDS, constant_baseline, read_rttm
from robustdistiller.downstream.diarization import parse_turns
from robustdistiller.downstream.signal import drop_missing_inputs
from robustdistiller.testing.fixtures.librimix_sd import generate_librimix_sd

SD_FOLDER = os.path.join(REPOSITORY_ROOT, "recipes", "LibriMix", "SD")
sys.path.insert(0, SD_FOLDER)  # the recipe imports its prepare script as a sibling module
import prepare_librimix_sd as prep  # noqa: E402

SPLITS = {"train": "train-100", "valid": "dev", "test": "test"}
KALDI_SPLITS = {"train": "train", "valid": "dev", "test": "test"}
VAD_FILES = {"train": "train_clean_100.rttm", "valid": "dev_clean.rttm", "test": "test_clean.rttm"}
CONDITIONS = ["official", "clean", "snr5", "reverb"]


@pytest.fixture(scope="module")
def librimix(tmp_path_factory):
    return generate_librimix_sd(str(tmp_path_factory.mktemp("librimix_sd")), seed=0, kaldi=True)


def read_csv(path):
    with open(path, encoding="utf-8") as fin:
        return list(csv.DictReader(fin))


def prepare(data_folder, save_folder, vad_folder=None, data_format="auto"):
    csv_files = {key: os.path.join(save_folder, f"{key}.csv") for key in SPLITS}
    prep.prepare_librimix_sd(
        data_folder,
        save_folder,
        csv_files,
        SPLITS,
        KALDI_SPLITS,
        vad_rttm_folder=vad_folder,
        vad_rttm_files=VAD_FILES,
        data_format=data_format,
    )
    return csv_files


def rounded(turns):
    return {speaker: [(round(start, 3), round(end, 3)) for start, end in items] for speaker, items in turns.items()}


# --------------------------------------------------------------------------- preparation ---


def test_prepare_reads_librimix_and_kaldi_folders_alike(librimix, tmp_path):
    before = folder_snapshot(os.path.dirname(librimix["libri2mix"]))
    mix_csvs = prepare(librimix["libri2mix"], str(tmp_path / "mix"), librimix["vad_rttm_folder"])
    kaldi_csvs = prepare(librimix["kaldi"], str(tmp_path / "kaldi"))  # detected: wav.scp
    assert folder_snapshot(os.path.dirname(librimix["libri2mix"])) == before  # nothing written under the data
    for key, split in SPLITS.items():
        mix_rows, kaldi_rows = read_csv(mix_csvs[key]), read_csv(kaldi_csvs[key])
        assert list(mix_rows[0]) == ["ID", "duration", "wav", "s1_wav", "s2_wav", "segments"]
        expected = librimix["turns"][split]
        assert sorted(row["ID"] for row in mix_rows) == sorted(expected) == [row["ID"] for row in kaldi_rows]
        kaldi_by_id = {row["ID"]: row for row in kaldi_rows}
        for row in mix_rows:
            assert rounded(parse_turns(row["segments"])) == rounded(expected[row["ID"]])  # 2-3 turns per source
            assert all(2 <= len(turns) <= 3 for turns in expected[row["ID"]].values())
            assert row["wav"].endswith(os.path.join(split, "mix_both", row["ID"] + ".wav"))
            assert os.path.isfile(row["s1_wav"]) and os.path.isfile(row["s2_wav"])
            other = kaldi_by_id[row["ID"]]
            assert rounded(parse_turns(other["segments"])) == rounded(parse_turns(row["segments"]))
            assert other["wav"] == row["wav"] and other["s1_wav"] == other["s2_wav"] == ""
            assert float(row["duration"]) == pytest.approx(float(other["duration"]))
            assert 1.5 <= float(row["duration"]) <= 4.5
        reference = read_rttm(prep.reference_rttm_path(mix_csvs[key]))
        assert {name: rounded(turns) for name, turns in reference.items()} == {
            name: rounded(turns) for name, turns in expected.items()
        }
    # Kaldi lists have no sources: only the released condition can run on them
    conditions = {"official": {"input": "wav", "condition": "clean"}, "clean": {"condition": "clean"}}
    assert list(drop_missing_inputs(conditions, kaldi_csvs["test"], ["s1_wav", "s2_wav"])) == ["official"]
    assert list(drop_missing_inputs(conditions, mix_csvs["test"], ["s1_wav", "s2_wav"])) == ["official", "clean"]


def test_prepare_errors_name_the_missing_file(librimix, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*wav16k/max.*wav\.scp"):
        prepare(str(tmp_path / "nowhere"), str(tmp_path / "s0"))
    with pytest.raises(ValueError, match="vad_rttm_folder"):
        prepare(librimix["libri2mix"], str(tmp_path / "s1"))
    with pytest.raises(FileNotFoundError, match=r"missing_vad/train_clean_100\.rttm"):
        prepare(librimix["libri2mix"], str(tmp_path / "s2"), str(tmp_path / "missing_vad"))
    # a VAD RTTM without one of the utterances: the utterance, its key and the file are named
    vad = tmp_path / "vad"
    shutil.copytree(librimix["vad_rttm_folder"], vad)
    first_key = next(iter(librimix["turns"]["train-100"])).split("_")[0].split("-", 1)[1]
    lines = (vad / "train_clean_100.rttm").read_text().splitlines()
    (vad / "train_clean_100.rttm").write_text("\n".join(line for line in lines if f" {first_key} " not in line))
    with pytest.raises(KeyError, match=rf"{first_key}.*train_clean_100\.rttm"):
        prepare(librimix["libri2mix"], str(tmp_path / "s3"), str(vad))
    # Libri2Mix without its metadata CSV of a split
    copy = tmp_path / "Libri2Mix"
    shutil.copytree(librimix["libri2mix"], copy)
    os.remove(copy / "wav16k" / "max" / "metadata" / "mixture_dev_mix_both.csv")
    with pytest.raises(FileNotFoundError, match=r"mixture_dev_mix_both\.csv"):
        prepare(str(copy), str(tmp_path / "s4"), librimix["vad_rttm_folder"], data_format="librimix")
    # a Kaldi folder without utt2spk
    kaldi = tmp_path / "kaldi"
    shutil.copytree(librimix["kaldi"], kaldi)
    os.remove(kaldi / "test" / "utt2spk")
    with pytest.raises(FileNotFoundError, match=r"test/utt2spk.*wav\.scp,segments,utt2spk"):
        prepare(str(kaldi), str(tmp_path / "s5"))


# ---------------------------------------------------------------------------- the recipe ---


@pytest.fixture(scope="module")
def sd_run(librimix, tiny_teacher_folder, mini_corpus, tmp_path_factory):
    """One short run of the recipe on the fixture, shared by the assertions below."""
    output = str(tmp_path_factory.mktemp("sd") / "run")
    inputs = (os.path.dirname(librimix["libri2mix"]), mini_corpus["musan"], mini_corpus["rirs"])
    before = folder_snapshot(*inputs)
    overrides = {
        "data_folder": librimix["libri2mix"],
        "vad_rttm_folder": librimix["vad_rttm_folder"],
        "upstream_source": tiny_teacher_folder,
        "output_folder": output,
        "lstm_size": 32,
        "lr": 0.01,
        "number_of_epochs": 8,
        "grad_accumulation_factor": 1,
        "train_dataloader_opts": {"batch_size": 2, "shuffle": True, "num_workers": 0},
        "valid_dataloader_opts": {"batch_size": 3, "num_workers": 0},
        "test_condition_names": CONDITIONS,
        **corruption_overrides(mini_corpus),
    }
    code, log = run_recipe_script("LibriMix/SD", "hparams/superb_sd.yaml", overrides)
    assert code == 0, log
    results = json.loads(Path(os.path.join(output, "results.json")).read_text())
    return {"output": output, "results": results, "unchanged": folder_snapshot(*inputs) == before}


def test_sd_learns_below_the_always_active_baseline(sd_run, librimix):
    results = sd_run["results"]
    test_turns = librimix["turns"]["test"]
    with open(os.path.join(sd_run["output"], "save", "test.csv"), encoding="utf-8") as fin:
        durations = {row["ID"]: float(row["duration"]) for row in csv.DictReader(fin)}
    baseline = constant_baseline(test_turns, durations)["DER"]
    official = results["results"]["official"]
    print(
        "SD fixture test DER (dev-chosen) / best on test / always-active baseline:",
        official["DER"],
        official["DER_best_on_test"],
        baseline,
        "setting",
        results["decoding"],
    )
    assert results["baseline_always_active_test"]["DER"] == pytest.approx(baseline)
    assert baseline > 80  # each speaker talks about half of the time
    assert official["DER"] < 60 and official["DER"] < baseline - 40
    assert results["results"]["clean"]["DER"] < baseline - 30
    assert official["frame_accuracy"] > 70


def test_sd_reports_every_condition_with_the_dev_chosen_setting(sd_run):
    results, output = sd_run["results"], sd_run["output"]
    assert sd_run["unchanged"]  # fixture, noise and RIR folders untouched
    assert results["task"].startswith("SD") and results["primary_metric"] == "DER"
    assert results["higher_is_better"] is False
    decoding = results["decoding"]
    assert decoding["threshold"] in DEFAULT_THRESHOLDS and decoding["median"] in DEFAULT_MEDIANS
    assert len(results["dev_grid"]) == 10 and decoding["dev_DER"] == min(s["DER"] for s in results["dev_grid"].values())
    assert list(results["results"]) == CONDITIONS
    expected_ids = set(read_rttm(os.path.join(output, "save", "test.rttm")))
    for name, stats in results["results"].items():
        assert stats["miss"] + stats["false_alarm"] + stats["confusion"] == pytest.approx(stats["DER"])
        assert 0 <= stats["DER_best_on_test"] <= stats["DER"] and stats["checkpoint"].startswith("CKPT")
        hypothesis = read_rttm(os.path.join(output, "rttm", f"{name}.rttm"))
        assert set(hypothesis) <= expected_ids and hypothesis  # speakers <recording>_<index>, as s3prl
        assert all(
            speaker.startswith(f"{recording}_") for recording, speakers in hypothesis.items() for speaker in speakers
        )
    # corrupted conditions start from s1 + s2 and differ from the clean one
    assert results["results"]["snr5"]["loss"] != results["results"]["clean"]["loss"]
    table = Path(os.path.join(output, "results.md")).read_text()
    assert "DER_best_on_test" in table and "| reverb |" in table and "| official |" in table
    assert results["provenance"]["recipe"] == "LibriMix/SD"
