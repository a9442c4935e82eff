"""The model card (``README.md``) of an exported DistilHuBERT-layout student.

It says what the student is (teacher, predicted layers, data, corruption, steps, parameters), how to load it
(SpeechBrain with and without this package, transformers, s3prl, ONNX Runtime) and, with ``--onnx``, the parity
measured at export. A DPWavLM's card is :func:`robustdistiller.dpwavlm.export.model_card`.

Both cards start with Hugging Face Hub front matter (:func:`hub_front_matter`, written with ``huggingface_hub``'s
own ``ModelCardData``): ``license``, ``library_name``, ``tags``, ``base_model`` (the teacher's hub id; left out when
the teacher was a local folder), ``datasets`` (from the run's training splits when known), ``pipeline_tag:
feature-extraction`` and, with ``--results report.json``, a ``model-index`` with this upstream's numbers per task and
condition from a cross-task report (:func:`model_index_results`). ``library_name`` is ``transformers`` when the folder
holds a transformers copy (``config.json`` + ``model.safetensors``: what the Hub's "Use this model" snippet, its
download counter and ``AutoModel`` read, with no code of ours), ``speechbrain`` otherwise (a DPWavLM without its
padded copy); the other library is a tag. No local absolute path goes into a card: a source is named by its hub id or
its folder's base name (:func:`source_name`).
"""

import json
import os
import re

from robustdistiller.export.errors import ExportError
from robustdistiller.export.folder import MANIFEST_FILE
from robustdistiller.export.layout import INTERFACE_FILE, MODELING_FILE, S3PRL_FILE
from robustdistiller.export.onnx import format_onnx_parity
from robustdistiller.models.student import num_parameters
from robustdistiller.report.tables import display_value


def format_count(count):
    """A parameter count for a model card.

    Example
    -------
    >>> format_count(23_586_325)
    '23,586,325 (23.59M)'
    """
    return f"{count:,} ({count / 1e6:.2f}M)"


HUB_LICENSE = "apache-2.0"
HUB_TAGS = ("speech", "audio", "self-supervised-learning", "knowledge-distillation", "robustness", "noise-robust")
LIBRISPEECH_SPLITS = re.compile(r"^(train|dev|test)-(clean|other)(-\d+)?$")

# Hub task type and dataset id of each downstream task of the report (robustdistiller.downstream.tasks)
REPORT_TASKS = {
    "KS": ("audio-classification", "keyword spotting", "speech_commands", "Speech Commands v1.0"),
    "IC": ("audio-classification", "intent classification", "fluent_speech_commands", "Fluent Speech Commands"),
    "ER": ("audio-classification", "emotion recognition", "iemocap", "IEMOCAP"),
    "SID": ("audio-classification", "speaker identification", "voxceleb1", "VoxCeleb1"),
    "ASV": ("audio-classification", "speaker verification", "voxceleb1", "VoxCeleb1"),
    "PR": ("automatic-speech-recognition", "phoneme recognition", "librispeech_asr", "LibriSpeech"),
    "ASR": ("automatic-speech-recognition", "speech recognition", "librispeech_asr", "LibriSpeech"),
    "SF": ("audio-classification", "slot filling", "snips", "SNIPS (Audio SNIPS)"),
    "QbE": ("audio-classification", "query by example", "quesst14", "QUESST 2014"),
    "SD": ("voice-activity-detection", "speaker diarization", "librimix", "LibriMix"),
    "SE": ("audio-to-audio", "speech enhancement", "voicebank_demand", "VoiceBank-DEMAND"),
    "SS": ("audio-to-audio", "source separation", "librimix", "LibriMix"),
}


def hub_id(source):
    """``source`` if it is a Hugging Face Hub id (``owner/name``, not a path that exists here), else None.

    Example
    -------
    >>> hub_id("microsoft/wavlm-base-plus"), hub_id("/tmp/teacher"), hub_id("teacher"), hub_id(None)
    ('microsoft/wavlm-base-plus', None, None, None)
    """
    if not isinstance(source, str) or source.startswith(("/", ".", "~")) or os.path.exists(source):
        return None
    return source if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", source) else None


