"""Exporting a trained DPWavLM: the compact DPHuBERT ``.pth``, a padded ``transformers`` copy and a model card.

``python -m robustdistiller.export <final.pth | DPWavLM output folder | any DPHuBERT .pth> <output folder>``
comes here (:func:`robustdistiller.export.student_folder.export_student` dispatches on the file format). The folder
holds:

* ``dpwavlm.pth``: **the model** -- the compact student in DPHuBERT's format (its config with the per-layer
  widths, its state dict, the distillation projections), read with ``torch.load(weights_only=True)`` and
  loaded with ``strict=True`` by :func:`~robustdistiller.dpwavlm.checkpoint.load_dphubert_checkpoint`,
  :func:`~robustdistiller.export.loading.load_student` and every downstream recipe (``upstream: <folder>``), and by
  DPHuBERT's own ``wav2vec2_model(**config)``;
* ``config.json`` + ``model.safetensors`` + ``preprocessor_config.json``: a compatibility copy as a
  ``transformers.WavLMModel`` padded to uniform widths (heads zero-padded at their original indices, FFNs
  zero-padded to the widest layer; ``docs/reference/dphubert.md`` "Export to transformers"). It is exact only when the
  CNN's ``dummy_weight`` is all ones, i.e. when the CNN channels were never gated: DPHuBERT's ``prune()``
  multiplies ``dummy_weight`` by the last conv layer's deterministic soft mask whenever CNN pruning is on
  (``conv`` in ``pruning_units``), even when that mask removes no channel (a kept gate's value is
  ``sigmoid(1.2 log_alpha)``, below 1: 0.996 at the initial ``log_alpha``), and ``WavLMModel`` has no
  per-channel scale there. Otherwise ``hf_inexact`` decides: ``skip`` (default: the copy is left out and
  the model card gives the measured error), ``warn`` (written anyway, the error in the card) or
  ``refuse`` (the export fails, naming the error). The error is measured on speech-like signals
  (:func:`speech_like_probes`: sentences in the mini corpus generator's eSpeak NG voices), not noise;
* ``hyperparams.yaml`` + ``encoder.ckpt``: SpeechBrain's pretrained interface
  (:class:`~robustdistiller.dpwavlm.interface.DPWavLMInterface`; the weights once more, as SpeechBrain's
  ``Pretrainer`` reads plain state dicts);
* ``README.md``: the model card (teacher, sparsity reached vs the target, parameters before and after
  pruning, per-layer widths, the measured HF-copy error, loading snippets);
* ``export_manifest.json``: as every export (overwrite rules of :mod:`robustdistiller.export.folder`).
"""

import functools
import json
import logging
import math
import os
import shutil
import warnings

import numpy as np
import torch
import transformers
import yaml

from robustdistiller.inference.interface import transformers_progress_bars_off
from robustdistiller.dpwavlm.checkpoint import export_hf_wavlm_padded
from robustdistiller.dpwavlm.encoder import DPWavLMEncoder
from robustdistiller.dpwavlm.model import is_hubert_config
from robustdistiller.dpwavlm.stages import FINAL_FILE, SUMMARY_FILE
from robustdistiller.export.errors import ExportError
from robustdistiller.export.folder import MANIFEST_FILE, write_export_folder
from robustdistiller.export.dpwavlm_onnx import export_dpwavlm_onnx
from robustdistiller.export.layout import DPWAVLM_EXPORT_FILE, ONNX_FILES
from robustdistiller.export.loading import load_dpwavlm, locate_checkpoint
from robustdistiller.export.model_card import (
    format_count,
    hub_datasets,
    hub_front_matter,
    hub_id,
    report_eval_results,
    source_name,
)
from robustdistiller.models.student import num_parameters
from robustdistiller.testing.synthesis import make_speakers, random_sentence, synthesize_speech

logger = logging.getLogger(__name__)

HF_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
HF_INEXACT_CHOICES = ("skip", "warn", "refuse")


