#!/usr/bin/env python3
"""How far bf16 / fp16 teacher targets are from fp32 ones, and what the lower precision saves.

For a *full-size* WavLM Base+ shaped teacher (94.4M parameters) with **random weights** (the
pretrained WavLM Base+ cannot be downloaded here, so the numbers describe the architecture and its
arithmetic, not the pretrained model's activation statistics), on a padded batch of speech
(eSpeak NG synthetic speech from :mod:`robustdistiller.testing.synthesis`; a harmonic, amplitude-modulated
stand-in if eSpeak NG is unavailable) with one shorter utterance, this script computes the recipe's
target layers (4, 8, 12) with :class:`~robustdistiller.models.teacher.FrozenTeacher` at ``precision="fp32"``
and at each lower precision (bf16; also fp16 on CUDA), and reports, per layer, on valid frames only:

* the cosine similarity of each frame's low-precision target with its fp32 target (mean and min);
* the mean absolute (L1) difference, and the relative L1 (L1 difference / mean ``|fp32|``);

plus the median forward time of each precision (repeats interleaved, after one warm-up each) and its
ratio to fp32.

Run: ``python benchmarks/teacher_precision.py [--device cpu --utterances 4 --seconds 4 --repeats 3]``.
From Python (e.g. ``benchmarks/benchmark_step.py``): :func:`measure_teacher_precision` returns a dict
and :func:`format_report` turns it into the markdown table.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy
import torch

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPOSITORY_ROOT not in sys.path:
    sys.path.insert(0, REPOSITORY_ROOT)

from cpu_facts import cpu_facts  # noqa: E402 - benchmarks/cpu_facts.py, beside this script
from robustdistiller.models.teacher import FrozenTeacher, save_random_teacher  # noqa: E402

SAMPLE_RATE = 16000
TARGET_LAYERS = (4, 8, 12)
RANDOM_WEIGHTS_NOTE = (
    "teacher: WavLM Base+ architecture with RANDOM weights (pretrained weights cannot be downloaded "
    "here); the pretrained model's activation statistics may give different errors"
)


def harmonic_speech_like(generator, num_samples):
    """Harmonic, amplitude-modulated signal (as in ``benchmark_step.speech_like``): a stand-in utterance."""
    time_axis = numpy.arange(num_samples) / SAMPLE_RATE
    pitch = 120 + 30 * numpy.sin(2 * numpy.pi * 0.5 * time_axis)
    phase = 2 * numpy.pi * numpy.cumsum(pitch) / SAMPLE_RATE
    signal = sum(numpy.sin(harmonic * phase) / harmonic for harmonic in range(1, 10))
    envelope = 0.5 + 0.5 * numpy.sin(2 * numpy.pi * 3 * time_axis + generator.uniform(0, 6))
    return (0.1 * signal * envelope).astype(numpy.float32)


def synthetic_speech(num_utterances, num_samples, seed=0):
    """``num_utterances`` eSpeak NG utterances of exactly ``num_samples`` samples (float32, RMS 0.05).

    Each utterance is one synthetic speaker reading random sentences, concatenated until long enough,
    then cropped. Returns ``(waveforms, source)``, ``source`` naming what was used; falls back to
    :func:`harmonic_speech_like` (and says so) when eSpeak NG cannot run.
    """
    rng = numpy.random.default_rng(seed)
    try:
        from robustdistiller.testing.synthesis import make_speakers, random_sentence, synthesize_speech

        speakers = make_speakers(rng, num_utterances)
        waveforms = []
        for speaker in speakers:
            pieces, total = [], 0
            while total < num_samples:
                requests = [
                    {key: speaker[key] for key in ("voice", "rate", "pitch", "range")}
                    | {"text": random_sentence(rng, 8, 14)}
                    for _ in range(2)
                ]
                for piece in synthesize_speech(requests):
                    pieces.append(piece)
                    total += piece.shape[0]
            waveforms.append(numpy.concatenate(pieces)[:num_samples])
        source = "eSpeak NG synthetic speech (robustdistiller.testing.synthesis.synthesize_speech)"
    except (ImportError, OSError, RuntimeError) as error:
        waveforms = [harmonic_speech_like(rng, num_samples) for _ in range(num_utterances)]
        source = f"harmonic amplitude-modulated stand-in (eSpeak NG unavailable: {error})"
    scaled = []
    for waveform in waveforms:
        rms = float(numpy.sqrt(numpy.mean(waveform.astype(numpy.float64) ** 2))) or 1.0
        scaled.append((waveform * (0.05 / rms)).astype(numpy.float32))
    return scaled, source


def padded_speech_batch(utterances, seconds, short_fraction=0.6, seed=0):
    """``[B, T]`` batch and relative lengths: ``utterances`` of ``seconds``, the last one shorter."""
    num_samples = int(round(seconds * SAMPLE_RATE))
    waveforms, source = synthetic_speech(utterances, num_samples, seed=seed)
    lengths = [num_samples] * utterances
    if utterances > 1:
        lengths[-1] = int(num_samples * short_fraction)
    wavs = torch.zeros(utterances, num_samples)
    for index, (waveform, length) in enumerate(zip(waveforms, lengths)):
        wavs[index, :length] = torch.from_numpy(waveform[:length])
    return wavs, torch.tensor(lengths, dtype=torch.float) / num_samples, source


def _timed_forward(teacher, wavs, wav_lens, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    output = teacher(wavs, wav_lens)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, output


def compare_targets(reference, candidate, frame_mask, target_layers=TARGET_LAYERS):
    """Per-layer cosine / L1 / relative L1 of ``candidate`` vs ``reference`` layers on valid frames.

    Arguments
    ---------
    reference, candidate : torch.Tensor
        ``[B, K, F, D]`` target layers (fp32 reference and low-precision candidate).
    frame_mask : torch.Tensor
        ``[B, F]`` bool, True on valid frames.

    Returns
    -------
    dict
        ``{layer: {"cosine_mean", "cosine_min", "l1", "relative_l1", "bit_equal"}}``.
    """
    results = {}
    mask = frame_mask.to(reference.device)
    for index, layer in enumerate(target_layers):
        ref = reference[:, index][mask].double()  # [N, D] valid frames
        cand = candidate[:, index][mask].double()
        cosine = torch.nn.functional.cosine_similarity(ref, cand, dim=-1)
        l1 = (ref - cand).abs().mean()
        results[layer] = {
            "cosine_mean": float(cosine.mean()),
            "cosine_min": float(cosine.min()),
            "l1": float(l1),
            "relative_l1": float(l1 / ref.abs().mean()),
            "bit_equal": bool(torch.equal(ref, cand)),
        }
    return results


def device_description(device):
    """Human-readable name of ``device`` (GPU name, or the CPU model and thread count)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    facts = cpu_facts(threads=torch.get_num_threads())
    return (
        f"CPU {facts['cpu_model']} ({', '.join(facts['cpu_flags']) or 'no AVX2'}; {facts['logical_cpus']} cores, "
        f"torch threads {facts['threads']})"
    )


