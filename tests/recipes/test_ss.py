"""SS recipe (Libri2Mix, SUPERB source separation): preparation (dev_1000 rule, metadata paths of another
machine, errors), permutation invariance of the metric and the loss, and one prepare -> train -> every
test condition run on the fixture with a tiny upstream and a tiny head.

The fixture (:mod:`robustdistiller.testing.fixtures.librimix`) is **deliberately easy**: one voice is low-passed
below 900 Hz and the other high-passed above 2.2 kHz, so a fixed frequency mask separates them. The run
shows that the recipe learns (SI-SDRi far above the untrained head's and above 3 dB); its numbers say
nothing about real Libri2Mix.
"""

from pathlib import Path
import csv
import json
import logging
import os
import random
import sys

import numpy as np
import pytest
import soundfile
import torch
from hyperpyyaml import resolve_references
from ruamel.yaml import YAML

from tests.conftest import REPOSITORY_ROOT, corruption_overrides, folder_snapshot, run_recipe_script

from robustdistiller.downstream.separation import pit_mask_loss, utterance_scores
from robustdistiller.downstream.signal import drop_missing_inputs
from robustdistiller.testing.fixtures.librimix import FOREIGN_ROOT, generate_librimix

SS_FOLDER = os.path.join(REPOSITORY_ROOT, "recipes", "LibriMix", "SS")
YAML_FILE = os.path.join(SS_FOLDER, "hparams", "superb_ss.yaml")
sys.path.insert(0, SS_FOLDER)  # the recipe imports its prepare script as a sibling module
import prepare_librimix_ss as prep  # noqa: E402

CONDITIONS = ["official", "mix_both", "snr5", "reverb"]
VALID_SUBSET = 4  # of the fixture's 5 dev mixtures


@pytest.fixture(scope="module")
def librimix(tmp_path_factory):
    return generate_librimix(str(tmp_path_factory.mktemp("librimix")), seed=0)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fin:
        return list(csv.DictReader(fin))


def metadata_ids(librimix, split):
    return [
        row["mixture_ID"]
        for row in read_csv(os.path.join(librimix, "wav16k", "min", "metadata", f"mixture_{split}_mix_clean.csv"))
    ]


def s3prl_subsample(ids, size):
    """s3prl's subsample.py, literally: sorted ids, the global random.seed(7), shuffle, the first ``size``."""
    state = random.getstate()
    ids = sorted(ids)
    random.seed(7)
    random.shuffle(ids)
    random.setstate(state)
    return ids[:size]


def prepare(librimix, folder, **options):
    csv_files = {key: os.path.join(folder, f"{key}.csv") for key in ("train", "valid", "test")}
    prep.prepare_librimix_ss(librimix, folder, csv_files, **options)
    return {key: read_csv(path) for key, path in csv_files.items()}, csv_files


# ---------------------------------------------------------------------------- preparation ---


def test_prepare_lists_dev_subset_and_resolves_foreign_paths(librimix, tmp_path, caplog):
    before = folder_snapshot(librimix)
    with caplog.at_level(logging.INFO):
        lists, csv_files = prepare(librimix, str(tmp_path / "save"), valid_subset_size=3)
    assert folder_snapshot(librimix) == before  # nothing written under the data folder
    assert [len(lists[key]) for key in ("train", "valid", "test")] == [8, 3, 4]
    assert list(lists["train"][0]) == list(prep.CSV_COLUMNS)
    # dev_1000's rule on the fixture: the same ids as s3prl's subsample.py
    assert {row["ID"] for row in lists["valid"]} == set(s3prl_subsample(metadata_ids(librimix, "dev"), 3))
    assert prep.subsample_ids(metadata_ids(librimix, "dev"), 3) == s3prl_subsample(metadata_ids(librimix, "dev"), 3)
    # dev and test metadata name another machine's files: found under data_folder by their last components
    test_metadata = read_csv(os.path.join(librimix, "wav16k", "min", "metadata", "mixture_test_mix_clean.csv"))
    assert all(row["mixture_path"].startswith(FOREIGN_ROOT) for row in test_metadata)
    assert "paths of its metadata do not exist on this machine" in caplog.text
    for key, rows in lists.items():
        for row in rows:
            split = {"train": "train-100", "valid": "dev", "test": "test"}[key]
            for column, kind in (("wav", "mix_clean"), ("s1_wav", "s1"), ("s2_wav", "s2")):
                assert row[column] == os.path.join(librimix, "wav16k", "min", split, kind, row["ID"] + ".wav")
            assert os.path.isfile(row["wav"]) and float(row["duration"]) >= 1.5
            assert bool(row["mix_both_wav"]) == (key == "test")  # the fixture has mix_both for test only
    # min mode: mix_clean = s1 + s2, equal lengths
    row = lists["test"][0]
    mixture, s1, s2 = (soundfile.read(row[column])[0] for column in ("wav", "s1_wav", "s2_wav"))
    assert len(mixture) == len(s1) == len(s2) and np.abs(mixture - s1 - s2).max() < 1e-3
    # mix_both is kept as a test condition only where the list has it (the train list has no mix_both)
    conditions = {
        "official": {"input": "wav", "condition": "clean"},
        "mix_both": {"input": "mix_both_wav", "condition": "clean"},
        "clean": {"condition": "clean"},
    }
    assert list(drop_missing_inputs(conditions, csv_files["test"], ["s1_wav", "s2_wav"])) == list(conditions)
    with caplog.at_level(logging.WARNING):
        assert list(drop_missing_inputs(conditions, csv_files["train"], ["s1_wav", "s2_wav"])) == ["official", "clean"]
    assert "mix_both" in caplog.text
    # the whole dev split with valid_subset_size null
    assert len(prepare(librimix, str(tmp_path / "all"), valid_subset_size=None)[0]["valid"]) == 5


