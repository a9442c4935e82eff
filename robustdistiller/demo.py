"""The paper's central claim in miniature, with no data and no downloads: ``make demo``.

1. Writes a mini corpus in the real layouts (LibriSpeech, MUSAN, RIRS_NOISES) with
   :mod:`robustdistiller.mini_corpus`.
2. Builds a small WavLM teacher with **random weights** (no pretrained weights can be fetched here)
   and saves it as a local Hugging Face folder.
3. Runs the real recipe twice, ``train.py hparams/distill.yaml`` (RobustDistiller) and
   ``train.py hparams/distilhubert.yaml`` (DistilHuBERT-style baseline, same teacher for a fair
   comparison), with small overrides (steps, batch, crop length) only.
4. Evaluates both students on the held-out speakers: distillation loss against the teacher's clean
   targets, with the student hearing clean speech, noise at 0/5/10/20 dB, or reverberation.
   Prints the table and writes ``robustness.png`` and ``robustness.json``.
5. Exports the RobustDistiller student (SpeechBrain + transformers + s3prl formats) to
   ``exported_robustdistiller/`` and reloads it in fresh offline processes four ways
   (:func:`robustdistiller.export.verify_export`), printing how far each loader's features are from
   the trained module's.

Run: ``python -m robustdistiller.demo --output demo_output``.
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

from robustdistiller.evaluation import evaluate_conditions
from robustdistiller.export import export_student, format_verification, load_student, verify_export
from robustdistiller.mini_corpus import generate_mini_corpus
from robustdistiller.teacher import FrozenTeacher, save_random_teacher

logger = logging.getLogger(__name__)

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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


def run_recipe(hparams_file, overrides, log_file, description, total_steps):
    """Runs ``train.py`` on ``hparams_file`` in a subprocess, with a progress bar; raises if it fails.

    The run's own output goes to ``log_file``; the console shows one bar per run, advanced from the
    ``step N`` lines the recipe logs every ``log_interval`` optimizer steps.
    """
    command = [sys.executable, os.path.join(REPOSITORY_ROOT, "train.py"), hparams_file]
    command += [f"--{key}={json.dumps(value)}" for key, value in overrides.items()]
    logger.info("Running %s (log: %s)", " ".join(command[1:3]), log_file)
    start = time.time()
    with open(log_file, "w", encoding="utf-8") as log, tqdm(total=total_steps, desc=description, unit="step") as bar:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPOSITORY_ROOT)
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


def main(argv=None):
    """Entry point of ``make demo``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="demo_output", help="folder for everything the demo writes")
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps of each student")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus, teacher and training")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    output = os.path.abspath(args.output)
    os.makedirs(output, exist_ok=True)

    corpus = generate_mini_corpus(os.path.join(output, "corpus"), seed=args.seed)
    teacher_folder = os.path.join(output, "teacher_random_wavlm")
    save_random_teacher(teacher_folder, model_type="wavlm", tiny=True, seed=args.seed)
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
                "enhancement_input_size": None,  # filled below from the teacher's CNN width
                "output_folder": os.path.join(output, "robustdistiller"),
            },
        ),
        "DistilHuBERT": ("hparams/distilhubert.yaml", {"output_folder": os.path.join(output, "distilhubert")}),
    }
    teacher = FrozenTeacher(teacher_folder)
    runs["RobustDistiller"][1]["enhancement_input_size"] = teacher.config.conv_dim[-1]

    durations = {}
    for name, (hparams_file, overrides) in runs.items():
        durations[name] = run_recipe(
            os.path.join(REPOSITORY_ROOT, hparams_file),
            {**common, **overrides},
            os.path.join(output, f"{name}.log"),
            description=f"training {name}",
            total_steps=args.steps,
        )
        print(f"{name}: trained {args.steps} steps in {durations[name]:.0f} s")

    # Both students are tested with the RobustDistiller run's noise and RIR lists.
    with open(os.path.join(REPOSITORY_ROOT, runs["RobustDistiller"][0]), encoding="utf-8") as fin:
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
    with open(os.path.join(output, "robustness.json"), "w", encoding="utf-8") as fout:
        json.dump({"results": results, "train_seconds": durations, "steps": args.steps}, fout, indent=2)
    with open(os.path.join(output, "robustness.md"), "w", encoding="utf-8") as fout:
        fout.write(table + "\n")
    plot_results(results, conditions, os.path.join(output, "robustness.png"))
    print(f"\nWrote {output}/robustness.png, robustness.json and robustness.md")

    # Use the distilled model anywhere: export it, reload it four ways in fresh offline processes.
    exported = os.path.join(output, "exported_robustdistiller")
    export_student(runs["RobustDistiller"][1]["output_folder"], exported, s3prl=True, overwrite=True)
    student, _ = load_student(runs["RobustDistiller"][1]["output_folder"])
    print(f"\nExported the RobustDistiller student to {exported}; features of each loader vs the trained module:")
    print(format_verification(verify_export(exported, student)))
    return results


if __name__ == "__main__":
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    main()
