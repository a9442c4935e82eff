#!/usr/bin/env python3
"""Side-by-side cost of a RobustDistiller step, a DistilHuBERT step and the corruption pipeline.

In one run, at the *full-size* default architecture (WavLM Base+ shaped teacher with random weights,
23.49M student, 4.86M enhancement head), this script:

1. times ``DistillationBrain.fit_batch`` of ``hparams/distill.yaml`` (teacher forward on clean,
   student forward/backward on corrupted, enhancement head, optimizer step) against the same for
   ``hparams/distilhubert.yaml`` (no enhancement head) on the same batch, interleaved, and prints
   the ratio of the medians;
2. measures the corruption pipeline's throughput (seconds of audio corrupted per second, one process,
   with the recipe's own Corruptor, noise files read from disk) and compares it to the audio a
   training step consumes per second, i.e. how many DataLoader workers keep the step fed.

Run: ``python benchmarks/benchmark_step.py [--utterances 4 --seconds 4 --repeats 5 --device cpu]``.
The paper's batch is 24 utterances of up to 15.6 s (``--utterances 24 --seconds 15.6`` on a GPU).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy
import soundfile
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPOSITORY_ROOT)

from robustdistiller.brain import DistillationBrain  # noqa: E402
from robustdistiller.teacher import save_random_teacher  # noqa: E402

SAMPLE_RATE = 16000


def write_pool(folder, generator, num_noises=8, num_rirs=8):
    """Writes noise and RIR wav files with their SpeechBrain CSVs; returns the two CSV paths."""
    rows = {"noise": [], "rirs": []}
    for index in range(num_noises):
        noise = generator.standard_normal(SAMPLE_RATE * 10).cumsum() * 0.01
        noise = (noise - noise.mean()) / (numpy.abs(noise).max() + 1e-9) * 0.5
        path = os.path.join(folder, f"noise{index}.wav")
        soundfile.write(path, noise.astype("float32"), SAMPLE_RATE)
        rows["noise"].append((f"noise{index}", 10.0, path))
    for index in range(num_rirs):
        length = int(SAMPLE_RATE * 0.5)
        decay = numpy.exp(-numpy.arange(length) / (SAMPLE_RATE * 0.06))
        rir = generator.standard_normal(length) * decay * 0.3
        rir[0] = 1.0
        path = os.path.join(folder, f"rir{index}.wav")
        soundfile.write(path, rir.astype("float32"), SAMPLE_RATE)
        rows["rirs"].append((f"rir{index}", 0.5, path))
    csv_files = {}
    for name, entries in rows.items():
        csv_files[name] = os.path.join(folder, f"{name}.csv")
        with open(csv_files[name], "w", encoding="utf-8") as fout:
            fout.write("ID,duration,wav,wav_format,wav_opts\n")
            for identifier, duration, path in entries:
                fout.write(f"{identifier},{duration},{path},wav,\n")
    return csv_files["noise"], csv_files["rirs"]


def speech_like(generator, num_samples):
    """Harmonic, amplitude-modulated signal: a stand-in utterance (content does not change cost)."""
    time_axis = numpy.arange(num_samples) / SAMPLE_RATE
    pitch = 120 + 30 * numpy.sin(2 * numpy.pi * 0.5 * time_axis)
    phase = 2 * numpy.pi * numpy.cumsum(pitch) / SAMPLE_RATE
    signal = sum(numpy.sin(harmonic * phase) / harmonic for harmonic in range(1, 10))
    envelope = 0.5 + 0.5 * numpy.sin(2 * numpy.pi * 3 * time_axis + generator.uniform(0, 6))
    return torch.tensor(0.1 * signal * envelope, dtype=torch.float32)


def build_brain(hparams_file, overrides, device):
    """Loads a recipe YAML and returns its Brain, ready for ``fit_batch``."""
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    hparams["student"].init_from_teacher(hparams["teacher"].model)
    brain = DistillationBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts={"device": device},
        checkpointer=None,
    )
    brain.on_fit_start()
    brain.on_stage_start(sb.Stage.TRAIN, epoch=1)
    brain.modules.train()
    return brain, hparams


def time_step(brain, batch, device):
    """Seconds of one ``fit_batch``."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    brain.fit_batch(batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=4, help="utterances per batch")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per utterance")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per recipe (after one warm-up)")
    parser.add_argument("--corruption-items", type=int, default=40, help="utterances for the throughput test")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = parser.parse_args()
    generator = numpy.random.default_rng(0)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as workspace:
        noise_csv, rir_csv = write_pool(workspace, generator)
        teacher_folder = save_random_teacher(os.path.join(workspace, "teacher"), model_type="wavlm", tiny=False)
        common = {
            "output_folder": os.path.join(workspace, "out"),
            "data_folder": workspace,
            "teacher_source": teacher_folder,
            "precision": args.precision,
        }
        robust_brain, robust_hparams = build_brain(
            os.path.join(REPOSITORY_ROOT, "hparams", "distill.yaml"),
            {**common, "musan_folder": workspace, "rir_folder": workspace, "noise_csv": noise_csv, "rir_csv": rir_csv},
            args.device,
        )
        baseline_brain, _ = build_brain(os.path.join(REPOSITORY_ROOT, "hparams", "distilhubert.yaml"), common, args.device)

        # One batch, corrupted by the recipe's own corruptor, shared by both recipes.
        num_samples = int(args.seconds * SAMPLE_RATE)
        corruptor = robust_hparams["train_corruptor"]
        items = []
        for index in range(args.utterances):
            clean = speech_like(generator, num_samples)
            corrupted = corruptor(clean, f"utt{index}", condition="noise_reverb")
            items.append(
                {"id": f"utt{index}", "clean_sig": clean, "noisy_sig": corrupted.noisy, "reference_sig": corrupted.reference}
            )
        batch = sb.dataio.batch.PaddedBatch(items)

        timings = {"RobustDistiller": [], "DistilHuBERT": []}
        brains = {"RobustDistiller": robust_brain, "DistilHuBERT": baseline_brain}
        for name, brain in brains.items():
            time_step(brain, batch, args.device)  # warm-up
        for _ in range(args.repeats):
            for name, brain in brains.items():
                timings[name].append(time_step(brain, batch, args.device))
        medians = {name: statistics.median(values) for name, values in timings.items()}

        # Corruption throughput: single process, the training distribution of conditions.
        utterances = [speech_like(generator, num_samples) for _ in range(8)]
        start = time.perf_counter()
        for index in range(args.corruption_items):
            corruptor(utterances[index % len(utterances)], f"throughput{index}")
        corruption_seconds = time.perf_counter() - start
        corrupted_audio_per_second = args.corruption_items * args.seconds / corruption_seconds
        consumed_audio_per_second = args.utterances * args.seconds / medians["RobustDistiller"]

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {device_name}, precision {args.precision}; batch {args.utterances} x {args.seconds:.1f} s")
    for name, median in medians.items():
        print(f"{name:16s} step: median {median * 1000:8.1f} ms over {args.repeats} steps")
    print(f"step-time ratio RobustDistiller / DistilHuBERT: {medians['RobustDistiller'] / medians['DistilHuBERT']:.3f}")
    print(f"corruption pipeline: {corrupted_audio_per_second:.1f} s of audio per second (one process)")
    print(f"training step consumes: {consumed_audio_per_second:.1f} s of audio per second")
    ratio = corrupted_audio_per_second / consumed_audio_per_second
    print(f"one corruption worker supplies {ratio:.2f}x the step's consumption "
          f"(workers needed: {max(1, int(numpy.ceil(1 / ratio)))})")


if __name__ == "__main__":
    main()
