"""DPWavLM two-stage recipe: one tiny run of ``train.py hparams/robust_dpwavlm.yaml`` shared by the assertions.

Stage 1 (distill + prune) -> ``pruned.pth`` -> stage 2 -> ``final.pth`` on the mini corpus with the tiny random
WavLM teacher (the student is initialised from it), a few steps each; plus a unit test of the enhancement head's
input narrowing at materialisation.
"""

from pathlib import Path
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from hyperpyyaml import load_hyperpyyaml

from tests.conftest import (
    REPOSITORY_ROOT,
    as_command_line,
    corruption_overrides,
    load_train_module,
    run_recipe_script,
    tiny_overrides,
)
from robustdistiller.dpwavlm import stages
from robustdistiller.dpwavlm import DPWavLM, tiny_config
from robustdistiller.dpwavlm.checkpoint import load_dphubert_checkpoint
from robustdistiller.dpwavlm.stages import narrow_head_input
from robustdistiller.models.student import num_parameters
from robustdistiller.models.enhancement import EnhancementHead
from robustdistiller.export.loading import load_student
from robustdistiller.export.student_folder import export_student
from robustdistiller.runs.options import OptionError
from robustdistiller.runs.run_folder import ChangedSettingsError

ROBUST_YAML = os.path.join(REPOSITORY_ROOT, "hparams", "robust_dpwavlm.yaml")
TARGET_SPARSITY = 0.3
STAGE1_STEPS = 12


def run_train(arguments):
    command = [sys.executable, os.path.join(REPOSITORY_ROOT, "train.py")] + arguments
    environment = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    completed = subprocess.run(
        command, cwd=REPOSITORY_ROOT, env=environment, capture_output=True, text=True, timeout=600
    )
    return completed.returncode, completed.stdout + completed.stderr


@pytest.fixture(scope="module")
def dpwavlm_run(mini_corpus, tiny_teacher_folder, tmp_path_factory):
    """Output folder, overrides and log of one tiny two-stage run."""
    output = str(tmp_path_factory.mktemp("dpwavlm") / "run")
    overrides = tiny_overrides(
        mini_corpus,
        tiny_teacher_folder,
        output,
        min_samples=400,
        batching="fixed",
        grad_accumulation_factor=1,
        enhancement_hidden_size=16,
        enhancement_layers=1,
        stage1_steps=STAGE1_STEPS,
        stage1_warmup_steps=1,
        stage2_steps=2,
        stage2_warmup_steps=1,
        target_sparsity=TARGET_SPARSITY,
        # The tiny run reaches its target within 12 steps with high multiplier and gate lrs and no target ramp:
        # a ramp starts at target 0, so the first multiplier step (a full Adam step) pushes the other way, and
        # gate lrs above ~1 saturate the head and conv gates (log_alpha ~ +20, no gradient) in a few steps.
        sparsity_warmup_steps=0,
        log_alpha_lr=0.5,
        lambda_lr=100.0,
        stage1_lr=0.001,
        stage2_lr=0.001,
    )
    arguments = [ROBUST_YAML, "--precision=fp32"] + as_command_line(overrides)
    returncode, log = run_train(arguments)
    assert returncode == 0, log[-6000:]
    return output, log, overrides


