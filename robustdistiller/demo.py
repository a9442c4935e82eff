"""The paper's central claim in miniature, with no data and no downloads: ``make demo``.

1. Writes a mini corpus in the real layouts (LibriSpeech, MUSAN, RIRS_NOISES) with
   :mod:`robustdistiller.testing.mini_corpus`.
2. Builds a small WavLM teacher with **random weights** (no pretrained weights can be fetched here)
   and saves it as a local Hugging Face folder.
3. Runs the real recipe twice, ``train.py hparams/distill.yaml`` (RobustDistiller) and
   ``train.py hparams/distilhubert.yaml`` (DistilHuBERT-style baseline, same teacher for a fair
   comparison), with small overrides only: steps, batch, crop length, and for RobustDistiller an
   enhancement head as wide as the student (:func:`demo_enhancement_overrides`) whose enhanced speech
   is scored on 6 held-out utterances instead of 50.
4. Evaluates both students on the held-out speakers: distillation loss against the teacher's clean
   targets, with the student hearing clean speech, noise at 0/5/10/20 dB, or reverberation.
   Prints the table and writes ``robustness.png`` and ``robustness.json``.
5. Exports the RobustDistiller student (SpeechBrain + transformers + s3prl formats) to
   ``exported_robustdistiller/`` and reloads it in fresh offline processes six ways
   (:func:`robustdistiller.export.verify.verify_export`), printing how far each loader's features are from
   the trained module's.
6. A small cross-task robustness report (:mod:`robustdistiller.report`): the teacher and both students
   as frozen upstreams of the real SUPERB recipes on generated fixtures (``--report-tasks``, default KS
   and PR), under clean, snr5 and reverb with the mini corpus's test-only noise and RIRs. Prints the
   tables and writes ``report/`` (``report.md``, CSVs, PNGs, ``report.json``) under the output folder.

Closes with the wall time of each step (also in ``step_seconds.json``).

Run: ``python -m robustdistiller.demo --output demo_output``; ``--report-only`` redoes step 6 alone on
the students of an earlier run in the same output folder.
"""

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time

import torch
from hyperpyyaml import load_hyperpyyaml
from tqdm import tqdm

from robustdistiller.distill.evaluation import evaluate_conditions
from robustdistiller.export.loading import load_student
from robustdistiller.export.student_folder import export_student
from robustdistiller.export.verify import format_verification, verify_export
from robustdistiller.testing.mini_corpus import generate_mini_corpus
from robustdistiller.recipe_files import recipe_path
from robustdistiller.report import run_report, spec_from_dict
from robustdistiller.report.__main__ import format_report
from robustdistiller.models.teacher import FrozenTeacher, save_random_teacher
from robustdistiller.testing.fixtures.librispeech_text import generate_librispeech_text
from robustdistiller.testing.fixtures.speech_commands import generate_speech_commands
from robustdistiller.testing.fixtures.voicebank import generate_voicebank

logger = logging.getLogger(__name__)


TEST_CONDITIONS = {
    "clean": {"condition": "clean"},
    "snr20": {"condition": "noise", "snr": 20},
    "snr10": {"condition": "noise", "snr": 10},
    "snr5": {"condition": "noise", "snr": 5},
    "snr0": {"condition": "noise", "snr": 0},
    "reverb": {"condition": "reverb"},
}

# Small overrides shared by both runs: everything else is the real recipe.
DEMO_OVERRIDES = {
    "train_splits": ["train-clean-100"],
    "valid_splits": ["dev-clean"],
    "max_crop_samples": 32000,
    "batch_size": 5,  # about what the earlier duration-based demo batches held (96 utterances, 2 s crops)
    "batches_per_bucket": 4,
    "num_workers": 2,
    "lr": 0.001,
    "log_interval": 10,
    "valid_dataloader_opts": {"batch_size": 8, "num_workers": 0},
}

DEMO_QUALITY_UTTERANCES = 6
"""Held-out utterances whose enhanced speech is scored (PESQ / STOI / SI-SNR) after each validation
and per test condition (the recipe's ``quality_utterances``, 50): a third of the demo's 18; the demo's
conclusions rest on the distillation losses, the scores only show that the head's monitoring runs."""


