"""Distilling on your own audio: ``--train_audio`` (a folder, a CSV or a text list; any sample rate).

The run needs no LibriSpeech (``data_folder`` unset), lists the files once into its own save folder (never
next to the user's files), resamples on load, and trains: a finite loss in the log, a robustness report on
the held-out share.
"""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile
import torch
import torchaudio

from robustdistiller.data.prepare.own_audio import overrides_without_librispeech, prepare_own_audio
from robustdistiller.runs.run_folder import (
    ChangedSettingsError,
    check_run_signature,
    data_signature,
    write_run_signature,
)
from robustdistiller.runs.options import exit_if_required_options_missing
from tests.conftest import REPOSITORY_ROOT, as_command_line, tiny_overrides

DISTILL_YAML = os.path.join(REPOSITORY_ROOT, "hparams", "distill.yaml")


@pytest.fixture(scope="module")
def own_audio(mini_corpus, tmp_path_factory):
    """Eight of the mini corpus's utterances as wav files at 8 kHz and 22.05 kHz in nested folders, a README,
    and a file too short for one feature frame."""
    folder = tmp_path_factory.mktemp("my_speech")
    flacs = sorted(Path(mini_corpus["librispeech"], "train-clean-100").rglob("*.flac"))[:8]
    for index, flac in enumerate(flacs):
        waveform, rate = soundfile.read(flac, dtype="float32")
        target = 8000 if index % 2 else 22050
        resampled = torchaudio.functional.resample(torch.from_numpy(waveform), rate, target).numpy()
        subfolder = folder / ("session_a" if index < 4 else "session_b")
        subfolder.mkdir(exist_ok=True)
        soundfile.write(subfolder / f"take {index}.wav", resampled, target)
    soundfile.write(folder / "click.wav", torch.zeros(100).numpy(), 8000)  # 200 samples at 16 kHz
    (folder / "README.txt").write_text("my recordings\n")
    return folder


def _rows(path):
    with open(path, newline="", encoding="utf-8") as fin:
        return list(csv.DictReader(fin))


def test_folder_csv_and_text_list_give_the_same_files(own_audio, tmp_path):
    before = sorted(str(path) for path in own_audio.rglob("*"))
    from_folder = prepare_own_audio(str(own_audio), str(tmp_path / "folder"), valid_share=0.25)
    train, valid = _rows(from_folder["train"]), _rows(from_folder["valid"])
    assert len(train) == 6 and len(valid) == 2
    assert not {row["ID"] for row in train} & {row["ID"] for row in valid}
    assert all("click" not in row["wav"] for row in train + valid)
    skipped = json.loads(Path(tmp_path / "folder" / "train_skipped.json").read_text())
    assert skipped["by_reason"]["shorter than min_samples at 16 kHz"]["files"] == 1
    # durations are the files' own (any sample rate), in seconds
    for row in train:
        info = soundfile.info(row["wav"])
        assert float(row["duration"]) == pytest.approx(info.frames / info.samplerate)

    paths = sorted(row["wav"] for row in train + valid)
    list_file = tmp_path / "list.txt"
    list_file.write_text("# my list\n" + "\n".join(os.path.relpath(path, tmp_path) for path in paths) + "\n")
    csv_file = tmp_path / "list.csv"
    csv_file.write_text("wav,speaker\n" + "\n".join(f"{path},x" for path in paths) + "\n")
    for source, name in ((list_file, "text"), (csv_file, "csv")):
        lists = prepare_own_audio(str(source), str(tmp_path / name), valid_share=0.25)
        listed = sorted(row["wav"] for key in ("train", "valid") for row in _rows(lists[key]))
        assert listed == paths, name
    assert sorted(str(path) for path in own_audio.rglob("*")) == before  # nothing written next to the audio


