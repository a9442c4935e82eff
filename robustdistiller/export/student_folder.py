"""Exporting a trained student as one folder for SpeechBrain and transformers (and s3prl, ONNX Runtime).

:func:`export_student` is the export of every source :func:`~robustdistiller.export.loading.load_student` reads;
a DPWavLM (a DPHuBERT ``.pth``) goes to :func:`robustdistiller.dpwavlm.export.export_dpwavlm`. A DistilHuBERT-layout
student becomes one self-contained folder:

* ``hyperparams.yaml`` + ``encoder.ckpt``, ``prediction_expand.ckpt``, ``prediction_split.ckpt`` +
  ``custom_interface.py`` (a verbatim copy of :mod:`robustdistiller.inference.interface`): a SpeechBrain pretrained
  model, loaded with ``EncoderInterface.from_hparams(source=folder)`` or, without this package,
  ``foreign_class(source=folder, pymodule_file="custom_interface.py", classname="EncoderInterface")``;
* ``config.json`` + ``model.safetensors`` + ``preprocessor_config.json``: the backbone as a
  ``transformers.HubertModel`` folder (also what SpeechBrain's HF ``HuBERT`` wrapper loads);
* ``README.md``: a model card with Hugging Face Hub front matter (and, with ``--results report.json``, a
  ``model-index``; :mod:`robustdistiller.export.model_card`): teacher, data, steps, parameters, the loading snippets;
* with ``--s3prl``, ``s3prl_distiller.ckpt`` for s3prl's ``distiller_local`` upstream;
* with ``--onnx``, ``onnx/encoder.onnx`` (and with ``--int8 [all|matmul]`` ``onnx/encoder_int8.onnx``, int8 of
  the whole student or of its matrix products, :mod:`robustdistiller.export.onnx_quantization`): the student for
  ONNX Runtime (:mod:`robustdistiller.export.onnx`, run without torch by
  :mod:`robustdistiller.inference.onnx_runtime`); their parity with the PyTorch student is measured at export (the
  export fails if the fp32 file differs by more than 1e-4) and written into the model card;
* ``export_manifest.json``: what the export wrote (the overwrite rules of :mod:`robustdistiller.export.folder`).

The backbone weights are stored twice (``encoder.ckpt`` and ``model.safetensors``, 94 MB each at full
size): SpeechBrain's ``Pretrainer`` reads ``torch.save`` files and a ``hyperparams.yaml`` cannot name
the folder it is loaded from, so the two loaders cannot share one file.
"""

import copy
import json
import logging
import os
import shutil

import torch
import yaml
from transformers import Wav2Vec2FeatureExtractor

import robustdistiller.inference.interface as standalone_interface
import robustdistiller.inference.modeling_robustdistiller as padding_safe_modeling
from robustdistiller.inference.interface import transformers_progress_bars_off
from robustdistiller.dpwavlm.export import export_dpwavlm
from robustdistiller.export.errors import ExportError
from robustdistiller.export.folder import write_export_folder
from robustdistiller.export.layout import (
    AUTO_MAP,
    EXPORT_FILES,
    HEAD_FILES,
    INTERFACE_FILE,
    MODELING_FILE,
    ONNX_FILES,
    S3PRL_FILE,
    split_to_grouped_conv,
)
from robustdistiller.export.loading import load_student, locate_checkpoint
from robustdistiller.export.model_card import model_card, report_eval_results
from robustdistiller.export.onnx import UntraceableStudentError, export_onnx, verify_onnx
from robustdistiller.export.s3prl import student_to_s3prl
from robustdistiller.models.student import DistillerStudent
from robustdistiller.runs.write_errors import as_write_error, reporting_write_errors

logger = logging.getLogger(__name__)


def _export_file_names(include_heads, s3prl, onnx=False, int8=False):
    """The files an export with these options writes (the manifest aside)."""
    return [
        name
        for name in EXPORT_FILES
        if (include_heads or name not in HEAD_FILES)
        and (s3prl or name != S3PRL_FILE)
        and (onnx or name != ONNX_FILES[0])
        and (int8 or name != ONNX_FILES[1])
    ]


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


