"""Loading trained students from any of our formats, and exporting them for SpeechBrain and transformers.

Run ``python -m robustdistiller.export <checkpoint> <output folder> [--s3prl] [--onnx [--int8]] [--verify]``.
``<checkpoint>`` is anything :func:`load_student` reads: a training output folder, its ``save`` folder
(the checkpoint with the lowest validation loss is taken), one ``CKPT+...`` folder, a ``student.ckpt``
file, an s3prl-format ``.ckpt`` (DistilHuBERT, the authors' ``rd_*.ckpt``), an exported folder, or a DPWavLM:
a DPHuBERT-format ``.pth`` (``final.pth``, the released DPWavLM / RDDPWavLM files) or a DPWavLM output folder,
whose export (``dpwavlm.pth`` + a padded ``transformers.WavLMModel`` copy + a model card) is
:mod:`robustdistiller.dpwavlm.export`'s.

The output is one self-contained folder:

* ``hyperparams.yaml`` + ``encoder.ckpt``, ``prediction_expand.ckpt``, ``prediction_split.ckpt`` +
  ``custom_interface.py`` (a verbatim copy of :mod:`robustdistiller.inference.interface`): a SpeechBrain pretrained
  model, loaded with ``EncoderInterface.from_hparams(source=folder)`` or, without this package,
  ``foreign_class(source=folder, pymodule_file="custom_interface.py", classname="EncoderInterface")``;
* ``config.json`` + ``model.safetensors`` + ``preprocessor_config.json``: the backbone as a
  ``transformers.HubertModel`` folder (also what SpeechBrain's HF ``HuBERT`` wrapper loads);
* ``README.md``: a model card (teacher, data, steps, parameters, the loading snippets);
* with ``--s3prl``, ``s3prl_distiller.ckpt`` for s3prl's ``distiller_local`` upstream;
* with ``--onnx``, ``onnx/encoder.onnx`` (and with ``--int8`` ``onnx/encoder_int8.onnx``, dynamically
  quantised): the student for ONNX Runtime (:mod:`robustdistiller.export.onnx`, run without torch by
  :mod:`robustdistiller.inference.onnx_runtime`); their parity with the PyTorch student is measured at export (the
  export fails if the fp32 file differs by more than 1e-4) and written into the model card;
* ``export_manifest.json``: what the export wrote (see below).

Overwriting. An export writes into an empty or new folder. ``--overwrite`` lets it replace an
*earlier export of ours* only: the folder's ``export_manifest.json`` (format name and version, source,
time, and each file it wrote with its size and SHA-256) must be present and every file it lists
unchanged. Then the listed files are replaced or removed and nothing else is touched. A file the new
export would write that no valid manifest lists (a teacher's ``config.json``, a training run's
``hyperparams.yaml``, a ``README.md``, an export made before manifests existed) is never overwritten: the
export stops with :class:`ExportError` listing those files, before anything is written. Files that do
not collide (a user's notes next to an export) are left alone. The files are first written to a
staging folder inside the output folder (``.export-staging-XXXXXXXX``) and moved into place at the
end, so a failed export leaves the folder as it was: it removes its own staging folder and nothing
else (a folder it created goes too, but only while it is still empty).

Concurrency. An export holds an exclusive ``flock`` on the output folder while it runs (as a
training run holds its output folder): a second export into the same folder stops at once with
:class:`ExportFolderInUse`. Staging folders left by a killed export (the lock is gone with its
process) are removed, with a warning naming each, by the next export into the folder; they never
make it "not empty". A write that fails (a full disk) raises
:class:`~robustdistiller.runs.write_errors.WriteFailedError`: "no space left on <device> while writing
<file> (<free> free)".

The backbone weights are stored twice (``encoder.ckpt`` and ``model.safetensors``, 94 MB each at full
size): SpeechBrain's ``Pretrainer`` reads ``torch.save`` files and a ``hyperparams.yaml`` cannot name
the folder it is loaded from, so the two loaders cannot share one file.

``--verify`` loads the folder in fresh processes (no network, and for ``foreign_class`` without this
package on the path) four ways and compares their features with the student's (:func:`verify_export`).
"""

import argparse
import contextlib
import copy
import datetime
import fcntl
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile

import torch
import yaml
from transformers import HubertModel, Wav2Vec2FeatureExtractor

from robustdistiller.inference.interface import hub_offline, looks_like_path
from robustdistiller.models.student import DistillerStudent, num_parameters
from robustdistiller.models.teacher import load_model_folder
from robustdistiller.runs.write_errors import WriteFailedError, as_write_error, reporting_write_errors

logger = logging.getLogger(__name__)

TRAINING_INFO_FILE = "distillation_info.json"
INTERFACE_FILE = "custom_interface.py"
S3PRL_FILE = "s3prl_distiller.ckpt"
HEAD_FILES = ("prediction_expand.ckpt", "prediction_split.ckpt")
MANIFEST_FILE = "export_manifest.json"
MANIFEST_FORMAT = "robustdistiller-export"
MANIFEST_VERSION = 1
_STAGING_PREFIX = ".export-staging-"
DPHUBERT_EXTENSION = ".pth"  # DPHuBERT's checkpoints (s3prl's are .ckpt)
DPWAVLM_EXPORT_FILE = "dpwavlm.pth"  # the compact model in an export of a DPWavLM (robustdistiller.dpwavlm.export)
# Files an export writes (the heads and the s3prl file only when asked for), besides the manifest.
EXPORT_FILES = (
    "hyperparams.yaml",
    "encoder.ckpt",
    *HEAD_FILES,
    INTERFACE_FILE,
    "config.json",
    "model.safetensors",
    "preprocessor_config.json",
    "README.md",
    S3PRL_FILE,
    "onnx/encoder.onnx",
    "onnx/encoder_int8.onnx",
)
ONNX_FILES = ("onnx/encoder.onnx", "onnx/encoder_int8.onnx")
PARITY_TOLERANCE = 1e-4
REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ExportError(ValueError):
    """A checkpoint or export folder cannot be read or written (the message names the path)."""


class UnfinishedRunError(ExportError):
    """The source is one of our training runs, but it has not written its model yet."""


