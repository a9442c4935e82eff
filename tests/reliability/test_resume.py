"""Reliability of resumes, second round (issue 20, items 1, 3-7 and 14).

Every resume knows what defines its run (settings, teacher, the prepared data's content, the modules'
shapes), every checkpoint records the hash of that signature, nothing that cannot be loaded is deleted,
and a refused resume writes nothing of the run. Each test also asserts that no input file changed.
"""

from pathlib import Path
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import speechbrain as sb
import torch

from tests.conftest import REPOSITORY_ROOT, as_command_line, folder_snapshot, tiny_overrides
from robustdistiller.runs.checkpoints import (
    UNLOADABLE_FOLDER,
    AtomicCheckpointer,
    CheckpointRecoveryError,
    ModelChangedError,
)
from robustdistiller.runs.run_folder import ChangedSettingsError
from tests.reliability.test_training import DISTILL_YAML, fit, make_brain

ROBUST_DPWAVLM_YAML = os.path.join(REPOSITORY_ROOT, "hparams", "robust_dpwavlm.yaml")


def corpus_folders(mini_corpus):
    return [folder for folder in mini_corpus.values() if folder]


def run_train(arguments):
    command = [sys.executable, os.path.join(REPOSITORY_ROOT, "train.py")] + arguments
    environment = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    completed = subprocess.run(command, cwd=REPOSITORY_ROOT, capture_output=True, text=True, env=environment)
    return completed.returncode, completed.stdout + completed.stderr


def checkpoint_names(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith("CKPT+"))


# ------------------------------------------------- 1. what cannot be loaded is set aside -----


def linear_checkpointer(folder, out_features=3):
    model = torch.nn.Linear(3, out_features)
    return AtomicCheckpointer(folder, recoverables={"model": model}), model


def foreign_checkpoint(folder, name="CKPT+2099-01-01+00-00-00+00"):
    """A downstream recipe's checkpoint (other recoverables) copied into this save folder."""
    path = folder / name
    path.mkdir()
    (path / "CKPT.yaml").write_text("end-of-epoch: true\nunixtime: 4070908800\nerror_rate: 0.1\n")
    torch.save({"weight": torch.zeros(2, 2)}, path / "downstream.ckpt")
    return path


def test_a_checkpoint_of_another_model_is_set_aside_not_deleted(tmp_path, caplog):
    checkpointer, model = linear_checkpointer(tmp_path)
    checkpointer.save_checkpoint(meta={"step": 1})
    foreign = foreign_checkpoint(tmp_path)
    foreign_files = folder_snapshot(str(foreign))
    with caplog.at_level(logging.WARNING):
        assert checkpointer.recover_if_possible().meta["step"] == 1
    kept = tmp_path / UNLOADABLE_FOLDER / foreign.name
    assert "another model" in caplog.text and str(kept) in caplog.text and "not deleted" in caplog.text
    # SpeechBrain's keep logic (one checkpoint kept) runs at the next save: the foreign one survives it
    checkpointer.save_and_keep_only(meta={"step": 2}, num_to_keep=1)
    moved_files = {path.replace(str(foreign), str(kept)): value for path, value in foreign_files.items()}
    assert moved_files == folder_snapshot(str(kept)), "set aside as it was: same files, same bytes"


def test_a_damaged_checkpoint_is_set_aside_as_damaged(tmp_path, caplog):
    checkpointer, _ = linear_checkpointer(tmp_path)
    checkpointer.save_checkpoint(meta={"step": 1})
    newest = checkpointer.save_checkpoint(meta={"step": 2})
    damaged = newest.path / "model.ckpt"
    damaged.write_bytes(damaged.read_bytes()[:40])
    with caplog.at_level(logging.WARNING):
        assert checkpointer.recover_if_possible().meta["step"] == 1
    assert "damaged" in caplog.text and "another model" not in caplog.text
    assert (tmp_path / UNLOADABLE_FOLDER / newest.path.name / "model.ckpt").stat().st_size == 40
    checkpointer.save_and_keep_only(meta={"step": 3}, num_to_keep=1)
    assert (tmp_path / UNLOADABLE_FOLDER / newest.path.name).is_dir()


