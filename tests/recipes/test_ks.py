"""KS recipe (Speech Commands v0.01): the split rules of its preparation, its errors, its class-balanced
sampler, and prepare -> train -> test on clean and corrupted audio on the fixture."""

from pathlib import Path
import csv
import importlib.util
import json
import math
import os
import shutil
import sys

import numpy as np
import pytest
import soundfile
import torch

from tests.conftest import REPOSITORY_ROOT, corruption_overrides, run_recipe_script

from robustdistiller.testing.fixtures.speech_commands import generate_speech_commands

KS_FOLDER = os.path.join(REPOSITORY_ROOT, "recipes", "SpeechCommands", "KS")
sys.path.insert(0, KS_FOLDER)  # the recipe imports its prepare script as a sibling module
import prepare_speech_commands as prep  # noqa: E402

COMMANDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
CLASSES = COMMANDS + ["_unknown_", "_silence_"]
# real speaker ids and their TensorFlow bands ("a69b9b3e" opens the real validation_list.txt)
VALIDATION_SPEAKER, TESTING_SPEAKER, TRAINING_SPEAKER = "a69b9b3e", "bb05582b", "0a7c2a8d"


@pytest.fixture(scope="module")
def speech_commands(tmp_path_factory):
    return generate_speech_commands(str(tmp_path_factory.mktemp("speech_commands")), seed=0)


def read_csv(path):
    with open(path, encoding="utf-8") as fin:
        return list(csv.DictReader(fin))


def snapshot(*folders):
    """Every file under the folders with its size and modification time."""
    state = {}
    for folder in folders:
        for directory, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(directory, name)
                stat = os.stat(path)
                state[path] = (stat.st_size, stat.st_mtime_ns)
    return state


def listed(data_folder, name):
    with open(os.path.join(data_folder, name), encoding="utf-8") as fin:
        return {line.strip() for line in fin if line.strip()}


def relative_wav(row, data_folder):
    return os.path.relpath(row["wav"], data_folder).replace(os.sep, "/")


def write_tiny_corpus(root, speakers_by_word=None, background=True, test_labels=CLASSES):
    """A hand-made Speech Commands layout with 0.5-s tones (for split and error tests)."""
    data_folder, test_folder = os.path.join(root, "speech_commands_v0.01"), os.path.join(root, "test_set")
    tone = 0.1 * np.sin(np.arange(8000) / 5.0).astype(np.float32)
    speakers_by_word = speakers_by_word or {word: [TRAINING_SPEAKER] for word in COMMANDS}
    for word, speakers in speakers_by_word.items():
        os.makedirs(os.path.join(data_folder, word), exist_ok=True)
        for speaker in speakers:
            soundfile.write(os.path.join(data_folder, word, f"{speaker}_nohash_0.wav"), tone, 16000)
    if background:
        os.makedirs(os.path.join(data_folder, "_background_noise_"))
        soundfile.write(
            os.path.join(data_folder, "_background_noise_", "white_noise.wav"), np.tile(tone, 5), 16000
        )  # 2.5 s: windows 0 and 1
    for label in test_labels:
        os.makedirs(os.path.join(test_folder, label))
        soundfile.write(os.path.join(test_folder, label, "c0ffee00_nohash_0.wav"), tone, 16000)
    return data_folder, test_folder


# ------------------------------------------------------------------------------- split rules ---


def test_which_set_is_tensorflows_speaker_hash_rule():
    assert prep.speaker_of("right/a69b9b3e_nohash_0.wav") == "a69b9b3e"
    assert round(prep.percentage_hash("a69b9b3e_nohash_0.wav"), 4) == 4.8811
    assert prep.which_set(f"right/{VALIDATION_SPEAKER}_nohash_0.wav") == "validation"
    assert prep.which_set(f"yes/{TESTING_SPEAKER}_nohash_3.wav") == "testing"
    assert prep.which_set(f"cat/{TRAINING_SPEAKER}_nohash_1.wav") == "training"
    # a speaker's utterances never straddle two sets, whatever the word or repetition
    assert {prep.which_set(f"{word}/{TESTING_SPEAKER}_nohash_{n}.wav") for word in CLASSES for n in range(3)} == {
        "testing"
    }
    percentage = prep.percentage_hash(f"{TESTING_SPEAKER}_nohash_0.wav")  # 18.13
    assert prep.which_set(f"x/{TESTING_SPEAKER}_nohash_0.wav", 17.0, 1.0) == "training"
    assert prep.which_set(f"x/{TESTING_SPEAKER}_nohash_0.wav", percentage + 0.01, 1.0) == "validation"
    assert [prep.label_of(word) for word in ("yes", "go", "marvin", "bed")] == ["yes", "go", "_unknown_", "_unknown_"]