# ------------------------------------------------------------------------------------------------
# Finding and loading students
# ------------------------------------------------------------------------------------------------


def _read_yaml(path):
    """A YAML mapping (a checkpoint's ``CKPT.yaml``); an unreadable or damaged file is named."""
    try:
        with open(path, encoding="utf-8") as fin:
            content = yaml.safe_load(fin) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ExportError(f"'{path}' cannot be read (truncated or damaged: {type(error).__name__}: {error})") from error
    if not isinstance(content, dict):
        raise ExportError(f"'{path}' holds a {type(content).__name__}, not a mapping")
    return content


def _checkpoint_folders(save_folder):
    """``(folder, meta)`` of SpeechBrain checkpoints that hold a student, oldest first."""
    folders = sorted(glob.glob(os.path.join(save_folder, "CKPT+*")))
    found = []
    for folder in folders:
        meta_file = os.path.join(folder, "CKPT.yaml")
        if os.path.isfile(os.path.join(folder, "student.ckpt")) and os.path.isfile(meta_file):
            try:
                found.append((folder, _read_yaml(meta_file)))
            except ExportError as error:  # as the training's recovery does: skipped, named
                logger.warning("Skipping checkpoint %s: %s", folder, error)
    return found


def best_checkpoint(save_folder):
    """The checkpoint folder with the lowest ``valid_loss`` (else the newest) in a save folder.

    Arguments
    ---------
    save_folder : str
        A folder holding SpeechBrain ``CKPT+...`` folders.

    Returns
    -------
    str or None
    """
    found = _checkpoint_folders(save_folder)
    if not found:
        return None
    validated = [(meta["valid_loss"], folder) for folder, meta in found if "valid_loss" in meta]
    if validated:
        return min(validated)[1]
    return max(found, key=lambda item: item[1].get("unixtime", 0))[0]


def _is_exported_folder(folder):
    return os.path.isfile(os.path.join(folder, "config.json")) and os.path.isfile(
        os.path.join(folder, "encoder.ckpt")
    )


def fetch_from_hub(repo_id, cache_dir=None):
    """Downloads an exported model from the Hugging Face hub (a connected machine) to the local cache.

    Arguments
    ---------
    repo_id : str
        ``owner/name`` of a repository holding an exported folder.
    cache_dir : str, optional
        Hugging Face cache folder.

    Returns
    -------
    str
        The local snapshot folder.

    Raises
    ------
    ExportError
        The hub is disabled (``HF_HUB_OFFLINE``) and the model is not cached, or it is unreachable.
    """
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=hub_offline())
    except Exception as error:  # offline, unknown id and network errors come in many types
        advice = (
            "the Hugging Face hub is disabled (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE) and the model is not "
            "cached"
            if hub_offline()
            else "the hub is unreachable or the id is unknown"
        )
        raise ExportError(
            f"'{repo_id}' is not a local path and {advice}: download the model elsewhere and pass its "
            f"local folder ({type(error).__name__})"
        ) from error


def locate_checkpoint(source):
    """Resolves what :func:`load_student` was given to one file or folder and its kind.

    Arguments
    ---------
    source : str
        Training output folder, save folder, ``CKPT+...`` folder, ``student.ckpt``, s3prl ``.ckpt``,
        exported folder, DPHuBERT ``.pth`` or DPWavLM output / export folder.

    Returns
    -------
    (str, str)
        ``(path, kind)`` with kind ``"speechbrain"`` (a CKPT folder), ``"state_dict"`` (a
        ``student.ckpt`` file), ``"s3prl"`` (a file), ``"exported"`` (a folder) or ``"dphubert"`` (a
        DPHuBERT-format ``.pth`` file: a DPWavLM run's ``final.pth``, found also from its output folder, an
        exported ``dpwavlm.pth``, or the released DPWavLM / RDDPWavLM files).

    Raises
    ------
    ExportError
        Nothing usable at ``source``; the message says what was expected.
    """
    source = os.fspath(source)
    if not os.path.exists(os.path.expanduser(source)) and not looks_like_path(source):
        return fetch_from_hub(source), "exported"
    source = os.path.abspath(os.path.expanduser(source))
    if os.path.isfile(source):
        if os.path.basename(source) == "student.ckpt":
            return source, "state_dict"
        if source.endswith(DPHUBERT_EXTENSION):
            return source, "dphubert"
        return source, "s3prl"
    if not os.path.isdir(source):
        raise ExportError(f"Checkpoint source '{source}' does not exist")
    if os.path.isfile(os.path.join(source, "student.ckpt")):
        return source, "speechbrain"
    dphubert_file = _dpwavlm_file_in(source)
    if dphubert_file is not None:
        return dphubert_file, "dphubert"
    if _is_exported_folder(source):
        return source, "exported"
    for save_folder in (source, os.path.join(source, "save")):
        folder = best_checkpoint(save_folder)
        if folder is not None:
            return folder, "speechbrain"
    raise ExportError(
        f"No student found in '{source}': expected a training output folder (with save/CKPT+*/), a "
        f"save folder (with CKPT+*/student.ckpt), a CKPT+* folder, a student.ckpt file, an s3prl "
        f".ckpt file, an exported folder (config.json + encoder.ckpt), a DPHuBERT-format .pth file or a "
        f"DPWavLM output folder (final.pth)"
    )


def _dpwavlm_file_in(folder):
    """The DPHuBERT ``.pth`` a DPWavLM export or output folder stands for, or None for other folders.

    An export folder holds ``dpwavlm.pth``; an output folder of ``train.py hparams/*dpwavlm.yaml`` holds
    ``dpwavlm_summary.json`` and, once both stages are done, ``final.pth``.
    """
    from robustdistiller.dpwavlm.stages import FINAL_FILE, PRUNED_FILE, SUMMARY_FILE

    exported = os.path.join(folder, DPWAVLM_EXPORT_FILE)
    if os.path.isfile(exported):
        return exported
    if not os.path.isfile(os.path.join(folder, SUMMARY_FILE)):
        return None
    final = os.path.join(folder, FINAL_FILE)
    if os.path.isfile(final):
        return final
    raise UnfinishedRunError(
        f"'{folder}' is a DPWavLM run whose stage 2 has not finished (no {FINAL_FILE}): resume it with the same "
        f"command, or pass {os.path.join(folder, PRUNED_FILE)} to use the stage-1 model"
    )