def demo_enhancement_overrides(teacher_config):
    """The RobustDistiller run's enhancement head and its monitoring, sized to the demo's student.

    The recipe's head is the authors' 3-layer BiLSTM of 256 units per direction (4.9M parameters on
    512 CNN channels; 3.9M on the demo teacher's 32, 34 times the demo's 115k-parameter student and
    most of its training time on CPU). The demo keeps the depth and the input (the student's CNN
    features, ``enhancement_input: cnn``) and scales the width to the student's:
    ``enhancement_input_size`` is the teacher's (and so the student's) CNN width,
    ``enhancement_hidden_size`` its hidden size (0.28M parameters for the demo's teacher).

    Arguments
    ---------
    teacher_config : transformers.PretrainedConfig
        The teacher's configuration (``conv_dim``, ``hidden_size``); the student copies its CNN and
        width.

    Returns
    -------
    dict
        Overrides of ``hparams/distill.yaml``: ``enhancement_input_size``, ``enhancement_hidden_size``,
        ``enhancement_layers`` and ``quality_utterances``.

    Example
    -------
    >>> from transformers import WavLMConfig
    >>> demo_enhancement_overrides(WavLMConfig(conv_dim=[32] * 7, hidden_size=64))
    {'enhancement_input_size': 32, 'enhancement_hidden_size': 64, 'enhancement_layers': 3, 'quality_utterances': 6}
    """
    return {
        "enhancement_input_size": teacher_config.conv_dim[-1],
        "enhancement_hidden_size": teacher_config.hidden_size,
        "enhancement_layers": 3,
        "quality_utterances": DEMO_QUALITY_UTTERANCES,
    }


def format_step_times(step_seconds):
    """The closing summary of the demo: wall time of each step and the total, one line each.

    Example
    -------
    >>> print(format_step_times({"corpus and teacher": 4.2, "training RobustDistiller": 95.0}))
    Time per step (wall clock):
      corpus and teacher           4 s
      training RobustDistiller    95 s
      total                       99 s (1.7 min)
    """
    width = max(len(name) for name in [*step_seconds, "total"])
    total = sum(step_seconds.values())
    lines = ["Time per step (wall clock):"]
    lines += [f"  {name:<{width}} {seconds:5.0f} s" for name, seconds in step_seconds.items()]
    lines.append(f"  {'total':<{width}} {total:5.0f} s ({total / 60:.1f} min)")
    return "\n".join(lines)


def run_recipe(hparams_file, overrides, log_file, description, total_steps):
    """Runs ``train.py`` on ``hparams_file`` in a subprocess, with a progress bar; raises if it fails.

    The run's own output goes to ``log_file``; the console shows one bar per run, advanced from the
    ``step N`` lines the recipe logs every ``log_interval`` optimizer steps. The run uses one thread
    unless ``OMP_NUM_THREADS`` is set: the demo's models are tiny, its data loader workers use the other
    cores, and on a busy 2-core machine a RobustDistiller step took about 11 s with two threads against
    0.6 s with one (docs/demo.md, "Time").
    """
    command = [sys.executable, recipe_path("train.py"), hparams_file]
    command += [f"--{key}={json.dumps(value)}" for key, value in overrides.items()]
    logger.info("Running %s (log: %s)", " ".join(command[1:3]), log_file)
    start = time.time()
    with open(log_file, "w", encoding="utf-8") as log, tqdm(total=total_steps, desc=description, unit="step") as bar:
        # The run writes where its overrides say (absolute paths): the folder of the log is only its cwd.
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=os.path.dirname(os.path.abspath(log_file)),
            env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")),
        )
        while process.poll() is None:
            time.sleep(1.0)
            bar.update(max(0, last_logged_step(log_file) - bar.n))
        bar.update(max(0, last_logged_step(log_file) - bar.n))
    if process.returncode != 0:
        raise RuntimeError(f"{hparams_file} failed (exit {process.returncode}); see {log_file}")
    return time.time() - start


