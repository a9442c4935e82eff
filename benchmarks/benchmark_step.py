#!/usr/bin/env python3
"""Side-by-side costs of the distillation recipe at full size, in one run.

At the *full-size* default architecture (WavLM Base+ shaped teacher with random weights, 23.49M
student, 4.86M enhancement head), this script measures, each comparison side by side:

1. ``DistillationBrain.fit_batch`` of ``hparams/distill.yaml`` against ``hparams/distilhubert.yaml``
   on the same batch, interleaved (ratio of the medians), and the audio hours a step processes per
   hour (on a GPU: hours of audio per GPU-hour) and its peak memory on a GPU;
2. student vs teacher feature extraction (inference, no gradient) on the same batch;
3. the corruption pipeline's throughput against what a step consumes (DataLoader workers needed);
4. crops per step and padding fraction of ``batching: fixed`` against ``dynamic`` (and the old
   default, 20 warped buckets) on a duration list shaped like LibriSpeech 960 h;
5. peak memory of a full-size training step with the per-utterance GroupNorm against the plain HF
   GroupNorm (subprocesses, ``benchmarks/memory_probe.py``);
6. teacher targets and forward time in bf16 (and fp16 on CUDA) against fp32
   (``benchmarks/teacher_precision.py``);
7. on CUDA, host-device synchronisations of a training step under
   ``torch.cuda.set_sync_debug_mode("warn")``.

Run: ``python benchmarks/benchmark_step.py [--utterances 4 --seconds 4 --repeats 5 --device cpu]``.
The paper's batch is 24 crops of up to 15.6 s: ``--device cuda --utterances 24 --seconds 15.6``
(run it with ``--precision bf16`` and ``--precision fp32``).
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
sys.path.insert(0, os.path.join(REPOSITORY_ROOT, "benchmarks"))

from memory_probe import measure_peak_memory  # noqa: E402
from teacher_precision import format_report, harmonic_speech_like, measure_teacher_precision  # noqa: E402

from robustdistiller.data.batching import (  # noqa: E402
    FixedBatchSampler,
    cnn_frames,
    crop_duration,
    librispeech_like_durations,
    padding_statistics,
)
from robustdistiller.distill.brain import DistillationBrain  # noqa: E402
from robustdistiller.models.teacher import save_random_teacher  # noqa: E402

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
    """A stand-in utterance (content does not change cost), as a tensor."""
    return torch.from_numpy(harmonic_speech_like(generator, num_samples))


def build_brain(hparams_file, overrides, device):
    """Loads a recipe YAML and returns its Brain, ready for ``fit_batch``."""
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    hparams["student"].init_from_teacher(
        hparams["teacher"].model, copy_encoder_layer_norm=hparams["copy_encoder_layer_norm"]
    )
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


def synchronise(device):
    """Waits for the device (timing)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_call(function, device):
    """Seconds of one call of ``function``."""
    synchronise(device)
    start = time.perf_counter()
    function()
    synchronise(device)
    return time.perf_counter() - start


def batching_report(num_utterances=100000, max_crop_samples=250000, sample_rate=16000):
    """Crops per step and padding of the batching modes on a LibriSpeech-960h-shaped list."""
    crops = [
        crop_duration(float(duration), max_crop_samples, sample_rate)
        for duration in librispeech_like_durations(num_utterances)
    ]
    frames = [cnn_frames(round(crop * sample_rate)) for crop in crops]
    identifiers = list(range(len(crops)))
    samplers = {
        "fixed (24 crops, 50 batches per bucket)": FixedBatchSampler(crops, batch_size=24, seed=1),
        "dynamic (375 s, boundaries 2..15.6 s)": sb.dataio.sampler.DynamicBatchSampler(
            identifiers,
            max_batch_length=375,
            bucket_boundaries=[2, 4, 6, 8, 10, 12, 14, 15.625],
            lengths_list=crops,
            max_batch_ex=24,
            seed=1,
        ),
        "old default (375 s, 20 warped buckets)": sb.dataio.sampler.DynamicBatchSampler(
            identifiers,
            max_batch_length=375,
            num_buckets=20,
            lengths_list=crops,
            max_batch_ex=24,
            seed=1,
        ),
    }
    return {name: padding_statistics(list(sampler), frames) for name, sampler in samplers.items()}