def _load_state_dict(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ExportError(f"Cannot read the student state dict '{path}': {error}") from error


def _training_info_near(folder):
    """The recipe's ``distillation_info.json`` in ``folder`` or its parents (up to two levels)."""
    for candidate in (folder, os.path.dirname(folder), os.path.dirname(os.path.dirname(folder))):
        path = os.path.join(candidate, TRAINING_INFO_FILE)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as fin:
                    return json.load(fin)
            except (OSError, UnicodeDecodeError, ValueError) as error:
                raise ExportError(
                    f"'{path}' cannot be read (truncated or damaged: {type(error).__name__}: {error}); it is the "
                    f"run's record for the model card: restore it, or remove it to export without it"
                ) from error
    return {}


def _student_from_exported_folder(folder, per_utterance_norm=None):
    """Rebuilds the training-layout student from an exported folder (errors name the damaged file)."""
    backbone = load_model_folder(
        folder, model_class=HubertModel, model_types=("hubert",),
        expected="an exported student backbone", error_class=ExportError,
    )
    metadata = dict(getattr(backbone.config, "robustdistiller", None) or {})
    target_layers = metadata.get("target_layers", [])
    has_heads = all(os.path.isfile(os.path.join(folder, name)) for name in HEAD_FILES)
    expand = split = None
    if has_heads:
        expand = _load_state_dict(os.path.join(folder, HEAD_FILES[0]))
        split = _load_state_dict(os.path.join(folder, HEAD_FILES[1]))
    num_targets = len(target_layers) if target_layers else 1
    target_size = split["weight"].shape[0] // num_targets if has_heads else None
    inner_size = split["weight"].shape[1] if has_heads else None
    if per_utterance_norm is None:
        per_utterance_norm = metadata.get("per_utterance_norm", False)
    student = DistillerStudent(
        backbone.config,
        target_layers=target_layers or (1,),
        feature_grad_mult=metadata.get("feature_grad_mult", 0.1),
        target_size=target_size,
        per_utterance_norm=per_utterance_norm,
        head_inner_size=inner_size,
    )
    student.backbone.load_state_dict(backbone.state_dict())
    if has_heads:
        student.prediction_heads.expand.load_state_dict(expand)
        weight, bias = grouped_conv_to_split(split["weight"], split["bias"], num_targets)
        with torch.no_grad():
            student.prediction_heads.split_weight.copy_(weight)
            student.prediction_heads.split_bias.copy_(bias)
    else:
        logger.warning("%s has no prediction heads: the student's heads are random", folder)
    return student.eval(), metadata


def load_student(source, per_utterance_norm=None):
    """Loads a trained student from any of our formats (see :func:`locate_checkpoint`).

    Arguments
    ---------
    source : str
        Training output / save / ``CKPT+`` folder, ``student.ckpt``, s3prl ``.ckpt``, exported folder,
        DPHuBERT ``.pth`` or DPWavLM output / export folder.
    per_utterance_norm : bool, optional
        Overrides the saved per-utterance CNN normalisation setting.

    Returns
    -------
    student : DistillerStudent or DPWavLMEncoder
        In eval mode, on the CPU; a :class:`~robustdistiller.dpwavlm.encoder.DPWavLMEncoder` for a DPHuBERT
        ``.pth`` (no prediction heads; per-utterance normalisation only when asked for).
    info : dict
        ``source``, ``format``, ``step`` (optimizer steps, None if unknown), ``valid_loss`` and
        ``training`` (the recipe's ``distillation_info.json``, or what the format records).

    Raises
    ------
    ExportError
        Nothing usable at ``source``, or a damaged file (a truncated ``model.safetensors``, a backbone
        that is not a HuBERT-layout student, an unreadable state dict): the message names the file.
    """
    path, kind = locate_checkpoint(source)
    info = {"source": path, "format": kind, "step": None, "valid_loss": None, "training": {}}
    if kind == "dphubert":
        return _dpwavlm_from_file(path, info, per_utterance_norm)
    if kind == "s3prl":
        from robustdistiller.export.s3prl import student_from_s3prl

        student, s3prl_info = student_from_s3prl(path, per_utterance_norm=bool(per_utterance_norm))
        info["step"] = s3prl_info.get("step")
        info["training"] = {"s3prl_config": s3prl_info.get("config", {})}
        return student, info
    if kind == "exported":
        student, metadata = _student_from_exported_folder(path, per_utterance_norm)
        info["step"] = metadata.get("step")
        info["valid_loss"] = metadata.get("valid_loss")
        info["training"] = metadata.get("training", {})
        return student, info
    state_file = path if kind == "state_dict" else os.path.join(path, "student.ckpt")
    try:
        student = DistillerStudent.from_state_dict(_load_state_dict(state_file), per_utterance_norm)
    except ValueError as error:
        raise ExportError(f"Cannot rebuild the student from '{state_file}': {error}") from error
    checkpoint_folder = os.path.dirname(state_file)
    meta_file = os.path.join(checkpoint_folder, "CKPT.yaml")
    if os.path.isfile(meta_file):
        meta = _read_yaml(meta_file)
        info["step"] = meta.get("optimizer_step")
        info["valid_loss"] = meta.get("valid_loss")
    info["training"] = _training_info_near(checkpoint_folder)
    return student, info


def load_dpwavlm(path):
    """A DPHuBERT ``.pth`` (strict, ``weights_only``) and the run summary beside it (``{}`` when none).

    Raises
    ------
    ExportError
        An unreadable or non-DPHuBERT file, or weights that do not fit its config (the message names ``path``).
    """
    from robustdistiller.dpwavlm.checkpoint import load_dphubert_checkpoint
    from robustdistiller.dpwavlm.stages import read_summary

    try:
        model, _ = load_dphubert_checkpoint(path)
    except (ValueError, RuntimeError) as error:
        raise ExportError(f"Cannot load the DPHuBERT-format checkpoint '{path}': {error}") from error
    return model.eval(), read_summary(os.path.dirname(path))


def _dpwavlm_from_file(path, info, per_utterance_norm):
    """A :class:`~robustdistiller.dpwavlm.encoder.DPWavLMEncoder` from a DPHuBERT ``.pth`` and its info."""
    from robustdistiller.dpwavlm.encoder import DPWavLMEncoder

    model, summary = load_dpwavlm(path)
    info["training"] = summary
    steps = [summary.get(stage, {}).get("steps") for stage in ("stage1", "stage2")]
    info["step"] = sum(steps) if all(step is not None for step in steps) else None
    return DPWavLMEncoder(model, per_utterance_norm=bool(per_utterance_norm)).eval(), info


# ------------------------------------------------------------------------------------------------
# Exporting
# ------------------------------------------------------------------------------------------------


def file_sha256(path, chunk_size=1 << 20):
    """SHA-256 of a file (hex), read in chunks.

    Example
    -------
    >>> path = os.path.join(tempfile.mkdtemp(), "abc.txt")
    >>> with open(path, "w") as fout:
    ...     _ = fout.write("abc")
    >>> file_sha256(path)[:16]
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fin:
        for block in iter(lambda: fin.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder, names, source):
    """Writes ``export_manifest.json``: format, version, source, time and each file's size and SHA-256.

    Arguments
    ---------
    folder : str
        The folder holding the files.
    names : iterable of str
        The files of ``folder`` the export wrote (plain names).
    source : str
        What was exported (for the record).

    Returns
    -------
    dict
        The manifest.

    Example
    -------
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "config.json"), "w") as fout:
    ...     _ = fout.write("{}")
    >>> manifest = write_manifest(folder, ["config.json"], source="example")
    >>> read_manifest(folder)["files"]["config.json"]["bytes"], modified_files(folder, manifest)
    (2, [])
    """
    files = {}
    for name in sorted(names):
        path = os.path.join(folder, name)
        files[name] = {"bytes": os.path.getsize(path), "sha256": file_sha256(path)}
    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": str(source),
        "files": files,
    }
    with open(os.path.join(folder, MANIFEST_FILE), "w", encoding="utf-8") as fout:
        json.dump(manifest, fout, indent=2)
        fout.write("\n")
    return manifest


def _is_plain_name(name):
    """A file name without any directory part, or one in the ``onnx`` subfolder (what a manifest may list)."""
    if isinstance(name, str) and name.startswith("onnx/"):
        name = name[len("onnx/"):]
    return (
        isinstance(name, str)
        and name not in ("", ".", "..", MANIFEST_FILE)
        and "/" not in name
        and "\\" not in name
    )


def _folder_entries(folder, ignore=()):
    """Entries of ``folder`` (not in ``ignore``), with the files of its ``onnx`` subfolder as ``onnx/<name>``."""
    entries = set(os.listdir(folder)) - set(ignore)
    onnx_folder = os.path.join(folder, "onnx")
    if "onnx" in entries and os.path.isdir(onnx_folder):
        entries |= {f"onnx/{name}" for name in os.listdir(onnx_folder)}
    return sorted(entries)


def read_manifest(folder):
    """The manifest of an earlier export in ``folder``, or None if there is none we wrote.

    None also for an unreadable file, another program's ``export_manifest.json``, a newer format
    version, or a file list naming anything but plain file names (a manifest never points outside its
    folder).
    """
    path = os.path.join(folder, MANIFEST_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fin:
            manifest = json.load(fin)
    except (OSError, ValueError) as error:
        logger.warning("Cannot read %s (%s): not treated as an earlier export", path, error)
        return None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    valid = (
        isinstance(files, dict)
        and manifest.get("format") == MANIFEST_FORMAT
        and isinstance(manifest.get("format_version"), int)
        and manifest["format_version"] <= MANIFEST_VERSION
        and all(_is_plain_name(name) and isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                for name, entry in files.items())
    )
    if not valid:
        logger.warning("%s is not a manifest of this version of robustdistiller.export", path)
        return None
    return manifest


def modified_files(folder, manifest):
    """Files a manifest lists that are present but no longer what the export wrote (size or SHA-256)."""
    changed = []
    for name, entry in sorted(manifest["files"].items()):
        path = os.path.join(folder, name)
        if not os.path.lexists(path):
            continue  # removed since: nothing to lose
        if (
            not os.path.isfile(path)
            or ("bytes" in entry and os.path.getsize(path) != entry["bytes"])
            or file_sha256(path) != entry["sha256"]
        ):
            changed.append(name)
    return changed


def replaceable_files(output_folder, names, overwrite, ignore=()):
    """The files of ``output_folder`` an export that writes ``names`` removes first; raises if unsafe.

    Arguments
    ---------
    output_folder : str
        The export folder (may not exist).
    names : iterable of str
        The files the export writes (the manifest is added).
    overwrite : bool
        ``--overwrite``.
    ignore : sequence of str
        Entries of ``output_folder`` not to count (the staging folder).

    Returns
    -------
    list of str
        The files of an earlier export (its manifest included) to remove; empty for a new or empty
        folder, or a folder whose files do not collide with ``names`` (``overwrite`` given).

    Raises
    ------
    ExportError
        A non-empty folder without ``overwrite``; an earlier export whose files were changed; or a
        file the export would write that no valid manifest lists. The message lists the files.
    """
    existing = _folder_entries(output_folder, ignore) if os.path.isdir(output_folder) else []
    if not existing:
        return []
    if not overwrite:
        raise ExportError(
            f"Export folder '{output_folder}' is not empty; choose another (new or empty) folder, or pass "
            f"--overwrite to replace an earlier export there (only the files its {MANIFEST_FILE} lists)"
        )
    manifest = read_manifest(output_folder)
    owned = []
    if manifest is not None:
        changed = modified_files(output_folder, manifest)
        if changed:
            raise ExportError(
                f"Export folder '{output_folder}' holds an earlier export whose files changed since it was "
                f"written (size or SHA-256 differs from {MANIFEST_FILE}): {', '.join(changed)}. --overwrite "
                f"replaces only an unmodified export: move those files away, or choose another folder"
            )
        owned = [name for name in manifest["files"] if os.path.lexists(os.path.join(output_folder, name))]
        owned.append(MANIFEST_FILE)
    collisions = sorted(
        name for name in set(names) | {MANIFEST_FILE}
        if name in existing and name not in owned
    )
    if collisions:
        if manifest is not None:
            reason = f"its {MANIFEST_FILE} does not list them"
        elif MANIFEST_FILE in existing:
            reason = f"its {MANIFEST_FILE} is not one an export of this version wrote"
        else:
            reason = f"it has no {MANIFEST_FILE}, so it is no export of ours"
        raise ExportError(
            f"Export folder '{output_folder}' holds files the export would overwrite but did not write "
            f"({reason}): {', '.join(collisions)}. --overwrite replaces only an earlier export's own files; "
            f"choose another (new or empty) export folder"
        )
    return owned


def _export_file_names(include_heads, s3prl, onnx=False, int8=False):
    """The files an export with these options writes (the manifest aside)."""
    return [
        name for name in EXPORT_FILES
        if (include_heads or name not in HEAD_FILES) and (s3prl or name != S3PRL_FILE)
        and (onnx or name != ONNX_FILES[0]) and (int8 or name != ONNX_FILES[1])
    ]


def split_to_grouped_conv(split_weight, split_bias):
    """Training-layout split linear (``[K, I, T]``, ``[K, T]``) to a grouped ``Conv1d``'s parameters.

    Example
    -------
    >>> weight, bias = split_to_grouped_conv(torch.randn(3, 4, 2), torch.randn(3, 2))
    >>> weight.shape, bias.shape
    (torch.Size([6, 4, 1]), torch.Size([6]))
    >>> w, b = grouped_conv_to_split(weight, bias, num_targets=3)
    >>> w.shape, b.shape
    (torch.Size([3, 4, 2]), torch.Size([3, 2]))
    """
    num_targets, inner_size, target_size = split_weight.shape
    weight = split_weight.permute(0, 2, 1).reshape(num_targets * target_size, inner_size, 1)
    return weight.contiguous(), split_bias.reshape(-1).contiguous()


def grouped_conv_to_split(weight, bias, num_targets):
    """Inverse of :func:`split_to_grouped_conv`."""
    channels, inner_size, _ = weight.shape
    target_size = channels // num_targets
    split_weight = weight[:, :, 0].reshape(num_targets, target_size, inner_size).permute(0, 2, 1)
    return split_weight.contiguous(), bias.reshape(num_targets, target_size).contiguous()


def _hyperparams_text(config_values, metadata, include_heads, heads):
    """The exported ``hyperparams.yaml``."""
    config_yaml = yaml.safe_dump(config_values, default_flow_style=None, sort_keys=True, width=100)
    config_yaml = "".join(f"        {line}\n" for line in config_yaml.splitlines())
    lines = [
        "# ############################################################################",
        "# Distilled speech encoder exported by robustdistiller.export (see README.md).",
        "# Load: EncoderInterface.from_hparams(source=<this folder>) or",
        '#       foreign_class(source=<this folder>, pymodule_file="custom_interface.py",',
        '#                     classname="EncoderInterface")',
        "# ############################################################################",
        "",
        "sample_rate: 16000",
        "# First CNN layer's GroupNorm over each utterance's own samples (as in training)",
        f"per_utterance_norm: {metadata['per_utterance_norm']}",
        f"target_layers: {json.dumps(metadata['target_layers'])}",
        "",
        "audio_normalizer: !new:speechbrain.dataio.preprocess.AudioNormalizer",
        "    sample_rate: !ref <sample_rate>",
        "    mix: avg-to-mono",
        "",
        "encoder: !new:transformers.HubertModel",
        "    config: !new:transformers.HubertConfig",
        config_yaml.rstrip("\n"),
    ]
    modules = ["encoder"]
    if include_heads:
        lines += [
            "",
            "# Prediction heads (teacher layers target_layers): Linear, GELU, one Linear per layer",
            "# held as a grouped 1x1 convolution",
            "prediction_expand: !new:torch.nn.Linear",
            f"    in_features: {heads.expand.in_features}",
            f"    out_features: {heads.expand.out_features}",
            "prediction_split: !new:torch.nn.Conv1d",
            f"    in_channels: {heads.inner_size * heads.num_targets}",
            f"    out_channels: {heads.target_size * heads.num_targets}",
            "    kernel_size: 1",
            f"    groups: {heads.num_targets}",
        ]
        modules += ["prediction_expand", "prediction_split"]
    lines += ["", "modules:"] + [f"    {name}: !ref <{name}>" for name in modules]
    lines += ["", "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer", "    loadables:"]
    lines += [f"        {name}: !ref <{name}>" for name in modules]
    # strict loading that names a truncated or foreign file (custom_interface.py is this folder's interface)
    lines += ["    custom_hooks:"]
    lines += [f"        {name}: !name:custom_interface.load_weights_naming_the_file" for name in modules]
    return "\n".join(lines) + "\n"


def format_count(count):
    """A parameter count for a model card.

    Example
    -------
    >>> format_count(23_586_325)
    '23,586,325 (23.59M)'
    """
    return f"{count:,} ({count / 1e6:.2f}M)"


def _model_card(student, info, metadata, include_heads, s3prl_written, onnx_parity=None):
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
        ("Architecture", f"DistilHuBERT: CNN + {student.config.num_hidden_layers} transformer layers, "
         f"{student.config.hidden_size} dims (`transformers.HubertModel`)"),
        ("Teacher", f"`{teacher}`{teacher_details}; predicted layers {layers}"),
        ("Distillation data", data),
        ("Corruption (student input)", corruption),
        ("Optimizer steps", steps_text),
        ("Validation loss", "unknown" if valid_loss is None else f"{valid_loss:.4f}"),
        ("Parameters", f"backbone {format_count(backbone_count)}; prediction heads "
         f"{format_count(heads_count) if include_heads else 'not exported'}"),
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
        from robustdistiller.export.onnx import format_onnx_parity

        int8_line = ("\n`onnx/encoder_int8.onnx`: the same graph with dynamically quantised int8 weights "
                     "(MatMul/Gemm)." if "int8_cosine" in onnx_parity else "")
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
out.hidden_states                                 # [1, {student.config.num_hidden_layers + 1}, frames, {student.config.hidden_size}]
out.predictions                                   # [1, {len(student.target_layers)}, frames, dims]: teacher layers {layers}
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

`hyperparams.yaml`, `encoder.ckpt`{', `prediction_expand.ckpt`, `prediction_split.ckpt`' if include_heads else ''},
`{INTERFACE_FILE}`: SpeechBrain. `config.json`, `model.safetensors`, `preprocessor_config.json`: transformers
(the backbone weights are stored in both formats).{f' `{S3PRL_FILE}`: s3prl.' if s3prl_written else ''}{
' `onnx/encoder.onnx`' + (', `onnx/encoder_int8.onnx`' if onnx_parity and 'int8_cosine' in onnx_parity else '')
+ ': ONNX Runtime.' if onnx_parity is not None else ''}
`{MANIFEST_FILE}`: the files of this export with their SHA-256 (`python -m robustdistiller.export ... --overwrite`
replaces this folder only while they are unchanged).
"""