def layer_widths(config):
    """Per-layer ``(kept heads, original heads, FFN units)`` of a DPHuBERT WavLM or HuBERT config.

    Example
    -------
    >>> from robustdistiller.dpwavlm import tiny_config
    >>> layer_widths(tiny_config(num_layers=2))
    [(4, 4, 48), (4, 4, 48)]
    """
    widths = []
    for index in range(config["encoder_num_layers"]):
        if is_hubert_config(config):
            heads = config["encoder_num_heads"][index]
            total = config["encoder_embed_dim"] // config["encoder_head_dim"]
        else:
            heads, total = len(config["encoder_remaining_heads"][index]), config["encoder_total_num_heads"][index]
        heads = heads if config["encoder_use_attention"][index] else 0
        units = config["encoder_ff_interm_features"][index] if config["encoder_use_feed_forward"][index] else 0
        widths.append((heads, total, units))
    return widths


def hyperparams_text(config):
    """The export's ``hyperparams.yaml``: the model's config inline, for :class:`DPWavLMInterface`."""
    plain = dict(config)
    plain["extractor_conv_layer_config"] = [list(layer) for layer in config["extractor_conv_layer_config"]]
    config_yaml = yaml.safe_dump(plain, default_flow_style=None, sort_keys=False, width=100)
    config_yaml = "".join(f"            {line}\n" for line in config_yaml.splitlines())
    return "\n".join(
        [
            "# ############################################################################",
            "# DPWavLM / DPHuBERT exported by robustdistiller.export (see README.md).",
            "# Load: robustdistiller.dpwavlm.interface.DPWavLMInterface.from_hparams(source=<this folder>)",
            "# (encoder.ckpt: the weights of dpwavlm.pth for SpeechBrain's Pretrainer)",
            "# ############################################################################",
            "",
            "sample_rate: 16000",
            "# First CNN layer's GroupNorm over each utterance's own samples (padding-independent features)",
            "per_utterance_norm: True",
            "",
            "encoder: !new:robustdistiller.dpwavlm.encoder.DPWavLMEncoder",
            "    per_utterance_norm: !ref <per_utterance_norm>",
            "    model: !new:robustdistiller.dpwavlm.model.DPWavLM",
            "        config:",
            config_yaml.rstrip("\n"),
            "",
            "modules:",
            "    encoder: !ref <encoder>",
            "",
            "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer",
            "    loadables:",
            "        encoder: !ref <encoder>",
            "    # strict loading that names a truncated or foreign encoder.ckpt",
            "    custom_hooks:",
            "        encoder: !name:robustdistiller.inference.interface.load_weights_naming_the_file",
            "",
        ]
    )


def _write_preprocessor_config(folder, config):
    transformers.Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=16000,
        padding_value=0.0,
        do_normalize=bool(config["normalize_waveform"]),
        return_attention_mask=True,
    ).save_pretrained(folder)


SPEECH_PROBE_UTTERANCES = 4
SPEECH_PROBE_SEED = 0


@functools.lru_cache(maxsize=2)
def speech_like_probes(num_utterances=SPEECH_PROBE_UTTERANCES, seed=SPEECH_PROBE_SEED):
    """Speech-like probe waveforms: random sentences in the mini corpus generator's voices.

    :func:`robustdistiller.testing.synthesis.make_speakers` draws ``num_utterances`` distinct eSpeak NG voices
    (accent, variant, pitch, rate, range) and :func:`~robustdistiller.testing.synthesis.random_sentence` a
    sentence for each; :func:`~robustdistiller.testing.synthesis.synthesize_speech` speaks them at 16 kHz and
    each is scaled by 0.5-0.9, the level of the mini corpus's LibriSpeech utterances. Deterministic in
    ``seed``; synthesised once per process (a subprocess, about a second).

    Returns
    -------
    tuple
        ``(waveforms, description)``: a tuple of 1-D float32 tensors and a sentence saying what they are.

    Raises
    ------
    RuntimeError, OSError, ImportError
        When eSpeak NG cannot synthesise (``espeakng-loader`` missing or broken).
    """
    rng = np.random.default_rng(seed)
    speakers = make_speakers(rng, num_utterances)
    requests = [
        {key: speaker[key] for key in ("voice", "rate", "pitch", "range")} | {"text": random_sentence(rng)}
        for speaker in speakers
    ]
    waveforms = tuple(
        torch.from_numpy(waveform * np.float32(rng.uniform(0.5, 0.9))) for waveform in synthesize_speech(requests)
    )
    seconds = sum(len(waveform) for waveform in waveforms) / 16000
    description = (
        f"{len(waveforms)} speech-like utterances ({seconds:.1f} s in all: random sentences in the eSpeak NG "
        f"voices of robustdistiller.testing.mini_corpus, seed {seed})"
    )
    return waveforms, description


