"""CPU inference: the teacher (PyTorch fp32) against the student and a DPWavLM in PyTorch fp32, ONNX fp32 and int8.

Run ``python benchmarks/benchmark_inference.py [--threads 2] [--repeats 5] [--quick] [--output DIR]``.

One run builds full-size architectures with random weights locally (no downloads; speed, memory and size do not
depend on the weight values):

* the WavLM Base+ teacher (``save_random_teacher``, 94.4M parameters);
* the 2-layer DistilHuBERT student (``build_student_config`` on the teacher's config, per-utterance CNN
  normalisation as our recipe trains it), exported to ONNX fp32, int8 of the whole student (``--int8 all``:
  static QDQ, CNN included) and int8 of the matrix products only (``--int8 matmul``);
* a compact DPWavLM of the released size (23.6M) with pruned CNN channels
  (``benchmark_dpwavlm.pruned_cnn_config``: 256 of 512 channels in every CNN layer, 3 of 12 heads, 567 of 3072
  FFN units), in PyTorch and exported to ONNX fp32 and int8 (:mod:`robustdistiller.export.dpwavlm_onnx`).

Every model is timed on the same speech-like audio: 1, 4 and 16 utterances of 4 s (one padded batch) and one of
30 s. Each (model, workload) runs in a fresh process, so its peak resident memory is its own, and the processes
run in the same order for every workload (the teacher first). In its process a model first runs the workload
``--warmup`` times (kernels, allocator, thread pools), then ``--repeats`` timed runs (at least 5): the table gives
their median with the min and max, ``RTF`` = median / audio duration, and ``speed-up`` = the teacher's median /
the model's median on the same workload. ``peak MB`` is the process's peak RSS, ``model MB`` the RSS after loading
the model, both including the interpreter and libraries (the ONNX workers never import torch).

The figures move with the CPU (its int8 units above all: AVX-512 VNNI, AMX) and with the load of the machine:
the CPU model, its flags, the thread count and the library versions are printed first and stored in
``benchmark.json`` (:mod:`cpu_facts`). Writes ``benchmark.json`` and ``benchmark.md`` to ``--output``.
``--quick`` times only 4 x 4 s: about 6 minutes on a busy 2-core machine (2.5 of them building and exporting
the models), against about 30 for the full run there (estimated; roughly half that when the machine is idle).
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

from cpu_facts import cpu_facts, describe

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS = {"1 x 4 s": (1, 4.0), "4 x 4 s": (4, 4.0), "16 x 4 s": (16, 4.0), "1 x 30 s": (1, 30.0)}
QUICK_WORKLOADS = ("4 x 4 s",)
TEACHER = "teacher (PyTorch fp32)"
# label -> (how the worker loads it, path under the build folder)
MODELS = {
    TEACHER: ("teacher", "teacher"),
    "student (PyTorch fp32)": ("student", "export"),
    "student (ONNX fp32)": ("onnx", "export/onnx/encoder.onnx"),
    "student (ONNX int8 MatMul)": ("onnx", "export_matmul/onnx/encoder_int8.onnx"),
    "student (ONNX int8 all)": ("onnx", "export/onnx/encoder_int8.onnx"),
    "DPWavLM (PyTorch fp32)": ("student", "dpwavlm/dpwavlm.pth"),
    "DPWavLM (ONNX fp32)": ("onnx", "dpwavlm/onnx/encoder.onnx"),
    "DPWavLM (ONNX int8 all)": ("onnx", "dpwavlm/onnx/encoder_int8.onnx"),
}
MINIMUM_REPEATS = 5
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


def spread(times):
    """``{"seconds": median, "min": ..., "max": ..., "runs": [...]}`` of timed runs.

    Example
    -------
    >>> spread([3.0, 1.0, 2.0, 5.0, 4.0])["seconds"], spread([3.0, 1.0, 2.0, 5.0, 4.0])["max"]
    (3.0, 5.0)
    """
    return {"seconds": statistics.median(times), "min": min(times), "max": max(times), "runs": list(times)}


def worker(model, folder, workload, threads, repeats, warmup):
    """Times one model on one workload in this process; prints a JSON line."""
    batch_size, seconds = WORKLOADS[workload]
    wavs, wav_lens = _audio(batch_size, seconds)
    loader, relative = MODELS[model]
    path = os.path.join(folder, relative)
    if loader == "onnx":
        from robustdistiller.inference.onnx_runtime import OnnxEncoder

        encoder = OnnxEncoder(path, num_threads=threads)

        def run(x=wavs, lens=wav_lens):
            return encoder.encode_batch(x, lens).hidden_states
    else:
        import torch

        torch.set_num_threads(threads)
        if loader == "teacher":
            from robustdistiller.inference.interface import ssl_hidden_states
            from robustdistiller.models.teacher import load_ssl_model

            network = load_ssl_model(path).eval()

            def forward(x, lens):
                return ssl_hidden_states(network, x, lens, per_utterance_norm=True)[0]
        else:
            from robustdistiller.export.loading import load_student

            network, _ = load_student(path)  # DistillerStudent, or DPWavLMEncoder for the .pth
            network.eval()

            def forward(x, lens):
                return network(x, lens).hidden_states

        def run(x=wavs, lens=wav_lens):
            with torch.no_grad():
                return forward(torch.from_numpy(x), torch.from_numpy(lens))

    loaded = _memory_mb("VmRSS")
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    row = {"model": model, "workload": workload, **spread(times), "audio_seconds": batch_size * seconds}
    row.update(model_mb=loaded, peak_mb=_memory_mb("VmHWM"))
    print(json.dumps(row))


def build_models(folder, models):
    """The random full-size teacher, student and DPWavLM with their exports under ``folder``."""
    sys.path.insert(0, REPOSITORY_ROOT)
    import torch

    from benchmark_dpwavlm import pruned_cnn_config
    from robustdistiller.dpwavlm import DPWavLM, save_dphubert_checkpoint
    from robustdistiller.export.dpwavlm_onnx import export_dpwavlm_onnx
    from robustdistiller.export.onnx import quantize_int8, verify_onnx
    from robustdistiller.export.student_folder import export_student
    from robustdistiller.models.student import DistillerStudent, build_student_config, num_parameters
    from robustdistiller.models.teacher import load_ssl_model, save_random_teacher

    teacher_folder = save_random_teacher(os.path.join(folder, "teacher"), model_type="wavlm", tiny=False, seed=0)
    teacher = load_ssl_model(teacher_folder)
    torch.manual_seed(0)
    student = DistillerStudent(build_student_config(teacher.config), per_utterance_norm=True).eval()
    result = export_student(student, os.path.join(folder, "export"), onnx=True, int8="all")
    parity = {"student int8 all": result["onnx_parity"]}
    os.makedirs(os.path.join(folder, "export_matmul", "onnx"))
    matmul = quantize_int8(
        os.path.join(folder, "export", "onnx", "encoder.onnx"),
        os.path.join(folder, "export_matmul", "onnx", "encoder_int8.onnx"),
    )
    parity["student int8 MatMul"] = verify_onnx(student, os.path.join(folder, "export", "onnx", "encoder.onnx"), matmul)
    parameters = {"teacher": num_parameters(teacher), "student": num_parameters(student)}
    if any(model.startswith("DPWavLM") for model in models):
        torch.manual_seed(0)
        dpwavlm = DPWavLM(pruned_cnn_config()).eval()
        os.makedirs(os.path.join(folder, "dpwavlm"))
        save_dphubert_checkpoint(os.path.join(folder, "dpwavlm", "dpwavlm.pth"), dpwavlm)
        parity["DPWavLM int8 all"] = export_dpwavlm_onnx(dpwavlm, os.path.join(folder, "dpwavlm", "onnx"), int8="all")[
            "parity"
        ]
        parameters["DPWavLM"] = num_parameters(dpwavlm)

    def size(*names):
        return sum(os.path.getsize(os.path.join(folder, name)) for name in names) / 2**20

    sizes = {
        TEACHER: size("teacher/model.safetensors"),
        "student (PyTorch fp32)": size(
            "export/encoder.ckpt", "export/prediction_expand.ckpt", "export/prediction_split.ckpt"
        ),
    }
    for model, (loader, relative) in MODELS.items():
        if model not in sizes and os.path.exists(os.path.join(folder, relative)):
            sizes[model] = size(relative)
    return sizes, parameters, parity


def format_table(rows, sizes, workloads, models):
    lines = [
        "| workload | model | median s (min-max) | RTF | speed-up vs teacher | peak MB | model MB | size on disk MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for workload in workloads:
        teacher = rows.get((TEACHER, workload))
        for model in models:
            row = rows[(model, workload)]
            speed_up = f"{teacher['seconds'] / row['seconds']:.2f}x" if teacher else "-"
            lines.append(
                f"| {workload} | {model} | {row['seconds']:.3f} ({row['min']:.3f}-{row['max']:.3f}) | "
                f"{row['seconds'] / row['audio_seconds']:.4f} | {speed_up} | {row['peak_mb']:.0f} | "
                f"{row['model_mb']:.0f} | {sizes.get(model, float('nan')):.1f} |"
            )
    return "\n".join(lines)


def _choice_list(text, allowed, what):
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in allowed]
    if unknown or not chosen:
        raise SystemExit(f"--{what}: unknown {unknown or 'empty list'}; choose from {list(allowed)}")
    return chosen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of torch and ONNX Runtime")
    parser.add_argument(
        "--repeats", type=int, default=MINIMUM_REPEATS, help=f"timed runs per (model, workload), >= {MINIMUM_REPEATS}"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of the workload before the timed ones")
    parser.add_argument("--quick", action="store_true", help=f"only the workloads {', '.join(QUICK_WORKLOADS)}")
    parser.add_argument("--workloads", help=f"comma-separated, of: {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--models", help="comma-separated model labels (default: all; the teacher for speed-ups)")
    parser.add_argument("--output", default=os.path.join(REPOSITORY_ROOT, "results", "benchmark_inference"))
    parser.add_argument("--worker", nargs=3, metavar=("MODEL", "FOLDER", "WORKLOAD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < MINIMUM_REPEATS:
        parser.error(f"--repeats must be at least {MINIMUM_REPEATS} (a median with its spread); got {args.repeats}")
    if args.worker:
        worker(args.worker[0], args.worker[1], args.worker[2], args.threads, args.repeats, args.warmup)
        return 0
    workloads = list(QUICK_WORKLOADS) if args.quick else list(WORKLOADS)
    if args.workloads:
        workloads = _choice_list(args.workloads, WORKLOADS, "workloads")
    models = _choice_list(args.models, MODELS, "models") if args.models else list(MODELS)
    facts = cpu_facts(threads=args.threads)
    print(describe(facts), flush=True)
    environment = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS=str(args.threads),
        PYTHONPATH=os.pathsep.join([REPOSITORY_ROOT, os.environ.get("PYTHONPATH", "")]),
    )
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="benchmark_inference_") as folder:
        sizes, parameters, parity = build_models(folder, models)
        print(f"built and exported in {time.time() - started:.0f} s", flush=True)
        rows = {}
        for workload in workloads:
            for model in models:  # the same process order for every workload
                command = [sys.executable, os.path.abspath(__file__), "--threads", str(args.threads)]
                command += ["--repeats", str(args.repeats), "--warmup", str(args.warmup)]
                command += ["--worker", model, folder, workload]
                completed = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
                if completed.returncode != 0:
                    raise SystemExit(f"{model} on {workload} failed:\n{completed.stderr[-3000:]}")
                row = json.loads(completed.stdout.strip().splitlines()[-1])
                rows[(model, workload)] = row
                print(
                    f"{workload:>9} {model:<27} median {row['seconds']:.3f} s "
                    f"(min {row['min']:.3f}, max {row['max']:.3f})",
                    flush=True,
                )
    table = format_table(rows, sizes, workloads, models)
    summary = {
        "cpu": facts,
        "threads": args.threads,
        "repeats": args.repeats,
        "warmup": args.warmup,
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
        fout.write(describe(facts) + "\n\n" + table + "\n")
    print(table)
    cosines = ", ".join(f"{name} {result.get('int8_min_cosine', float('nan')):.4f}" for name, result in parity.items())
    print(f"parameters: {parameters}; lowest per-layer int8 cosine to fp32: {cosines}; {summary['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