def last_logged_step(log_file):
    """The last optimizer step a recipe log reports (``... step 120 lr ...``), 0 if none yet."""
    with open(log_file, encoding="utf-8", errors="replace") as fin:
        steps = re.findall(r"\bstep (\d+) lr ", fin.read())
    return int(steps[-1]) if steps else 0


def compare(robust, baseline):
    """One plain sentence: which student has the lower held-out loss, and by how much.

    Example
    -------
    >>> compare(0.9, 1.0)
    'RobustDistiller 10.0 % lower loss than DistilHuBERT (0.900 vs 1.000)'
    >>> compare(1.2, 1.0)
    'DistilHuBERT 16.7 % lower loss than RobustDistiller (1.000 vs 1.200)'
    """
    if robust <= baseline:
        return f"RobustDistiller {100 * (baseline - robust) / baseline:.1f} % lower loss than DistilHuBERT ({robust:.3f} vs {baseline:.3f})"
    return f"DistilHuBERT {100 * (robust - baseline) / robust:.1f} % lower loss than RobustDistiller ({baseline:.3f} vs {robust:.3f})"


def format_table(results, conditions):
    """Markdown table: one row per student, one column per condition."""
    header = "| student | " + " | ".join(conditions) + " |"
    rule = "|---|" + "---|" * len(conditions)
    rows = [header, rule]
    for student_name, losses in results.items():
        cells = " | ".join(f"{losses[name]['distillation_loss']:.3f}" for name in conditions)
        rows.append(f"| {student_name} | {cells} |")
    return "\n".join(rows)


def plot_results(results, conditions, path):
    """Grouped bar chart of held-out distillation loss per condition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(results)
    for index, (student_name, losses) in enumerate(results.items()):
        positions = [position + index * width for position in range(len(conditions))]
        axis.bar(positions, [losses[name]["distillation_loss"] for name in conditions], width, label=student_name)
    axis.set_xticks([position + width * (len(results) - 1) / 2 for position in range(len(conditions))])
    axis.set_xticklabels(conditions)
    axis.set_ylabel("held-out distillation loss (lower is better)")
    axis.set_title("Student hears the condition, teacher hears clean speech (mini corpus, random teacher)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ------------------------------------------------------------------ the cross-task report ---
REPORT_CONDITIONS = ["clean", "snr5", "reverb"]


def _speech_commands_data(folder, seed):
    return generate_speech_commands(folder, seed=seed)  # {data_folder, test_folder}


def _librispeech_text_data(folder, seed):
    fixture = generate_librispeech_text(folder, seed=seed)
    return {
        "data_folder": fixture["data_folder"],
        "lexicon_files": [fixture["lexicon_file"]],
        "lexicon_fallback": "cmudict",
    }


def _voicebank_data(folder, seed):
    return {"data_folder": generate_voicebank(folder, seed=seed)}


# Task -> (fixture writer returning the recipe's data options, small overrides). Only sizes, steps and
# the learning rate are shrunk: everything else is the recipe's YAML.
DEMO_REPORT_TASKS = {
    "KS": (
        _speech_commands_data,
        {
            "lr": 0.01,
            "number_of_epochs": 3,
            "train_dataloader_opts": {"batch_size": 8, "drop_last": True, "num_workers": 0},
            "valid_dataloader_opts": {"batch_size": 16, "num_workers": 0},
        },
    ),
    "PR": (
        _librispeech_text_data,
        {
            "lr": 0.01,
            "number_of_epochs": 8,
            "grad_accumulation_factor": 1,
            "train_dataloader_opts": {"batch_size": 4, "shuffle": True, "num_workers": 0},
            "valid_dataloader_opts": {"batch_size": 8, "num_workers": 0},
        },
    ),
    # SE (VoiceBank-DEMAND fixture): the recipe is new; sizes as for PR, not yet timed in the demo.
    "SE": (
        _voicebank_data,
        {
            "number_of_epochs": 2,
            "batch_size": 4,
            "lr": 0.001,
        },
    ),
}


def demo_report_spec(output, corpus, upstreams, tasks, seed=0):
    """The report spec of the demo: ``upstreams`` (name -> source) x ``tasks`` on generated fixtures.

    Fixtures go to ``<output>/fixtures``, the pairs to ``<output>/report_runs`` (the report itself to
    ``<output>/report_runs/report``).
    """
    unknown = [task for task in tasks if task not in DEMO_REPORT_TASKS]
    if unknown:
        raise ValueError(
            f"--report-tasks: no demo fixture for {unknown}; the demo knows {', '.join(DEMO_REPORT_TASKS)}"
        )
    data, overrides = {}, {}
    for task in tasks:
        make_data, task_overrides = DEMO_REPORT_TASKS[task]
        data[task] = make_data(os.path.join(output, "fixtures", task), seed)
        overrides[task] = dict(task_overrides)
    return {
        "output_root": os.path.join(output, "report_runs"),
        "mode": "run",
        "upstreams": dict(upstreams),
        "tasks": list(tasks),
        "conditions": list(REPORT_CONDITIONS),
        "corruption": {"test_musan_folder": corpus["musan"], "test_rir_folder": corpus["rirs"]},
        "data": data,
        "overrides": overrides,
    }


def run_demo_report(output, corpus, upstreams, tasks, seed=0):
    """Runs the demo's report (pairs already done are skipped), prints its tables; returns the report."""
    import yaml

    content = demo_report_spec(output, corpus, upstreams, tasks, seed)
    spec_path = os.path.join(output, "report_spec.yaml")
    with open(spec_path, "w", encoding="utf-8") as fout:
        yaml.safe_dump(content, fout, sort_keys=False)
    print(
        f"\nRobustness report: {len(upstreams)} upstreams x {len(tasks)} tasks ({', '.join(tasks)}) under "
        f"{', '.join(REPORT_CONDITIONS)} (spec {spec_path}; "
        f"python -m robustdistiller.report {spec_path} reruns or extends it)"
    )
    start = time.time()
    environment = {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "HF_HUB_OFFLINE")}
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny heads: one thread per recipe run is fastest
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        code, report = run_report(spec_from_dict(content, spec_path))
    finally:
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    print("\n" + format_report(report))
    folder = os.path.join(content["output_root"], "report")
    print(
        f"\nReport ({time.time() - start:.0f} s): {folder}/report.md; plots "
        + ", ".join(sorted(name for name in os.listdir(folder) if name.endswith(".png")))
    )
    if code != 0:
        print("Some pairs failed: their logs are named in the tables.")
    return report


