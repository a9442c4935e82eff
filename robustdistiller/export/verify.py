"""Checking an export in fresh processes: six loaders' features compared with the student's.

``python -m robustdistiller.export ... --verify`` runs :func:`verify_export`: the folder is loaded with
SpeechBrain's ``EncoderInterface`` (this package), ``foreign_class`` (``custom_interface.py``, without this package
on the path), ``transformers.HubertModel`` and SpeechBrain's Hugging Face ``HuBERT`` wrapper (one utterance at a
time: they normalise over the padded length), and the export's padding-safe pair on the padded batch
(``AutoModel.from_pretrained(folder, trust_remote_code=True)`` with ``AutoFeatureExtractor(padding=True)``, and the
SpeechBrain lobe ``RobustDistillerSSL``), each in a fresh, offline Python process (:data:`PROBES`), on
:func:`parity_batch`'s speech-like test signals.
"""

import os
import subprocess
import sys
import tempfile

import torch

from robustdistiller.export.errors import ExportError
from robustdistiller.export.loading import load_student

PARITY_TOLERANCE = 1e-4
REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_PROBE_HEADER = """
import sys, torch
folder, batch_file, output_file, savedir = sys.argv[1:5]
batch = torch.load(batch_file)
wavs, wav_lens, lengths = batch["wavs"], batch["wav_lens"], batch["lengths"].tolist()
"""

_PROBE_INTERFACE_TAIL = """
out = encoder.encode_batch(wavs, wav_lens)
frames = out.frame_mask.sum(dim=1).tolist()
hidden = [out.hidden_states[i, :, :n] for i, n in enumerate(frames)]
predictions = None if out.predictions is None else [out.predictions[i, :, :n] for i, n in enumerate(frames)]
torch.save({"hidden_states": hidden, "predictions": predictions, "modules": sorted(sys.modules)}, output_file)
"""

# Each probe runs in a fresh interpreter with the hub disabled.
PROBES = {
    "speechbrain_interface": _PROBE_HEADER
    + """
from robustdistiller.inference.interface import EncoderInterface
encoder = EncoderInterface.from_hparams(source=folder, savedir=savedir)
"""
    + _PROBE_INTERFACE_TAIL,
    "foreign_class": _PROBE_HEADER
    + """
from speechbrain.inference.interfaces import foreign_class
encoder = foreign_class(source=folder, pymodule_file="custom_interface.py", classname="EncoderInterface",
                        savedir=savedir)
"""
    + _PROBE_INTERFACE_TAIL,
    "transformers": _PROBE_HEADER
    + """
from transformers import HubertModel
model = HubertModel.from_pretrained(folder).eval()
hidden = []
with torch.no_grad():
    for i, n in enumerate(lengths):
        hidden.append(torch.stack(model(wavs[i : i + 1, :n], output_hidden_states=True).hidden_states)[:, 0])
torch.save({"hidden_states": hidden, "predictions": None, "modules": sorted(sys.modules)}, output_file)
""",
    "speechbrain_hubert": _PROBE_HEADER
    + """
from speechbrain.integrations.huggingface.hubert import HuBERT
model = HuBERT(source=folder, save_path=savedir, output_all_hiddens=True, freeze=True).eval()
hidden = [model(wavs[i : i + 1, :n])[:, 0] for i, n in enumerate(lengths)]
torch.save({"hidden_states": hidden, "predictions": None, "modules": sorted(sys.modules)}, output_file)
""",
    # The padding-safe choices of every export (modeling_robustdistiller.py): the padded batch at once.
    "transformers_padding_safe": _PROBE_HEADER
    + """
from transformers import AutoFeatureExtractor, AutoModel
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
assert type(model).__name__ == "PaddingSafeHubertModel", type(model)
extractor = AutoFeatureExtractor.from_pretrained(folder)
inputs = extractor([wavs[i, :n].numpy() for i, n in enumerate(lengths)], sampling_rate=16000, padding=True,
                   return_tensors="pt")
with torch.no_grad():
    out = torch.stack(model(**inputs, output_hidden_states=True).hidden_states)
frames = model._get_feat_extract_output_lengths(torch.tensor(lengths)).tolist()
hidden = [out[:, i, :f] for i, f in enumerate(frames)]
torch.save({"hidden_states": hidden, "predictions": None, "modules": sorted(sys.modules)}, output_file)
""",
    "speechbrain_lobe": _PROBE_HEADER
    + """
sys.path.insert(0, folder)
from modeling_robustdistiller import RobustDistillerSSL
lobe = RobustDistillerSSL(folder, output_all_hiddens=True, freeze=True).eval()
out = lobe(wavs, wav_lens)
frames = lobe.model._get_feat_extract_output_lengths(torch.tensor(lengths)).tolist()
hidden = [out[:, i, :f] for i, f in enumerate(frames)]
torch.save({"hidden_states": hidden, "predictions": None, "modules": sorted(sys.modules)}, output_file)
""",
}


def parity_batch(seconds=(1.0, 0.7, 0.45), sample_rate=16000, seed=0):
    """A padded batch of speech-like test signals (harmonics with a moving pitch, plus noise).

    Returns
    -------
    dict
        ``wavs`` ``[B, T]``, ``wav_lens`` ``[B]`` (relative), ``lengths`` ``[B]`` (samples).
    """
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([int(round(duration * sample_rate)) for duration in seconds])
    wavs = torch.zeros(len(seconds), int(lengths.max()))
    for index, length in enumerate(lengths.tolist()):
        time = torch.arange(length) / sample_rate
        pitch = 110 + 40 * torch.rand(1, generator=generator) + 30 * torch.sin(2 * torch.pi * 3 * time)
        phase = 2 * torch.pi * torch.cumsum(pitch, 0) / sample_rate
        signal = sum(torch.sin(harmonic * phase) / harmonic for harmonic in range(1, 8))
        signal = signal * (0.5 + 0.5 * torch.sin(2 * torch.pi * 4 * time).abs())
        wavs[index, :length] = 0.1 * signal + 0.01 * torch.randn(length, generator=generator)
    return {"wavs": wavs, "wav_lens": lengths.float() / lengths.max(), "lengths": lengths}