def export_student(
    source, output_folder, include_heads=True, s3prl=False, overwrite=False, onnx=False, int8=False, hf_inexact="skip"
):
    """Writes a trained student as one folder loadable by SpeechBrain, transformers (and s3prl).

    Arguments
    ---------
    source : str or DistillerStudent
        Anything :func:`load_student` reads, or a student module.
    output_folder : str
        Created; must be empty or missing unless ``overwrite``.
    include_heads : bool
        Export the prediction heads (their outputs estimate the teacher's layers).
    s3prl : bool
        Also write ``s3prl_distiller.ckpt``.
    overwrite : bool
        Replace an earlier export in ``output_folder``: only the files its ``export_manifest.json``
        lists, and only if they are unchanged (see the module docstring); other files are kept.
    onnx : bool
        Also write ``onnx/encoder.onnx`` (:mod:`robustdistiller.export.onnx`), checked against the student.
    int8 : bool
        Also write ``onnx/encoder_int8.onnx`` (dynamic int8 quantisation; implies ``onnx``).
    hf_inexact : str
        DPWavLM sources only (a DPHuBERT ``.pth``, exported by :mod:`robustdistiller.dpwavlm.export`): ``skip``,
        ``warn`` or ``refuse`` when the padded ``transformers.WavLMModel`` copy cannot be exact.

    Returns
    -------
    dict
        ``folder``, ``files`` (written, the manifest included), ``info`` (what :func:`load_student`
        reported), ``onnx_parity`` (:func:`robustdistiller.export.onnx.verify_onnx`, None without ONNX);
        for a DPWavLM also ``hf_copy``.

    Raises
    ------
    ExportError
        Unusable source; a non-empty output folder without ``overwrite``; with it, a folder that is
        not an unmodified earlier export where the new files would go (the message lists the files).
        Nothing in ``output_folder`` is changed then. :class:`ExportFolderInUse`: another export is
        writing into ``output_folder``.
    robustdistiller.runs.write_errors.WriteFailedError
        A file cannot be written (a full disk): "no space left on <device> while writing <file>
        (<free> free)"; only this export's staging folder is removed.
    """
    if isinstance(source, (str, os.PathLike)) and locate_checkpoint(source)[1] == "dphubert":
        from robustdistiller.dpwavlm.export import export_dpwavlm

        if s3prl or onnx or int8:
            raise ExportError(
                f"'{source}' is a DPWavLM (DPHuBERT .pth): --s3prl, --onnx and --int8 apply to DistilHuBERT-layout "
                f"students only (its export is dpwavlm.pth + a padded transformers.WavLMModel copy)"
            )
        return export_dpwavlm(source, output_folder, overwrite=overwrite, hf_inexact=hf_inexact)
    if isinstance(source, DistillerStudent):
        student = source.eval()
        info = {"source": "in-memory student", "format": "module", "step": None, "valid_loss": None, "training": {}}
    else:
        student, info = load_student(source)
    onnx = bool(onnx or int8)
    onnx_options = {"onnx": True, "int8": int8} if onnx else {}  # the plain call as before without ONNX
    files, onnx_parity = write_export_folder(
        output_folder,
        _export_file_names(include_heads, s3prl, onnx, int8),
        overwrite,
        info["source"],
        lambda staging: _write_export(student, info, staging, include_heads, s3prl, **onnx_options),
        source=source,
    )
    logger.info("Exported the student to %s (%s)", os.path.abspath(output_folder), ", ".join(files))
    return {"folder": os.path.abspath(output_folder), "files": files, "info": info, "onnx_parity": onnx_parity}


