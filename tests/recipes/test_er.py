"""ER recipe (IEMOCAP): the fold rules of the prepare function, and prepare -> train -> test on the fixture.

The fixture is a miniature IEMOCAP release (5 sessions x 2 speakers, 24 kept utterances per session,
``exc`` to merge and ``fru``/``sur``/``xxx`` to drop, macOS ``._*`` junk) whose emotions are speaking
styles a frozen random-weight upstream can hear. Its utterances are not s3prl's, so it is prepared
with ``dev_split_order: sorted`` (s3prl's default split is tested in ``test_s3prl_orders.py``).
"""

from pathlib import Path
import csv
import importlib.util
import json
import logging
import os
import re
import shutil
import statistics

import numpy as np
import pytest
import soundfile
import torch

from tests.conftest import REPOSITORY_ROOT, corruption_overrides, run_recipe_script

from robustdistiller.testing.fixtures.iemocap import generate_iemocap

RECIPE = os.path.join(REPOSITORY_ROOT, "recipes", "IEMOCAP", "ER")
KEPT_PER_SESSION = 24  # 2 speakers x 4 classes x 3 utterances
CLASSES = {"ang", "hap", "neu", "sad"}


def _load_prepare_module():
    spec = importlib.util.spec_from_file_location("prepare_iemocap", os.path.join(RECIPE, "prepare_iemocap.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare_module = _load_prepare_module()
prepare_iemocap = prepare_module.prepare_iemocap


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory):
    return generate_iemocap(str(tmp_path_factory.mktemp("iemocap")), seed=0)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One OpenMP thread per recipe process: a 2-core CI machine running several tests would
    otherwise make a tiny model's forward pass over 100 times slower (spinning threads)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _rows(path):
    with open(path, newline="", encoding="utf-8") as fin:
        return list(csv.DictReader(fin))


def _snapshot(folder):
    """``{relative path: (size, mtime)}`` of every file and folder under ``folder``."""
    snapshot = {}
    for directory, subdirectories, file_names in os.walk(folder):
        for name in subdirectories + file_names:
            path = os.path.join(directory, name)
            status = os.stat(path)
            snapshot[os.path.relpath(path, folder)] = (status.st_size, status.st_mtime_ns)
    return snapshot


def _labels(root):
    """``{utterance id: (session, IEMOCAP label)}`` read independently from the label files."""
    labels = {}
    for session in range(1, 6):
        folder = os.path.join(root, f"Session{session}", "dialog", "EmoEvaluation")
        for name in os.listdir(folder):
            if name.endswith(".txt") and not name.startswith("._"):
                with open(os.path.join(folder, name), encoding="utf-8") as fin:
                    for match in re.finditer(r"^\[[^\]]+\]\t(\S+)\t(\w+)\t", fin.read(), flags=re.M):
                        labels[match.group(1)] = (session, match.group(2))
    return labels


# ---------------------------------------------------------------------------------------------
# prepare_iemocap: split rules, labels, junk files, errors
# ---------------------------------------------------------------------------------------------


def test_prepare_fold_rules_labels_and_junk(iemocap, tmp_path, caplog):
    before = _snapshot(iemocap)
    with caplog.at_level(logging.INFO):
        paths = prepare_iemocap(iemocap, str(tmp_path), test_session=3, dev_split_order="sorted")
    assert _snapshot(iemocap) == before  # nothing under the data folder is touched
    rows = {split: _rows(path) for split, path in paths.items()}
    labels = _labels(iemocap)
    kept = {utterance for utterance, (_, label) in labels.items() if label in {"neu", "hap", "exc", "ang", "sad"}}
    assert {label for _, label in labels.values()} >= {"exc", "fru", "sur", "xxx"}  # the fixture has them all

    # test = every kept utterance of session 3; train + dev = those of the four others, disjoint
    test_ids = {row["ID"] for row in rows["test"]}
    assert test_ids == {utterance for utterance in kept if labels[utterance][0] == 3}
    assert len(test_ids) == KEPT_PER_SESSION
    train_ids, dev_ids = {row["ID"] for row in rows["train"]}, {row["ID"] for row in rows["dev"]}
    assert not train_ids & dev_ids
    assert train_ids | dev_ids == {utterance for utterance in kept if labels[utterance][0] != 3}
    # s3prl's rule: int(0.8 n) to train, by random_split seeded 0 over the pool (here sorted by id)
    pool = sorted(train_ids | dev_ids)
    assert len(train_ids) == int(0.8 * len(pool)) == 76
    permutation = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0)).tolist()
    assert dev_ids == {pool[index] for index in permutation[76:]}

    # labels: exc merged into hap, nothing else than the four classes
    for split_rows in rows.values():
        for row in split_rows:
            assert row["emotion"] in CLASSES
            assert row["emotion"] == {"exc": "hap"}.get(labels[row["ID"]][1], labels[row["ID"]][1])
            assert row["speaker"] == row["ID"][:5] + row["ID"].rsplit("_", 1)[1][0]
            assert int(row["session"]) == labels[row["ID"]][0]
    merged = [row for row in rows["train"] + rows["dev"] + rows["test"] if labels[row["ID"]][1] == "exc"]
    assert merged and all(row["emotion"] == "hap" for row in merged)
    counts = {emotion: sum(row["emotion"] == emotion for row in rows["test"]) for emotion in CLASSES}
    assert counts == {emotion: 6 for emotion in CLASSES}

    # wav paths and durations; macOS junk skipped and counted
    row = rows["train"][0]
    info = soundfile.info(row["wav"])
    assert float(row["duration"]) == pytest.approx(info.frames / info.samplerate, abs=1e-3)
    assert (row["start"], row["stop"]) == ("0", "-1")
    assert all(not os.path.basename(row["wav"]).startswith("._") for split in rows.values() for row in split)
    assert "skipped 7 macOS '._*' files and 1 other non-wav files" in caplog.text

    # a second call with the same options does nothing; another fold prepares again
    stamps = {path: os.stat(path).st_mtime_ns for path in paths.values()}
    prepare_iemocap(iemocap, str(tmp_path), test_session=3, dev_split_order="sorted")
    assert stamps == {path: os.stat(path).st_mtime_ns for path in paths.values()}
    prepare_iemocap(iemocap, str(tmp_path), test_session=5, dev_split_order="sorted")
    assert {row["session"] for row in _rows(paths["test"])} == {"5"}


