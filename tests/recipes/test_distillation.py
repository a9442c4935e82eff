"""The distillation recipe end to end: train.py, both YAMLs, the Brain, resume, DDP, bad input."""

from pathlib import Path
import glob
import json
import logging
import os
import re
import subprocess
import sys

import pytest
import speechbrain as sb
import torch
import yaml
from hyperpyyaml import load_hyperpyyaml

from tests.conftest import REPOSITORY_ROOT, as_command_line, load_train_module, tiny_overrides
from robustdistiller.distill.brain import DistillationBrain

DISTILL_YAML = os.path.join(REPOSITORY_ROOT, "hparams", "distill.yaml")
DISTILHUBERT_YAML = os.path.join(REPOSITORY_ROOT, "hparams", "distilhubert.yaml")


def run_train(arguments, launcher=None):
    """Runs train.py in a subprocess and returns (return code, combined output)."""
    command = (launcher or [sys.executable]) + [os.path.join(REPOSITORY_ROOT, "train.py")] + arguments
    environment = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    completed = subprocess.run(
        command, cwd=REPOSITORY_ROOT, env=environment, capture_output=True, text=True, timeout=900
    )
    return completed.returncode, completed.stdout + completed.stderr


def checkpoints(save_folder):
    """Checkpoint folders with their metadata, oldest first."""
    folders = sorted(glob.glob(os.path.join(save_folder, "CKPT+*")))
    return [(folder, yaml.safe_load(open(os.path.join(folder, "CKPT.yaml")))) for folder in folders]


def build_brain(mini_corpus, teacher_folder, output_folder, hparams_file=DISTILL_YAML, **extra):
    """Loads a YAML with tiny overrides, prepares the data and returns (hparams, brain, train_data)."""
    train_module = load_train_module()
    overrides = tiny_overrides(mini_corpus, teacher_folder, output_folder, **extra)
    if hparams_file == DISTILHUBERT_YAML:
        for key in ("musan_folder", "urbansound_folder", "rir_folder", "rirs_noises_subsets", "enhancement_input_size"):
            overrides.pop(key)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    train_module.prepare_data(hparams)
    train_data, _, _ = train_module.dataio_prepare(hparams)
    hparams["student"].init_from_teacher(
        hparams["teacher"].model, copy_encoder_layer_norm=hparams["copy_encoder_layer_norm"]
    )
    brain = DistillationBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts={"device": "cpu"},
        checkpointer=hparams["checkpointer"],
    )
    # What Brain.fit does before its first batch.
    brain.on_fit_start()
    brain.on_stage_start(sb.Stage.TRAIN, epoch=1)
    brain.modules.train()
    brain.nonfinite_count = 0
    return hparams, brain, train_data


def first_batch(dataset, size=2):
    """A padded batch of the first ``size`` items."""
    collate = sb.dataio.batch.PaddedBatch
    return collate([dataset[index] for index in range(size)])


def test_train_resume_and_robustness_report(mini_corpus, tiny_teacher_folder, tmp_path):
    output = str(tmp_path / "run")
    # A 6-step run interrupted after step 3 (SpeechBrain's --optimizer_step_limit run option).
    overrides = tiny_overrides(mini_corpus, tiny_teacher_folder, output, number_of_steps=6)
    code, log = run_train([DISTILL_YAML, "--optimizer_step_limit=3"] + as_command_line(overrides))
    assert code == 0, log
    first = checkpoints(os.path.join(output, "save"))
    assert first and first[-1][1]["optimizer_step"] == 3
    train_log = Path(os.path.join(output, "train_log.txt")).read_text()
    for component in ("l1_layer4", "cosine_layer12", "cosine_similarity_layer8", "enhancement_loss"):
        assert component in train_log
    robustness = json.loads(Path(os.path.join(output, "robustness.json")).read_text())
    assert set(robustness) == {"clean", "snr0", "snr5", "snr10", "snr20", "reverb"}
    assert all(torch.isfinite(torch.tensor(value["distillation_loss"])) for value in robustness.values())
    student_before = torch.load(os.path.join(first[-1][0], "student.ckpt"))

    # Resume: the same command without the interruption continues from step 3 (optimizer,
    # scheduler, step and epoch counters restored) to step 6.
    code, log = run_train([DISTILL_YAML] + as_command_line(overrides))
    assert code == 0, log
    second = checkpoints(os.path.join(output, "save"))
    assert second[-1][1]["optimizer_step"] == 6
    scheduler_state = torch.load(os.path.join(second[-1][0], "lr_scheduler.ckpt"))
    assert scheduler_state["current_step"] == 6
    assert "epoch: 2" in Path(os.path.join(output, "train_log.txt")).read_text()
    student_after = torch.load(os.path.join(second[-1][0], "student.ckpt"))
    changed = [
        name
        for name in student_before
        if name != "_extra_state" and not torch.equal(student_before[name], student_after[name])
    ]
    assert changed, "resumed training did not update the student"


