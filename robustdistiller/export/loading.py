"""Finding and loading trained students from any of our checkpoint formats.

:func:`load_student` reads a training output folder, its ``save`` folder (the checkpoint with the lowest
validation loss is taken, :func:`best_checkpoint`), one ``CKPT+...`` folder, a ``student.ckpt`` file, an
s3prl-format ``.ckpt`` (DistilHuBERT, the authors' ``rd_*.ckpt``; :mod:`robustdistiller.export.s3prl`), an
exported folder, a Hugging Face hub id of one (:func:`fetch_from_hub`), or a DPWavLM: a DPHuBERT-format ``.pth``
(``final.pth``, the released DPWavLM / RDDPWavLM files, an exported ``dpwavlm.pth``) or a DPWavLM output folder.
:func:`locate_checkpoint` says which of these a path is.
"""

import glob
import json
import logging
import os

import torch
import yaml
from huggingface_hub import snapshot_download
from transformers import HubertModel

from robustdistiller.dpwavlm.checkpoint import load_dphubert_checkpoint
from robustdistiller.dpwavlm.encoder import DPWavLMEncoder
from robustdistiller.dpwavlm.stages import FINAL_FILE, PRUNED_FILE, SUMMARY_FILE, read_summary
from robustdistiller.export.errors import ExportError, UnfinishedRunError
from robustdistiller.export.layout import (
    DPHUBERT_EXTENSION,
    DPWAVLM_EXPORT_FILE,
    HEAD_FILES,
    TRAINING_INFO_FILE,
    grouped_conv_to_split,
)
from robustdistiller.export.s3prl import student_from_s3prl
from robustdistiller.inference.interface import hub_unavailable_reason, looks_like_path
from robustdistiller.models.student import DistillerStudent
from robustdistiller.models.teacher import load_model_folder

logger = logging.getLogger(__name__)


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
    return os.path.isfile(os.path.join(folder, "config.json")) and os.path.isfile(os.path.join(folder, "encoder.ckpt"))


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
    unavailable = hub_unavailable_reason()  # one quick probe instead of the hub client's retries
    try:
        return snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=unavailable is not None)
    except Exception as error:  # offline, unknown id and network errors come in many types
        advice = f"{unavailable} and the model is not cached" if unavailable else "the id is unknown on the hub"
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
        folder,
        model_class=HubertModel,
        model_types=("hubert",),
        expected="an exported student backbone",
        error_class=ExportError,
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
    try:
        model, _ = load_dphubert_checkpoint(path)
    except (ValueError, RuntimeError) as error:
        raise ExportError(f"Cannot load the DPHuBERT-format checkpoint '{path}': {error}") from error
    return model.eval(), read_summary(os.path.dirname(path))


def _dpwavlm_from_file(path, info, per_utterance_norm):
    """A :class:`~robustdistiller.dpwavlm.encoder.DPWavLMEncoder` from a DPHuBERT ``.pth`` and its info."""
    model, summary = load_dpwavlm(path)
    info["training"] = summary
    steps = [summary.get(stage, {}).get("steps") for stage in ("stage1", "stage2")]
    info["step"] = sum(steps) if all(step is not None for step in steps) else None
    return DPWavLMEncoder(model, per_utterance_norm=bool(per_utterance_norm)).eval(), info