def source_name(source):
    """How a card names a source: its hub id, or the base name of a local file or folder (never its path).

    Example
    -------
    >>> source_name("microsoft/wavlm-base-plus"), source_name("/tmp/runs/teacher/"), source_name(None)
    ('microsoft/wavlm-base-plus', 'teacher', None)
    """
    if source is None:
        return None
    source = str(source)
    return hub_id(source) or os.path.basename(os.path.normpath(os.path.expanduser(source))) or source


def hub_datasets(train_splits):
    """Hub dataset ids of the run's training splits (``librispeech_asr`` for LibriSpeech split names).

    Example
    -------
    >>> hub_datasets(["train-clean-100", "train-other-500"]), hub_datasets(["my_audio"]), hub_datasets(None)
    (['librispeech_asr'], [], [])
    """
    splits = [str(split) for split in (train_splits or [])]
    return ["librispeech_asr"] if splits and all(LIBRISPEECH_SPLITS.match(split) for split in splits) else []


def read_report(path):
    """``report.json`` of a cross-task report (:func:`robustdistiller.report.build_report`); ExportError if unusable."""
    try:
        with open(path, encoding="utf-8") as fin:
            report = json.load(fin)
    except (OSError, ValueError) as error:
        raise ExportError(f"--results '{path}': cannot read the report ({error})") from error
    if not isinstance(report, dict) or not isinstance(report.get("tasks"), dict):
        raise ExportError(
            f"--results '{path}' is no report.json of python -m robustdistiller.report (it has no 'tasks')"
        )
    return report


def report_upstream(report, path, candidates=(), name=None):
    """The upstream of ``report`` that is this model: ``name`` if given, else the one run from a ``candidates`` path.

    An upstream matches when a task's ``results.json`` recorded it as loaded from one of ``candidates`` (the
    exported checkpoint, the export folder). Raises :class:`ExportError` saying that the report has no entry for this
    model, with the upstreams it has.
    """
    upstreams = {}
    for entry in report["tasks"].values():
        for upstream, cell in (entry.get("cells") or {}).items():
            recorded = cell.get("upstream") or {}
            upstreams.setdefault(upstream, set()).update(
                value for value in (recorded.get("source"), recorded.get("source_path")) if value
            )
    for upstream in report.get("upstreams") or []:
        upstreams.setdefault(upstream, set())
    listing = ", ".join(
        f"{upstream} ({', '.join(sorted(sources)) or 'no results'})" for upstream, sources in upstreams.items()
    )
    if name is not None:
        if name not in upstreams:
            raise ExportError(
                f"--results '{path}' has no entry for upstream '{name}' (--results-upstream); it has: {listing or 'none'}"
            )
        return name
    wanted = {os.path.realpath(os.path.expanduser(str(value))) for value in candidates if value}
    matches = [
        upstream
        for upstream, sources in upstreams.items()
        if any(os.path.realpath(os.path.expanduser(source)) in wanted for source in sources)
    ]
    if len(matches) != 1:
        reason = "no entry for this model" if not matches else f"several entries for this model ({', '.join(matches)})"
        raise ExportError(
            f"--results '{path}' has {reason}: its upstreams are {listing or 'none'}; pass --results-upstream NAME "
            f"to name the one that is this model"
        )
    return matches[0]