def test_distilhubert_recipe_has_no_head_and_no_corruption(mini_corpus, tiny_teacher_folder, tmp_path):
    hparams, brain, train_data = build_brain(
        mini_corpus, tiny_teacher_folder, str(tmp_path / "baseline"), hparams_file=DISTILHUBERT_YAML
    )
    assert "enhancement_head" not in brain.modules
    assert brain.max_grad_norm == 5.0
    item = train_data[0]
    assert torch.equal(item["clean_sig"], item["noisy_sig"])
    loss = brain.fit_batch(first_batch(train_data))
    assert torch.isfinite(loss)
    assert "enhancement_loss" not in brain.batch_statistics


def test_distilhubert_recipe_runs_end_to_end(mini_corpus, tiny_teacher_folder, tmp_path):
    output = str(tmp_path / "baseline_run")
    overrides = tiny_overrides(mini_corpus, tiny_teacher_folder, output, number_of_steps=2)
    for key in ("musan_folder", "urbansound_folder", "rir_folder", "rirs_noises_subsets", "enhancement_input_size"):
        overrides.pop(key)
    code, log = run_train([DISTILHUBERT_YAML] + as_command_line(overrides))
    assert code == 0, log[-4000:]
    robustness = json.loads(Path(os.path.join(output, "robustness.json")).read_text())
    assert "clean" in robustness and "pesq" not in robustness["clean"]  # no enhancement head, no quality


def test_hyperparameters_follow_the_paper(mini_corpus, tiny_teacher_folder, tmp_path):
    hparams, brain, train_data = build_brain(mini_corpus, tiny_teacher_folder, str(tmp_path / "run"))
    raw = hparams  # the tiny overrides leave all of these at the YAML's values
    assert raw["lr"] == 2e-4 and raw["weight_decay"] == 0.01 and raw["max_grad_norm"] == 15.0
    assert raw["number_of_steps"] == 200000
    yaml_text = Path(DISTILL_YAML).read_text(encoding="utf-8")  # keys the tiny overrides shrink
    for line in ("max_crop_samples: 250000", "batching: fixed", "batch_size: 24", "grad_accumulation_factor: 1"):
        assert f"\n{line}" in yaml_text
    assert raw["target_layers"] == [4, 8, 12] and raw["enhancement_weight"] == 2.0
    assert raw["snr_low"] == 0 and raw["snr_high"] == 20 and raw["file_noise_prob"] == 0.7
    assert hparams["lr_scheduler"].num_warmup_steps == int(0.07 * hparams["number_of_steps"])
    optimizer_defaults = brain.optimizer.defaults
    assert optimizer_defaults["betas"] == (0.9, 0.98) and optimizer_defaults["eps"] == 1e-6

    # Weight decay on everything but biases: LayerNorm weights decay; the split-linear bias and all
    # 12 LSTM biases of the enhancement head (bias_ih_l0, bias_hh_l2_reverse, ...) do not.
    decayed = {id(p) for p in brain.optimizer.param_groups[0]["params"]}
    named = dict(brain.modules.named_parameters())
    assert brain.optimizer.param_groups[0]["weight_decay"] == 0.01
    assert brain.optimizer.param_groups[1]["weight_decay"] == 0.0
    not_decayed = {name for name, parameter in named.items() if id(parameter) not in decayed}
    lstm_biases = {
        name for name in named if re.fullmatch(r"enhancement_head\.lstm\.bias_(ih|hh)_l[0-2](_reverse)?", name)
    }
    assert len(lstm_biases) == 12 and lstm_biases <= not_decayed
    assert "student.prediction_heads.split_bias" in not_decayed
    assert "student.backbone.encoder.layer_norm.weight" not in not_decayed
    assert not_decayed == {
        name for name in named if name.rsplit(".", 1)[-1].startswith("bias") or name.endswith("split_bias")
    }

    # Linear warm-up from 0: the first step uses lr / warmup_steps.
    brain.fit_batch(first_batch(train_data))
    warmup_steps = hparams["lr_scheduler"].num_warmup_steps
    assert brain.optimizer.param_groups[0]["lr"] == pytest.approx(hparams["lr"] / warmup_steps)
    assert brain.optimizer.param_groups[1]["lr"] == pytest.approx(hparams["lr"] / warmup_steps)