class ExportFolderInUse(ExportError):
    """Another export (another process, or another call in this one) is writing into the same folder."""


_STAGING_NAME = re.compile(r"^" + re.escape(_STAGING_PREFIX) + r"[a-z0-9_]{8}$")  # tempfile.mkdtemp's names


@contextlib.contextmanager
def locked_export_folder(folder):
    """Holds an exclusive ``flock`` on the export folder itself for the duration of the block.

    Like a training run's lock (:mod:`robustdistiller.runs.run_folder`), the kernel releases it when the
    process ends, however it ends. The folder's own inode is locked, so no lock file is left in a
    user's folder. A second export into the same folder (another process, or another call in this one:
    each call opens the folder anew) stops with :class:`ExportFolderInUse`. On a file system without
    ``flock`` support the export goes on with a warning.

    Example
    -------
    >>> folder = tempfile.mkdtemp()
    >>> with locked_export_folder(folder):
    ...     try:
    ...         with locked_export_folder(folder):
    ...             pass
    ...     except ExportFolderInUse:
    ...         print("refused")
    refused
    """
    try:
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as error:
        raise ExportError(f"Cannot open the export folder '{folder}': {error.strerror or error}") from error
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExportFolderInUse(
                f"Export folder '{folder}' is in use by another export (it holds the folder's lock): wait for it "
                f"to finish, then run this command again (with --overwrite to replace what it wrote)"
            ) from None
        except OSError as error:  # e.g. a network file system without flock
            logger.warning("Cannot lock %s (%s): a concurrent export into it would not be detected", folder, error)
        try:
            replaced = os.stat(folder).st_ino != os.fstat(descriptor).st_ino
        except OSError:
            replaced = True
        if replaced:
            raise ExportFolderInUse(f"Export folder '{folder}' was removed or replaced while this export started")
        yield
    finally:
        os.close(descriptor)  # releases the lock


