"""IC recipe (Fluent Speech Commands): prepare -> train -> test on clean and corrupted audio, on the fixture.

The upstream is the session's distilled student, exported to a folder (the exported-student kind of
upstream). Also: the preparation's split rules and its errors on bad input.
"""

from pathlib import Path
import collections
import csv
import json
import os
import sys

import numpy as np
import pytest
import soundfile
import torch

from tests.conftest import REPOSITORY_ROOT, corruption_overrides, run_recipe_script

from robustdistiller.export.student_folder import export_student
from robustdistiller.testing.fixtures.fluent_speech_commands import INTENTS, generate_fluent_speech_commands

sys.path.insert(0, os.path.join(REPOSITORY_ROOT, "recipes", "FluentSpeechCommands", "IC"))
from prepare_fluent_speech_commands import SLOTS, prepare_fluent_speech_commands  # noqa: E402

RELEASE_HEADER = ",path,speakerId,transcription,action,object,location\n"


@pytest.fixture(scope="module")
def fluent_speech_commands(tmp_path_factory):
    return generate_fluent_speech_commands(str(tmp_path_factory.mktemp("fsc")), seed=0)


def read_csv(path):
    with open(path, encoding="utf-8", newline="") as fin:
        return list(csv.DictReader(fin))


def snapshot(folder):
    """Relative path -> (size, mtime) of every file under ``folder``."""
    files = {}
    for directory, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(directory, name)
            files[os.path.relpath(path, folder)] = (os.path.getsize(path), os.stat(path).st_mtime_ns)
    return files


def majority_triple_accuracy(root):
    """Test accuracy of always predicting the most frequent (action, object, location) of train."""
    triple = lambda row: tuple(row[slot] for slot in SLOTS)  # noqa: E731
    train = collections.Counter(triple(row) for row in read_csv(os.path.join(root, "data", "train_data.csv")))
    most_frequent = train.most_common(1)[0][0]
    test = [triple(row) for row in read_csv(os.path.join(root, "data", "test_data.csv"))]
    return sum(item == most_frequent for item in test) / len(test)


def test_ic_learns_and_reports_every_condition(fluent_speech_commands, mini_corpus, trained_run, tmp_path):
    exported = export_student(trained_run, str(tmp_path / "exported"))["folder"]
    output = str(tmp_path / "ic")
    before = snapshot(fluent_speech_commands)
    overrides = {
        "data_folder": fluent_speech_commands,
        "upstream_source": exported,
        "output_folder": output,
        "feature_normalization": True,  # the near-random student's pooled features are a large constant
        "lr": 0.005,
        "number_of_epochs": 8,
        "train_dataloader_opts": {"batch_size": 8, "shuffle": True, "num_workers": 0},
        "valid_dataloader_opts": {"batch_size": 32, "num_workers": 0},
        "test_condition_names": ["clean", "snr5", "reverb"],
        **corruption_overrides(mini_corpus),
    }
    code, log = run_recipe_script("FluentSpeechCommands/IC", "hparams/superb_ic.yaml", overrides)
    assert code == 0, log
    assert snapshot(fluent_speech_commands) == before  # nothing under the data folder was touched

    results = json.loads(Path(os.path.join(output, "results.json")).read_text())
    assert results["task"] == "IC (Fluent Speech Commands)"
    assert list(results["results"]) == ["clean", "snr5", "reverb"]
    assert results["upstream"]["kind"] == "student"
    assert os.path.samefile(results["upstream"]["source"], exported)
    # s3prl's label sets: each slot's values in order of first appearance in the training CSV
    train_rows = read_csv(os.path.join(fluent_speech_commands, "data", "train_data.csv"))
    for slot in SLOTS:
        assert results["slot_values"][slot] == list(dict.fromkeys(row[slot] for row in train_rows))
    assert [len(results["slot_values"][slot]) for slot in SLOTS] == [6, 14, 4]
    for name, stats in results["results"].items():
        slot_accuracies = [stats[f"{slot}_accuracy"] for slot in SLOTS]
        assert all(0.0 <= value <= 1.0 for value in slot_accuracies), stats
        # an utterance counts only when all three slots are right
        assert stats["accuracy"] <= min(slot_accuracies) + 1e-6, (name, stats)
        assert np.isfinite(stats["loss"])

    # 31 balanced intents, 93 test utterances: the most frequent triple is right 3.2 % of the time.
    # Measured (8 epochs, seeds 1986 / 1 / 2 on this fixture): 23.7 / 19.4 / 17.2 % all-slot accuracy.
    chance = majority_triple_accuracy(fluent_speech_commands)
    clean = results["results"]["clean"]
    print({name: round(stats["accuracy"], 3) for name, stats in results["results"].items()}, "chance", chance)
    assert chance == pytest.approx(3 / 93)
    assert clean["accuracy"] >= max(0.10, 3 * chance), results
    assert clean["action_accuracy"] >= 0.30 and clean["object_accuracy"] >= 0.40, results  # majority: 19 %, 26 %

    weights = results["layer_weights"]
    assert len(weights) == 6 and abs(sum(weights) - 1) < 1e-5  # 3 hidden states + 3 prediction heads
    table = Path(os.path.join(output, "results.md")).read_text()
    assert "| condition | accuracy | action_accuracy | object_accuracy | location_accuracy | loss |" in table
    assert "| clean |" in table and "| snr5 |" in table and "| reverb |" in table

    # downstream checkpoints hold the weighted sum, the head and the normaliser, never the upstream
    save = os.path.join(output, "save")
    checkpoints = sorted(folder for folder in os.listdir(save) if folder.startswith("CKPT+"))
    assert len(checkpoints) == 1  # only the best dev accuracy is kept
    folder = os.path.join(save, checkpoints[0])
    assert {name for name in os.listdir(folder) if name.endswith(".ckpt")} == {
        "weighted_sum.ckpt",
        "projector.ckpt",
        "classifier.ckpt",
        "feature_normalizer.ckpt",
        "counter.ckpt",
        "brain.ckpt",
        "optimizer.ckpt",
        "dataloader-TRAIN.ckpt",
    }
    classifier = torch.load(os.path.join(folder, "classifier.ckpt"))
    assert classifier["weight"].shape == (6 + 14 + 4, 256)  # one linear over all slots' values
    statistics = torch.load(os.path.join(folder, "feature_normalizer.ckpt"))
    assert statistics["glob_mean"].shape == (6, 64) and statistics["count"] > 0