def main(argv=None):
    """Entry point of ``make demo``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="demo_output", help="folder for everything the demo writes")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps of each student")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus, teacher and training")
    parser.add_argument(
        "--report-tasks",
        default="KS,PR",
        help=f"tasks of the closing report, comma-separated (of {', '.join(DEMO_REPORT_TASKS)}; empty: no report)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="only the report, on the students an earlier run wrote to --output"
    )
    args = parser.parse_args(argv)
    report_tasks = [task.strip() for task in args.report_tasks.split(",") if task.strip()]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    output = os.path.abspath(args.output)
    os.makedirs(output, exist_ok=True)

    step_seconds = {}
    start = time.time()
    corpus = generate_mini_corpus(os.path.join(output, "corpus"), seed=args.seed)
    teacher_folder = os.path.join(output, "teacher_random_wavlm")
    save_random_teacher(teacher_folder, model_type="wavlm", tiny=True, seed=args.seed)
    report_upstreams = {
        "teacher": teacher_folder,
        "RobustDistiller": os.path.join(output, "robustdistiller"),
        "DistilHuBERT": os.path.join(output, "distilhubert"),
    }
    if args.report_only:
        step_seconds["corpus and teacher"] = time.time() - start
        start = time.time()
        report = run_demo_report(output, corpus, report_upstreams, report_tasks, args.seed)
        step_seconds["cross-task report"] = time.time() - start
        print("\n" + format_step_times(step_seconds))
        return report
    print(
        "NOTE: the teacher is a small WavLM with RANDOM weights built here (no pretrained weights can be "
        "downloaded on this machine). The demo shows the mechanics and the robustness effect of the "
        "recipe, not the paper's numbers."
    )

    common = dict(DEMO_OVERRIDES)
    common.update(
        {
            "seed": args.seed,
            "data_folder": corpus["librispeech"],
            "teacher_source": teacher_folder,
            "number_of_steps": args.steps,
        }
    )
    runs = {
        "RobustDistiller": (
            "hparams/distill.yaml",
            {
                "musan_folder": corpus["musan"],
                "urbansound_folder": corpus.get("urbansound"),
                "rir_folder": corpus["rirs"],
                "rirs_noises_subsets": ["simulated", "real"],
                "output_folder": os.path.join(output, "robustdistiller"),
            },
        ),
        "DistilHuBERT": ("hparams/distilhubert.yaml", {"output_folder": os.path.join(output, "distilhubert")}),
    }
    teacher = FrozenTeacher(teacher_folder)
    runs["RobustDistiller"][1].update(demo_enhancement_overrides(teacher.config))
    step_seconds["corpus and teacher"] = time.time() - start

    durations = {}
    for name, (hparams_file, overrides) in runs.items():
        durations[name] = run_recipe(
            recipe_path(hparams_file),
            {**common, **overrides},
            os.path.join(output, f"{name}.log"),
            description=f"training {name}",
            total_steps=args.steps,
        )
        print(f"{name}: trained {args.steps} steps in {durations[name]:.0f} s")
        step_seconds[f"training {name}"] = durations[name]

    start = time.time()

    # Both students are tested with the RobustDistiller run's noise and RIR lists.
    with open(recipe_path(runs["RobustDistiller"][0]), encoding="utf-8") as fin:
        robust_hparams = load_hyperpyyaml(fin, {**common, **runs["RobustDistiller"][1]})
    test_corruptor = robust_hparams["test_corruptor"]
    results = {}
    for name, (_, overrides) in runs.items():
        student, _ = load_student(overrides["output_folder"])  # the lowest validation loss
        results[name] = evaluate_conditions(
            student,
            teacher,
            robust_hparams["valid_csv"],
            test_corruptor,
            TEST_CONDITIONS,
            batch_size=8,
            max_crop_samples=common["max_crop_samples"],
        )
    conditions = list(TEST_CONDITIONS)
    table = format_table(results, conditions)
    print("\nHeld-out distillation loss (L1 + log-sigmoid cosine, mean of layers 4/8/12; lower is better)")
    print(table)
    for name in conditions:
        robust, baseline = (results[student][name]["distillation_loss"] for student in runs)
        print(f"  {name}: {compare(robust, baseline)}")
    step_seconds["held-out evaluation"] = time.time() - start
    with open(os.path.join(output, "robustness.json"), "w", encoding="utf-8") as fout:
        json.dump({"results": results, "train_seconds": durations, "steps": args.steps}, fout, indent=2)
    with open(os.path.join(output, "robustness.md"), "w", encoding="utf-8") as fout:
        fout.write(table + "\n")
    plot_results(results, conditions, os.path.join(output, "robustness.png"))
    print(f"\nWrote {output}/robustness.png, robustness.json and robustness.md")

    start = time.time()

    # Use the distilled model anywhere: export it, reload it six ways in fresh offline processes.
    exported = os.path.join(output, "exported_robustdistiller")
    export_student(runs["RobustDistiller"][1]["output_folder"], exported, s3prl=True, overwrite=True)
    student, _ = load_student(runs["RobustDistiller"][1]["output_folder"])
    print(f"\nExported the RobustDistiller student to {exported}; features of each loader vs the trained module:")
    print(format_verification(verify_export(exported, student)))
    step_seconds["export and reload check"] = time.time() - start

    # The students (and the teacher) as frozen upstreams of SUPERB recipes, clean and corrupted.
    if report_tasks:
        start = time.time()
        run_demo_report(output, corpus, report_upstreams, report_tasks, args.seed)
        step_seconds["cross-task report"] = time.time() - start
    print("\n" + format_step_times(step_seconds))
    with open(os.path.join(output, "step_seconds.json"), "w", encoding="utf-8") as fout:
        json.dump(step_seconds, fout, indent=2)
    return results


if __name__ == "__main__":
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    main()