def remove_stale_staging(folder):
    """Removes the staging folders (``.export-staging-XXXXXXXX``) a killed export left in ``folder``.

    Called with the folder's lock held (:func:`locked_export_folder`): no live export owns them then.
    Only hidden folders with exactly the names ``tempfile.mkdtemp`` gives a staging folder are removed,
    each with a warning naming it.

    Returns
    -------
    list of str
        The names removed.
    """
    removed = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if _STAGING_NAME.match(name) and os.path.isdir(path) and not os.path.islink(path):
            logger.warning("Removing %s, the staging folder of an export that was interrupted.", path)
            shutil.rmtree(path)
            removed.append(name)
    return removed


def write_export_folder(output_folder, expected_names, overwrite, source_description, write, source=None):
    """The overwrite rules, lock, staging and manifest of every export (module docstring, "Overwriting").

    Arguments
    ---------
    output_folder : str
        The export folder (created when missing; removed again if the export fails and it is still
        empty).
    expected_names : list of str
        The files the export may write, checked before anything is written.
    overwrite : bool
        Replace an unmodified earlier export (only the files its manifest lists).
    source_description : str
        What was exported, for the manifest.
    write : callable
        ``write(staging_folder)`` writes the files; its return value is passed on.
    source : str, optional
        The checkpoint the export reads: refused as the output folder.

    Returns
    -------
    (list of str, object)
        The files written (the manifest included) and what ``write`` returned.

    Raises
    ------
    ExportError
        See :func:`replaceable_files`; :class:`ExportFolderInUse` while another export holds the folder.
    robustdistiller.runs.write_errors.WriteFailedError
        A file could not be written (a full disk): the message names it, the device and the free space.
        Only this export's staging folder is removed then; the folder keeps what it held.
    """
    output_folder = os.path.abspath(output_folder)
    if isinstance(source, (str, os.PathLike)) and os.path.abspath(os.fspath(source)) == output_folder:
        raise ExportError(f"The export folder '{output_folder}' is the checkpoint source itself")
    if os.path.lexists(output_folder) and not os.path.isdir(output_folder):
        raise ExportError(f"The export folder '{output_folder}' is a file, not a folder: choose another path")
    created = not os.path.isdir(output_folder)
    with reporting_write_errors(output_folder):
        os.makedirs(output_folder, exist_ok=True)
    failed = True
    try:
        with locked_export_folder(output_folder):
            remove_stale_staging(output_folder)
            replaceable_files(output_folder, expected_names, overwrite)  # fail early
            with reporting_write_errors(os.path.join(output_folder, _STAGING_PREFIX + "*")):
                staging = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=output_folder)
            try:
                with reporting_write_errors(staging):  # each file is named by the writer; this catches the rest
                    result = write(staging)
                names = [name for name in _folder_entries(staging) if os.path.isfile(os.path.join(staging, name))]
                # again with the files really written; the folder may also have changed meanwhile
                stale = replaceable_files(output_folder, names, overwrite, ignore=(os.path.basename(staging),))
                for name in sorted(stale, key=lambda name: name != MANIFEST_FILE):  # the old manifest first
                    os.remove(os.path.join(output_folder, name))
                for name in names:
                    os.makedirs(os.path.dirname(os.path.join(output_folder, name)), exist_ok=True)
                    os.replace(os.path.join(staging, name), os.path.join(output_folder, name))
                onnx_folder = os.path.join(output_folder, "onnx")
                if os.path.isdir(onnx_folder) and not os.listdir(onnx_folder):
                    os.rmdir(onnx_folder)  # an earlier export's ONNX files, replaced by an export without them
                with reporting_write_errors(os.path.join(output_folder, MANIFEST_FILE)):
                    write_manifest(output_folder, names, source_description)
            finally:
                shutil.rmtree(staging, ignore_errors=True)  # only this export's own staging
        failed = False
    finally:
        if failed and created:
            try:  # a folder this export created and nobody wrote into since; never a folder with files
                os.rmdir(output_folder)
            except OSError:
                pass
    return sorted(names + [MANIFEST_FILE]), result


