"""DPWavLM at full size on the CPU: inference of the compact model vs the teacher, and one training step of each stage.

Run ``python benchmarks/benchmark_dpwavlm.py [--threads 2] [--repeats 2] [--output results/benchmark_dpwavlm]``.

Random weights (speed and memory do not depend on their values), WavLM Base+ shapes:

* the teacher (:func:`~robustdistiller.dpwavlm.wavlm_base_plus_config`, 94.4M parameters);
* a compact model of the released size (23.59M: all CNN channels, 3 of 12 heads and 386 FFN units per layer;
  the real DPWavLM is uneven across layers, its total is 23,586,325);
* the gated stage-1 student (the teacher's shapes + hard-concrete gates, training mode).

Workloads, timed side by side in one process (median of ``--repeats`` after a warm-up): inference of 1 x 4 s
and 4 x 4 s (eval, no grad), and one optimizer step on 4 x 4 s as the recipe makes it: the frozen teacher's
forward, the student's forward + backward (stage 1 also the expected parameter count), AdamW. Prints the
table and the ratios (teacher time / compact time, stage-1 step / stage-2 step); writes ``benchmark.json``
and ``benchmark.md`` to ``--output``.
"""

import argparse
import json
import os
import statistics
import time

import torch

from robustdistiller.dpwavlm import DPWavLM, LayerProjections, wavlm_base_plus_config
from robustdistiller.dpwavlm.objective import layer_to_layer_loss
from robustdistiller.models.student import num_parameters

SAMPLE_RATE = 16000
GATES = dict(
    extractor_prune_conv_channels=True,
    encoder_prune_attention_heads=True,
    encoder_prune_feed_forward_intermediate=True,
)


def compact_config(heads=3, units=386):
    """A pruned WavLM Base+ config of about the released DPWavLM's size (uniform widths)."""
    layers = 12
    return wavlm_base_plus_config(
        encoder_remaining_heads=[list(range(heads)) for _ in range(layers)],
        encoder_ff_interm_features=[units] * layers,
    )


def pruned_cnn_config(channels=256, heads=3, units=567):
    """A compact WavLM Base+ of the released DPWavLM's size (23.58M) whose CNN channels were pruned too.

    Every CNN layer keeps ``channels`` of 512, every layer ``heads`` of 12 heads and ``units`` of 3072 FFN units;
    the defaults give 23,578,884 parameters (the released model: 23,586,325, uneven across layers). The CNN on
    raw audio is most of the compute of a model this size: halving its channels quarters its middle layers.
    """
    conv = [(channels, 10, 5)] + [(channels, 3, 2)] * 4 + [(channels, 2, 2)] * 2
    return wavlm_base_plus_config(
        extractor_conv_layer_config=conv,
        encoder_remaining_heads=[list(range(heads)) for _ in range(12)],
        encoder_ff_interm_features=[units] * 12,
    )


def timed(function, repeats):
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def training_step(teacher, student, projections, optimizer, wavs, lengths, gated):
    with torch.no_grad():
        targets, _ = teacher.extract_features(wavs, lengths)
    hidden, frame_lengths = student.extract_features(wavs, lengths)
    mask = torch.arange(hidden[0].shape[1])[None, :] < frame_lengths[:, None]
    loss = layer_to_layer_loss(projections, hidden, targets, mask)["loss"]
    if gated:
        loss = loss + 1e-9 * student.expected_num_params().float()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default="results/benchmark_dpwavlm")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher = DPWavLM(wavlm_base_plus_config()).eval()
    compact = DPWavLM(compact_config()).eval()
    gated = DPWavLM(wavlm_base_plus_config(**GATES)).train()
    counts = {
        name: num_parameters(model)
        for name, model in (("teacher", teacher), ("compact", compact), ("gated student", gated))
    }
    generator = torch.Generator().manual_seed(0)
    rows = []
    for batch in (1, 4):
        wavs = 0.1 * torch.randn(batch, 4 * SAMPLE_RATE, generator=generator)
        for name, model in (("teacher", teacher), ("compact", compact)):
            with torch.no_grad():
                seconds = timed(lambda: model.extract_features(wavs), args.repeats)
            rows.append({"workload": f"inference {batch} x 4 s", "model": name, "seconds": seconds})
    wavs = 0.1 * torch.randn(4, 4 * SAMPLE_RATE, generator=generator)
    lengths = torch.full((4,), 4 * SAMPLE_RATE)
    for name, student, is_gated in (("stage 1 (gated student)", gated, True), ("stage 2 (compact)", compact, False)):
        student.train()
        projections = LayerProjections("0.4,8,12", student.hidden_size, teacher.hidden_size)
        optimizer = torch.optim.AdamW(list(student.parameters()) + list(projections.parameters()), lr=1e-5)
        seconds = timed(
            lambda: training_step(teacher, student, projections, optimizer, wavs, lengths, is_gated), args.repeats
        )
        rows.append({"workload": "training step 4 x 4 s", "model": name, "seconds": seconds})
    by_key = {(row["workload"], row["model"]): row["seconds"] for row in rows}
    ratios = {
        f"compact speed-up, inference {batch} x 4 s": by_key[(f"inference {batch} x 4 s", "teacher")]
        / by_key[(f"inference {batch} x 4 s", "compact")]
        for batch in (1, 4)
    }
    ratios["stage-1 step / stage-2 step"] = (
        by_key[("training step 4 x 4 s", "stage 1 (gated student)")]
        / by_key[("training step 4 x 4 s", "stage 2 (compact)")]
    )
    lines = [
        f"CPU, {args.threads} threads, torch {torch.__version__}; parameters: "
        + ", ".join(f"{name} {count:,}" for name, count in counts.items()),
        "",
        "| workload | model | seconds |",
        "|---|---|---|",
        *[f"| {row['workload']} | {row['model']} | {row['seconds']:.3f} |" for row in rows],
        "",
        *[f"- {name}: {value:.2f}x" for name, value in ratios.items()],
    ]
    text = "\n".join(lines)
    print(text)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "benchmark.json"), "w", encoding="utf-8") as fout:
        json.dump({"threads": args.threads, "parameters": counts, "rows": rows, "ratios": ratios}, fout, indent=2)
    with open(os.path.join(args.output, "benchmark.md"), "w", encoding="utf-8") as fout:
        fout.write(text + "\n")


if __name__ == "__main__":
    main()