def test_when_nothing_can_be_loaded_everything_is_kept_and_named(tmp_path):
    checkpointer, _ = linear_checkpointer(tmp_path)
    foreign = foreign_checkpoint(tmp_path)
    with pytest.raises(CheckpointRecoveryError, match="nothing was deleted") as error:
        checkpointer.recover_if_possible()
    assert "another model" in str(error.value) and foreign.name in str(error.value)
    assert (tmp_path / UNLOADABLE_FOLDER / foreign.name / "downstream.ckpt").is_file()


# ------------------------------------------- 4. checkpoints record the signature's hash -----


def test_a_checkpoint_of_another_run_is_skipped_with_a_warning(tmp_path, caplog):
    own_folder, other_folder = tmp_path / "own", tmp_path / "other"
    own, own_model = linear_checkpointer(own_folder)
    own.sign("aaaa")
    own.save_checkpoint(meta={"step": 1})
    own_weight = own_model.weight.detach().clone()
    other, _ = linear_checkpointer(other_folder)  # same architecture, another run
    other.sign("bbbb")
    copied = other.save_checkpoint(meta={"step": 9})
    shutil.copytree(copied.path, own_folder / "CKPT+2099-01-01+00-00-00+00")  # newer than ours

    resumed, resumed_model = linear_checkpointer(own_folder)
    resumed.sign("aaaa")
    with caplog.at_level(logging.WARNING):
        assert resumed.recover_if_possible().meta["step"] == 1
    assert torch.equal(resumed_model.weight, own_weight)
    assert "another run's checkpoint (signature hash bbbb" in caplog.text
    assert (own_folder / UNLOADABLE_FOLDER / "CKPT+2099-01-01+00-00-00+00").is_dir()

    # a change accepted on purpose keeps the earlier hash as this run's
    accepted, _ = linear_checkpointer(own_folder)
    accepted.sign("cccc", accepted_hashes={"aaaa"})
    assert accepted.recover_if_possible().meta["step"] == 1


@pytest.fixture(scope="module")
def short_run(mini_corpus, tiny_teacher_folder, tmp_path_factory):
    """A 2-step distillation run without validation (one checkpoint): its output folder."""
    output = str(tmp_path_factory.mktemp("short") / "run")
    brain = fit(mini_corpus, tiny_teacher_folder, output, number_of_steps=2, valid_splits=[])
    assert brain.optimizer_step == 2
    return output


def copy_run(source, destination):
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns(".run.lock"))
    return destination


def test_a_checkpoint_copied_from_a_run_with_another_teacher_is_not_resumed(
    mini_corpus, tiny_teacher_folder, short_run, tmp_path, caplog
):
    from robustdistiller.models.teacher import save_random_teacher

    other_teacher = save_random_teacher(str(tmp_path / "other_teacher"), model_type="wavlm", tiny=True, seed=5)
    inputs = folder_snapshot(*corpus_folders(mini_corpus), tiny_teacher_folder, other_teacher)
    output = str(tmp_path / "new_run")
    os.makedirs(os.path.join(output, "save"))
    (copied,) = checkpoint_names(os.path.join(short_run, "save"))
    shutil.copytree(os.path.join(short_run, "save", copied), os.path.join(output, "save", copied))

    _, brain, *_ = make_brain(mini_corpus, other_teacher, output, number_of_steps=2, valid_splits=[])
    with caplog.at_level(logging.WARNING):
        brain.on_fit_start()
    assert brain.optimizer_step == 0, "the other run's checkpoint is not resumed"
    assert "another run's checkpoint" in caplog.text
    assert checkpoint_names(os.path.join(output, "save", UNLOADABLE_FOLDER)) == [copied]
    assert folder_snapshot(*corpus_folders(mini_corpus), tiny_teacher_folder, other_teacher) == inputs


# ------------------------------------------------------ 3. the data is part of the signature -----


@pytest.fixture(scope="module")
def other_corpus(tmp_path_factory):
    """Another generated corpus (other utterances, other noise files) in the same layouts."""
    from robustdistiller.testing.mini_corpus import generate_mini_corpus

    return generate_mini_corpus(
        str(tmp_path_factory.mktemp("other_corpus")),
        seed=1,
        train_speakers=2,
        valid_speakers=2,
        utterances_per_speaker=3,
        num_noises=6,
        noise_duration=3.0,
        rooms_per_size=1,
        num_urbansound=4,
        show_progress=False,
    )