def _write_export(student, info, folder, include_heads, s3prl, onnx=False, int8=False):
    """Writes every file of an export (the manifest aside) into ``folder``; returns the ONNX parity or None."""
    metadata = {
        "target_layers": list(student.target_layers),
        "per_utterance_norm": bool(student.per_utterance_norm),
        "feature_grad_mult": student.feature_grad_mult,
        "step": info.get("step"),
        "valid_loss": info.get("valid_loss"),
        "training": info.get("training") or {},
    }
    backbone = copy.deepcopy(student.backbone).eval()
    backbone.config.robustdistiller = metadata
    try:
        backbone.save_pretrained(folder, safe_serialization=True)
        Wav2Vec2FeatureExtractor(
            feature_size=1,
            sampling_rate=16000,
            padding_value=0.0,
            do_normalize=False,
            return_attention_mask=True,
        ).save_pretrained(folder)
    except (OSError, RuntimeError) as error:
        # the first of the three files that is missing is the one being written
        written = [name for name in ("config.json", "model.safetensors", "preprocessor_config.json")
                   if not os.path.isfile(os.path.join(folder, name))]
        failure = as_write_error(os.path.join(folder, (written or ["preprocessor_config.json"])[0]), error)
        if failure is None:
            raise
        raise failure from error

    def save(value, name):
        with reporting_write_errors(os.path.join(folder, name)):
            torch.save(value, os.path.join(folder, name))

    save(student.backbone.state_dict(), "encoder.ckpt")
    heads = student.prediction_heads
    if include_heads:
        save(heads.expand.state_dict(), HEAD_FILES[0])
        weight, bias = split_to_grouped_conv(heads.split_weight.detach(), heads.split_bias.detach())
        save({"weight": weight, "bias": bias}, HEAD_FILES[1])

    # Only the fields that differ from HubertConfig's defaults (what makes this model what it is).
    excluded = {"transformers_version", "model_type", "architectures", "robustdistiller", "_name_or_path",
                "dtype", "torch_dtype", "id2label", "label2id"}
    config_values = {key: value for key, value in student.config.to_diff_dict().items() if key not in excluded}
    with reporting_write_errors(os.path.join(folder, "hyperparams.yaml")):
        with open(os.path.join(folder, "hyperparams.yaml"), "w", encoding="utf-8") as fout:
            fout.write(_hyperparams_text(config_values, metadata, include_heads, heads))
    with reporting_write_errors(os.path.join(folder, INTERFACE_FILE)):
        shutil.copyfile(
            os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "inference", "interface.py"),
            os.path.join(folder, INTERFACE_FILE),
        )

    if s3prl:
        from robustdistiller.export.s3prl import student_to_s3prl

        with reporting_write_errors(os.path.join(folder, S3PRL_FILE)):
            student_to_s3prl(student, os.path.join(folder, S3PRL_FILE), step=info.get("step") or 0)
    onnx_parity = None
    if onnx:
        from robustdistiller.export.onnx import UntraceableStudentError, export_onnx, verify_onnx

        try:
            paths = export_onnx(student, os.path.join(folder, "onnx"), int8=int8)  # names a file it cannot write
            onnx_parity = verify_onnx(student, paths["fp32"], paths["int8"])
        except (UntraceableStudentError, ValueError) as error:
            raise ExportError(f"ONNX export of '{info['source']}' failed: {error}") from error
    with reporting_write_errors(os.path.join(folder, "README.md")):
        with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as fout:
            fout.write(_model_card(student, info, metadata, include_heads, s3prl, onnx_parity))
    return onnx_parity