def test_both_stages_ran_and_checkpoints_load(dpwavlm_run, tiny_teacher_folder):
    output, log, _ = dpwavlm_run
    summary = json.loads(Path(os.path.join(output, "dpwavlm_summary.json")).read_text())
    assert summary["stage1"]["steps"] == STAGE1_STEPS and summary["stage2"]["steps"] == 2
    assert os.listdir(os.path.join(output, "save", "stage1")) and os.listdir(os.path.join(output, "save", "stage2"))
    from robustdistiller.dpwavlm import from_hf_model

    teacher_params = num_parameters(from_hf_model(tiny_teacher_folder))
    assert summary["teacher_num_params"] == teacher_params
    for name in ("pruned.pth", "final.pth"):
        model, checkpoint = load_dphubert_checkpoint(os.path.join(output, name))  # strict, weights_only
        assert num_parameters(model) < teacher_params
        assert num_parameters(model) == summary["stage1"]["pruned_num_params"]
        assert not any(model.config[flag] for flag in model.config if "_prune_" in flag)
        assert set(checkpoint["distill_linear_projs"]) == {f"{i}.{p}" for i in range(4) for p in ("weight", "bias")}
        with torch.no_grad():
            hiddens, _ = model.eval().extract_features(torch.randn(1, 8000))
        assert len(hiddens) == 13
    # final distillation changed the compact weights
    pruned = torch.load(os.path.join(output, "pruned.pth"), weights_only=True)["state_dict"]
    final = torch.load(os.path.join(output, "final.pth"), weights_only=True)["state_dict"]
    assert pruned.keys() == final.keys()
    assert any(not torch.equal(pruned[key], final[key]) for key in pruned)
    head = torch.load(os.path.join(output, "final_enhancement_head.pt"), weights_only=True)
    assert head["lstm.weight_ih_l0"].shape[1] == model.config["extractor_conv_layer_config"][-1][0]


def test_sparsity_recorded_against_target(dpwavlm_run):
    output, log, _ = dpwavlm_run
    stage1 = json.loads(Path(os.path.join(output, "dpwavlm_summary.json")).read_text())["stage1"]
    assert stage1["target_sparsity"] == TARGET_SPARSITY
    print("expected sparsity", stage1["expected_sparsity"], "pruned", stage1["pruned_sparsity"], stage1["kept"])
    # measured: expected sparsity 0.086 at init -> 0.310 after 12 steps (target 0.30); after prune() 0.294
    assert stage1["initial_expected_sparsity"] < 0.1
    assert abs(stage1["expected_sparsity"] - TARGET_SPARSITY) < 0.05
    assert abs(stage1["pruned_sparsity"] - TARGET_SPARSITY) < 0.05
    assert stage1["pruned_num_params"] < stage1["gated_student_num_params"]
    assert "expected sparsity" in log and "target" in log


def test_lambdas_and_gates_in_stage1_checkpoint(dpwavlm_run):
    output, _, _ = dpwavlm_run
    stage1 = os.path.join(output, "save", "stage1")
    folder = sorted(name for name in os.listdir(stage1) if name.startswith("CKPT"))[-1]
    lagrangian = torch.load(os.path.join(stage1, folder, "lagrangian.ckpt"), weights_only=True)
    assert float(lagrangian["lambda1"]) != 0.0 and float(lagrangian["lambda2"]) != 0.0
    student = torch.load(os.path.join(stage1, folder, "student.ckpt"), weights_only=True)
    assert any("log_alpha" in key for key in student)
    saved = set(os.listdir(os.path.join(stage1, folder)))
    assert {"projections.ckpt", "enhancement_head.ckpt", "optimizer.ckpt", "counter.ckpt"} <= saved


def test_rerun_does_nothing(dpwavlm_run, monkeypatch):
    """train.py's DPWavLM path on a finished output folder: no preparation, no stage, final.pth untouched.

    In-process (train.py imported as a module) to save a second interpreter start.
    """
    output, _, overrides = dpwavlm_run
    final = os.path.join(output, "final.pth")
    before = os.stat(final).st_mtime_ns
    train = load_train_module()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a rerun after both stages must do nothing")

    monkeypatch.setattr(train, "prepare_data", must_not_run)
    monkeypatch.setattr(stages, "run_stages", must_not_run)
    with open(ROBUST_YAML, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    assert hparams["recipe"] == "dpwavlm"
    train.run_dpwavlm(hparams, ROBUST_YAML, overrides, run_opts={})
    assert os.stat(final).st_mtime_ns == before


def test_enhancement_head_unchanged_by_pruning_its_input():
    """Gated CNN features (eval) into the head == pruned CNN features into the narrowed head."""
    torch.manual_seed(0)
    model = DPWavLM(tiny_config(extractor_prune_conv_channels=True)).eval()
    with torch.no_grad():
        for block in model.feature_extractor.conv_layers:
            block.hard_concrete.log_alpha.copy_(torch.randn_like(block.hard_concrete.log_alpha) * 3)
    wavs = torch.randn(2, 4000)
    lengths = torch.tensor([4000, 3000])
    head = EnhancementHead(input_size=16, hidden_size=8, num_layers=2).eval()
    with torch.no_grad():
        _, frames, gated = model.extract_features(wavs, lengths, return_cnn_features=True)
        before = head(gated, wavs, feature_lengths=frames).mask
        kept = model.last_conv_kept_index()
        assert 0 < len(kept) < 16
        model.prune()
        narrow_head_input(head, kept)
        _, frames_after, pruned = model.extract_features(wavs, lengths, return_cnn_features=True)
        after = head(pruned, wavs, feature_lengths=frames_after).mask
    assert pruned.shape[-1] == len(kept)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-5)