def test_other_audio_makes_other_lists_and_a_refused_resume(own_audio, tmp_path):
    """Same --train_audio folder, other files in it: the lists are made again and a resume is refused."""
    folder, save = tmp_path / "speech", tmp_path / "save"
    shutil.copytree(own_audio, folder)
    hparams = {"train_csv": str(save / "train.csv"), "valid_csv": str(save / "valid.csv"), "valid_splits": ["own"]}
    prepare_own_audio(str(folder), str(save), valid_share=0.25)
    first = data_signature(hparams)
    write_run_signature(str(save), first)
    marker = (save / "own_audio.prepare.json").read_text()
    prepare_own_audio(str(folder), str(save), valid_share=0.25)  # same files: the lists are reused as they are
    assert data_signature(hparams) == first and (save / "own_audio.prepare.json").read_text() == marker

    shutil.copy(folder / "session_a" / "take 0.wav", folder / "session_b" / "take 9.wav")  # one more file
    prepare_own_audio(str(folder), str(save), valid_share=0.25)
    listed = [row["wav"] for key in ("train", "valid") for row in _rows(save / f"{key}.csv")]
    assert len(listed) == 9 and str(folder / "session_b" / "take 9.wav") in listed
    second = data_signature(hparams)
    assert second != first
    with pytest.raises(ChangedSettingsError, match="train_csv_fingerprint"):
        check_run_signature(str(save), second, resuming=True)


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_audio.*does not exist"):
        prepare_own_audio(str(tmp_path / "missing"), str(tmp_path / "save"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    with pytest.raises(ValueError, match="train_audio.*no audio file"):
        prepare_own_audio(str(tmp_path / "empty"), str(tmp_path / "save"))
    (tmp_path / "paths.csv").write_text("path\n/a.wav\n")
    with pytest.raises(ValueError, match="no `wav` column"):
        prepare_own_audio(str(tmp_path / "paths.csv"), str(tmp_path / "save"))


@pytest.mark.parametrize("yaml_name", ["distill", "distilhubert", "dpwavlm", "robust_dpwavlm"])
def test_train_audio_needs_no_data_folder_but_names_the_corruption_folders(yaml_name):
    """With --train_audio, the required-options check of every distillation YAML leaves data_folder out; the
    noise and RIR folders of the corrupting recipes are still named when missing."""
    hparams_file = os.path.join(REPOSITORY_ROOT, "hparams", f"{yaml_name}.yaml")
    overrides = overrides_without_librispeech("train_audio: /data/my_speech\n")
    with pytest.raises(SystemExit, match="--data_folder"):
        exit_if_required_options_missing(hparams_file, "")
    if yaml_name in ("distill", "robust_dpwavlm"):
        with pytest.raises(SystemExit) as missing:
            exit_if_required_options_missing(hparams_file, overrides)
        assert "--musan_folder" in str(missing.value) and "--rir_folder" in str(missing.value)
        assert "data_folder" not in str(missing.value)
    else:
        exit_if_required_options_missing(hparams_file, overrides)  # nothing missing: returns


def test_recipe_distils_on_a_folder_without_librispeech(own_audio, mini_corpus, tiny_teacher_folder, tmp_path):
    output = tmp_path / "run"
    overrides = tiny_overrides(mini_corpus, tiny_teacher_folder, str(output), number_of_steps=3)
    for key in ("data_folder", "train_splits", "valid_splits"):
        overrides.pop(key)
    overrides.update(train_audio=str(own_audio), valid_share=0.25)
    command = [sys.executable, os.path.join(REPOSITORY_ROOT, "train.py"), DISTILL_YAML, *as_command_line(overrides)]
    environment = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    completed = subprocess.run(
        command, cwd=REPOSITORY_ROOT, env=environment, capture_output=True, text=True, timeout=900
    )
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-4000:]
    train = _rows(output / "save" / "train.csv")
    assert len(train) == 6 and all(row["wav"].startswith(str(own_audio)) for row in train)
    train_log = (output / "train_log.txt").read_text()
    assert "train loss" in train_log or "train_loss" in train_log
    robustness = json.loads((output / "robustness.json").read_text())
    assert robustness and all(torch.isfinite(torch.tensor(value["distillation_loss"])) for value in robustness.values())
    info = json.loads((output / "save" / "distillation_info.json").read_text())
    assert info["train_audio"] == str(own_audio) and info["train_splits"] == []