def _probe_waveforms():
    """:func:`speech_like_probes`, or 1 s of seeded Gaussian noise (said so) when speech cannot be synthesised."""
    try:
        return speech_like_probes()
    except (RuntimeError, OSError, ImportError) as failure:
        logger.warning("No speech-like probes (%s): the transformers copy is measured on 1 s of noise", failure)
        noise = torch.randn(16000, generator=torch.Generator().manual_seed(0))
        return (noise,), f"1 s of Gaussian noise (speech synthesis failed: {type(failure).__name__})"


def hf_copy_error(model, hf_model, waveforms):
    """Difference between the hidden states 1..L of ``model`` and of its transformers copy.

    Each waveform is run alone (no padding) through both models in eval mode.

    Arguments
    ---------
    model : DPWavLM
        The compact model.
    hf_model : transformers.PreTrainedModel
        Its padded ``WavLMModel`` / ``HubertModel`` copy.
    waveforms : sequence of torch.Tensor
        1-D waveforms at 16 kHz.

    Returns
    -------
    dict
        ``max_abs_error``: the largest absolute difference; ``relative_error``: the L2 norm of the
        differences over the L2 norm of the model's states (all layers 1..L and frames pooled).
    """
    was_training = model.training
    model.eval()
    hf_model.eval()
    max_abs, difference_energy, reference_energy = 0.0, 0.0, 0.0
    try:
        with torch.no_grad():
            for waveform in waveforms:
                ours, _ = model.extract_features(waveform[None].float())
                theirs = hf_model(waveform[None].float(), output_hidden_states=True).hidden_states
                for reference, candidate in zip(ours[1:], theirs[1:]):
                    difference = (candidate - reference).double()
                    max_abs = max(max_abs, float(difference.abs().max()))
                    difference_energy += float(difference.pow(2).sum())
                    reference_energy += float(reference.double().pow(2).sum())
    finally:
        model.train(was_training)
    return {"max_abs_error": max_abs, "relative_error": math.sqrt(difference_energy / max(reference_energy, 1e-30))}


def write_hf_copy(model, folder, hf_inexact="skip"):
    """Writes the padded ``transformers.WavLMModel`` copy of ``model`` into ``folder`` (the policy above).

    The copy is exact when ``model.feature_extractor.dummy_weight`` is all ones (the CNN channels were
    never gated); its error is measured either way, on :func:`speech_like_probes`.

    Returns
    -------
    dict
        ``written`` (bool), ``exact`` (the CNN scale is all ones), ``max_abs_error`` and
        ``relative_error`` (:func:`hf_copy_error` on the probes), ``probe`` (what the probes were),
        ``noise_max_abs_error`` (the max abs error on 1 s of Gaussian noise, the check of
        :func:`~robustdistiller.dpwavlm.checkpoint.export_hf_wavlm_padded`) and, when written,
        ``num_parameters`` (HF's count, inflated by the padding).
    """
    if hf_inexact not in HF_INEXACT_CHOICES:
        raise ExportError(f"hf_inexact must be one of {HF_INEXACT_CHOICES}, got {hf_inexact!r}")
    dummy = model.feature_extractor.dummy_weight
    exact = bool(torch.equal(dummy, torch.ones_like(dummy)))
    hf_folder = os.path.join(folder, ".hf-copy")
    try:
        with warnings.catch_warnings():
            if hf_inexact != "warn":  # measured here; the copy is dropped (skip) or the export fails (refuse)
                warnings.simplefilter("ignore")
            noise_error = export_hf_wavlm_padded(model, hf_folder, on_inexact="warn" if not exact else "refuse")
    except (ValueError, RuntimeError) as failure:  # e.g. a copy that differs although it should be exact
        raise ExportError(f"Cannot write the padded transformers copy: {failure}") from failure
    waveforms, probe = _probe_waveforms()
    with transformers_progress_bars_off():
        error = hf_copy_error(model, transformers.AutoModel.from_pretrained(hf_folder), waveforms)
    report = {"written": False, "exact": exact, **error, "probe": probe, "noise_max_abs_error": noise_error}
    if not exact and hf_inexact == "refuse":
        shutil.rmtree(hf_folder, ignore_errors=True)
        raise ExportError(
            f"The padded transformers.WavLMModel copy would differ from the model by {error['max_abs_error']:.3g} "
            f"(max abs; relative {error['relative_error']:.2g}; hidden states 1..L on {probe}): the CNN channels "
            f"were gated, and the per-channel scale DPHuBERT's prune() leaves from the last conv layer's mask "
            f"(dummy_weight, range {float(dummy.min()):.4g}..{float(dummy.max()):.4g}) has no place in "
            f"WavLMModel. Export with --hf-inexact=skip (no transformers copy) or --hf-inexact=warn (write it anyway)"
        )
    if not exact and hf_inexact == "skip":
        logger.warning(
            "No transformers copy: it would differ by %.3g max abs (relative %.2g) on %s (dummy_weight is not "
            "all ones: the CNN channels were gated); --hf-inexact=warn writes it anyway",
            error["max_abs_error"],
            error["relative_error"],
            probe,
        )
        shutil.rmtree(hf_folder, ignore_errors=True)
        return report
    for name in os.listdir(hf_folder):
        os.replace(os.path.join(hf_folder, name), os.path.join(folder, name))
    os.rmdir(hf_folder)
    _write_preprocessor_config(folder, model.config)
    hf_model = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(folder))
    report.update(written=True, num_parameters=num_parameters(hf_model))
    return report


