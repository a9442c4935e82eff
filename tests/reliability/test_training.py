"""Reliability of distillation runs: crash-safe checkpoints, honest resumes, one run per folder.

Each test is one case of issue 9: it asserts the new behaviour and that no input file changed.
"""

from pathlib import Path
import json
import logging
import os
import subprocess
import sys

import pytest
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from tests.conftest import REPOSITORY_ROOT, as_command_line, folder_snapshot, load_train_module, tiny_overrides
from robustdistiller.distill.brain import DistillationBrain
from robustdistiller.runs.checkpoints import PARTIAL_PREFIX, AtomicCheckpointer, CheckpointRecoveryError
from robustdistiller.runs.options import OptionError
from robustdistiller.runs.run_folder import (
    ChangedSettingsError,
    OutputFolderInUse,
    lock_output_folder,
    release_output_folder,
)

DISTILL_YAML = os.path.join(REPOSITORY_ROOT, "hparams", "distill.yaml")


# ------------------------------------------------------------------ atomic checkpoints -----


def two_module_checkpointer(folder):
    """A checkpointer of two small modules (two files per checkpoint) and the modules."""
    first, second = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    checkpointer = AtomicCheckpointer(folder, recoverables={"first": first, "second": second})
    return checkpointer, first, second


def test_a_save_interrupted_between_two_files_publishes_nothing_and_recovery_falls_back(tmp_path, caplog):
    checkpointer, first, second = two_module_checkpointer(tmp_path)
    checkpointer.save_checkpoint(meta={"step": 1})
    saved_weight = first.weight.detach().clone()

    with torch.no_grad():
        first.weight.add_(1.0)

    def fault(obj, path):  # the process dies after 'first.ckpt' was written, before 'second.ckpt'
        raise KeyboardInterrupt("killed during the save")

    checkpointer.custom_save_hooks["second"] = fault
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save_checkpoint(meta={"step": 2})
    partial = [path for path in tmp_path.iterdir() if path.name.startswith(PARTIAL_PREFIX)]
    assert len(partial) == 1 and (partial[0] / "first.ckpt").exists()
    assert [checkpoint.meta["step"] for checkpoint in checkpointer.list_checkpoints()] == [1]

    resumed, resumed_first, _ = two_module_checkpointer(tmp_path)
    with caplog.at_level(logging.WARNING):
        checkpoint = resumed.recover_if_possible()
    assert checkpoint.meta["step"] == 1
    assert torch.equal(resumed_first.weight, saved_weight)
    assert not partial[0].exists(), "the leftover of the interrupted save is removed"
    assert "interrupted checkpoint save" in caplog.text


def test_a_truncated_file_of_the_newest_checkpoint_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    checkpointer, first, _ = two_module_checkpointer(tmp_path)
    checkpointer.save_checkpoint(meta={"step": 1})
    older_weight = first.weight.detach().clone()
    with torch.no_grad():
        first.weight.add_(1.0)
    newest = checkpointer.save_checkpoint(meta={"step": 2})
    damaged = newest.path / "second.ckpt"
    damaged.write_bytes(damaged.read_bytes()[:40])  # a disk-full or interrupted copy

    resumed, resumed_first, _ = two_module_checkpointer(tmp_path)
    with caplog.at_level(logging.WARNING):
        checkpoint = resumed.recover_if_possible()
    assert checkpoint.meta["step"] == 1
    assert torch.equal(resumed_first.weight, older_weight), "every module comes from the older checkpoint"
    assert str(damaged) in caplog.text and "falling back" in caplog.text


def test_checkpoints_without_files_or_with_a_broken_meta_file_are_skipped(tmp_path, caplog):
    checkpointer, _, _ = two_module_checkpointer(tmp_path)
    checkpointer.save_checkpoint(meta={"step": 1})
    # What SpeechBrain's own Checkpointer leaves after a kill right after writing CKPT.yaml.
    plain = tmp_path / "CKPT+2099-01-01+00-00-00+00"
    plain.mkdir()
    (plain / "CKPT.yaml").write_text("end-of-epoch: true\nunixtime: 4070908800\nstep: 3\n")
    broken = tmp_path / "CKPT+2099-01-01+00-00-00+01"
    broken.mkdir()
    (broken / "CKPT.yaml").write_text("end-of-epoch: [unterminated\n")
    with caplog.at_level(logging.WARNING):
        checkpoint = checkpointer.recover_if_possible()
    assert checkpoint.meta["step"] == 1
    assert str(broken) in caplog.text and "has no file for first, second" in caplog.text