def test_gradient_clipping_covers_every_parameter(mini_corpus, tiny_teacher_folder, tmp_path):
    hparams, brain, train_data = build_brain(
        mini_corpus, tiny_teacher_folder, str(tmp_path / "run"), max_grad_norm=1e-3
    )
    clipped_norms = []
    original_step = brain.optimizer.step

    def recording_step(*args, **kwargs):
        gradients = [p.grad for p in brain.modules.parameters() if p.grad is not None]
        clipped_norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in gradients]))))
        bias_norms.append(
            max(
                float(p.grad.norm())
                for n, p in brain.modules.named_parameters()
                if n.endswith("bias") and p.grad is not None
            )
        )
        return original_step(*args, **kwargs)

    bias_norms = []
    brain.optimizer.step = recording_step
    brain.fit_batch(first_batch(train_data))
    assert brain.gradient_norm > 1e-3  # the raw norm was above the threshold
    assert clipped_norms[0] == pytest.approx(1e-3, rel=1e-3)
    assert bias_norms[0] <= 1e-3 * 1.001


def test_teacher_targets_are_deterministic_while_the_brain_trains(mini_corpus, tiny_teacher_folder, tmp_path):
    hparams, brain, train_data = build_brain(mini_corpus, tiny_teacher_folder, str(tmp_path / "run"))
    brain.modules.train()
    assert brain.modules.student.training and not hparams["teacher"].training
    batch = first_batch(train_data)
    first, _, _ = brain.compute_forward(batch, sb.Stage.TRAIN)
    second, _, _ = brain.compute_forward(batch, sb.Stage.TRAIN)
    assert torch.equal(first.layers, second.layers)
    assert not first.layers.requires_grad


def test_training_reduces_the_loss_on_a_fixed_batch(mini_corpus, tiny_teacher_folder, tmp_path):
    hparams, brain, train_data = build_brain(
        mini_corpus, tiny_teacher_folder, str(tmp_path / "run"), lr=0.002, number_of_steps=20
    )
    batch = first_batch(train_data, size=3)
    losses = [float(brain.fit_batch(batch)) for _ in range(12)]
    assert losses[-1] < 0.8 * losses[1], losses


def test_progress_bar_shows_the_loss_from_the_first_step(mini_corpus, tiny_teacher_folder, tmp_path, caplog):
    """The bar's train_loss is the real running loss from step 1, not 0 until the first log interval."""
    _, brain, train_data = build_brain(mini_corpus, tiny_teacher_folder, str(tmp_path / "run"), log_interval=50)
    with caplog.at_level(logging.INFO, logger="robustdistiller.distill.brain"):
        loss = brain.fit_batch(first_batch(train_data))
    shown = brain.update_average(loss, 0.0)
    assert shown > 0 and shown == pytest.approx(float(loss), rel=1e-5)
    assert "step 1 " in caplog.text  # the first step is logged, then every log_interval steps