def model_card(model, source, summary, hf_report, eval_results=None):
    """The export's ``README.md``: Hub front matter, what the model is, how it was made, and how to load it."""
    config = model.config
    hf_class = "HubertModel" if model.is_hubert else "WavLMModel"
    compact = num_parameters(model)
    teacher = summary.get("teacher_num_params")
    stage1, stage2 = summary.get("stage1", {}), summary.get("stage2", {})
    sparsity = f"{1 - compact / teacher:.4f} of the teacher's {format_count(teacher)}" if teacher else "unknown"
    target = stage1.get("target_sparsity")
    reached = (
        f"target {target:g}; expected sparsity at the end of stage 1 {stage1['expected_sparsity']:.4f} "
        f"(from {stage1.get('initial_expected_sparsity', float('nan')):.4f})"
        if target is not None and "expected_sparsity" in stage1
        else "not recorded with this checkpoint"
    )
    robust = summary.get("student_input") == "noisy" or (summary.get("enhancement_weight") or 0) > 0
    name = "DPHuBERT" if model.is_hubert else "DPWavLM"
    recipe = summary.get("recipe") or (f"RobustDistiller + {name}" if robust else name)
    steps = (
        f"stage 1 {stage1['steps']:,} + stage 2 {stage2['steps']:,}"
        if "steps" in stage1 and "steps" in stage2
        else "not recorded"
    )
    conv = ", ".join(str(int(layer[0])) for layer in config["extractor_conv_layer_config"])
    measured = (
        f"max abs difference {hf_report['max_abs_error']:.2g}, relative (L2) {hf_report['relative_error']:.2g}, "
        f"on hidden states 1..L of {hf_report['probe']}"
    )
    gated = (
        f"the CNN channels were gated: DPHuBERT's pruning leaves the last conv layer's soft mask as a per-channel "
        f"scale (`dummy_weight`, not all ones) that {hf_class} cannot represent"
    )
    if hf_report["written"]:
        hf_line = (
            f"written: {format_count(hf_report['num_parameters'])} parameters as HF counts them (padding "
            f"included); {measured}"
        )
        if not hf_report["exact"]:
            hf_line += f" -- **inexact**: {gated}"
    else:
        hf_line = f"not written: {measured}, because {gated}; `--hf-inexact=warn` writes it anyway"
    rows = [
        ("Recipe", recipe),
        ("Teacher", f"`{source_name(summary.get('teacher_source')) or 'not recorded'}`"),
        ("Parameters", f"{format_count(compact)} (sparsity {sparsity})"),
        (
            "Before pruning",
            (
                f"gated student {format_count(stage1['gated_student_num_params'])}"
                if "gated_student_num_params" in stage1
                else "not recorded"
            ),
        ),
        ("Sparsity", reached),
        ("Optimizer steps", steps),
        ("transformers copy", hf_line),
        ("Exported from", f"`{source_name(source)}`"),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    layers = "\n".join(
        f"| {index + 1} | {heads} of {total} | {units} |"
        for index, (heads, total, units) in enumerate(layer_widths(config))
    )
    hf_section = ""
    if hf_report["written"]:
        hf_section = f"""
### transformers (compatibility copy)

```python
from transformers import {hf_class}

model = {hf_class}.from_pretrained("/path/to/this/folder").eval()
hidden_states = model(wav[None], output_hidden_states=True).hidden_states   # one utterance, 16 kHz
```

HF's `hidden_states[0]` is the encoder input (after the positional convolution and LayerNorm), not DPHuBERT's
layer 0 (the projection output before them); layers 1..L match. `num_parameters()` counts the zero padding.
"""
    front_matter = hub_front_matter(
        "transformers" if hf_report["written"] else "speechbrain",
        base_model=hub_id(summary.get("teacher_source")),
        datasets=hub_datasets(summary.get("train_splits")),
        extra_tags=["dphubert", "structured-pruning", "hubert" if model.is_hubert else "wavlm", "speechbrain"],
        eval_results=eval_results,
        model_name=recipe,
    )
    return (
        front_matter
        + f"""# {recipe}: a structured-pruned {"HuBERT" if model.is_hubert else "WavLM"}

| | |
|---|---|
{table}

CNN channels per layer: {conv}. Transformer layers (kept attention heads, FFN units):

| layer | heads | FFN units |
|---|---|---|
{layers}

The model gives {config["encoder_num_layers"] + 1} states at 50 frames/s (16 kHz input): layer 0 is the feature
projection's output before the positional convolution (DPHuBERT's convention), then every layer's output.

## Load it

### robustdistiller (and every downstream recipe)

```python
from robustdistiller.export.loading import load_student
from robustdistiller.downstream.upstream import FrozenUpstream

encoder, info = load_student("/path/to/this/folder")      # DPWavLMEncoder: relative lengths in, all states out
upstream = FrozenUpstream("/path/to/this/folder")         # what the recipes use: --upstream=/path/to/this/folder
features, frame_mask = upstream(wavs, wav_lens)           # [B, {config["encoder_num_layers"] + 1}, frames, {config["encoder_embed_dim"]}]
```

### SpeechBrain (with `robustdistiller` installed)

```python
from robustdistiller.dpwavlm.interface import DPWavLMInterface

encoder = DPWavLMInterface.from_hparams(source="/path/to/this/folder", savedir="pretrained_cache")
out = encoder.encode_file("utterance.wav")        # any sample rate; stereo is averaged
out.hidden_states                                 # [1, {config["encoder_num_layers"] + 1}, frames, {config["encoder_embed_dim"]}], layer 0 = projection output
batch = encoder.encode_batch(wavs, wav_lens)      # padded batch, SpeechBrain relative lengths
```

### The DPHuBERT file itself

```python
import torch
from robustdistiller.dpwavlm import load_dphubert_checkpoint

model, checkpoint = load_dphubert_checkpoint("/path/to/this/folder/{DPWAVLM_EXPORT_FILE}")   # weights_only, strict
hidden_states, frame_lengths = model.eval().extract_features(wav[None])
# DPHuBERT's code: ckpt = torch.load(path); model = wav2vec2_model(**ckpt["config"]); model.load_state_dict(ckpt["state_dict"])
```
{hf_section}
## Files

`{DPWAVLM_EXPORT_FILE}`: the model (DPHuBERT format). `hyperparams.yaml`, `encoder.ckpt`: SpeechBrain (the same
weights again, for its `Pretrainer`).{" `config.json`, `model.safetensors`, `preprocessor_config.json`: the padded transformers copy." if hf_report["written"] else ""}
`{MANIFEST_FILE}`: the files of this export with their SHA-256.
"""
    )


def export_dpwavlm(
    source,
    output_folder,
    overwrite=False,
    hf_inexact="skip",
    results=None,
    results_upstream=None,
    onnx=False,
    int8=None,
):
    """Exports a DPHuBERT-format DPWavLM (module docstring).

    Arguments
    ---------
    source : str
        A DPHuBERT ``.pth``, a DPWavLM output folder (its ``final.pth``) or an earlier DPWavLM export.
    output_folder : str
        Created; must be empty or missing unless ``overwrite`` (then only an unmodified earlier export).
    overwrite : bool
        Replace an earlier export (the files its manifest lists).
    hf_inexact : str
        ``skip``, ``warn`` or ``refuse``: what to do when the padded ``WavLMModel`` copy cannot be exact.
    results, results_upstream : str, optional
        ``--results report.json`` and ``--results-upstream``: the card's ``model-index``
        (:func:`robustdistiller.export.model_card.report_eval_results`).
    onnx : bool
        Also write ``onnx/encoder.onnx`` (:mod:`robustdistiller.export.dpwavlm_onnx`), refused above 1e-4.
    int8 : str, optional
        Also write ``onnx/encoder_int8.onnx`` (implies ``onnx``): ``"all"`` static int8 of the whole model,
        ``"matmul"`` dynamic int8 of the matrix products.

    Returns
    -------
    dict
        ``folder``, ``files``, ``info`` (``source``, ``format``, ``training``: the run's summary),
        ``hf_copy`` (the report of :func:`write_hf_copy`), ``onnx_parity`` (``verify_onnx``'s result, or None
        without ``onnx``/``int8``).
    """
    path, kind = locate_checkpoint(source)
    if kind != "dphubert":
        raise ExportError(f"'{source}' is not a DPHuBERT-format checkpoint (found a {kind} checkpoint)")
    model, summary = load_dpwavlm(path)
    if any(name.endswith("log_alpha") for name, _ in model.named_parameters()):
        raise ExportError(f"'{path}' still has pruning gates (a stage-1 checkpoint): export final.pth or pruned.pth")
    info = {"source": path, "format": kind, "step": None, "valid_loss": None, "training": summary}
    # a report's runs may name the run folder (whose final.pth this is), the file, or this export folder
    run_folder = [os.path.dirname(path)] if os.path.basename(path) == FINAL_FILE else []
    eval_results = report_eval_results(results, results_upstream, [source, path, *run_folder], output_folder)

    def write(staging):
        shutil.copyfile(path, os.path.join(staging, DPWAVLM_EXPORT_FILE))
        with open(os.path.join(staging, "hyperparams.yaml"), "w", encoding="utf-8") as fout:
            fout.write(hyperparams_text(model.config))
        torch.save(DPWavLMEncoder(model).state_dict(), os.path.join(staging, "encoder.ckpt"))
        hf_report = write_hf_copy(model, staging, hf_inexact)
        if summary:
            with open(os.path.join(staging, SUMMARY_FILE), "w", encoding="utf-8") as fout:
                json.dump(summary, fout, indent=2)
        with open(os.path.join(staging, "README.md"), "w", encoding="utf-8") as fout:
            fout.write(model_card(model, path, summary, hf_report, eval_results))
        if onnx or int8:
            onnx_folder = os.path.join(staging, os.path.dirname(ONNX_FILES[0]))
            hf_report["onnx_parity"] = export_dpwavlm_onnx(DPWavLMEncoder(model), onnx_folder, int8=int8)["parity"]
        return hf_report

    expected = [DPWAVLM_EXPORT_FILE, "hyperparams.yaml", "encoder.ckpt", SUMMARY_FILE, "README.md", *HF_FILES]
    expected += list(ONNX_FILES[: (1 if onnx or int8 else 0) + (1 if int8 else 0)])
    files, hf_report = write_export_folder(output_folder, expected, overwrite, path, write, source=source)
    onnx_parity = hf_report.pop("onnx_parity", None)
    logger.info("Exported the DPWavLM to %s (%s)", os.path.abspath(output_folder), ", ".join(files))
    return {
        "folder": os.path.abspath(output_folder),
        "files": files,
        "info": info,
        "hf_copy": hf_report,
        "onnx_parity": onnx_parity,
    }