def test_fixture_layout_and_speaker_disjoint_splits(fluent_speech_commands):
    assert os.path.basename(fluent_speech_commands) == "fluent_speech_commands_dataset"
    speakers = {}
    for split in ("train", "valid", "test"):
        path = os.path.join(fluent_speech_commands, "data", f"{split}_data.csv")
        assert Path(path).read_text(encoding="utf-8").splitlines(keepends=True)[0] == RELEASE_HEADER
        rows = read_csv(path)
        assert [row[""] for row in rows] == [str(index) for index in range(len(rows))]
        for row in rows:
            assert row["path"] == f"wavs/speakers/{row['speakerId']}/{os.path.basename(row['path'])}"
            assert (row["action"], row["object"], row["location"]) in INTENTS
            assert row["transcription"] in INTENTS[(row["action"], row["object"], row["location"])]
        # every speaker says every one of the 31 intents
        by_speaker = collections.Counter(row["speakerId"] for row in rows)
        assert set(by_speaker.values()) == {31}
        speakers[split] = set(by_speaker)
    assert [len(speakers[split]) for split in ("train", "valid", "test")] == [8, 2, 3]
    assert not speakers["train"] & speakers["valid"] and not speakers["train"] & speakers["test"]
    assert not speakers["valid"] & speakers["test"]
    values = {slot: {key[index] for key in INTENTS} for index, slot in enumerate(SLOTS)}
    assert values["action"] == {"activate", "deactivate", "increase", "decrease", "change language", "bring"}
    assert values["location"] == {"kitchen", "bedroom", "washroom", "none"} and len(values["object"]) == 14