def test_nan_loss_is_named_and_never_applied(mini_corpus, tiny_teacher_folder, tmp_path, caplog):
    hparams, brain, train_data = build_brain(mini_corpus, tiny_teacher_folder, str(tmp_path / "run"))
    batch = first_batch(train_data)
    noisy, lengths = batch.noisy_sig
    noisy[0, 100] = float("nan")
    before = {name: p.detach().clone() for name, p in brain.modules.named_parameters()}
    with caplog.at_level(logging.WARNING):
        brain.fit_batch(batch)
    assert "Non-finite loss" in caplog.text and batch.id[0] in caplog.text
    assert "l1_layer4" in caplog.text
    for name, parameter in brain.modules.named_parameters():
        assert torch.equal(before[name], parameter), f"{name} changed after a NaN loss"
    brain.checkpointer.save_checkpoint()
    saved = torch.load(glob.glob(os.path.join(hparams["save_folder"], "CKPT+*", "student.ckpt"))[0])
    assert all(torch.isfinite(value).all() for name, value in saved.items() if name != "_extra_state")
    with pytest.raises(ValueError, match="Loss is not finite"):
        for _ in range(hparams["nonfinite_patience"] + 1):
            brain.fit_batch(batch)


def test_full_size_default_config_builds_and_runs_a_step(mini_corpus, tmp_path):
    from robustdistiller.models.student import num_parameters
    from robustdistiller.models.teacher import save_random_teacher

    teacher_folder = save_random_teacher(str(tmp_path / "wavlm_base_plus_shape"), model_type="wavlm", tiny=False)
    hparams, brain, train_data = build_brain(
        mini_corpus,
        teacher_folder,
        str(tmp_path / "run"),
        enhancement_input_size=512,
        max_crop_samples=16000,
    )
    assert num_parameters(hparams["student"].backbone) == 23_491_200
    assert num_parameters(hparams["student"].prediction_heads) == 3_543_552
    assert num_parameters(hparams["enhancement_head"]) == 4_862_721
    before = hparams["student"].prediction_heads.state_dict()
    before = {name: value.clone() for name, value in before.items()}
    loss = brain.fit_batch(first_batch(train_data))
    assert torch.isfinite(loss)
    after = hparams["student"].prediction_heads.state_dict()
    assert any(not torch.equal(before[name], after[name]) for name in before)


def test_torchrun_two_gloo_processes_train(mini_corpus, tiny_teacher_folder, tmp_path):
    output = str(tmp_path / "ddp")
    overrides = tiny_overrides(mini_corpus, tiny_teacher_folder, output, number_of_steps=2)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517"]
    code, log = run_train([DISTILL_YAML, "--distributed_backend=gloo"] + as_command_line(overrides), launcher)
    assert code == 0, log[-5000:]
    saved = checkpoints(os.path.join(output, "save"))
    assert saved and saved[-1][1]["optimizer_step"] == 2


@pytest.mark.parametrize(
    "override, culprit",
    [
        ({"teacher_source": "/nonexistent/teacher_folder"}, "/nonexistent/teacher_folder"),
        ({"data_folder": "/nonexistent/LibriSpeech"}, "/nonexistent/LibriSpeech"),
        ({"musan_folder": "/nonexistent/musan"}, "/nonexistent/musan"),
        ({"rir_folder": "/nonexistent/RIRS_NOISES"}, "/nonexistent/RIRS_NOISES"),
    ],
)
def test_bad_sources_fail_with_a_message_naming_them(mini_corpus, tiny_teacher_folder, tmp_path, override, culprit):
    output = str(tmp_path / "bad")
    overrides = tiny_overrides(mini_corpus, tiny_teacher_folder, output, number_of_steps=1, **override)
    code, log = run_train([DISTILL_YAML] + as_command_line(overrides))
    assert code != 0
    error_lines = re.findall(r"^[\w.]*(?:Error|Exception): .*$", log, flags=re.MULTILINE)
    assert error_lines and culprit in error_lines[-1], log[-3000:]
