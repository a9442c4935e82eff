"""SF recipe (Audio-SNIPS): the preparation's speaker split and errors, and prepare -> train -> test
under every test condition in one command on the fixture (tiny random WavLM upstream, tiny head).

The recipe runs once (module fixture ``sf_run``); its assertions are split over the tests below.
"""

from pathlib import Path
import csv
import importlib.util
import json
import os
import re
import shutil
import sys

import pytest
import torch

from tests.conftest import REPOSITORY_ROOT, corruption_overrides, folder_snapshot, run_recipe_script

from robustdistiller.downstream.protocol import DEFAULT_TEST_CONDITIONS
from robustdistiller.testing.fixtures.snips import generate_snips

SF_FOLDER = os.path.join(REPOSITORY_ROOT, "recipes", "SNIPS", "SF")
sys.path.insert(0, SF_FOLDER)  # the recipe imports its prepare script as a sibling module
import prepare_snips as prep  # noqa: E402

SUPERB_SPEAKERS = {
    "train": ["Ivy", "Joanna", "Joey", "Justin", "Kendra", "Kimberly", "Matthew", "Salli"],
    "valid": ["Aditi", "Amy", "Geraint", "Nicole"],
    "test": ["Brian", "Emma", "Raveena", "Russell"],
}
NUM_OUTPUTS = 31 + 2 * 4  # the fixture's slots.txt: artist, city, party_size_number, playlist


@pytest.fixture(scope="module")
def snips(tmp_path_factory):
    return generate_snips(str(tmp_path_factory.mktemp("snips")), seed=0)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fin:
        return list(csv.DictReader(fin))


# ------------------------------------------------------------------------------- preparation ---