@pytest.mark.parametrize(
    "option, corpus_key, signed_key",
    [
        ("data_folder", "librispeech", "train_csv_fingerprint"),
        ("musan_folder", "musan", "noise_csv_fingerprint"),
        ("rir_folder", "rirs", "rir_csv_fingerprint"),
    ],
)
def test_a_resume_with_other_data_is_refused_naming_the_list(
    mini_corpus, tiny_teacher_folder, short_run, other_corpus, tmp_path, option, corpus_key, signed_key
):
    inputs = folder_snapshot(*corpus_folders(mini_corpus), *corpus_folders(other_corpus), tiny_teacher_folder)
    output = copy_run(short_run, str(tmp_path / "run"))
    _, brain, *_ = make_brain(
        mini_corpus,
        tiny_teacher_folder,
        output,
        number_of_steps=2,
        valid_splits=[],
        **{option: other_corpus[corpus_key]},
    )
    with pytest.raises(ChangedSettingsError, match=f"{signed_key}: recorded '\\d+ rows, sha256 [0-9a-f]+', now"):
        brain.on_fit_start()
    assert folder_snapshot(*corpus_folders(mini_corpus), *corpus_folders(other_corpus), tiny_teacher_folder) == inputs


def test_a_moved_corpus_still_resumes(mini_corpus, tiny_teacher_folder, short_run, tmp_path):
    inputs = folder_snapshot(*corpus_folders(mini_corpus), tiny_teacher_folder)
    moved = {
        key: shutil.copytree(folder, str(tmp_path / "moved" / key)) if folder else folder
        for key, folder in mini_corpus.items()
    }
    output = copy_run(short_run, str(tmp_path / "run"))
    _, brain, *_ = make_brain(moved, tiny_teacher_folder, output, number_of_steps=2, valid_splits=[])
    brain.on_fit_start()
    assert brain.optimizer_step == 2, "the same utterances from another folder resume the run"
    train_list = Path(os.path.join(output, "save", "train.csv")).read_text()
    assert str(tmp_path / "moved") in train_list, "the lists were prepared again from the moved corpus"
    assert folder_snapshot(*corpus_folders(mini_corpus), tiny_teacher_folder) == inputs


# -------------------------------------------------- 7. an edited model is not "damaged" -----


def edited_yaml(tmp_path, hidden_size):
    text = Path(DISTILL_YAML).read_text(encoding="utf-8")
    assert text.count("hidden_size: 256") == 1
    path = tmp_path / "edited.yaml"
    path.write_text(text.replace("hidden_size: 256", f"hidden_size: {hidden_size}"))
    return str(path)


def test_an_edited_model_is_refused_naming_the_module_and_both_shapes(
    mini_corpus, tiny_teacher_folder, short_run, tmp_path
):
    inputs = folder_snapshot(*corpus_folders(mini_corpus), tiny_teacher_folder)
    output = copy_run(short_run, str(tmp_path / "run"))
    save = os.path.join(output, "save")
    before = folder_snapshot(save)
    yaml_file = edited_yaml(tmp_path, 8)
    _, brain, *_ = make_brain(
        mini_corpus, tiny_teacher_folder, output, yaml_file=yaml_file, number_of_steps=2, valid_splits=[]
    )
    with pytest.raises(ChangedSettingsError, match="architecture_enhancement_head: recorded"):
        brain.on_fit_start()

    # accepted (or recorded by an older version): the load itself says the model changed, and moves nothing
    _, brain, *_ = make_brain(
        mini_corpus,
        tiny_teacher_folder,
        output,
        yaml_file=yaml_file,
        number_of_steps=2,
        valid_splits=[],
        accept_changed_settings="architecture_enhancement_head",
    )
    with pytest.raises(ModelChangedError) as error:
        brain.on_fit_start()
    message = str(error.value)
    assert "module 'enhancement_head'" in message and "in the checkpoint" in message
    recorded = torch.load(os.path.join(save, checkpoint_names(save)[0], "enhancement_head.ckpt"))
    name, shape = next((name, list(value.shape)) for name, value in recorded.items() if value.dim() == 2)
    now = list(brain.modules.enhancement_head.state_dict()[name].shape)
    assert f"{name}: {shape} in the checkpoint, {now} in the model" in message
    assert "damaged" not in message
    assert not os.path.exists(os.path.join(save, UNLOADABLE_FOLDER))
    assert {path: value for path, value in folder_snapshot(save).items() if "CKPT+" in path} == {
        path: value for path, value in before.items() if "CKPT+" in path
    }
    assert folder_snapshot(*corpus_folders(mini_corpus), tiny_teacher_folder) == inputs