def measure_teacher_precision(
    device="cpu",
    utterances=4,
    seconds=4.0,
    repeats=3,
    precisions=("bf16",),
    per_utterance_norm=True,
    teacher_folder=None,
    seed=0,
):
    """Measures target error and forward time of low-precision teachers against the fp32 teacher.

    Arguments
    ---------
    device : str
        ``"cpu"`` or ``"cuda"`` (fp16 needs CUDA).
    utterances, seconds : int, float
        Batch of ``utterances`` speech items of ``seconds`` s; the last is 60 % as long (padded).
    repeats : int
        Timed forwards per precision, interleaved, after one warm-up each (the median is reported).
    precisions : sequence of str
        Precisions compared with fp32 (``"bf16"``, ``"fp16"``).
    per_utterance_norm : bool
        The recipe's default (True): the first CNN GroupNorm over each item's valid samples.
    teacher_folder : str, optional
        A saved teacher; default: a full-size WavLM Base+ shaped teacher with random weights.
    seed : int
        Seed of the random weights and of the speech.

    Returns
    -------
    dict
        ``device``, ``device_name``, ``batch`` (shape, lengths, audio source), ``teacher`` (note),
        ``times`` (``{precision: [seconds, ...]}``, fp32 included), ``median_seconds``,
        ``time_ratio`` (``{precision: median / fp32 median}``) and ``layers``
        (``{precision: {layer: {"cosine_mean", "cosine_min", "l1", "relative_l1", "bit_equal"}}}``).
    """
    device = torch.device(device)
    precisions = tuple(precision for precision in precisions if precision != "fp32")
    wavs, wav_lens, audio_source = padded_speech_batch(utterances, seconds, seed=seed)
    with tempfile.TemporaryDirectory() as workspace:
        note = RANDOM_WEIGHTS_NOTE if teacher_folder is None else f"teacher: {teacher_folder}"
        if teacher_folder is None:
            teacher_folder = save_random_teacher(
                os.path.join(workspace, "teacher"), model_type="wavlm", tiny=False, seed=seed
            )
        teacher = FrozenTeacher(teacher_folder, target_layers=TARGET_LAYERS, per_utterance_norm=per_utterance_norm).to(
            device
        )
    wavs, wav_lens = wavs.to(device), wav_lens.to(device)
    all_precisions = ("fp32",) + precisions

    outputs, times = {}, {precision: [] for precision in all_precisions}
    for precision in all_precisions:  # warm-up, and the outputs compared (deterministic forward)
        teacher.precision = precision
        _, outputs[precision] = _timed_forward(teacher, wavs, wav_lens, device)
    for _ in range(repeats):
        for precision in all_precisions:
            teacher.precision = precision
            seconds_taken, _ = _timed_forward(teacher, wavs, wav_lens, device)
            times[precision].append(seconds_taken)
    teacher.precision = "fp32"

    reference = outputs["fp32"]
    layers = {
        precision: compare_targets(reference.layers, outputs[precision].layers, reference.frame_mask)
        for precision in precisions
    }
    medians = {precision: statistics.median(values) for precision, values in times.items()}
    return {
        "device": str(device),
        "device_name": device_description(device),
        "batch": {
            "shape": list(wavs.shape),
            "seconds": [round(float(length) * seconds, 3) for length in wav_lens.cpu()],
            "valid_frames": int(reference.frame_mask.sum()),
            "audio": audio_source,
        },
        "teacher": note,
        "per_utterance_norm": per_utterance_norm,
        "output_dtypes": {precision: str(output.layers.dtype) for precision, output in outputs.items()},
        "times": times,
        "median_seconds": medians,
        "time_ratio": {precision: medians[precision] / medians["fp32"] for precision in all_precisions},
        "layers": layers,
    }