def test_prepare_keeps_superbs_speakers_and_leaves_the_data_alone(snips, tmp_path):
    before = folder_snapshot(snips)
    paths = prep.prepare_snips(snips, str(tmp_path / "save"), SUPERB_SPEAKERS)
    assert folder_snapshot(snips) == before
    rows = {split: read_csv(paths[split]) for split in ("train", "valid", "test")}
    assert list(rows["train"][0]) == prep.CSV_COLUMNS
    # every folder also holds a speaker of another split: filtered out by the file-name prefix
    assert {row["speaker"] for row in rows["train"]} == {"Ivy", "Joanna"}
    assert {row["speaker"] for row in rows["valid"]} == {"Aditi"}
    assert {row["speaker"] for row in rows["test"]} == {"Brian"}
    assert len(rows["train"]) == 12 and len(rows["valid"]) == 4 and len(rows["test"]) == 4
    assert "Ivy-snips-train-9999" not in {row["ID"] for row in rows["train"]}  # a wav without a label line
    row = next(row for row in rows["train"] if row["ID"] == "Ivy-snips-train-1")
    assert (row["words"], row["tags"], row["intent"]) == (
        "PLAY SIMON & GARFUNKEL",
        "O artist artist artist",
        "PlayMusic",
    )
    assert os.path.basename(row["wav"]) == "Ivy-snips-train-1.wav" and float(row["duration"]) > 0.5
    tokens = Path(tmp_path / "save" / "tokens.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(tokens) == NUM_OUTPUTS and tokens[:4] == ["<pad>", "<eos>", "<unk>", " "]
    assert tokens[-2:] == ["B-playlist", "E-playlist"]
    # a second call with the same options does nothing
    modified = os.stat(paths["train"]).st_mtime_ns
    prep.prepare_snips(snips, str(tmp_path / "save"), SUPERB_SPEAKERS)
    assert os.stat(paths["train"]).st_mtime_ns == modified


def test_prepare_names_what_is_missing_or_wrong(snips, tmp_path):
    save = str(tmp_path / "save")
    with pytest.raises(FileNotFoundError, match=r"nowhere.*all.iob.snips.txt.*expected SNIPS/"):
        prep.prepare_snips(str(tmp_path / "nowhere"), save, SUPERB_SPEAKERS)
    for missing in ("slots.txt", "valid"):
        copy = str(tmp_path / f"without_{missing}")
        shutil.copytree(snips, copy)
        target = os.path.join(copy, missing)
        shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
        with pytest.raises(FileNotFoundError, match=re.escape(target) + ".*expected SNIPS/"):
            prep.prepare_snips(copy, save, SUPERB_SPEAKERS)
    # a malformed label line: the file and line number
    broken = str(tmp_path / "broken")
    shutil.copytree(snips, broken)
    with open(os.path.join(broken, "all.iob.snips.txt"), "a", encoding="utf-8") as fout:
        fout.write("Ivy-snips-train-77 BOS PLAY EOS O O PlayMusic\n")
    with pytest.raises(ValueError, match=r"all.iob.snips.txt, line 27.*BOS"):
        prep.prepare_snips(broken, save, SUPERB_SPEAKERS)
    # no speaker of the split in its folder
    with pytest.raises(ValueError, match=r"No utterance of the speakers \['Emma'\].*test"):
        prep.prepare_snips(snips, save, {**SUPERB_SPEAKERS, "test": ["Emma"]})
    assert not os.path.exists(os.path.join(save, "train.csv"))


# -------------------------------------------------------------------------------- the recipe ---


@pytest.fixture(scope="module")
def sf_run(snips, mini_corpus, tiny_teacher_folder, tmp_path_factory):
    """One run: prepare -> train (20 updates of the 12 training utterances) -> every test condition."""
    output = str(tmp_path_factory.mktemp("sf") / "run")
    before = folder_snapshot(snips)
    overrides = {
        "data_folder": snips,
        "upstream_source": tiny_teacher_folder,
        "output_folder": output,
        "vocab_size": NUM_OUTPUTS,
        "projector_size": 64,
        "lstm_size": 64,
        "lr": 0.005,
        "number_of_epochs": 20,
        "train_dataloader_opts": {"batch_size": 12, "shuffle": True, "num_workers": 0},
        "valid_dataloader_opts": {"batch_size": 8, "num_workers": 0},
        **corruption_overrides(mini_corpus),
    }
    code, log = run_recipe_script("SNIPS/SF", "hparams/superb_sf.yaml", overrides)
    assert code == 0, log
    return {"output": output, "unchanged": folder_snapshot(snips) == before, "log": log}


def train_losses(output):
    with open(os.path.join(output, "train_log.txt"), encoding="utf-8") as fin:
        return [float(value) for value in re.findall(r"train loss: ([0-9.e+-]+)", fin.read())]


def test_sf_loss_drops_by_more_than_half(sf_run):
    losses = train_losses(sf_run["output"])
    assert len(losses) == 20
    # one update per epoch: epoch 1's loss is the untrained head's (measured 10.3 -> 3.1)
    print("SF train loss per epoch:", losses)
    assert losses[-1] < 0.5 * losses[0], losses
    results = json.loads(Path(os.path.join(sf_run["output"], "results.json")).read_text())
    assert results["results"]["clean"]["loss"] < 0.5 * losses[0]


def test_sf_reports_every_condition(sf_run):
    output = sf_run["output"]
    assert sf_run["unchanged"]  # nothing was written under the data folder
    results = json.loads(Path(os.path.join(output, "results.json")).read_text())
    assert results["task"].startswith("SF")
    assert set(results["results"]) == set(DEFAULT_TEST_CONDITIONS)
    assert results["vocab_size"] == NUM_OUTPUTS and results["ctc_decoding"] == "standard"
    assert results["slot_types"] == ["artist", "city", "party_size_number", "playlist"]
    print({name: (stats["slot_type_f1"], stats["slot_value_cer"]) for name, stats in results["results"].items()})
    for stats in results["results"].values():
        assert 0.0 <= stats["slot_type_f1"] <= 1.0 and stats["slot_value_cer"] >= 0.0
        assert set(stats) >= {"loss", "slot_type_f1", "slot_value_cer", "slot_value_wer", "wer", "cer"}
    table = Path(os.path.join(output, "results.md")).read_text()
    assert "slot_type_f1" in table and all(f"| {name} |" in table for name in DEFAULT_TEST_CONDITIONS)
    # per-utterance decoded texts of every condition, with the slot tokens in the references
    for name in DEFAULT_TEST_CONDITIONS:
        lines = Path(os.path.join(output, "hypotheses", f"{name}.txt")).read_text(encoding="utf-8").splitlines()
        assert len(lines) == 4 and lines[0].startswith("Brian-snips-test-0\tREF: PLAY B-artist ABBA E-artist\tHYP:")
    # dev slot-type F1 every epoch; the checkpoints hold the weighted sum and the head only
    train_log = Path(os.path.join(output, "train_log.txt")).read_text()
    assert train_log.count("valid slot_type_f1") == 20
    checkpoints = sorted(name for name in os.listdir(os.path.join(output, "save")) if name.startswith("CKPT+"))
    assert checkpoints
    folder = os.path.join(output, "save", checkpoints[-1])
    assert {name for name in os.listdir(folder) if name.endswith(".ckpt")} >= {
        "weighted_sum.ckpt",
        "head.ckpt",
        "counter.ckpt",
        "brain.ckpt",
        "optimizer.ckpt",
    }
    head = torch.load(os.path.join(folder, "head.ckpt"))
    assert head["output.weight"].shape == (NUM_OUTPUTS, 128)
    assert not any(name.startswith("upstream") for name in os.listdir(folder))


def test_vocab_size_must_match_slots_file(snips):
    spec = importlib.util.spec_from_file_location("sf_train", os.path.join(SF_FOLDER, "train.py"))
    sf_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sf_train)
    slots_file = os.path.join(snips, "slots.txt")
    assert sf_train.load_encoder({"slots_file": slots_file, "vocab_size": NUM_OUTPUTS}).vocab_size == NUM_OUTPUTS
    with pytest.raises(
        ValueError,
        match=f"slots.txt has 4 slot types: {NUM_OUTPUTS} CTC outputs, but vocab_size "
        f"is 109 \\(set vocab_size: {NUM_OUTPUTS}\\)",
    ):
        sf_train.load_encoder({"slots_file": slots_file, "vocab_size": 109})