def test_prepare_follows_the_s3prl_split_order(iemocap, tmp_path):
    default = prepare_iemocap(iemocap, str(tmp_path / "default"), test_session=2, dev_split_order="sorted")
    emotion = {row["ID"]: row["emotion"] for split in ("train", "dev") for row in _rows(default[split])}
    pool = sorted(emotion)
    order = pool[::-1]
    meta = tmp_path / "meta_data" / "Session2"
    meta.mkdir(parents=True)
    entries = [
        {"path": f"Session{int(utt[4])}/sentences/wav/{utt.rsplit('_', 1)[0]}/{utt}.wav", "label": emotion[utt]}
        for utt in order
    ]
    (meta / "train_meta_data.json").write_text(json.dumps({"labels": {}, "meta_data": entries}))
    paths = prepare_iemocap(
        iemocap, str(tmp_path / "s3prl"), test_session=2, s3prl_meta_data_folder=str(tmp_path / "meta_data")
    )
    permutation = torch.randperm(len(order), generator=torch.Generator().manual_seed(0)).tolist()
    expected_dev = {order[index] for index in permutation[int(0.8 * len(order)) :]}
    assert {row["ID"] for row in _rows(paths["dev"])} == expected_dev
    assert expected_dev != {row["ID"] for row in _rows(default["dev"])}  # the order matters

    (meta / "train_meta_data.json").write_text(json.dumps({"meta_data": entries[1:]}))
    with pytest.raises(ValueError, match="does not match"):
        prepare_iemocap(
            iemocap, str(tmp_path / "mismatch"), test_session=2, s3prl_meta_data_folder=str(tmp_path / "meta_data")
        )
    with pytest.raises(FileNotFoundError, match="Session4.train_meta_data.json"):
        prepare_iemocap(
            iemocap, str(tmp_path / "missing"), test_session=4, s3prl_meta_data_folder=str(tmp_path / "meta_data")
        )


def _tiny_release(root):
    """Five sessions, one dialog each with a neu and an ang utterance of 0.1 s."""
    for session in range(1, 6):
        dialog = f"Ses0{session}F_impro01"
        wav_folder = root / f"Session{session}" / "sentences" / "wav" / dialog
        label_folder = root / f"Session{session}" / "dialog" / "EmoEvaluation"
        wav_folder.mkdir(parents=True)
        label_folder.mkdir(parents=True)
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for index, (speaker, label) in enumerate((("F", "neu"), ("M", "ang"))):
            utterance = f"{dialog}_{speaker}000"
            soundfile.write(str(wav_folder / f"{utterance}.wav"), np.zeros(1600), 16000)
            lines += [f"[{index}.0000 - {index}.1000]\t{utterance}\t{label}\t[2.5000, 2.5000, 2.5000]", ""]
        (label_folder / f"{dialog}.txt").write_text("\n".join(lines))
    return root


