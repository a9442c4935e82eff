"""The model card (``README.md``) of an exported DistilHuBERT-layout student.

It says what the student is (teacher, predicted layers, data, corruption, steps, parameters), how to load it
(SpeechBrain with and without this package, transformers, s3prl, ONNX Runtime) and, with ``--onnx``, the parity
measured at export. A DPWavLM's card is :func:`robustdistiller.dpwavlm.export.model_card`.
"""

from robustdistiller.export.folder import MANIFEST_FILE
from robustdistiller.export.layout import INTERFACE_FILE, S3PRL_FILE
from robustdistiller.export.onnx import format_onnx_parity
from robustdistiller.models.student import num_parameters


def format_count(count):
    """A parameter count for a model card.

    Example
    -------
    >>> format_count(23_586_325)
    '23,586,325 (23.59M)'
    """
    return f"{count:,} ({count / 1e6:.2f}M)"


def model_card(student, info, metadata, include_heads, s3prl_written, onnx_parity=None):
    """The exported folder's ``README.md``."""
    training = info.get("training") or {}
    teacher = training.get("teacher_source", "unknown (not recorded with this checkpoint)")
    teacher_details = ""
    if training.get("teacher_type"):
        teacher_details = f" ({training['teacher_type']}, {format_count(training['teacher_parameters'])} parameters)"
    layers = ", ".join(str(layer) for layer in student.target_layers)
    data = ", ".join(training.get("train_splits", [])) or "unknown"
    if training.get("data_folder"):
        data += f" (from `{training['data_folder']}`)"
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
        ("Exported from", f"`{info['source']}` ({info['format']})"),
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
            "\n`onnx/encoder_int8.onnx`: the same graph with dynamically quantised int8 weights (MatMul/Gemm)."
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
        "own samples. `EncoderInterface` does the same for padded batches. A plain `transformers` "
        "model normalises over the padded length, so feed it one utterance at a time (or wrap the call "
        "in `robustdistiller.inference.interface.per_utterance_cnn_norm(model.feature_extractor, lengths)`): "
        "then all loaders give the same features."
        if metadata["per_utterance_norm"]
        else "The CNN's first GroupNorm spans the padded length (plain Hugging Face behaviour), so padded "
        "batches give slightly different features than single utterances with every loader."
    )
    return f"""# Distilled speech encoder (RobustDistiller)

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

### transformers (and SpeechBrain's Hugging Face wrapper)

```python
from transformers import HubertModel

model = HubertModel.from_pretrained("/path/to/this/folder").eval()
hidden_states = model(wav[None], output_hidden_states=True).hidden_states   # one utterance, 16 kHz

from speechbrain.integrations.huggingface.hubert import HuBERT
ssl = HuBERT(source="/path/to/this/folder", save_path="pretrained_cache", output_all_hiddens=True, freeze=True)
```
{s3prl_section}{onnx_section}
## Padding

{padding_note}

## Files

`hyperparams.yaml`, `encoder.ckpt`{", `prediction_expand.ckpt`, `prediction_split.ckpt`" if include_heads else ""},
`{INTERFACE_FILE}`: SpeechBrain. `config.json`, `model.safetensors`, `preprocessor_config.json`: transformers
(the backbone weights are stored in both formats).{f" `{S3PRL_FILE}`: s3prl." if s3prl_written else ""}{
        " `onnx/encoder.onnx`"
        + (", `onnx/encoder_int8.onnx`" if onnx_parity and "int8_cosine" in onnx_parity else "")
        + ": ONNX Runtime."
        if onnx_parity is not None
        else ""
    }
`{MANIFEST_FILE}`: the files of this export with their SHA-256 (`python -m robustdistiller.export ... --overwrite`
replaces this folder only while they are unchanged).
"""