def test_prepare_keeps_the_release_splits(fluent_speech_commands, tmp_path):
    before = snapshot(fluent_speech_commands)
    paths = prepare_fluent_speech_commands(fluent_speech_commands, str(tmp_path / "save"))
    assert snapshot(fluent_speech_commands) == before
    for split in ("train", "valid", "test"):
        release = read_csv(os.path.join(fluent_speech_commands, "data", f"{split}_data.csv"))
        prepared = read_csv(paths[split])
        assert list(prepared[0]) == ["ID", "duration", "wav", "start", "stop", "speaker", "transcription", *SLOTS]
        assert len(prepared) == len(release)
        for source, row in zip(release, prepared):
            assert row["wav"] == os.path.join(os.path.abspath(fluent_speech_commands), source["path"])
            assert row["ID"] == f"{source['speakerId']}_{os.path.basename(source['path'])[:-4]}"
            assert row["speaker"] == source["speakerId"] and row["transcription"] == source["transcription"]
            assert [row[slot] for slot in SLOTS] == [source[slot] for slot in SLOTS]
            assert (row["start"], row["stop"]) == ("0", "-1")
            assert float(row["duration"]) == pytest.approx(soundfile.info(row["wav"]).duration, abs=1e-3)
    # a second call with the same options reuses the lists
    mtimes = [os.stat(path).st_mtime_ns for path in paths.values()]
    assert prepare_fluent_speech_commands(fluent_speech_commands, str(tmp_path / "save")) == paths
    assert [os.stat(path).st_mtime_ns for path in paths.values()] == mtimes


def write_release(root, splits):
    """A tiny release: ``splits`` maps a split to rows ``(speaker, transcription, action, object, location)``."""
    for split, rows in splits.items():
        lines = [RELEASE_HEADER]
        for index, (speaker, text, action, object_, location) in enumerate(rows):
            relative = f"wavs/speakers/{speaker}/{split}-{index}.wav"
            os.makedirs(os.path.join(root, os.path.dirname(relative)), exist_ok=True)
            soundfile.write(os.path.join(root, relative), np.zeros(1600, dtype=np.float32), 16000)
            lines.append(f'{index},{relative},{speaker},"{text}",{action},{object_},{location}\n')
        os.makedirs(os.path.join(root, "data"), exist_ok=True)
        with open(os.path.join(root, "data", f"{split}_data.csv"), "w", encoding="utf-8") as fout:
            fout.write("".join(lines))
    return str(root)


GOOD_RELEASE = {
    "train": [
        ("s1", "Lights on", "activate", "lights", "none"),
        ("s1", "Bring me my shoes, please", "bring", "shoes", "none"),
    ],
    "valid": [("s2", "Lights on", "activate", "lights", "none")],
    "test": [("s3", "Bring me my shoes", "bring", "shoes", "none")],
}


def test_prepare_reads_quoted_transcriptions(tmp_path):
    root = write_release(tmp_path / "fsc", GOOD_RELEASE)
    paths = prepare_fluent_speech_commands(root, str(tmp_path / "save"))
    assert [row["transcription"] for row in read_csv(paths["train"])] == ["Lights on", "Bring me my shoes, please"]


def test_prepare_errors_name_what_is_wrong(tmp_path):
    save = str(tmp_path / "save")
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        prepare_fluent_speech_commands(missing, save)

    root = write_release(tmp_path / "no_test", {key: GOOD_RELEASE[key] for key in ("train", "valid")})
    with pytest.raises(FileNotFoundError, match="test_data.csv"):
        prepare_fluent_speech_commands(root, save)

    root = write_release(tmp_path / "missing_wav", GOOD_RELEASE)
    os.remove(os.path.join(root, "wavs", "speakers", "s3", "test-0.wav"))
    with pytest.raises(FileNotFoundError, match="s3/test-0.wav"):
        prepare_fluent_speech_commands(root, save)

    root = write_release(tmp_path / "bad_header", GOOD_RELEASE)
    valid_csv = os.path.join(root, "data", "valid_data.csv")
    text = Path(valid_csv).read_text().replace("location", "place")
    Path(valid_csv).write_text(text)
    with pytest.raises(ValueError, match=r"valid_data.csv: missing column\(s\) \['location'\]"):
        prepare_fluent_speech_commands(root, save)

    unseen = dict(GOOD_RELEASE, test=[("s3", "Heat up in the kitchen", "increase", "heat", "kitchen")])
    root = write_release(tmp_path / "unseen", unseen)
    with pytest.raises(ValueError, match=r"test_data.csv: action value\(s\) \['increase'\] do not occur"):
        prepare_fluent_speech_commands(root, save)
    assert not os.path.exists(os.path.join(save, "train.csv"))  # nothing written for a bad release