def test_rerun_with_other_settings_is_refused(dpwavlm_run):
    """A finished run is not silently returned for another target sparsity; nothing is written."""
    output, _, overrides = dpwavlm_run
    final = os.path.join(output, "final.pth")
    before = os.stat(final).st_mtime_ns
    train = load_train_module()
    changed = dict(overrides, target_sparsity=0.5)
    with open(ROBUST_YAML, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, changed)
    with pytest.raises(ChangedSettingsError, match=r"target_sparsity: recorded 0.3, now 0.5"):
        train.run_dpwavlm(hparams, ROBUST_YAML, changed, run_opts={})
    assert os.stat(final).st_mtime_ns == before


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"stage2_steps": 2, "stage2_warmup_steps": 5}, "`stage2_warmup_steps` = 5 must be below `stage2_steps` = 2"),
        ({"pruning_units": ["conv", "heads"]}, "unknown \\['heads'\\]"),
        ({"target_sparsity": 1.2}, "`target_sparsity` = 1.2"),
        ({"distill_layers": "0.4,x"}, "distill_layers"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(dpwavlm_run, tmp_path, bad, message):
    """A stage-2 setting that cannot work is refused at once, not after stage 1; nothing is written."""
    _, _, overrides = dpwavlm_run
    changed = dict(overrides, output_folder=str(tmp_path / "never"), **bad)
    with open(ROBUST_YAML, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, changed)
    with pytest.raises(OptionError, match=message):
        load_train_module().run_dpwavlm(hparams, ROBUST_YAML, changed, run_opts={})
    assert not os.path.exists(tmp_path / "never")


@pytest.fixture(scope="module")
def speech_commands(tmp_path_factory):
    from robustdistiller.testing.fixtures.speech_commands import generate_speech_commands

    return generate_speech_commands(str(tmp_path_factory.mktemp("speech_commands")), seed=0)


def test_downstream_recipe_runs_on_the_compact_student(dpwavlm_run, speech_commands, mini_corpus, tmp_path):
    """The KS recipe with the DPWavLM output folder as its upstream (final.pth: 13 states, no heads)."""
    output, _, _ = dpwavlm_run
    ks_output = str(tmp_path / "ks")
    overrides = {
        "data_folder": speech_commands["data_folder"],
        "test_folder": speech_commands["test_folder"],
        "upstream_source": output,
        "output_folder": ks_output,
        "number_of_epochs": 2,
        "train_dataloader_opts": {"batch_size": 8, "drop_last": True, "num_workers": 0},
        "valid_dataloader_opts": {"batch_size": 8, "num_workers": 0},
        "test_condition_names": ["clean", "snr5"],
        **corruption_overrides(mini_corpus),
    }
    code, log = run_recipe_script("SpeechCommands/KS", "hparams/superb_ks.yaml", overrides)
    assert code == 0, log
    results = json.loads(Path(os.path.join(ks_output, "results.json")).read_text())
    assert results["upstream"]["kind"] == "student" and "dphubert" in results["upstream"]["description"]
    assert results["upstream"]["num_layers"] == 13 and not results["upstream"]["include_predictions"]
    assert len(results["layer_weights"]) == 13
    for stats in results["results"].values():
        assert 0.0 <= stats["accuracy"] <= 1.0 and math.isfinite(stats["loss"])


def test_export_of_the_run(dpwavlm_run, tmp_path):
    """Export of the run: its final.pth, the summary in the card; the export gives the run's features."""
    output, _, _ = dpwavlm_run
    result = export_student(output, str(tmp_path / "export"))
    card = Path(os.path.join(tmp_path / "export", "README.md")).read_text()
    assert "RobustDistiller + DPWavLM" in card and f"target {TARGET_SPARSITY:g}" in card
    # CNN pruning gated the channels (dummy_weight != 1): no exact transformers copy, the measured error is in the card
    assert result["hf_copy"]["written"] == result["hf_copy"]["exact"]
    wavs = torch.randn(1, 8000, generator=torch.Generator().manual_seed(0))
    exported, _ = load_student(str(tmp_path / "export"))
    trained, _ = load_student(output)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(exported(wavs).hidden_states, trained(wavs).hidden_states))


