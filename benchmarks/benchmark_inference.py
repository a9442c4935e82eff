"""CPU inference: the teacher (PyTorch fp32) against the student in PyTorch fp32, ONNX fp32 and ONNX int8.

Run ``python benchmarks/benchmark_inference.py [--threads 2] [--repeats 2] [--output results/benchmark_inference]``.

One run builds full-size architectures with random weights locally (no downloads; speed, memory and
size do not depend on the weight values): the WavLM Base+ teacher (``save_random_teacher``, 94.4M
parameters) and the 2-layer DistilHuBERT student (``build_student_config`` on the teacher's config,
per-utterance CNN normalisation as our recipe trains it), exports the student to ONNX (fp32 and int8,
:mod:`robustdistiller.export.onnx`), and times every model on the same audio: 1, 4 and 16 utterances of
4 s (one padded batch) and one of 30 s. Each (model, workload) runs in a fresh process, so its peak
resident memory is its own: ``peak MB`` is the process's peak RSS, ``model MB`` the RSS after loading
the model (before the first batch), both including the Python interpreter and libraries (the ONNX
workers never import torch). Times are the
median of ``--repeats`` runs after a warm-up run on 1 s of audio; ``RTF`` is processing time / audio duration;
``speed-up`` is the teacher's time divided by the model's. Sizes on disk: the teacher's
``model.safetensors``, the student's ``encoder.ckpt`` + head files as the export writes them (PyTorch), and
the ONNX files. Writes ``benchmark.json`` and ``benchmark.md`` to ``--output`` and prints the table.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS = {"1 x 4 s": (1, 4.0), "4 x 4 s": (4, 4.0), "16 x 4 s": (16, 4.0), "1 x 30 s": (1, 30.0)}
MODELS = ("teacher (PyTorch fp32)", "student (PyTorch fp32)", "student (ONNX fp32)", "student (ONNX int8)")
SAMPLE_RATE = 16000


def _memory_mb(field):
    """``VmRSS`` (now) or ``VmHWM`` (peak since exec; ``ru_maxrss`` would include the parent's) in MB."""
    with open("/proc/self/status", encoding="utf-8") as fin:
        for line in fin:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _audio(batch_size, seconds, seed=0):
    """Speech-like signals (harmonics with a moving pitch, plus noise), the same for every model (numpy only)."""
    generator = np.random.default_rng(seed)
    length = int(seconds * SAMPLE_RATE)
    time_axis = np.arange(length) / SAMPLE_RATE
    wavs = np.zeros((batch_size, length), dtype=np.float32)
    for index in range(batch_size):
        pitch = 110 + 40 * generator.random() + 30 * np.sin(2 * np.pi * 3 * time_axis)
        phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
        signal = sum(np.sin(harmonic * phase) / harmonic for harmonic in range(1, 8))
        signal *= 0.5 + 0.5 * np.abs(np.sin(2 * np.pi * 4 * time_axis))
        wavs[index] = 0.1 * signal + 0.01 * generator.standard_normal(length)
    return wavs, np.ones(batch_size, dtype=np.float32)


def worker(model, folder, workload, threads, repeats):
    """Times one model on one workload in this process; prints a JSON line."""
    batch_size, seconds = WORKLOADS[workload]
    wavs, wav_lens = _audio(batch_size, seconds)
    if model.startswith("student (ONNX"):
        from robustdistiller.inference.onnx_runtime import OnnxEncoder

        name = "encoder_int8.onnx" if "int8" in model else "encoder.onnx"
        encoder = OnnxEncoder(os.path.join(folder, "export", "onnx", name), num_threads=threads)

        def run(x=wavs, lens=wav_lens):
            return encoder.encode_batch(x, lens).hidden_states
    else:
        import torch

        torch.set_num_threads(threads)
        if model.startswith("teacher"):
            from robustdistiller.inference.interface import ssl_hidden_states
            from robustdistiller.models.teacher import load_ssl_model

            network = load_ssl_model(os.path.join(folder, "teacher")).eval()

            def forward(x, lens):
                return ssl_hidden_states(network, x, lens, per_utterance_norm=True)[0]
        else:
            from robustdistiller.export.loading import load_student

            network, _ = load_student(os.path.join(folder, "export"))

            def forward(x, lens):
                return network(x, lens).hidden_states

        def run(x=wavs, lens=wav_lens):
            with torch.no_grad():
                return forward(torch.from_numpy(x), torch.from_numpy(lens))

    loaded = _memory_mb("VmRSS")
    run(wavs[:1, :SAMPLE_RATE], np.ones(1, dtype=np.float32))  # warm-up on 1 s (kernels, allocator, threads)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    peak = _memory_mb("VmHWM")
    print(
        json.dumps(
            {
                "model": model,
                "workload": workload,
                "seconds": statistics.median(times),
                "audio_seconds": batch_size * seconds,
                "model_mb": loaded,
                "peak_mb": peak,
            }
        )
    )


def build_models(folder):
    """The random full-size teacher and the exported student (PyTorch + ONNX fp32/int8) under ``folder``."""
    sys.path.insert(0, REPOSITORY_ROOT)
    import torch

    from robustdistiller.export.student_folder import export_student
    from robustdistiller.models.student import DistillerStudent, build_student_config, num_parameters
    from robustdistiller.models.teacher import load_ssl_model, save_random_teacher

    teacher_folder = save_random_teacher(os.path.join(folder, "teacher"), model_type="wavlm", tiny=False, seed=0)
    teacher = load_ssl_model(teacher_folder)
    torch.manual_seed(0)
    student = DistillerStudent(build_student_config(teacher.config), per_utterance_norm=True).eval()
    result = export_student(student, os.path.join(folder, "export"), onnx=True, int8=True)

    def size(*names):
        return sum(os.path.getsize(os.path.join(folder, name)) for name in names) / 2**20

    sizes = {
        MODELS[0]: size("teacher/model.safetensors"),
        MODELS[1]: size("export/encoder.ckpt", "export/prediction_expand.ckpt", "export/prediction_split.ckpt"),
        MODELS[2]: size("export/onnx/encoder.onnx"),
        MODELS[3]: size("export/onnx/encoder_int8.onnx"),
    }
    parameters = {"teacher": num_parameters(teacher), "student": num_parameters(student)}
    return sizes, parameters, result["onnx_parity"]


def format_table(rows, sizes):
    lines = [
        "| workload | model | RTF | speed-up vs teacher | peak MB | model MB | size on disk MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for workload in WORKLOADS:
        teacher = rows[(MODELS[0], workload)]["seconds"]
        for model in MODELS:
            row = rows[(model, workload)]
            lines.append(
                f"| {workload} | {model} | {row['seconds'] / row['audio_seconds']:.4f} | "
                f"{teacher / row['seconds']:.2f}x | {row['peak_mb']:.0f} | {row['model_mb']:.0f} | "
                f"{sizes[model]:.1f} |"
            )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of torch and ONNX Runtime")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per (model, workload), after a warm-up")
    parser.add_argument("--output", default=os.path.join(REPOSITORY_ROOT, "results", "benchmark_inference"))
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "FOLDER", "WORKLOAD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], args.worker[1], args.worker[2], args.threads, args.repeats)
        return 0
    environment = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS=str(args.threads),
        PYTHONPATH=os.pathsep.join([REPOSITORY_ROOT, os.environ.get("PYTHONPATH", "")]),
    )
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="benchmark_inference_") as folder:
        sizes, parameters, parity = build_models(folder)
        rows = {}
        for workload in WORKLOADS:
            for model in MODELS:
                command = [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--threads",
                    str(args.threads),
                    "--repeats",
                    str(args.repeats),
                    "--worker",
                    model,
                    folder,
                    workload,
                ]
                completed = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
                if completed.returncode != 0:
                    raise SystemExit(f"{model} on {workload} failed:\n{completed.stderr[-3000:]}")
                row = json.loads(completed.stdout.strip().splitlines()[-1])
                rows[(model, workload)] = row
                print(f"{workload:>9} {model:<24} {row['seconds']:.3f} s", flush=True)
    table = format_table(rows, sizes)
    summary = {
        "threads": args.threads,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "parameters": parameters,
        "size_mb": sizes,
        "onnx_parity": parity,
        "rows": [dict(row) for row in rows.values()],
        "wall_seconds": round(time.time() - started, 1),
    }
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "benchmark.json"), "w", encoding="utf-8") as fout:
        json.dump(summary, fout, indent=2, default=float)
    with open(os.path.join(args.output, "benchmark.md"), "w", encoding="utf-8") as fout:
        fout.write(table + "\n")
    print(table)
    print(
        f"parameters: {parameters}; int8 min cosine to fp32 {parity.get('int8_min_cosine'):.4f}; "
        f"fp32 max abs diff {parity['fp32_max_abs_diff']:.2e}; {summary['wall_seconds']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