def test_prepare_clear_errors_on_bad_input(tmp_path):
    release = _tiny_release(tmp_path / "IEMOCAP_full_release")
    assert len(_rows(prepare_iemocap(str(release), str(tmp_path / "ok"), dev_split_order="sorted")["test"])) == 2
    with pytest.raises(ValueError, match="does not match the data.*dev_split_order: sorted"):
        prepare_iemocap(str(release), str(tmp_path / "s3prl"))  # s3prl's split needs s3prl's utterances

    with pytest.raises(FileNotFoundError, match="nowhere"):
        prepare_iemocap(str(tmp_path / "nowhere"), str(tmp_path / "save"))
    with pytest.raises(FileNotFoundError, match="did you mean .*IEMOCAP_full_release"):
        prepare_iemocap(str(tmp_path), str(tmp_path / "save"))
    for bad in (0, 6, "2"):
        with pytest.raises(ValueError, match="test_session"):
            prepare_iemocap(str(release), str(tmp_path / "save"), test_session=bad)
    with pytest.raises(ValueError, match="valid_ratio"):
        prepare_iemocap(str(release), str(tmp_path / "save"), valid_ratio=1.0)

    label_file = release / "Session4" / "dialog" / "EmoEvaluation" / "Ses04F_impro01.txt"
    text = label_file.read_text()
    label_file.write_text(text.replace("[1.0000 - 1.1000]\t", "[1.0000 - 1.1000] "))  # a space, no tab: still fine
    prepare_iemocap(str(release), str(tmp_path / "save_spaces"), dev_split_order="sorted")
    label_file.write_text(text.replace("[1.0000 - 1.1000]", "[1.0000 1.1000]"))
    with pytest.raises(ValueError, match=r"Ses04F_impro01.txt:5"):
        prepare_iemocap(str(release), str(tmp_path / "save"))
    label_file.unlink()
    with pytest.raises(FileNotFoundError, match=r"Session4/dialog/EmoEvaluation/Ses04F_impro01.txt"):
        prepare_iemocap(str(release), str(tmp_path / "save"))
    label_file.write_text(text)

    wav_folder = release / "Session5" / "sentences" / "wav" / "Ses05F_impro01"
    shutil.copy(wav_folder / "Ses05F_impro01_F000.wav", wav_folder / "Ses05F_impro01_F001.wav")
    with pytest.raises(ValueError, match="Ses05F_impro01_F001.wav"):
        prepare_iemocap(str(release), str(tmp_path / "save"))
    (wav_folder / "Ses05F_impro01_F001.wav").unlink()
    (wav_folder / "Ses05F_impro01_M000.wav").unlink()
    with pytest.raises(FileNotFoundError, match="Ses05F_impro01_M000.wav"):
        prepare_iemocap(str(release), str(tmp_path / "save"))
    shutil.rmtree(release / "Session5" / "dialog")
    with pytest.raises(FileNotFoundError, match=r"Session5/dialog/EmoEvaluation"):
        prepare_iemocap(str(release), str(tmp_path / "save"))
    shutil.rmtree(release / "Session5")
    with pytest.raises(FileNotFoundError, match="has no Session5"):
        prepare_iemocap(str(release), str(tmp_path / "save"))


# ---------------------------------------------------------------------------------------------
# The recipe: one fold, and the five folds with their mean
# ---------------------------------------------------------------------------------------------


def er_overrides(iemocap, upstream, output, mini_corpus, **extra):
    overrides = {
        "data_folder": iemocap,
        "upstream_source": upstream,
        "output_folder": output,
        "dev_split_order": "sorted",  # the fixture's utterances are not s3prl's
        "lr": 0.005,
        "number_of_epochs": 15,
        "number_of_updates": None,
        "grad_accumulation_factor": 1,
        "train_dataloader_opts": {"batch_size": 4, "shuffle": True, "num_workers": 0},
        "valid_dataloader_opts": {"batch_size": 4, "num_workers": 0},
        "test_condition_names": ["clean", "snr5", "reverb"],
        **corruption_overrides(mini_corpus),
    }
    overrides.update(extra)
    return overrides