def test_two_process_ddp_run(mini_corpus, tiny_teacher_folder, tmp_path):
    """Both stages under torchrun with two CPU processes (gloo), as a multi-GPU run is launched.

    Guards two DDP-only failures: the projections' attributes read through the DDP wrapper, and checkpoint
    clean-up deadlocking when the processes list different checkpoint folders.
    """
    output = str(tmp_path / "ddp")
    overrides = tiny_overrides(
        mini_corpus,
        tiny_teacher_folder,
        output,
        min_samples=400,
        batching="fixed",
        batch_size=2,
        enhancement_hidden_size=8,
        enhancement_layers=1,
        stage1_steps=3,
        stage1_warmup_steps=1,
        stage2_steps=2,
        stage2_warmup_steps=1,
        sparsity_warmup_steps=0,
        target_sparsity=TARGET_SPARSITY,
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        os.path.join(REPOSITORY_ROOT, "train.py"),
        ROBUST_YAML,
        "--precision=fp32",
        "--device=cpu",
        "--distributed_backend=gloo",
        "--grad_accumulation_factor=1",  # a run option: the batch sampler must see it too
    ] + as_command_line(overrides)
    environment = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    completed = subprocess.run(
        command, cwd=REPOSITORY_ROOT, env=environment, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, (completed.stdout + completed.stderr)[-6000:]
    summary = json.loads(Path(os.path.join(output, "dpwavlm_summary.json")).read_text())
    assert summary["stage1"]["steps"] == 3 and summary["stage2"]["steps"] == 2
    model, _ = load_dphubert_checkpoint(os.path.join(output, "final.pth"))
    assert num_parameters(model) == summary["stage1"]["pruned_num_params"]
    recorded = json.loads(Path(os.path.join(output, "save", "run_signature.json")).read_text())
    assert recorded["grad_accumulation_factor"] == 1  # the value the Brain used, not the YAML's 4


def test_rerun_after_stage1_starts_stage2_from_pruned(dpwavlm_run, monkeypatch):
    """With pruned.pth present and stage 2 undone, a rerun runs stage 2 only (from pruned.pth). Runs last."""
    import shutil

    output, _, overrides = dpwavlm_run
    pruned = os.path.join(output, "pruned.pth")
    before = os.stat(pruned).st_mtime_ns
    os.remove(os.path.join(output, "final.pth"))
    shutil.rmtree(os.path.join(output, "save", "stage2"))
    train = load_train_module()

    def must_not_run(*args, **kwargs):
        raise AssertionError("stage 1 is done: no materialisation on a rerun")

    monkeypatch.setattr(stages, "materialise", must_not_run)
    with open(ROBUST_YAML, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    train.run_dpwavlm(hparams, ROBUST_YAML, overrides, run_opts={"precision": "fp32"})
    assert os.stat(pruned).st_mtime_ns == before
    summary = json.loads(Path(os.path.join(output, "dpwavlm_summary.json")).read_text())
    assert summary["stage1"]["steps"] == STAGE1_STEPS and summary["stage2"]["steps"] == 2
    model, _ = load_dphubert_checkpoint(os.path.join(output, "final.pth"))
    assert num_parameters(model) == summary["stage1"]["pruned_num_params"]