def format_report(result):
    """Markdown report of a :func:`measure_teacher_precision` result."""
    batch = result["batch"]
    lines = [
        f"device: {result['device_name']}",
        result["teacher"],
        f"audio: {batch['audio']}",
        f"batch: {batch['shape'][0]} utterances, lengths {batch['seconds']} s "
        f"({batch['valid_frames']} valid frames); per_utterance_norm={result['per_utterance_norm']}",
        "",
        "| precision | layer | cosine mean | cosine min | L1 | relative L1 |",
        "|---|---|---|---|---|---|",
    ]
    for precision, per_layer in result["layers"].items():
        for layer, values in per_layer.items():
            lines.append(
                f"| {precision} | {layer} | {values['cosine_mean']:.6f} | {values['cosine_min']:.6f} | "
                f"{values['l1']:.3e} | {values['relative_l1']:.4f} |"
            )
    lines += ["", "| precision | forward median (ms) | repeats (ms) | ratio to fp32 |", "|---|---|---|---|"]
    for precision, median in result["median_seconds"].items():
        repeats = ", ".join(f"{value * 1000:.0f}" for value in result["times"][precision])
        lines.append(f"| {precision} | {median * 1000:.1f} | {repeats} | {result['time_ratio'][precision]:.3f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--utterances", type=int, default=4, help="utterances per batch (the last is shorter)")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per utterance")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per precision (after a warm-up)")
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=None,
        choices=["bf16", "fp16"],
        help="compared with fp32 (default: bf16, plus fp16 on CUDA)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--no-per-utterance-norm", action="store_true", help="plain HF first-layer GroupNorm (padding-dependent)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = args.precisions or (["bf16", "fp16"] if args.device.startswith("cuda") else ["bf16"])
    result = measure_teacher_precision(
        device=args.device,
        utterances=args.utterances,
        seconds=args.seconds,
        repeats=args.repeats,
        precisions=precisions,
        per_utterance_norm=not args.no_per_utterance_norm,
    )
    print(format_report(result))


if __name__ == "__main__":
    main()