def export_student(
    source,
    output_folder,
    include_heads=True,
    s3prl=False,
    overwrite=False,
    onnx=False,
    int8=False,
    hf_inexact="skip",
    results=None,
    results_upstream=None,
):
    """Writes a trained student as one folder loadable by SpeechBrain, transformers (and s3prl).

    Arguments
    ---------
    source : str or DistillerStudent
        Anything :func:`~robustdistiller.export.loading.load_student` reads, or a student module.
    output_folder : str
        Created; must be empty or missing unless ``overwrite``.
    include_heads : bool
        Export the prediction heads (their outputs estimate the teacher's layers).
    s3prl : bool
        Also write ``s3prl_distiller.ckpt``.
    overwrite : bool
        Replace an earlier export in ``output_folder``: only the files its ``export_manifest.json``
        lists, and only if they are unchanged (see :mod:`robustdistiller.export.folder`); other files are kept.
    onnx : bool
        Also write ``onnx/encoder.onnx`` (:mod:`robustdistiller.export.onnx`), checked against the student.
    int8 : bool or str
        Also write ``onnx/encoder_int8.onnx`` (implies ``onnx``): ``"all"`` (or True) static int8 of the whole
        student, ``"matmul"`` dynamic int8 of the matrix products (:mod:`robustdistiller.export.onnx_quantization`).
        A DPWavLM source gets the same files (:mod:`robustdistiller.export.dpwavlm_onnx`).
    hf_inexact : str
        DPWavLM sources only (a DPHuBERT ``.pth``, exported by :mod:`robustdistiller.dpwavlm.export`): ``skip``,
        ``warn`` or ``refuse`` when the padded ``transformers.WavLMModel`` copy cannot be exact.
    results : str, optional
        A cross-task report's ``report.json`` (``--results``): the model card's ``model-index`` gets this model's
        numbers per task and condition (:func:`robustdistiller.export.model_card.model_index_results`).
    results_upstream : str, optional
        The report's name of this model (``--results-upstream``); by default the upstream whose runs loaded the
        exported checkpoint or the export folder. ExportError (before anything is written) when the report has no
        entry for this model.

    Returns
    -------
    dict
        ``folder``, ``files`` (written, the manifest included), ``info`` (what
        :func:`~robustdistiller.export.loading.load_student` reported), ``onnx_parity``
        (:func:`robustdistiller.export.onnx.verify_onnx`, None without ONNX); for a DPWavLM also ``hf_copy``.

    Raises
    ------
    ExportError
        Unusable source; a non-empty output folder without ``overwrite``; with it, a folder that is
        not an unmodified earlier export where the new files would go (the message lists the files).
        Nothing in ``output_folder`` is changed then.
        :class:`~robustdistiller.export.errors.ExportFolderInUse`: another export is writing into ``output_folder``.
    robustdistiller.runs.write_errors.WriteFailedError
        A file cannot be written (a full disk): "no space left on <device> while writing <file>
        (<free> free)"; only this export's staging folder is removed.
    """
    if isinstance(source, (str, os.PathLike)) and locate_checkpoint(source)[1] == "dphubert":
        if s3prl:
            raise ExportError(
                f"'{source}' is a DPWavLM (DPHuBERT .pth): --s3prl applies to DistilHuBERT-layout students only "
                f"(its export is dpwavlm.pth + a padded transformers.WavLMModel copy; s3prl loads dpwavlm.pth)"
            )
        return export_dpwavlm(
            source,
            output_folder,
            overwrite=overwrite,
            hf_inexact=hf_inexact,
            results=results,
            results_upstream=results_upstream,
            onnx=onnx,
            int8=int8,
        )
    if isinstance(source, DistillerStudent):
        student = source.eval()
        info = {"source": "in-memory student", "format": "module", "step": None, "valid_loss": None, "training": {}}
    else:
        student, info = load_student(source)
    eval_results = report_eval_results(results, results_upstream, source, output_folder)
    onnx = bool(onnx or int8)
    files, onnx_parity = write_export_folder(
        output_folder,
        _export_file_names(include_heads, s3prl, onnx, int8),
        overwrite,
        info["source"],
        lambda staging: _write_export(
            student, info, staging, include_heads, s3prl, onnx=onnx, int8=int8, eval_results=eval_results
        ),
        source=source,
    )
    # DEBUG: the command line prints "Exported to <folder>: <files>" itself, once
    logger.debug("Exported the student to %s (%s)", os.path.abspath(output_folder), ", ".join(files))
    return {"folder": os.path.abspath(output_folder), "files": files, "info": info, "onnx_parity": onnx_parity}


def _write_export(student, info, folder, include_heads, s3prl, onnx=False, int8=False, eval_results=None):
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
    # AutoModel.from_pretrained(folder, trust_remote_code=True) loads the padding-safe class of MODELING_FILE;
    # HubertModel / AutoModel without trust_remote_code ignore the map.
    backbone.config.auto_map = dict(AUTO_MAP)
    try:
        with transformers_progress_bars_off():  # no "Writing model shards" bar in the export's console
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
        written = [
            name
            for name in ("config.json", "model.safetensors", "preprocessor_config.json")
            if not os.path.isfile(os.path.join(folder, name))
        ]
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
    excluded = {
        "transformers_version",
        "model_type",
        "architectures",
        "robustdistiller",
        "_name_or_path",
        "dtype",
        "torch_dtype",
        "id2label",
        "label2id",
    }
    config_values = {key: value for key, value in student.config.to_diff_dict().items() if key not in excluded}
    with reporting_write_errors(os.path.join(folder, "hyperparams.yaml")):
        with open(os.path.join(folder, "hyperparams.yaml"), "w", encoding="utf-8") as fout:
            fout.write(_hyperparams_text(config_values, metadata, include_heads, heads))
    with reporting_write_errors(os.path.join(folder, INTERFACE_FILE)):
        shutil.copyfile(os.path.abspath(standalone_interface.__file__), os.path.join(folder, INTERFACE_FILE))
    with reporting_write_errors(os.path.join(folder, MODELING_FILE)):
        shutil.copyfile(os.path.abspath(padding_safe_modeling.__file__), os.path.join(folder, MODELING_FILE))

    if s3prl:
        with reporting_write_errors(os.path.join(folder, S3PRL_FILE)):
            student_to_s3prl(student, os.path.join(folder, S3PRL_FILE), step=info.get("step") or 0)
    onnx_parity = None
    if onnx:
        try:
            paths = export_onnx(student, os.path.join(folder, "onnx"), int8=int8)  # names a file it cannot write
            onnx_parity = verify_onnx(student, paths["fp32"], paths["int8"])
        except (UntraceableStudentError, ValueError) as error:
            raise ExportError(f"ONNX export of '{info['source']}' failed: {error}") from error
    with reporting_write_errors(os.path.join(folder, "README.md")):
        with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as fout:
            fout.write(model_card(student, info, metadata, include_heads, s3prl, onnx_parity, eval_results))
    return onnx_parity