def test_prepare_splits_like_s3prl_and_leaves_the_data_alone(speech_commands, tmp_path):
    data_folder, test_folder = speech_commands["data_folder"], speech_commands["test_folder"]
    before = snapshot(data_folder, test_folder)
    paths = prep.prepare_speech_commands(data_folder, test_folder, str(tmp_path / "save"))
    assert snapshot(data_folder, test_folder) == before
    train, dev, test = (read_csv(paths[split]) for split in ("train", "dev", "test"))
    assert list(train[0]) == ["ID", "duration", "wav", "start", "stop", "label", "word", "speaker"]

    speech = {
        name: [row for row in rows if row["label"] != "_silence_"] for name, rows in (("train", train), ("dev", dev))
    }
    dev_files = {relative_wav(row, data_folder) for row in speech["dev"]}
    train_files = {relative_wav(row, data_folder) for row in speech["train"]}
    # dev = the validation band (the fixture's own hash code wrote validation_list.txt)
    assert dev_files == listed(data_folder, "validation_list.txt")
    assert not (train_files | dev_files) & listed(data_folder, "testing_list.txt")
    word_folders = [
        word
        for word in os.listdir(data_folder)
        if word != "_background_noise_" and os.path.isdir(os.path.join(data_folder, word))
    ]
    all_words = {f"{word}/{name}" for word in word_folders for name in os.listdir(os.path.join(data_folder, word))}
    assert train_files | dev_files | listed(data_folder, "testing_list.txt") == all_words
    assert not {row["speaker"] for row in speech["train"]} & {row["speaker"] for row in speech["dev"]}
    assert len({row["speaker"] for row in speech["train"]}) == 8 and len({row["speaker"] for row in speech["dev"]}) == 3
    for row in speech["train"] + speech["dev"]:
        assert row["label"] == (row["word"] if row["word"] in COMMANDS else "_unknown_")
        assert row["speaker"] == os.path.basename(row["wav"]).split("_nohash_")[0]
        assert (row["start"], row["stop"], row["duration"]) == ("0", "-1", "1.000")
    assert {row["word"] for row in speech["train"] if row["label"] == "_unknown_"} == {"bed", "cat", "happy", "marvin"}
    # the label encoder follows the training CSV: s3prl's class order
    assert list(dict.fromkeys(row["label"] for row in train)) == CLASSES

    # _silence_: 1-s windows of the four 10-s noise files, every tenth one in dev
    windows = {}
    for name, rows in (("train", train), ("dev", dev)):
        for row in rows:
            if row["label"] == "_silence_":
                start, stop = int(row["start"]), int(row["stop"])
                assert stop - start == 16000 and start % 16000 == 0
                assert os.path.dirname(row["wav"]) == os.path.join(data_folder, "_background_noise_")
                windows[(row["wav"], start // 16000)] = name
    assert len(windows) == 4 * 10
    assert all((index % 10 == 9) == (name == "dev") for (_, index), name in windows.items())

    # test: the archive's folders are the labels, balanced (6 testing-band speakers)
    assert {row["label"] for row in test} == set(CLASSES)
    assert all(sum(row["label"] == label for row in test) == 6 for label in CLASSES)
    assert all(os.path.basename(os.path.dirname(row["wav"])) == row["label"] for row in test)

    # a second call with the same options does nothing
    modified = os.stat(paths["train"]).st_mtime_ns
    prep.prepare_speech_commands(data_folder, test_folder, str(tmp_path / "save"))
    assert os.stat(paths["train"]).st_mtime_ns == modified


def test_testing_list_entries_stay_out_of_train_and_dev(tmp_path):
    words = {word: [TRAINING_SPEAKER, VALIDATION_SPEAKER, TESTING_SPEAKER] for word in COMMANDS}
    words["marvin"] = [TRAINING_SPEAKER]
    data_folder, test_folder = write_tiny_corpus(str(tmp_path), speakers_by_word=words)
    with open(os.path.join(data_folder, "testing_list.txt"), "w", encoding="utf-8") as fout:
        fout.write(f"yes/{TRAINING_SPEAKER}_nohash_0.wav\n")  # listed although in the training band
    shutil.copy(
        os.path.join(data_folder, "yes", f"{TRAINING_SPEAKER}_nohash_0.wav"),  # "yes" stays a training class
        os.path.join(data_folder, "yes", f"{TRAINING_SPEAKER}_nohash_1.wav"),
    )
    paths = prep.prepare_speech_commands(data_folder, test_folder, str(tmp_path / "save"))
    train, dev = read_csv(paths["train"]), read_csv(paths["dev"])
    train_ids = {row["ID"] for row in train}
    assert f"yes_{TRAINING_SPEAKER}_nohash_0" not in train_ids and f"no_{TRAINING_SPEAKER}_nohash_0" in train_ids
    assert {row["speaker"] for row in train if row["label"] != "_silence_"} == {TRAINING_SPEAKER}
    assert {row["speaker"] for row in dev if row["label"] != "_silence_"} == {VALIDATION_SPEAKER}
    assert len(dev) == len(COMMANDS)  # 2.5 s of background noise: windows 0 and 1, both train
    assert [(row["start"], row["stop"]) for row in train if row["label"] == "_silence_"] == [
        ("0", "16000"),
        ("16000", "32000"),
    ]


def test_prepare_names_what_is_missing_or_wrong(tmp_path):
    save = str(tmp_path / "save")
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        prep.prepare_speech_commands(missing, missing, save)

    data_folder, test_folder = write_tiny_corpus(str(tmp_path / "a"))
    shutil.rmtree(os.path.join(data_folder, "stop"))
    with pytest.raises(FileNotFoundError, match=r"speech_commands_v0.01.*\['stop'\]"):
        prep.prepare_speech_commands(data_folder, test_folder, save)

    data_folder, test_folder = write_tiny_corpus(str(tmp_path / "b"), background=False)
    with pytest.raises(FileNotFoundError, match="_background_noise_"):
        prep.prepare_speech_commands(data_folder, test_folder, save)

    data_folder, test_folder = write_tiny_corpus(str(tmp_path / "c"))
    with pytest.raises(FileNotFoundError, match="test_set_v0.01_missing"):
        prep.prepare_speech_commands(data_folder, test_folder + "_v0.01_missing", save)

    data_folder, test_folder = write_tiny_corpus(str(tmp_path / "d"), test_labels=CLASSES + ["marvin"])
    with pytest.raises(ValueError, match=r"test_set.*\['marvin'\].*not KS labels"):
        prep.prepare_speech_commands(data_folder, test_folder, save)

    data_folder, test_folder = write_tiny_corpus(str(tmp_path / "e"))
    with open(os.path.join(data_folder, "yes", f"{TRAINING_SPEAKER}_nohash_1.wav"), "w") as fout:
        fout.write("not audio")
    with pytest.raises(FileNotFoundError, match=f"yes/{TRAINING_SPEAKER}_nohash_1.wav"):
        prep.prepare_speech_commands(data_folder, test_folder, save)
    assert not os.path.exists(os.path.join(save, "train.csv"))


def test_class_balanced_sampler_makes_every_class_equally_likely():
    from speechbrain.dataio.dataset import DynamicItemDataset

    spec = importlib.util.spec_from_file_location("ks_train", os.path.join(KS_FOLDER, "train.py"))
    ks_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ks_train)
    labels = ["_unknown_"] * 60 + ["yes"] * 10 + ["_silence_"] * 2
    dataset = DynamicItemDataset({f"u{index}": {"label": label} for index, label in enumerate(labels)})
    sampler = ks_train.class_balanced_sampler(dataset, seed=3)
    weights = torch.as_tensor(sampler.weights, dtype=torch.float64)
    per_class = {label: float(weights[[i for i, x in enumerate(labels) if x == label]].sum()) for label in set(labels)}
    assert max(per_class.values()) == pytest.approx(min(per_class.values()))
    assert sampler.num_samples == len(labels) and sampler.replacement
    first = list(sampler)
    assert first == list(ks_train.class_balanced_sampler(dataset, seed=3))  # reproducible
    sampler.set_epoch(1)
    assert list(sampler) != first  # a new draw every epoch
    draws = [labels[index] for epoch in range(30) for index in (sampler.set_epoch(epoch) or list(sampler))]
    assert 0.25 < draws.count("_silence_") / len(draws) < 0.42  # 1/3 each, though 2 items of 72


# ------------------------------------------------------------------------------- the recipe ---


def test_ks_learns_and_reports_every_condition(speech_commands, mini_corpus, trained_run, tmp_path):
    data_folder, test_folder = speech_commands["data_folder"], speech_commands["test_folder"]
    before = snapshot(data_folder, test_folder)
    output = str(tmp_path / "ks")
    overrides = {
        "data_folder": data_folder,
        "test_folder": test_folder,
        "upstream_source": trained_run,
        "output_folder": output,
        "lr": 0.01,
        "number_of_epochs": 12,
        "train_dataloader_opts": {"batch_size": 4, "drop_last": True, "num_workers": 0},
        "valid_dataloader_opts": {"batch_size": 8, "num_workers": 0},
        "test_condition_names": ["clean", "snr5", "reverb"],
        **corruption_overrides(mini_corpus),
    }
    code, log = run_recipe_script("SpeechCommands/KS", "hparams/superb_ks.yaml", overrides)
    assert code == 0, log
    assert snapshot(data_folder, test_folder) == before
    results = json.loads(Path(os.path.join(output, "results.json")).read_text())
    assert results["task"].startswith("KS")
    assert set(results["results"]) == {"clean", "snr5", "reverb"}
    assert results["upstream"]["kind"] == "student"
    assert results["classes"] == CLASSES
    print({name: stats for name, stats in results["results"].items()})
    # 72 balanced test clips of 12 classes: chance is 1/12 = 0.083 (measured: 0.236, loss 2.06; the
    # tiny 4-step student carries little word information: a fully fitted linear probe reaches ~0.3)
    clean = results["results"]["clean"]
    assert clean["accuracy"] >= 0.15, results
    assert clean["loss"] < math.log(12) - 0.1, results
    for stats in results["results"].values():
        assert 0.0 <= stats["accuracy"] <= 1.0 and math.isfinite(stats["loss"])
    weights = results["layer_weights"]
    assert len(weights) == 6 and abs(sum(weights) - 1) < 1e-5
    table = Path(os.path.join(output, "results.md")).read_text()
    assert "| clean |" in table and "| snr5 |" in table and "| reverb |" in table
    # dev accuracy is logged every epoch and the class-balanced sampler was used
    train_log = Path(os.path.join(output, "train_log.txt")).read_text()
    assert train_log.count("valid accuracy") == 12
    assert "Class-balanced sampling over" in Path(os.path.join(output, "log.txt")).read_text()
    # no upstream weights in the downstream checkpoints: only the weighted sum and the head
    checkpoints = sorted(folder for folder in os.listdir(os.path.join(output, "save")) if folder.startswith("CKPT+"))
    assert checkpoints  # the best dev checkpoint (and the latest one)
    folder = os.path.join(output, "save", checkpoints[-1])
    classifier = torch.load(os.path.join(folder, "classifier.ckpt"))
    assert classifier["weight"].shape == (12, 256)
    assert {name for name in os.listdir(folder) if name.endswith(".ckpt")} == {
        "weighted_sum.ckpt",
        "projector.ckpt",
        "classifier.ckpt",
        "counter.ckpt",
        "brain.ckpt",
        "optimizer.ckpt",
        "dataloader-TRAIN.ckpt",
    }