def model_index_results(report, upstream, path="report.json"):
    """``huggingface_hub.EvalResult`` per task and condition of ``upstream`` in ``report`` (the tables' units).

    The dataset's ``config`` is the condition (``clean``, ``babble_5dB``, ...), its split ``test``; the metric is the
    task's primary metric as the report's tables show it (fractions as percent). Raises :class:`ExportError` when the
    upstream has no number in the report.
    """
    from huggingface_hub import EvalResult

    results = []
    for task, entry in report["tasks"].items():
        cell = (entry.get("cells") or {}).get(upstream) or {}
        if cell.get("status") != "ok":
            continue
        task_type, task_name, dataset_type, dataset_name = REPORT_TASKS.get(
            task, ("feature-extraction", task, task.lower(), task)
        )
        metric = entry.get("metric")
        unit = " (%)" if entry.get("scale") in ("fraction", "percent") else ""
        for condition in entry.get("conditions") or list(cell.get("values") or {}):
            value = display_value((cell.get("values") or {}).get(condition), entry.get("scale"))
            if value is None or value != value:
                continue
            results.append(
                EvalResult(
                    task_type=task_type,
                    task_name=f"{task_name} ({task}, SUPERB-style, frozen upstream)",
                    dataset_type=dataset_type,
                    dataset_name=f"{dataset_name} ({condition})",
                    dataset_config=condition,
                    dataset_split="test",
                    metric_type=str(metric).lower(),
                    metric_name=f"{metric}{unit}",
                    metric_value=round(float(value), 4),
                )
            )
    if not results:
        raise ExportError(
            f"--results '{path}': the report has no results for upstream '{upstream}' (all missing or failed)"
        )
    return results