def test_prepare_errors_name_the_missing_file_and_layout(librimix, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*wav16k/min/metadata/mixture_<split>_mix_clean.csv"):
        prepare(str(tmp_path / "nowhere"), str(tmp_path / "s1"))
    with pytest.raises(FileNotFoundError, match=r"mixture_dev-clean_mix_clean.csv.*valid"):
        prepare(librimix, str(tmp_path / "s2"), splits={"valid": "dev-clean"})
    # a metadata path found neither where it says nor under data_folder
    copy = tmp_path / "Libri2Mix"
    os.makedirs(copy / "wav16k" / "min" / "metadata")
    with open(copy / "wav16k" / "min" / "metadata" / "mixture_train-100_mix_clean.csv", "w") as fout:
        fout.write(
            "mixture_ID,mixture_path,source_1_path,source_2_path,length\n"
            "a_b,/other/wav16k/min/train-100/mix_clean/a_b.wav,/other/s1/a_b.wav,/other/s2/a_b.wav,16000\n"
        )
    with pytest.raises(
        FileNotFoundError,
        match=r"mixture_train-100_mix_clean.csv names '/other/wav16k/min/train-100/"
        r"mix_clean/a_b.wav'.*Libri2Mix layout",
    ):
        prepare(str(copy), str(tmp_path / "s3"))


# ------------------------------------------------------------------- permutation invariance ---


def test_metric_and_loss_do_not_depend_on_the_source_order(librimix):
    row = read_csv(os.path.join(librimix, "wav16k", "min", "metadata", "mixture_train-100_mix_clean.csv"))[0]
    path = lambda kind: os.path.join(librimix, "wav16k", "min", "train-100", kind, row["mixture_ID"] + ".wav")  # noqa: E731
    mixture, s1, s2 = (soundfile.read(path(kind))[0] for kind in ("mix_clean", "s1", "s2"))
    references = np.stack([s1, s2], axis=1)
    rng = np.random.default_rng(0)
    estimates = references + 0.05 * references.std() * rng.standard_normal(references.shape)
    scores = utterance_scores(estimates, references, mixture)
    swapped = utterance_scores(estimates, references[:, ::-1], mixture)
    assert scores == pytest.approx(swapped) and scores["SI_SDRi"] > 20
    # the mixture as both estimates: no improvement
    assert utterance_scores(np.stack([mixture, mixture], 1), references, mixture)["SI_SDRi"] == pytest.approx(0)
    # uPIT loss: the same whichever source is s1
    masks, magnitude = torch.rand(2, 30, 17, 2), torch.rand(2, 30, 17)
    targets, lengths = torch.rand(2, 30, 17, 2), torch.tensor([30, 21])
    assert float(pit_mask_loss(masks, magnitude, targets, lengths)) == pytest.approx(
        float(pit_mask_loss(masks, magnitude, targets.flip(-1), lengths))
    )


def test_full_size_defaults_are_s3prl_v1():
    with open(YAML_FILE, encoding="utf-8") as fin:
        options = YAML().load(
            resolve_references(fin, {"data_folder": "/nonexistent", "upstream_source": "microsoft/wavlm-base-plus"})
        )
    head = dict(options["head"])
    assert head == {
        "input_size": head["input_size"],
        "num_sources": 2,
        "num_bins": 257,
        "hidden_size": 896,
        "num_layers": 3,
        "dropout": 0.5,
        "bidirectional": True,
        "activation": "relu",
    }
    assert (options["n_fft"], options["win_length"], options["hop_length"], options["feature_repeat"]) == (
        512,
        512,
        320,
        1,
    )
    assert (options["mask_target"], options["mask_distance"], options["selection_metric"]) == ("npsm", "mse", "SI_SDRi")
    assert (options["valid_subset_size"], options["valid_subset_seed"], options["corruption_input"]) == (
        1000,
        7,
        "sources",
    )
    assert options["valid_dataloader_opts"]["batch_size"] == 1 and not options["valid_quality"]
    assert options["test_quality"] and options["number_of_epochs"] * (13_900 // 8) >= 150_000
    assert dict(options["release_conditions"]) == {
        "official": {"input": "wav", "condition": "clean"},
        "mix_both": {"input": "mix_both_wav", "condition": "clean"},
    }


# ----------------------------------------------------------------------------- the recipe ---


@pytest.fixture(scope="module")
def ss_run(librimix, tiny_teacher_folder, mini_corpus, tmp_path_factory):
    """One tiny run of the recipe: head hidden 32, 1 layer, lr 1e-2, 4 epochs of 2 updates."""
    output = str(tmp_path_factory.mktemp("ss") / "run")
    before = folder_snapshot(librimix, mini_corpus["musan"], mini_corpus["rirs"])
    overrides = {
        "data_folder": librimix,
        "upstream_source": tiny_teacher_folder,
        "output_folder": output,
        "head_hidden_size": 32,
        "head_layers": 1,
        "lr": 0.01,
        "number_of_epochs": 4,
        "valid_subset_size": VALID_SUBSET,
        "evaluate_untrained": True,
        "num_saved_examples": 1,
        "train_dataloader_opts": {"batch_size": 4, "shuffle": True, "num_workers": 0},
        "valid_dataloader_opts": {"batch_size": 1, "num_workers": 0},
        "test_condition_names": CONDITIONS,
        **corruption_overrides(mini_corpus),
    }
    code, log = run_recipe_script("LibriMix/SS", "hparams/superb_ss.yaml", overrides)
    assert code == 0, log
    after = folder_snapshot(librimix, mini_corpus["musan"], mini_corpus["rirs"])
    return {
        "output": output,
        "unchanged": before == after,
        "results": json.load(open(os.path.join(output, "results.json"), encoding="utf-8")),
    }


def test_ss_learns_above_the_untrained_head(ss_run):
    results = ss_run["results"]
    official, untrained = results["results"]["official"], results["untrained_valid"]
    print(
        "SS fixture SI-SDRi per condition:",
        {name: round(stats["SI_SDRi"], 2) for name, stats in results["results"].items()},
        "untrained dev:",
        round(untrained["SI_SDRi"], 2),
    )
    assert official["SI_SDRi"] > 3.0 and official["SI_SDRi"] > untrained["SI_SDRi"] + 3.0
    assert results["primary_metric"] == "SI_SDRi" and results["higher_is_better"] is True


def test_ss_reports_every_condition_against_its_own_input(ss_run):
    results = ss_run["results"]["results"]
    assert list(results) == CONDITIONS
    for name, stats in results.items():
        assert stats["utterances"] == 4 and stats["checkpoint"].startswith("CKPT")
        assert stats["SI_SDRi"] == pytest.approx(stats["SI_SDR"] - stats["SI_SDR_input"])
        for metric in ("PESQ", "PESQ_input", "PESQ_improvement", "STOI", "STOI_input", "STOI_improvement"):
            assert np.isfinite(stats[metric]), (name, metric)
        assert os.path.isfile(
            os.path.join(
                ss_run["output"], "examples", name, os.listdir(os.path.join(ss_run["output"], "examples", name))[0]
            )
        )
    # the corrupted inputs are further from the sources than mix_clean (improvement measured against them)
    for name in ("mix_both", "snr5", "reverb"):
        assert results[name]["SI_SDR_input"] < results["official"]["SI_SDR_input"] - 0.3, name
    table = Path(os.path.join(ss_run["output"], "results.md")).read_text(encoding="utf-8")
    assert "| mix_both |" in table and "SI_SDRi" in table


def test_ss_run_selects_dev_1000_by_s3prl_rule_and_leaves_inputs_unchanged(ss_run, librimix):
    valid = read_csv(os.path.join(ss_run["output"], "save", "valid.csv"))
    assert {row["ID"] for row in valid} == set(s3prl_subsample(metadata_ids(librimix, "dev"), VALID_SUBSET))
    assert ss_run["unchanged"]
    provenance = ss_run["results"]["provenance"]
    assert provenance["recipe"] == "LibriMix/SS" and ss_run["results"]["valid_subset"] == {
        "size": VALID_SUBSET,
        "seed": 7,
    }