def test_no_loadable_checkpoint_is_an_error_that_lists_each(tmp_path):
    checkpointer, _, _ = two_module_checkpointer(tmp_path)
    saved = checkpointer.save_checkpoint(meta={"step": 1})
    (saved.path / "first.ckpt").write_bytes(b"not a zip file")
    with pytest.raises(CheckpointRecoveryError, match="first.ckpt"):
        two_module_checkpointer(tmp_path)[0].recover_if_possible()


# ----------------------------------------------------------------- one run per folder -----


def test_a_second_run_in_a_locked_folder_stops_and_a_stale_lock_is_taken_over(tmp_path, caplog):
    holder_code = (
        "import sys; from robustdistiller.runs.run_folder import lock_output_folder; "
        f"lock_output_folder({str(tmp_path)!r}); print('locked', flush=True); sys.stdin.read()"
    )
    environment = dict(os.environ, PYTHONPATH=REPOSITORY_ROOT)
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputFolderInUse, match=f"pid {holder.pid}"):
            lock_output_folder(str(tmp_path))
    finally:
        holder.kill()  # like a kill -9: the lock file stays, naming a dead process
        holder.wait()
    with caplog.at_level(logging.INFO):
        lock_output_folder(str(tmp_path))
    assert f"pid {holder.pid}" in caplog.text and "stale" in caplog.text
    release_output_folder(str(tmp_path))


# ------------------------------------------------------------------- recipe options -----


def test_options_are_checked_before_anything_is_loaded():
    check_options = load_train_module().check_options
    hparams = {
        "train_splits": "train-clean-100",
        "valid_splits": "dev-clean",
        "musan_subsets": "noise",
        "number_of_steps": "8",
        "test_conditions": {},
    }
    check_options(hparams)
    assert hparams["train_splits"] == ["train-clean-100"] and hparams["musan_subsets"] == ["noise"]
    assert hparams["number_of_steps"] == 8
    for steps in (0, -3, "1.5"):
        with pytest.raises(OptionError, match="number_of_steps"):
            check_options(dict(hparams, number_of_steps=steps))


def test_a_step_interval_on_the_command_line_replaces_the_yaml_minutes():
    _, run_opts, _ = sb.parse_arguments([DISTILL_YAML, "--ckpt_interval_steps=2"])
    hparams = {"ckpt_interval_minutes": 30, "optimizer_step_limit": None}
    brain = DistillationBrain(modules={"layer": torch.nn.Linear(2, 2)}, hparams=hparams, run_opts=run_opts)
    assert (brain.ckpt_interval_steps, brain.ckpt_interval_minutes) == (2, 0)


# ------------------------------------------------------- honest resumes (in process) -----


def make_brain(mini_corpus, teacher_folder, output_folder, yaml_file=DISTILL_YAML, **extra):
    """What train.py's __main__ does up to ``fit``: returns (hparams, brain, train, valid, sampler)."""
    train_module = load_train_module()
    interval_steps = extra.pop("ckpt_interval_steps", 0)  # a run option (command line), not a YAML key
    overrides = tiny_overrides(mini_corpus, teacher_folder, output_folder, **extra)
    with open(yaml_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    train_module.check_options(hparams)
    train_module.prepare_data(hparams)
    train_data, valid_data, train_sampler = train_module.dataio_prepare(hparams)
    hparams["student"].init_from_teacher(hparams["teacher"].model)
    info = train_module.training_info(hparams, yaml_file)
    signature = train_module.distillation_signature(hparams, info["teacher_fingerprint"])
    brain = DistillationBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts={"device": "cpu", "ckpt_interval_steps": interval_steps},
        checkpointer=hparams["checkpointer"],
        run_signature=signature,
        run_info=info,
    )
    return hparams, brain, train_data, valid_data, train_sampler