def count_sync_warnings(brain, batch):
    """Synchronising calls of one CUDA training step (``torch.cuda.set_sync_debug_mode("warn")``)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            brain.fit_batch(batch)
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    messages = [str(warning.message) for warning in caught if "synchroniz" in str(warning.message).lower()]
    return len(messages), messages[:5]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=4, help="utterances per batch")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per utterance")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per recipe (after one warm-up)")
    parser.add_argument("--corruption-items", type=int, default=40, help="utterances for the throughput test")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--memory-utterances", type=int, default=4, help="batch of the peak-memory probe")
    parser.add_argument("--memory-seconds", type=float, default=4.0)
    parser.add_argument(
        "--teacher-precision-seconds",
        type=float,
        default=2.0,
        help="utterance length of the teacher-precision comparison (bf16 is slow on CPUs without bf16 units)",
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["memory", "teacher_precision", "batching"],
        help="sections to leave out",
    )
    args = parser.parse_args()
    generator = numpy.random.default_rng(0)
    torch.manual_seed(0)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {device_name}, precision {args.precision}; batch {args.utterances} x {args.seconds:.1f} s")

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
            {
                **common,
                "musan_folder": workspace,
                "urbansound_folder": None,
                "rir_folder": workspace,
                "noise_csv": noise_csv,
                "rir_csv": rir_csv,
            },
            args.device,
        )
        baseline_brain, _ = build_brain(
            os.path.join(REPOSITORY_ROOT, "hparams", "distilhubert.yaml"), common, args.device
        )

        # One batch, corrupted by the recipe's own corruptor, shared by both recipes.
        num_samples = int(args.seconds * SAMPLE_RATE)
        corruptor = robust_hparams["train_corruptor"]
        items = []
        for index in range(args.utterances):
            clean = speech_like(generator, num_samples)
            corrupted = corruptor(clean, f"utt{index}", condition="noise_reverb")
            items.append(
                {
                    "id": f"utt{index}",
                    "clean_sig": clean,
                    "noisy_sig": corrupted.noisy,
                    "reference_sig": corrupted.reference,
                }
            )
        batch = sb.dataio.batch.PaddedBatch(items)

        # 1. Training steps, interleaved.
        brains = {"RobustDistiller": robust_brain, "DistilHuBERT": baseline_brain}
        timings = {name: [] for name in brains}
        peak_memory = {}
        for name, brain in brains.items():
            time_call(lambda: brain.fit_batch(batch), args.device)  # warm-up
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
                time_call(lambda: brain.fit_batch(batch), args.device)
                peak_memory[name] = torch.cuda.max_memory_allocated()
        for _ in range(args.repeats):
            for name, brain in brains.items():
                timings[name].append(time_call(lambda: brain.fit_batch(batch), args.device))
        medians = {name: statistics.median(values) for name, values in timings.items()}
        audio_seconds = args.utterances * args.seconds
        for name, median in medians.items():
            line = (
                f"{name:16s} step: median {median * 1000:8.1f} ms over {args.repeats} steps; "
                f"{audio_seconds / median:.1f} h of audio per device-hour"
            )
            if name in peak_memory:
                line += f"; peak memory {peak_memory[name] / 2**30:.2f} GiB"
            print(line)
        print(
            f"step-time ratio RobustDistiller / DistilHuBERT: {medians['RobustDistiller'] / medians['DistilHuBERT']:.3f}"
        )

        # 2. Feature extraction (inference): student vs teacher on the same batch.
        student, teacher = robust_hparams["student"], robust_hparams["teacher"]
        wavs, wav_lens = batch.clean_sig.data.to(args.device), batch.clean_sig.lengths
        extraction = {"teacher": [], "student": []}
        student.eval()
        with torch.no_grad():
            for _ in range(args.repeats + 1):
                extraction["teacher"].append(time_call(lambda: teacher(wavs, wav_lens), args.device))
                extraction["student"].append(time_call(lambda: student(wavs, wav_lens), args.device))
        student.train()
        extraction = {name: statistics.median(values[1:]) for name, values in extraction.items()}
        print(
            f"feature extraction (inference): teacher {extraction['teacher'] * 1000:.1f} ms, student "
            f"{extraction['student'] * 1000:.1f} ms: student {extraction['teacher'] / extraction['student']:.2f}x faster"
        )

        # 3. Corruption throughput: single process, the training distribution of conditions.
        utterances = [speech_like(generator, num_samples) for _ in range(8)]
        start = time.perf_counter()
        for index in range(args.corruption_items):
            corruptor(utterances[index % len(utterances)], f"throughput{index}")
        corruption_seconds = time.perf_counter() - start
        corrupted_audio_per_second = args.corruption_items * args.seconds / corruption_seconds
        consumed_audio_per_second = audio_seconds / medians["RobustDistiller"]
        print(f"corruption pipeline: {corrupted_audio_per_second:.1f} s of audio per second (one process)")
        print(f"training step consumes: {consumed_audio_per_second:.1f} s of audio per second")
        ratio = corrupted_audio_per_second / consumed_audio_per_second
        print(
            f"one corruption worker supplies {ratio:.2f}x the step's consumption "
            f"(workers needed: {max(1, int(numpy.ceil(1 / ratio)))})"
        )

        # 7. Synchronisations of a step on CUDA.
        if args.device.startswith("cuda"):
            count, examples = count_sync_warnings(robust_brain, batch)
            print(f"host-device synchronisations in one RobustDistiller step: {count}")
            for message in examples:
                print(f"  {message.splitlines()[0]}")

    # 4. Batching on a LibriSpeech-960h-shaped duration list.
    if "batching" not in args.skip:
        print("\nbatching on 100,000 LibriSpeech-960h-shaped durations (crops of at most 15.6 s):")
        for name, stats in batching_report().items():
            print(
                f"  {name:42s} {stats['mean_batch_size']:5.2f} crops per step, "
                f"{100 * stats['padding_fraction']:5.1f} % of computed frames are padding"
            )

    # 5. Peak memory: per-utterance GroupNorm vs the plain HF GroupNorm (one subprocess each).
    if "memory" not in args.skip:
        memory = {
            norm: measure_peak_memory(norm, args.memory_utterances, args.memory_seconds, args.device, args.precision)
            for norm in ("per_utterance", "native")
        }
        print(
            f"\npeak memory of a full-size training step ({args.memory_utterances} x {args.memory_seconds:.1f} s): "
            f"per-utterance GroupNorm {memory['per_utterance']['peak_bytes'] / 2**20:.0f} MiB, plain HF "
            f"{memory['native']['peak_bytes'] / 2**20:.0f} MiB, ratio "
            f"{memory['per_utterance']['peak_bytes'] / memory['native']['peak_bytes']:.3f}"
        )

    # 6. Teacher precision.
    if "teacher_precision" not in args.skip:
        precisions = ("bf16", "fp16") if args.device.startswith("cuda") else ("bf16",)
        result = measure_teacher_precision(
            device=args.device,
            utterances=args.utterances,
            seconds=args.teacher_precision_seconds,
            repeats=max(2, args.repeats // 2),
            precisions=precisions,
        )
        print("\nteacher precision (random-weight WavLM Base+ shape):")
        print(format_report(result))


if __name__ == "__main__":
    main()
