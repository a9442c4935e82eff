"""SE recipe (VoiceBank-DEMAND, SUPERB speech enhancement): the fixture, the preparation (s3prl's dev
speakers, errors naming what is missing), and one prepare -> train -> every requested test condition run
with the tiny upstream and a tiny head, whose results are checked for learning and for the invariants of
the signal-task conditions (the input of ``clean`` is its own target; with a noise condition the input's
SI-SDR is the nominal SNR, i.e. the target is the scaled clean speech).

The fixture's numbers show that the recipe learns; they say nothing about real VoiceBank-DEMAND.
"""

from pathlib import Path
import csv
import json
import os
import shutil
import sys

import numpy as np
import pytest
import soundfile

from tests.conftest import REPOSITORY_ROOT, corruption_overrides, folder_snapshot, run_recipe_script

from robustdistiller.testing.fixtures.voicebank import LENGTH_MULTIPLE, TEST_SNRS, generate_voicebank

SE_FOLDER = os.path.join(REPOSITORY_ROOT, "recipes", "VoiceBank", "SE")
sys.path.insert(0, SE_FOLDER)  # the recipe imports its prepare script as a sibling module
import prepare_voicebank as prep  # noqa: E402

CONDITIONS = ["official", "clean", "snr5", "reverb"]
METRICS = (
    "PESQ",
    "PESQ_input",
    "PESQ_improvement",
    "STOI",
    "STOI_input",
    "STOI_improvement",
    "SI_SDR",
    "SI_SDR_input",
    "SI_SDRi",
    "utterances",
)


@pytest.fixture(scope="module")
def voicebank(tmp_path_factory):
    return generate_voicebank(str(tmp_path_factory.mktemp("voicebank")), seed=0)


def read_csv(path):
    with open(path, encoding="utf-8") as fin:
        return list(csv.DictReader(fin))


def speakers(rows):
    return sorted({row["ID"].split("_")[0] for row in rows})


# ------------------------------------------------------------------------------- fixture ---


def test_fixture_pairs_noisy_and_clean_twins_at_the_intended_snr(voicebank):
    noisy_folder = os.path.join(voicebank, "noisy_testset_wav_16k")
    snrs = []
    for name in sorted(os.listdir(noisy_folder)):
        noisy, rate = soundfile.read(os.path.join(noisy_folder, name))
        clean, _ = soundfile.read(os.path.join(voicebank, "clean_testset_wav_16k", name))
        assert rate == 16000 and len(noisy) == len(clean) and len(clean) % LENGTH_MULTIPLE == 0
        assert 1.3 <= len(clean) / rate <= 3.0
        snrs.append(10 * np.log10(np.sum(clean**2) / np.sum((noisy - clean) ** 2)))
    assert sorted(snrs) == pytest.approx(sorted(2 * list(TEST_SNRS)), abs=0.01)  # 16-bit rounding only
    assert os.path.isfile(os.path.join(voicebank, "testset_txt", "p232_001.txt"))


# --------------------------------------------------------------------------- preparation ---


def test_prepare_splits_by_speaker_and_leaves_the_data_folder_alone(voicebank, tmp_path):
    before = folder_snapshot(voicebank)
    paths = prep.prepare_voicebank(voicebank, str(tmp_path / "save"))
    assert folder_snapshot(voicebank) == before
    train, valid, test = (read_csv(paths[split]) for split in ("train", "valid", "test"))
    assert list(train[0]) == ["ID", "duration", "wav", "clean_wav"]
    assert speakers(train) == ["p230", "p254"] and speakers(valid) == ["p226", "p287"]
    assert speakers(test) == ["p232", "p257"] and (len(train), len(valid), len(test)) == (32, 4, 6)
    for row in train + valid + test:
        assert "noisy_" in row["wav"] and row["clean_wav"] == row["wav"].replace("noisy_", "clean_")
        assert os.path.isfile(row["clean_wav"]) and float(row["duration"]) > 1.0
    # another dev speaker set; a set that leaves no dev file is refused, naming the option
    paths = prep.prepare_voicebank(voicebank, str(tmp_path / "other"), dev_speakers=["p230"])
    assert speakers(read_csv(paths["valid"])) == ["p230"]
    with pytest.raises(ValueError, match="dev_speakers"):
        prep.prepare_voicebank(voicebank, str(tmp_path / "none"), dev_speakers=["p999"])