def reference_features(student, batch):
    """Per-item valid-frame hidden states ``[N + 1, F_i, D]`` and predictions of the training module."""
    with torch.no_grad():
        output = student.eval()(batch["wavs"], batch["wav_lens"])
    frames = output.frame_mask.sum(dim=1).tolist()
    hidden = torch.stack(output.hidden_states, dim=1)
    return {
        "hidden_states": [hidden[i, :, :n] for i, n in enumerate(frames)],
        "predictions": [output.predictions[i, :, :n] for i, n in enumerate(frames)],
    }


def _max_difference(reference, candidate):
    if candidate is None:
        return None
    differences = []
    for expected, actual in zip(reference, candidate):
        if expected.shape != actual.shape:
            return float("inf")
        differences.append((expected - actual).abs().max().item())
    return max(differences)


def run_probe(loader, folder, batch_file, work_folder):
    """Runs one loader of :data:`PROBES` in a fresh, offline Python process; returns its output."""
    output_file = os.path.join(work_folder, f"{loader}.pt")
    # trust_remote_code copies the modeling file into HF_MODULES_CACHE: the work folder, not the user's cache
    environment = dict(
        os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=os.path.join(work_folder, "modules")
    )
    python_path = [entry for entry in environment.get("PYTHONPATH", "").split(os.pathsep) if entry]
    python_path = [entry for entry in python_path if os.path.abspath(entry) != REPOSITORY_ROOT]
    if loader == "speechbrain_interface":
        python_path.insert(0, REPOSITORY_ROOT)  # this one needs the package (installed or not)
    environment["PYTHONPATH"] = os.pathsep.join(python_path)
    command = [
        sys.executable,
        "-c",
        PROBES[loader],
        folder,
        batch_file,
        output_file,
        os.path.join(work_folder, f"{loader}_savedir"),
    ]
    completed = subprocess.run(command, cwd=work_folder, env=environment, capture_output=True, text=True)
    if completed.returncode != 0:
        raise ExportError(f"Loading '{folder}' with {loader} failed:\n{completed.stderr[-4000:]}")
    return torch.load(output_file)


def verify_export(folder, student=None, batch=None, loaders=tuple(PROBES), tolerance=PARITY_TOLERANCE, progress=None):
    """Loads an exported folder in fresh processes and compares the features with the student's.

    The SpeechBrain interfaces and the padding-safe pair get the padded batch; ``transformers.HubertModel`` and
    SpeechBrain's HF wrapper get one utterance at a time (see the padding note of the model card). The ``foreign_class`` process
    runs without this package on its path.

    Arguments
    ---------
    folder : str
        An exported folder.
    student : DistillerStudent, optional
        Reference module (default: the student rebuilt from ``folder`` itself).
    batch : dict, optional
        :func:`parity_batch` output.
    loaders : sequence of str
        Keys of :data:`PROBES`.
    tolerance : float
        Largest accepted absolute difference.
    progress : callable, optional
        Called with one line before each step (``"verifying (2/4): loading in a fresh process with foreign_class ..."``);
        the command line prints these, as the fresh processes take several seconds each.

    Returns
    -------
    dict
        ``{loader: {"hidden_states": max abs diff, "predictions": max abs diff or None,
        "standalone": bool}}``.

    Raises
    ------
    ExportError
        A loader fails or differs by more than ``tolerance``.
    """
    report = progress if progress is not None else (lambda line: None)
    if student is None:
        report(f"verifying: loading the student from {folder} ...")
        student, _ = load_student(folder)
    batch = parity_batch() if batch is None else batch
    report("verifying: computing the reference features on a padded batch ...")
    reference = reference_features(student, batch)
    results = {}
    with tempfile.TemporaryDirectory(prefix="export_check_") as work_folder:
        batch_file = os.path.join(work_folder, "batch.pt")
        torch.save(batch, batch_file)
        for step, loader in enumerate(loaders, 1):
            report(f"verifying ({step}/{len(loaders)}): loading in a fresh process with {loader} ...")
            output = run_probe(loader, os.path.abspath(folder), batch_file, work_folder)
            results[loader] = {
                "hidden_states": _max_difference(reference["hidden_states"], output["hidden_states"]),
                "predictions": _max_difference(reference["predictions"], output["predictions"]),
                "standalone": not any(name.startswith("robustdistiller") for name in output["modules"]),
            }
    failed = {
        loader: result
        for loader, result in results.items()
        if result["hidden_states"] > tolerance or (result["predictions"] or 0.0) > tolerance
    }
    if failed:
        raise ExportError(f"Exported features differ from the student's by more than {tolerance}: {failed}")
    return results


def format_verification(results):
    """Markdown table of :func:`verify_export` results."""
    rows = [
        "| loader | max abs diff, hidden states | max abs diff, predictions | without robustdistiller |",
        "|---|---|---|---|",
    ]
    for loader, result in results.items():
        predictions = "-" if result["predictions"] is None else f"{result['predictions']:.2e}"
        standalone = "yes" if result["standalone"] else "no"
        rows.append(f"| {loader} | {result['hidden_states']:.2e} | {predictions} | {standalone} |")
    return "\n".join(rows)