def fit(mini_corpus, teacher_folder, output_folder, crash_at_step=None, crash_in_save_at_step=None, **extra):
    """Runs ``Brain.fit`` of the recipe; a crash (KeyboardInterrupt) can be injected before an
    optimizer step or in the middle of the checkpoint saved at a step. Returns the brain."""
    hparams, brain, train_data, valid_data, train_sampler = make_brain(
        mini_corpus, teacher_folder, output_folder, **extra
    )
    real_fit_batch = brain.fit_batch

    def fit_batch(batch):
        if crash_at_step is not None and brain.optimizer_step + 1 == crash_at_step:
            raise KeyboardInterrupt("killed outside a save")
        return real_fit_batch(batch)

    def save_scheduler(obj, path):  # called between the student's file and the optimizer's
        if crash_in_save_at_step is not None and brain.optimizer_step == crash_in_save_at_step:
            raise KeyboardInterrupt("killed during a save")
        obj.save(path)

    brain.fit_batch = fit_batch
    brain.checkpointer.custom_save_hooks["lr_scheduler"] = save_scheduler
    try:
        brain.fit(
            hparams["epoch_counter"],
            train_data,
            valid_data,
            train_loader_kwargs={"batch_sampler": train_sampler, "num_workers": 0},
            valid_loader_kwargs=hparams["valid_dataloader_opts"],
        )
    except KeyboardInterrupt:
        pass
    return brain


def student_weights(brain):
    return {
        name: value.detach().clone() for name, value in brain.modules.state_dict().items() if torch.is_tensor(value)
    }


@pytest.fixture(scope="module")
def uninterrupted(mini_corpus, tiny_teacher_folder, tmp_path_factory):
    """An 8-step run (epochs of 3 steps, a checkpoint every 2 steps of an epoch and at its end) and
    its final weights."""
    output = str(tmp_path_factory.mktemp("uninterrupted") / "run")
    brain = fit(mini_corpus, tiny_teacher_folder, output, number_of_steps=8, ckpt_interval_steps=2)
    assert brain.optimizer_step == 8
    return output, student_weights(brain)


def assert_same_weights(first, second):
    different = [name for name in first if not torch.equal(first[name], second[name])]
    assert not different, different


@pytest.mark.parametrize("crash", [{"crash_in_save_at_step": 5}, {"crash_at_step": 6}], ids=["in-save", "outside-save"])
def test_a_killed_run_resumes_to_the_weights_of_the_uninterrupted_one(
    mini_corpus, tiny_teacher_folder, tmp_path, uninterrupted, crash
):
    inputs = folder_snapshot(mini_corpus["librispeech"], tiny_teacher_folder)
    output = str(tmp_path / "run")
    killed = fit(mini_corpus, tiny_teacher_folder, output, number_of_steps=8, ckpt_interval_steps=2, **crash)
    # in-save: the checkpoint of step 5 is incomplete, the resume starts from step 3 (end of epoch 1);
    # outside-save: killed before step 6, the resume starts from the intra-epoch checkpoint of step 5.
    assert killed.optimizer_step == crash.get("crash_in_save_at_step", crash.get("crash_at_step", 0) - 1)
    resumed = fit(mini_corpus, tiny_teacher_folder, output, number_of_steps=8, ckpt_interval_steps=2)
    assert resumed.optimizer_step == 8 and resumed.hparams.lr_scheduler.current_step == 8
    assert_same_weights(student_weights(resumed), uninterrupted[1])
    assert not [name for name in os.listdir(os.path.join(output, "save")) if name.startswith(PARTIAL_PREFIX)]
    assert folder_snapshot(mini_corpus["librispeech"], tiny_teacher_folder) == inputs