# ------------------------------------------------------------------------------------------------
# Verification in fresh processes
# ------------------------------------------------------------------------------------------------

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
    environment = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    python_path = [entry for entry in environment.get("PYTHONPATH", "").split(os.pathsep) if entry]
    python_path = [entry for entry in python_path if os.path.abspath(entry) != REPOSITORY_ROOT]
    if loader == "speechbrain_interface":
        python_path.insert(0, REPOSITORY_ROOT)  # this one needs the package (installed or not)
    environment["PYTHONPATH"] = os.pathsep.join(python_path)
    command = [sys.executable, "-c", PROBES[loader], folder, batch_file, output_file,
               os.path.join(work_folder, f"{loader}_savedir")]
    completed = subprocess.run(command, cwd=work_folder, env=environment, capture_output=True, text=True)
    if completed.returncode != 0:
        raise ExportError(f"Loading '{folder}' with {loader} failed:\n{completed.stderr[-4000:]}")
    return torch.load(output_file)


def verify_export(folder, student=None, batch=None, loaders=tuple(PROBES), tolerance=PARITY_TOLERANCE):
    """Loads an exported folder in fresh processes and compares the features with the student's.

    The SpeechBrain interfaces get the padded batch; ``transformers`` and SpeechBrain's HF wrapper get
    one utterance at a time (see the padding note of the model card). The ``foreign_class`` process
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
    if student is None:
        student, _ = load_student(folder)
    batch = parity_batch() if batch is None else batch
    reference = reference_features(student, batch)
    results = {}
    with tempfile.TemporaryDirectory(prefix="export_check_") as work_folder:
        batch_file = os.path.join(work_folder, "batch.pt")
        torch.save(batch, batch_file)
        for loader in loaders:
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
    rows = ["| loader | max abs diff, hidden states | max abs diff, predictions | without robustdistiller |",
            "|---|---|---|---|"]
    for loader, result in results.items():
        predictions = "-" if result["predictions"] is None else f"{result['predictions']:.2e}"
        standalone = "yes" if result["standalone"] else "no"
        rows.append(f"| {loader} | {result['hidden_states']:.2e} | {predictions} | {standalone} |")
    return "\n".join(rows)


def main(argv=None):
    """Command line: ``python -m robustdistiller.export <checkpoint> <output folder>``."""
    parser = argparse.ArgumentParser(
        description="Export a trained student for SpeechBrain, transformers and (optionally) s3prl."
    )
    parser.add_argument(
        "checkpoint", help="training output/save/CKPT folder, student.ckpt, s3prl .ckpt, DPHuBERT .pth, DPWavLM run"
    )
    parser.add_argument("output", help="export folder (created; must be empty unless --overwrite)")
    parser.add_argument("--s3prl", action="store_true", help=f"also write {S3PRL_FILE}")
    parser.add_argument("--no-heads", action="store_true", help="leave out the prediction heads")
    parser.add_argument("--onnx", action="store_true", help="also write onnx/encoder.onnx (ONNX Runtime)")
    parser.add_argument("--int8", action="store_true", help="also write onnx/encoder_int8.onnx (implies --onnx)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace an earlier, unmodified export in the output folder (the files its {MANIFEST_FILE} lists)",
    )
    parser.add_argument("--verify", action="store_true", help="reload four ways in fresh processes and compare")
    parser.add_argument(
        "--hf-inexact",
        choices=("skip", "warn", "refuse"),
        default="skip",
        help="DPWavLM: when the padded transformers.WavLMModel copy cannot be exact (the CNN channels were gated "
        "during pruning), leave it out (default), write it anyway with a warning, or fail",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        result = export_student(
            args.checkpoint, args.output, include_heads=not args.no_heads, s3prl=args.s3prl, overwrite=args.overwrite,
            onnx=args.onnx, int8=args.int8, hf_inexact=args.hf_inexact,
        )
        print(f"Exported to {result['folder']}: {', '.join(result['files'])}")
        if result["onnx_parity"] is not None:
            from robustdistiller.export.onnx import format_onnx_parity

            print(format_onnx_parity(result["onnx_parity"]))
        if "hf_copy" in result:
            copy_report = result["hf_copy"]
            print(
                f"transformers copy: {'written' if copy_report['written'] else 'not written'} (max abs difference "
                f"{copy_report['max_abs_error']:.3g})"
            )
            if args.verify:
                print("--verify: the fresh-process checks are for DistilHuBERT-layout exports; this DPWavLM export's "
                      "transformers copy was checked against the model above, dpwavlm.pth is the source file itself")
        elif args.verify:
            student, _ = load_student(args.checkpoint)
            print(format_verification(verify_export(result["folder"], student)))
    except (ExportError, ValueError, WriteFailedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