def test_prepare_errors_name_the_missing_folder_and_the_orphan_files(voicebank, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*does not exist"):
        prep.prepare_voicebank(str(tmp_path / "nowhere"), str(tmp_path / "s"))
    partial = tmp_path / "partial"
    for name in ("clean_trainset_28spk_wav_16k", "noisy_trainset_28spk_wav_16k", "noisy_testset_wav_16k"):
        shutil.copytree(os.path.join(voicebank, name), partial / name)
    with pytest.raises(FileNotFoundError, match="no clean_testset_wav_16k \\(nor clean_testset_wav\\)"):
        prep.prepare_voicebank(str(partial), str(tmp_path / "s"))
    # the 48 kHz release's folder name is accepted; a noisy file without its clean twin is named
    shutil.copytree(os.path.join(voicebank, "clean_testset_wav_16k"), partial / "clean_testset_wav")
    os.remove(partial / "clean_testset_wav" / "p257_002.wav")
    with pytest.raises(FileNotFoundError, match="1 of the 6 noisy files.*no clean twin.*p257_002.wav"):
        prep.prepare_voicebank(str(partial), str(tmp_path / "s"))
    assert not os.path.exists(tmp_path / "s" / "test.csv")


# ---------------------------------------------------------------------------- the recipe ---


@pytest.fixture(scope="module")
def se_run(voicebank, tiny_teacher_folder, mini_corpus, tmp_path_factory):
    """One tiny run (4 epochs of 16 updates) shared by the assertions below."""
    output = str(tmp_path_factory.mktemp("se") / "run")
    inputs = (voicebank, mini_corpus["musan"], mini_corpus["rirs"])
    before = folder_snapshot(*inputs)
    overrides = {
        "data_folder": voicebank,
        "upstream_source": tiny_teacher_folder,
        "output_folder": output,
        "head_hidden_size": 32,
        "head_layers": 1,
        "head_dropout": 0.0,
        "lr": 0.003,
        "number_of_epochs": 4,
        "evaluate_untrained": True,
        "num_saved_examples": 1,
        "train_dataloader_opts": {"batch_size": 2, "shuffle": True, "num_workers": 0},
        "valid_dataloader_opts": {"batch_size": 1, "num_workers": 0},
        "test_condition_names": CONDITIONS,
        **corruption_overrides(mini_corpus),
    }
    code, log = run_recipe_script("VoiceBank/SE", "hparams/superb_se.yaml", overrides)
    assert code == 0, log
    with open(os.path.join(output, "results.json"), encoding="utf-8") as fin:
        results = json.load(fin)
    return {"output": output, "results": results, "unchanged": folder_snapshot(*inputs) == before}


def test_se_learns_on_the_released_noisy_test_set(se_run):
    results = se_run["results"]
    official, untrained = results["results"]["official"], results["untrained_valid"]
    print(
        "SE official PESQ enhanced / noisy:",
        official["PESQ"],
        official["PESQ_input"],
        "SI_SDRi:",
        official["SI_SDRi"],
        "dev PESQ untrained:",
        untrained["PESQ"],
    )
    assert official["PESQ"] > official["PESQ_input"] and official["PESQ_improvement"] > 0.05
    assert official["SI_SDRi"] > 0
    assert untrained["PESQ_improvement"] < official["PESQ_improvement"] and untrained["SI_SDRi"] < 0
    assert results["primary_metric"] == "PESQ" and results["higher_is_better"] is True
    assert results["selection_metric"] == "PESQ"


def test_every_condition_reports_absolute_values_and_improvements(se_run):
    results = se_run["results"]["results"]
    assert list(results) == CONDITIONS
    for name, stats in results.items():
        assert all(metric in stats for metric in METRICS), (name, sorted(stats))
        assert stats["utterances"] == 6 and stats["PESQ_scored"] == 6 and stats["checkpoint"].startswith("CKPT")
        assert stats["PESQ_improvement"] == pytest.approx(stats["PESQ"] - stats["PESQ_input"], abs=1e-6)
        assert stats["SI_SDRi"] == pytest.approx(stats["SI_SDR"] - stats["SI_SDR_input"], abs=1e-6)
        assert os.path.isfile(os.path.join(se_run["output"], "examples", name, "p232_001_source1.wav"))
    table = Path(os.path.join(se_run["output"], "results.md")).read_text(encoding="utf-8")
    assert all(f"| {name} |" in table for name in CONDITIONS)


def test_condition_inputs_and_targets_are_consistent(se_run):
    results = se_run["results"]["results"]
    # clean: the input is the target itself (its SI-SDR is 10 log10(|r|^2 / 1e-8), finite through pb_bss_eval's
    # eps: see recipes/VoiceBank/SE/README.md; far above any real score for fixture speech), perfect PESQ and STOI
    assert results["clean"]["SI_SDR_input"] > 60 and results["clean"]["STOI_input"] > 0.999
    assert results["clean"]["PESQ_input"] > 4.4
    # snr5: the input against its target (the clean speech scaled by the noise mixer) is the nominal SNR
    assert results["snr5"]["SI_SDR_input"] == pytest.approx(5.0, abs=1.0)
    # official: the fixture's noisy test files are at 0 / 2.5 / 5 dB
    assert results["official"]["SI_SDR_input"] == pytest.approx(np.mean(TEST_SNRS), abs=1.0)
    # reverb: the dry clean target, far from the reverberant input
    assert results["reverb"]["SI_SDR_input"] < 10 and results["reverb"]["PESQ_input"] < 4
    assert se_run["unchanged"], "the recipe wrote into an input folder"