def hub_front_matter(
    library_name, base_model=None, datasets=(), extra_tags=(), eval_results=None, model_name="RobustDistiller student"
):
    """The card's YAML front matter (``---`` ... ``---``), written by ``huggingface_hub.ModelCardData``.

    Example
    -------
    >>> card = hub_front_matter("transformers", base_model="microsoft/wavlm-base-plus", datasets=["librispeech_asr"])
    >>> print(card, end="")  # doctest: +ELLIPSIS
    ---
    base_model: microsoft/wavlm-base-plus
    datasets:
    - librispeech_asr
    library_name: transformers
    license: apache-2.0
    pipeline_tag: feature-extraction
    tags:
    - speech
    ...
    ---
    """
    from huggingface_hub import ModelCardData

    tags = list(dict.fromkeys([*HUB_TAGS, *extra_tags]))
    data = ModelCardData(
        license=HUB_LICENSE,
        library_name=library_name,
        tags=tags,
        base_model=base_model or None,
        datasets=list(datasets) or None,
        pipeline_tag="feature-extraction",
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    return f"---\n{data.to_yaml()}\n---\n"


def model_card(student, info, metadata, include_heads, s3prl_written, onnx_parity=None, eval_results=None):
    """The exported folder's ``README.md`` (Hub front matter first; ``eval_results`` from :func:`model_index_results`)."""
    training = info.get("training") or {}
    teacher = source_name(training.get("teacher_source")) or "unknown (not recorded with this checkpoint)"
    teacher_details = ""
    if training.get("teacher_type"):
        teacher_details = f" ({training['teacher_type']}, {format_count(training['teacher_parameters'])} parameters)"
    layers = ", ".join(str(layer) for layer in student.target_layers)
    data = ", ".join(training.get("train_splits", [])) or "unknown"
    if training.get("data_folder"):
        data += f" (from `{source_name(training['data_folder'])}`)"
    corruption = training.get("corruption")
    if isinstance(corruption, dict):
        probabilities = corruption.get("condition_probs", {})
        parts = [", ".join(f"{name} {value:g}" for name, value in probabilities.items())]
        if "snr_db" in corruption:
            parts.append("SNR {}-{} dB".format(*corruption["snr_db"]))
        corruption = "; ".join(part for part in parts if part)
        if training.get("enhancement_weight"):
            corruption += f"; enhancement head, weight {training['enhancement_weight']:g}"
    corruption = corruption or "not recorded"
    steps = info.get("step")
    steps_text = "unknown" if steps is None else f"{steps:,}"
    if training.get("number_of_steps"):
        steps_text += f" of {training['number_of_steps']:,} scheduled"
    valid_loss = info.get("valid_loss")
    backbone_count = num_parameters(student.backbone)
    heads_count = num_parameters(student.prediction_heads)
    rows = [
        ("Recipe", training.get("recipe", "RobustDistiller / DistilHuBERT student")),
        (
            "Architecture",
            f"DistilHuBERT: CNN + {student.config.num_hidden_layers} transformer layers, "
            f"{student.config.hidden_size} dims (`transformers.HubertModel`)",
        ),
        ("Teacher", f"`{teacher}`{teacher_details}; predicted layers {layers}"),
        ("Distillation data", data),
        ("Corruption (student input)", corruption),
        ("Optimizer steps", steps_text),
        ("Validation loss", "unknown" if valid_loss is None else f"{valid_loss:.4f}"),
        (
            "Parameters",
            f"backbone {format_count(backbone_count)}; prediction heads "
            f"{format_count(heads_count) if include_heads else 'not exported'}",
        ),
        ("Per-utterance CNN normalisation", "yes" if metadata["per_utterance_norm"] else "no"),
        ("Exported from", f"`{source_name(info['source'])}` ({info['format']})"),
    ]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    s3prl_section = ""
    if s3prl_written:
        s3prl_section = f"""
### s3prl

`{S3PRL_FILE}` is in s3prl's distiller format (`Distiller` + `Config`):

```bash
python run_downstream.py -m train -u distiller_local -k /path/to/this/folder/{S3PRL_FILE} -d <task> ...
```
"""
    onnx_section = ""
    if onnx_parity is not None:
        int8_line = (
            f"\n`onnx/encoder_int8.onnx`: the same graph quantised to int8: "
            f"{onnx_parity.get('int8_quantization', 'dynamic int8 (MatMul, Gemm)')}."
            if "int8_cosine" in onnx_parity
            else ""
        )
        onnx_section = f"""
### ONNX Runtime (no torch needed)

`onnx/encoder.onnx`: inputs `waveform` [B, T] (16 kHz) and `lengths` [B] (valid samples); outputs
`projection`, `hidden_states` [B, {student.config.num_hidden_layers + 1}, F, D], `predictions` and `frame_lengths`
(dynamic batch and time axes; padding rules as `EncoderInterface`).{int8_line}

```python
from robustdistiller.inference.onnx_runtime import OnnxEncoder   # numpy + onnxruntime + soundfile (+ scipy)

encoder = OnnxEncoder("/path/to/this/folder/onnx/encoder.onnx")
out = encoder.encode_file("utterance.wav")        # any sample rate; channels are averaged
```

Measured parity at export:

{format_onnx_parity(onnx_parity)}
"""
    padding_note = (
        "The student was trained with the first CNN layer's GroupNorm computed over each utterance's "
        "own samples. `EncoderInterface`, the padding-safe `AutoModel` class (`trust_remote_code=True`) and the "
        f"SpeechBrain lobe of `{MODELING_FILE}` do the same for padded batches. A plain `transformers` "
        "model (or SpeechBrain's `HuBERT` wrapper) normalises over the padded length, so feed it one utterance at a "
        "time: then all loaders give the same features."
        if metadata["per_utterance_norm"]
        else "The student was trained with the CNN's first GroupNorm spanning the padded length (plain Hugging Face "
        "behaviour). The padding-safe `AutoModel` class and SpeechBrain lobe give each utterance of a padded batch "
        "the features it has alone; the other loaders' features of a padded batch depend on the padding."
    )
    front_matter = hub_front_matter(
        "transformers",
        base_model=hub_id(training.get("teacher_source")),
        datasets=hub_datasets(training.get("train_splits")),
        extra_tags=["distilhubert", "hubert", "speechbrain"],
        eval_results=eval_results,
        model_name=training.get("recipe") or "RobustDistiller student",
    )
    return (
        front_matter
        + f"""# Distilled speech encoder (RobustDistiller)

| | |
|---|---|
{table}

The hidden states are `[encoder input, layer 1, ..., layer {student.config.num_hidden_layers}]` at 50 frames/s
(16 kHz input). SUPERB-style downstream models use a learnable weighted sum of all of them.

## Load it

### SpeechBrain, with `robustdistiller` installed

```python
from robustdistiller.inference.interface import EncoderInterface

encoder = EncoderInterface.from_hparams(source="/path/to/this/folder", savedir="pretrained_cache")
out = encoder.encode_file("utterance.wav")        # any sample rate; stereo is averaged
out.hidden_states                                 # [1, {student.config.num_hidden_layers + 1}, frames, {
            student.config.hidden_size
        }]
out.predictions                                   # [1, {len(student.target_layers)}, frames, dims]: teacher layers {
            layers
        }
batch = encoder.encode_batch(wavs, wav_lens)      # padded batch, SpeechBrain relative lengths
batch.frame_mask                                  # [B, frames], True on valid frames
```

### SpeechBrain, without `robustdistiller` (the interface module ships in this folder)

```python
from speechbrain.inference.interfaces import foreign_class

encoder = foreign_class(source="/path/to/this/folder", pymodule_file="{INTERFACE_FILE}",
                        classname="EncoderInterface", savedir="pretrained_cache")
```

### transformers and SpeechBrain recipes: padding-safe

A plain `HubertModel` (and SpeechBrain's `HuBERT` wrapper) normalises its first CNN layer over the padded length,
so padded batches change the shorter utterances' features; the class and lobe shipped in `{MODELING_FILE}` do not.

```python
from transformers import AutoFeatureExtractor, AutoModel

model = AutoModel.from_pretrained("/path/to/this/folder", trust_remote_code=True).eval()  # PaddingSafeHubertModel
inputs = AutoFeatureExtractor.from_pretrained("/path/to/this/folder")(
    [wav_a, wav_b], sampling_rate=16000, padding=True, return_tensors="pt")    # 16 kHz arrays
hidden_states = model(**inputs, output_hidden_states=True).hidden_states       # padded batch, attention_mask used
```

In a SpeechBrain recipe YAML, in place of `speechbrain.integrations.huggingface.hubert.HuBERT` (with `robustdistiller`
installed, or this folder on `sys.path` as `modeling_robustdistiller`):

```yaml
ssl_model: !new:robustdistiller.inference.modeling_robustdistiller.RobustDistillerSSL
    source: /path/to/this/folder
    output_all_hiddens: True     # (wav, wav_lens) -> [layers + 1, batch, frames, dims]
    freeze: True
```

`HubertModel.from_pretrained("/path/to/this/folder")` also loads it (one utterance at a time).
{s3prl_section}{onnx_section}
## Padding

{padding_note}

## Files

`hyperparams.yaml`, `encoder.ckpt`{", `prediction_expand.ckpt`, `prediction_split.ckpt`" if include_heads else ""},
`{INTERFACE_FILE}`: SpeechBrain. `config.json`, `model.safetensors`, `preprocessor_config.json`: transformers
(the backbone weights are stored in both formats); `{MODELING_FILE}`: the padding-safe transformers class and
SpeechBrain lobe.{f" `{S3PRL_FILE}`: s3prl." if s3prl_written else ""}{
            " `onnx/encoder.onnx`"
            + (", `onnx/encoder_int8.onnx`" if onnx_parity and "int8_cosine" in onnx_parity else "")
            + ": ONNX Runtime."
            if onnx_parity is not None
            else ""
        }
`{MANIFEST_FILE}`: the files of this export with their SHA-256 (`python -m robustdistiller.export ... --overwrite`
replaces this folder only while they are unchanged).
"""
    )


def report_eval_results(results, results_upstream, source, output_folder):
    """The ``model-index`` entries of ``--results`` (None without it) for an export of ``source`` to ``output_folder``.

    ``source`` may be a list: every path that is this model (what the user named, the checkpoint file it resolved to).
    """
    if results is None:
        return None
    report = read_report(results)
    sources = source if isinstance(source, (list, tuple)) else [source]
    candidates = [output_folder] + [os.fspath(item) for item in sources if isinstance(item, (str, os.PathLike))]
    upstream = report_upstream(report, results, candidates, results_upstream)
    return model_index_results(report, upstream, results)