def test_a_changed_setting_is_refused_before_recovery_and_accepted_on_purpose(
    mini_corpus, tiny_teacher_folder, uninterrupted, tmp_path
):
    import shutil

    from robustdistiller.models.teacher import save_random_teacher

    output = str(tmp_path / "run")
    shutil.copytree(uninterrupted[0], output)
    info_file = os.path.join(output, "save", "distillation_info.json")
    info_before = Path(info_file).read_text()

    _, brain, *_ = make_brain(
        mini_corpus, tiny_teacher_folder, output, number_of_steps=8, lr=0.001, max_crop_samples=8000
    )
    with pytest.raises(ChangedSettingsError) as error:
        brain.on_fit_start()
    message = str(error.value)
    assert "lr: recorded 0.0002, now 0.001" in message and "max_crop_samples: recorded 16000, now 8000" in message
    assert "--accept_changed_settings=[lr,max_crop_samples]" in message
    assert Path(info_file).read_text() == info_before, "the run's records are written only after a recovery"

    other_teacher = save_random_teacher(str(tmp_path / "other_teacher"), model_type="wavlm", tiny=True, seed=5)
    _, brain, *_ = make_brain(mini_corpus, other_teacher, output, number_of_steps=8)
    with pytest.raises(ChangedSettingsError, match="teacher_fingerprint"):
        brain.on_fit_start()

    _, brain, *_ = make_brain(
        mini_corpus, tiny_teacher_folder, output, number_of_steps=8, lr=0.001, accept_changed_settings="lr"
    )
    brain.on_fit_start()
    assert brain.hparams.lr_scheduler.lr0 == 0.001, "the accepted learning rate replaces the restored one"
    recorded = json.loads(Path(os.path.join(output, "save", "run_signature.json")).read_text())
    assert recorded["lr"] == 0.001


def test_a_finished_run_is_extended_by_a_larger_number_of_steps(
    mini_corpus, tiny_teacher_folder, uninterrupted, tmp_path
):
    import shutil

    output = str(tmp_path / "run")
    shutil.copytree(uninterrupted[0], output)
    finished = fit(mini_corpus, tiny_teacher_folder, output, number_of_steps=8)
    assert finished.optimizer_step == 8
    assert_same_weights(student_weights(finished), uninterrupted[1])  # nothing trained, nothing saved

    extended = fit(mini_corpus, tiny_teacher_folder, output, number_of_steps=11)
    scheduler = extended.hparams.lr_scheduler
    assert extended.optimizer_step == 11 and scheduler.num_training_steps == 11 and scheduler.current_step == 11
    weights = student_weights(extended)
    assert any(not torch.equal(weights[name], uninterrupted[1][name]) for name in weights), "extra steps trained"
    info = json.loads(Path(os.path.join(output, "save", "distillation_info.json")).read_text())
    assert info["number_of_steps"] == 11

    _, brain, *_ = make_brain(mini_corpus, tiny_teacher_folder, output, number_of_steps=4)
    with pytest.raises(OptionError, match="--number_of_steps >= 11"):
        brain.on_fit_start()


# ------------------------------------------------------------- the recipe end to end -----


def run_train(overrides, *extra_arguments):
    command = [sys.executable, os.path.join(REPOSITORY_ROOT, "train.py"), DISTILL_YAML]
    command += as_command_line(overrides) + list(extra_arguments)
    environment = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    completed = subprocess.run(command, cwd=REPOSITORY_ROOT, capture_output=True, text=True, env=environment)
    return completed.returncode, completed.stdout + completed.stderr


def test_the_recipe_without_validation_with_a_step_interval_refusing_a_busy_folder(
    mini_corpus, tiny_teacher_folder, tmp_path
):
    inputs = folder_snapshot(*[folder for folder in mini_corpus.values() if folder], tiny_teacher_folder)
    output = str(tmp_path / "run")
    overrides = tiny_overrides(mini_corpus, tiny_teacher_folder, output, number_of_steps=4, valid_splits=[])
    code, log = run_train(overrides, "--ckpt_interval_steps=2")
    assert code == 0, log[-4000:]
    assert "replaces the YAML's ckpt_interval_minutes" in log
    save = os.path.join(output, "save")
    checkpoints = [name for name in os.listdir(save) if name.startswith("CKPT+")]
    assert checkpoints, "without validation the latest checkpoint is kept"
    assert not os.path.exists(os.path.join(output, "robustness.json"))
    assert json.loads(Path(os.path.join(save, "distillation_info.json")).read_text())["number_of_steps"] == 4

    lock_output_folder(output)  # another run holds the folder
    try:
        code, log = run_train(overrides)
    finally:
        release_output_folder(output)
    assert code != 0 and "is in use by another run" in log
    assert folder_snapshot(*[folder for folder in mini_corpus.values() if folder], tiny_teacher_folder) == inputs
