#!/usr/bin/env python3
"""Peak memory of one full-size student training step, per-utterance vs native CNN GroupNorm.

One configuration per process (peak RSS is a per-process high-water mark), so the script is meant to
run as a subprocess; :func:`measure_peak_memory` does that and returns the parsed result. The step is
the student side of a RobustDistiller training step at the default architecture: the 23.49M
DistilHuBERT student (:class:`robustdistiller.models.student.DistillerStudent` with
:func:`robustdistiller.models.student.build_student_config`) and the 4.86M enhancement head of
``hparams/distill.yaml`` (512-dim CNN input, BiLSTM 3 x 256), forward on a padded batch (items of
100 %, 80 %, 60 %, 40 %, ... of the longest), distillation loss against random targets plus
enhancement loss, backward. The teacher and the optimizer step are left out (neither depends on the
student's GroupNorm).

What is measured:

* CPU: peak resident set size during the step minus the resident size just before it (the
  high-water mark is reset through ``/proc/self/clear_refs`` when the kernel allows it; the peak is
  ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, kilobytes on Linux);
* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the memory
  allocated before the step.

Run: ``python benchmarks/memory_probe.py --norm per_utterance --utterances 4 --seconds 4 --device cpu``;
it prints one JSON line, e.g. ``{"norm": "per_utterance", "peak_bytes": ..., "device": "cpu", ...}``.
"""

import argparse
import gc
import json
import os
import resource
import subprocess
import sys

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_RATE = 16000
NORMS = ("per_utterance", "native")
PRECISIONS = ("fp32", "bf16")


def relative_lengths(utterances):
    """Relative lengths 1.0, 0.8, 0.6, 0.4, 1.0, 0.8, ... for ``utterances`` items.

    Example
    -------
    >>> relative_lengths(5)
    [1.0, 0.8, 0.6, 0.4, 1.0]
    """
    pattern = (1.0, 0.8, 0.6, 0.4)
    return [pattern[index % len(pattern)] for index in range(utterances)]


def _current_rss_bytes():
    """Resident set size now (``VmRSS``), or None where ``/proc`` is not available."""
    try:
        with open("/proc/self/status", encoding="ascii") as fin:
            for line in fin:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss():
    """Resets the process's RSS high-water mark (Linux ``clear_refs`` 5); True when it worked."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fout:
            fout.write("5")
        return True
    except OSError:
        return False


def _max_rss_bytes():
    """``ru_maxrss`` of this process in bytes (kilobytes on Linux, bytes on macOS)."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024


def run_probe(norm, utterances=4, seconds=4.0, device="cpu", precision="fp32", seed=0):
    """Builds the full-size student and enhancement head and measures one training step's peak memory.

    Arguments
    ---------
    norm : str
        ``"per_utterance"`` (``DistillerStudent(per_utterance_norm=True)``) or ``"native"``.
    utterances : int
        Batch size.
    seconds : float
        Length of the longest item (the batch is padded to it).
    device : str
        ``"cpu"`` or ``"cuda"``.
    precision : str
        ``"fp32"`` or ``"bf16"`` (bf16 autocast around the forward pass).
    seed : int

    Returns
    -------
    dict
        ``norm``, ``peak_bytes``, ``device``, ``precision``, ``utterances``, ``seconds`` and, on CPU,
        ``baseline_rss_bytes`` and ``peak_reset`` (whether the high-water mark could be reset).
    """
    import torch

    sys.path.insert(0, REPOSITORY_ROOT)
    from robustdistiller.models.enhancement import EnhancementHead, num_stft_frames, stft_magnitude
    from robustdistiller.distill.losses import distillation_loss, enhancement_loss
    from robustdistiller.models.student import DistillerStudent, build_student_config

    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, not {norm!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    torch.manual_seed(seed)
    device = torch.device(device)
    student = DistillerStudent(build_student_config(), per_utterance_norm=norm == "per_utterance")
    head = EnhancementHead(input_size=512, hidden_size=256, num_layers=3, dropout=0.1)
    student.to(device).train()
    head.to(device).train()

    num_samples = int(round(seconds * SAMPLE_RATE))
    wav_lens = torch.tensor(relative_lengths(utterances), device=device)
    noisy = 0.1 * torch.randn(utterances, num_samples, device=device)
    clean = 0.1 * torch.randn(utterances, num_samples, device=device)
    num_frames = int(student.num_frames(num_samples))
    targets = torch.randn(utterances, len(student.target_layers), num_frames, 768, device=device)
    with torch.no_grad():
        clean_magnitude = stft_magnitude(clean)
    sample_lengths = torch.round(wav_lens * num_samples).long()
    stft_mask = torch.arange(clean_magnitude.shape[1], device=device)[None] < num_stft_frames(sample_lengths)[:, None]

    def step():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = student(noisy, wav_lens)
            loss = distillation_loss(out.predictions, targets, out.frame_mask)["loss"]
            enhanced = head(out.cnn_features, noisy, wav_lens, feature_mask=out.frame_mask)
            loss = loss + 2.0 * enhancement_loss(enhanced.enhanced_magnitude, clean_magnitude, stft_mask)
        loss.backward()

    result = {"norm": norm, "device": device.type, "precision": precision, "utterances": utterances, "seconds": seconds}
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        result["peak_bytes"] = int(torch.cuda.max_memory_allocated(device) - baseline)
    else:
        reset = _reset_peak_rss()
        baseline = _current_rss_bytes() if reset else None
        before = _max_rss_bytes()
        if baseline is None:
            baseline = before
        step()
        result["peak_bytes"] = int(_max_rss_bytes() - baseline)
        result["baseline_rss_bytes"] = int(baseline)
        result["peak_reset"] = reset
    return result


def measure_peak_memory(norm, utterances=4, seconds=4.0, device="cpu", precision="fp32", timeout=1800, threads=None):
    """Runs :func:`run_probe` in a fresh Python process and returns its parsed JSON result.

    Arguments
    ---------
    norm : str
        ``"per_utterance"`` or ``"native"``.
    utterances : int
    seconds : float
    device : str
    precision : str
        ``"fp32"`` or ``"bf16"``.
    timeout : float
        Seconds before the subprocess is killed (``subprocess.TimeoutExpired``).
    threads : int, optional
        ``OMP_NUM_THREADS`` of the subprocess (inherited when None).

    Returns
    -------
    dict
        The probe's JSON line (``norm``, ``peak_bytes``, ``device``, ...).

    Raises
    ------
    RuntimeError
        If the probe fails (its stderr is in the message).
    """
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--norm",
        str(norm),
        "--utterances",
        str(int(utterances)),
        "--seconds",
        str(float(seconds)),
        "--device",
        str(device),
        "--precision",
        str(precision),
    ]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(int(threads))
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPOSITORY_ROOT)
    if completed.returncode != 0:
        raise RuntimeError(f"memory probe failed ({completed.returncode}): {completed.stderr[-4000:]}")
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"memory probe printed no result: {completed.stdout[-2000:]}")
    return json.loads(lines[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--norm", choices=NORMS, required=True)
    parser.add_argument("--utterances", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = run_probe(args.norm, args.utterances, args.seconds, args.device, args.precision, args.seed)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