def test_er_single_fold_learns_and_reports_every_condition(iemocap, mini_corpus, tiny_teacher_folder, tmp_path):
    output = str(tmp_path / "er")
    before = _snapshot(iemocap)
    code, log = run_recipe_script(
        "IEMOCAP/ER",
        "hparams/superb_er.yaml",
        er_overrides(iemocap, tiny_teacher_folder, output, mini_corpus, test_session=4),
    )
    assert code == 0, log
    assert _snapshot(iemocap) == before
    results = json.loads(Path(os.path.join(output, "results.json")).read_text())
    assert results["task"] == "ER (IEMOCAP, test session 4)" and results["test_session"] == 4
    assert results["num_classes"] == 4 and results["upstream"]["kind"] == "hf"
    assert list(results["results"]) == ["clean", "snr5", "reverb"]
    # 24 test utterances of session 4 (unseen speakers), 4 balanced classes: chance is 0.25 (measured: 0.79)
    print({name: stats["accuracy"] for name, stats in results["results"].items()})
    assert results["results"]["clean"]["accuracy"] >= 0.55, results
    weights = results["layer_weights"]
    assert len(weights) == 13 and abs(sum(weights) - 1) < 1e-5
    table = Path(os.path.join(output, "results.md")).read_text()
    assert "| clean |" in table and "| snr5 |" in table and "| reverb |" in table
    assert {row["session"] for row in _rows(os.path.join(output, "save", "test.csv"))} == {"4"}
    label_encoder = Path(os.path.join(output, "save", "label_encoder.txt")).read_text()
    assert all(f"'{emotion}'" in label_encoder for emotion in CLASSES) and "'exc'" not in label_encoder
    # s3prl's class indices
    assert all(f"'{emotion}' => {index}" in label_encoder for index, emotion in enumerate(["neu", "hap", "ang", "sad"]))


def test_er_run_all_folds_writes_each_fold_and_the_mean(iemocap, mini_corpus, tiny_teacher_folder, tmp_path):
    output = str(tmp_path / "er_folds")
    overrides = er_overrides(
        iemocap,
        tiny_teacher_folder,
        output,
        mini_corpus,
        run_all_folds=True,
        number_of_epochs=2,
        test_condition_names=["clean", "snr5"],
    )
    code, log = run_recipe_script("IEMOCAP/ER", "hparams/superb_er.yaml", overrides)
    assert code == 0, log
    folds = {}
    for session in range(1, 6):
        fold_folder = os.path.join(output, f"fold{session}")
        folds[session] = json.loads(Path(os.path.join(fold_folder, "results.json")).read_text())
        assert folds[session]["test_session"] == session
        assert os.path.isfile(os.path.join(fold_folder, "results.md"))
        test_rows = _rows(os.path.join(fold_folder, "save", "test.csv"))
        assert {row["session"] for row in test_rows} == {str(session)} and len(test_rows) == KEPT_PER_SESSION
        assert any(name.startswith("CKPT+") for name in os.listdir(os.path.join(fold_folder, "save")))
    mean = json.loads(Path(os.path.join(output, "results.json")).read_text())
    assert mean["task"] == "ER (IEMOCAP, mean over 5 leave-one-session-out folds)"
    assert mean["folds"] == {str(session): folds[session]["results"] for session in folds}
    for condition in ("clean", "snr5"):
        accuracies = [folds[session]["results"][condition]["accuracy"] for session in folds]
        losses = [folds[session]["results"][condition]["loss"] for session in folds]
        assert mean["results"][condition]["accuracy"] == pytest.approx(statistics.fmean(accuracies))
        assert mean["results"][condition]["accuracy_std"] == pytest.approx(statistics.pstdev(accuracies))
        assert mean["results"][condition]["loss"] == pytest.approx(statistics.fmean(losses))
    assert len(mean["layer_weights"]) == 13 and abs(sum(mean["layer_weights"]) - 1) < 1e-5
    print("mean over folds", {name: stats["accuracy"] for name, stats in mean["results"].items()})
    assert mean["results"]["clean"]["accuracy"] >= 0.4, mean
    table = Path(os.path.join(output, "results.md")).read_text()
    assert "mean over 5" in table and "| accuracy | accuracy_std | loss |" in table and "| snr5 |" in table