def test_a_shape_mismatch_of_a_plain_checkpointer_names_the_module(tmp_path):
    checkpointer, _ = linear_checkpointer(tmp_path, out_features=3)
    checkpointer.save_checkpoint()
    edited, _ = linear_checkpointer(tmp_path, out_features=4)
    expected = r"module 'model'.*weight: \[3, 3\] in the checkpoint, \[4, 3\] in the model"
    with pytest.raises(ModelChangedError, match=expected):
        edited.recover_if_possible()
    assert checkpoint_names(tmp_path) and not (tmp_path / UNLOADABLE_FOLDER).exists()


# ------------------------------- 5, 6. the recipe: checked before written; --optimizer_step_limit -----


def test_the_recipe_takes_the_step_limit_as_the_run_length_and_a_refused_resume_writes_nothing(
    mini_corpus, tiny_teacher_folder, tmp_path
):
    inputs = folder_snapshot(*corpus_folders(mini_corpus), tiny_teacher_folder)
    output = str(tmp_path / "run")
    overrides = tiny_overrides(mini_corpus, tiny_teacher_folder, output, valid_splits=[])
    overrides.pop("number_of_steps", None)
    code, log = run_train([DISTILL_YAML, "--optimizer_step_limit=2"] + as_command_line(overrides))
    assert code == 0, log[-4000:]
    save = os.path.join(output, "save")
    assert json.loads(Path(os.path.join(save, "distillation_info.json")).read_text())["number_of_steps"] == 2
    (checkpoint,) = checkpoint_names(save)
    scheduler = torch.load(os.path.join(save, checkpoint, "lr_scheduler.ckpt"))
    assert scheduler["num_training_steps"] == 2 and scheduler["current_step"] == 2, "the schedule is 2 steps long"

    records = ["hyperparams.yaml", "env.log", "train.py"]
    before = {name: Path(os.path.join(output, name)).read_bytes() for name in records}
    stamps = {name: os.stat(os.path.join(output, name)).st_mtime_ns for name in records}
    code, log = run_train([DISTILL_YAML, "--number_of_steps=2", "--lr=0.001"] + as_command_line(overrides))
    assert code != 0 and "lr: recorded 0.0002, now 0.001" in log
    assert {name: Path(os.path.join(output, name)).read_bytes() for name in records} == before
    assert {name: os.stat(os.path.join(output, name)).st_mtime_ns for name in records} == stamps
    assert folder_snapshot(*corpus_folders(mini_corpus), tiny_teacher_folder) == inputs


def test_dpwavlm_refuses_the_step_limit_naming_its_stage_options(mini_corpus, tiny_teacher_folder, tmp_path):
    output = str(tmp_path / "dpwavlm")
    overrides = tiny_overrides(mini_corpus, tiny_teacher_folder, output)
    code, log = run_train([ROBUST_DPWAVLM_YAML, "--optimizer_step_limit=3"] + as_command_line(overrides))
    assert code != 0 and "--stage1_steps=N, --stage2_steps=N" in log
    assert not os.path.exists(output)


def test_a_refused_dpwavlm_resume_rewrites_none_of_the_run_records(mini_corpus, tiny_teacher_folder, tmp_path):
    from hyperpyyaml import load_hyperpyyaml

    from tests.conftest import load_train_module

    inputs = folder_snapshot(*corpus_folders(mini_corpus), tiny_teacher_folder)
    output = tmp_path / "run"
    (output / "save" / "stage1" / "CKPT+2026-01-01+00-00-00+00").mkdir(parents=True)
    (output / "save" / "run_signature.json").write_text(json.dumps({"target_sparsity": 0.5}))
    (output / "hyperparams.yaml").write_text("# the run's own record\n")
    overrides = tiny_overrides(
        mini_corpus, tiny_teacher_folder, str(output), enhancement_hidden_size=16, enhancement_layers=1
    )
    with open(ROBUST_DPWAVLM_YAML, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    with pytest.raises(ChangedSettingsError, match="target_sparsity: recorded 0.5, now 0.75"):
        load_train_module().run_dpwavlm(hparams, ROBUST_DPWAVLM_YAML, overrides, run_opts={})
    assert (output / "hyperparams.yaml").read_text() == "# the run's own record\n"
    assert not (output / "env.log").exists() and not (output / "train.py").exists()
    assert folder_snapshot(*corpus_folders(mini_corpus), tiny_teacher_folder) == inputs


# ------------------------------------------------- 14. DPWavLM on the trunk's code paths -----


def test_dpwavlm_reads_its_teacher_with_the_teacher_loader(tiny_teacher_folder, tmp_path):
    from robustdistiller.dpwavlm.stages import load_teacher
    from robustdistiller.models.teacher import SAFETENSORS_FILE, TeacherSourceError

    inputs = folder_snapshot(tiny_teacher_folder)
    damaged = shutil.copytree(tiny_teacher_folder, str(tmp_path / "teacher"))
    weights = os.path.join(damaged, SAFETENSORS_FILE)
    with open(weights, "r+b") as fout:
        fout.truncate(os.path.getsize(weights) // 2)
    with pytest.raises(TeacherSourceError, match=f"'{weights}' cannot be read \\(truncated or damaged"):
        load_teacher({"teacher_source": damaged})
    assert folder_snapshot(tiny_teacher_folder) == inputs


def test_dpwavlm_lets_a_step_interval_on_the_command_line_replace_the_yaml_minutes():
    from robustdistiller.dpwavlm.brain import DPWavLMBrain

    _, run_opts, _ = sb.parse_arguments([ROBUST_DPWAVLM_YAML, "--ckpt_interval_steps=2"])
    hparams = {"ckpt_interval_minutes": 30, "optimizer_step_limit": 10}
    brain = DPWavLMBrain(modules={"layer": torch.nn.Linear(2, 2)}, hparams=hparams, run_opts=run_opts)
    assert (brain.ckpt_interval_steps, brain.ckpt_interval_minutes) == (2, 0)


def test_a_file_missing_from_a_checkpoint_of_this_run_is_damaged_not_another_model(tmp_path, caplog):
    checkpointer, _ = linear_checkpointer(tmp_path)
    checkpointer.sign("aaaa")
    checkpointer.save_checkpoint(meta={"step": 1})
    newest = checkpointer.save_checkpoint(meta={"step": 2})
    (newest.path / "model.ckpt").unlink()
    foreign = foreign_checkpoint(tmp_path, name="CKPT+2099-01-01+00-00-00+01")  # no hash: not known to be ours
    with caplog.at_level(logging.WARNING):
        assert checkpointer.recover_if_possible().meta["step"] == 1
    lines = [line for line in caplog.text.splitlines() if "Set aside" in line]
    assert any(newest.path.name in line and "-- damaged" in line for line in lines), lines
    assert any(foreign.name in line and "-- another model" in line for line in lines), lines


def test_dpwavlm_stage_checkpoints_record_the_run_signature_hash(tmp_path, monkeypatch):
    from robustdistiller.dpwavlm import stages
    from robustdistiller.runs.run_folder import signature_hash, write_run_signature

    save = str(tmp_path / "save")
    write_run_signature(save, {"target_sparsity": 0.75})  # what check_run_settings records
    captured = {}

    class RecordingBrain:
        def __init__(self, modules, hparams, run_opts, checkpointer):
            captured["checkpointer"] = checkpointer
            self.optimizer_step = hparams["optimizer_step_limit"]

        def fit(self, *args, **kwargs):
            pass

    monkeypatch.setattr(stages, "DPWavLMBrain", RecordingBrain)
    hparams = {
        "save_folder": save,
        "stage2_lr": 1e-4,
        "stage2_warmup_steps": 1,
        "stage2_steps": 2,
        "number_of_epochs": 1,
        "num_workers": 0,
        "valid_dataloader_opts": {},
    }
    modules = {"student": torch.nn.Linear(2, 2), "projections": torch.nn.Linear(2, 2), "enhancement_head": None}
    stages.run_stage(2, hparams, modules, teacher=None, datasets=(None, None, None), run_opts={})
    saved = captured["checkpointer"].save_checkpoint()
    assert saved.meta["run_signature"] == signature_hash({"target_sparsity": 0.75})
    assert os.path.dirname(saved.path) == os.path.join(save, "stage2")
