"""The DPWavLM stage driver: stage 1 (distill + prune) -> materialisation -> stage 2 (final distillation).

``python train.py hparams/dpwavlm.yaml`` (or ``hparams/robust_dpwavlm.yaml``) ends up in :func:`run_stages`
(``train.py`` dispatches on the YAML key ``recipe: dpwavlm``). Stages (``docs/reference/dphubert.md``
"Stages", "RobustDistiller + DPWavLM choices"):

1. **Stage 1**, ``stage1_steps`` (50k) optimizer steps of distillation + Lagrangian sparsity on the gated
   student (:class:`~robustdistiller.dpwavlm.brain.DPWavLMBrain`), SpeechBrain checkpoints in
   ``<save_folder>/stage1``.
2. **Materialisation** (eval gates): the kept last-conv channels are read *before* ``prune()``
   (:meth:`DPWavLM.last_conv_kept_index`), the student is pruned, the enhancement head's first BiLSTM
   layer keeps the matching input columns (:func:`narrow_head_input`, exact), and the compact model is
   written as a DPHuBERT ``.pth`` with ``distill_linear_projs``: ``<output_folder>/pruned.pth`` (the head's
   state in ``pruned_enhancement_head.pt``). It is reloaded strictly from that file, as DPHuBERT does.
3. **Stage 2**, ``stage2_steps`` (25k) of final distillation of the compact model (no multipliers, lr 1e-4,
   warm-up 5k), checkpoints in ``<save_folder>/stage2``, then ``<output_folder>/final.pth`` (and
   ``final_enhancement_head.pt``).

Resumable: a rerun continues the unfinished stage from its checkpoints (with the same settings:
:func:`check_run_settings` compares ``run_signature_keys``, the teacher's fingerprint, the prepared data's
fingerprint and the enhancement head's shapes, as the distillation recipe does; the stage checkpoints record
the signature's hash, and another run's are set aside); once ``pruned.pth`` exists stage 2
starts (or continues) from it; once ``final.pth`` exists nothing is done. Files are written atomically
(temporary name, then rename), each marker file last. ``<output_folder>/dpwavlm_summary.json`` records
the sparsity reached vs the target and the parameter counts before and after pruning.
"""

import json
import logging
import os

import torch
from speechbrain.utils.distributed import ddp_barrier, if_main_process
from speechbrain.utils.epoch_loop import EpochCounter

from robustdistiller.runs.checkpoints import AtomicCheckpointer
from robustdistiller.dpwavlm.brain import STUDENT_INPUTS, DPWavLMBrain, StudentFeatures
from robustdistiller.dpwavlm.checkpoint import from_hf_model, load_dphubert_checkpoint, save_dphubert_checkpoint
from robustdistiller.dpwavlm.objective import COS_TYPES, LayerProjections, SparsityLagrangian, parse_distill_layers
from robustdistiller.dpwavlm.schedule import ASCENT_MODES
from robustdistiller.runs.fingerprint import weights_fingerprint
from robustdistiller.runs.options import OptionError, integer_at_least
from robustdistiller.runs.run_folder import (
    architecture_signature,
    check_run_signature,
    data_signature,
    read_run_signature,
    run_signature,
    run_signature_hashes,
    signature_hash,
    write_run_signature,
)
from robustdistiller.models.student import num_parameters

logger = logging.getLogger(__name__)

#: DPHuBERT's ``--pruning_units`` names -> config flags of :class:`DPWavLM`.
PRUNING_UNITS = {
    "conv": "extractor_prune_conv_channels",
    "head": "encoder_prune_attention_heads",
    "attlayer": "encoder_prune_attention_layer",
    "interm": "encoder_prune_feed_forward_intermediate",
    "ffnlayer": "encoder_prune_feed_forward_layer",
}

PRUNED_FILE, FINAL_FILE, SUMMARY_FILE = "pruned.pth", "final.pth", "dpwavlm_summary.json"
PRUNED_HEAD_FILE, FINAL_HEAD_FILE = "pruned_enhancement_head.pt", "final_enhancement_head.pt"


def pruning_flags(pruning_units):
    """Config flags of DPHuBERT's ``--pruning_units`` (e.g. ``["conv", "head", "interm"]``).

    Example
    -------
    >>> sorted(name for name, on in pruning_flags(["conv", "head"]).items() if on)
    ['encoder_prune_attention_heads', 'extractor_prune_conv_channels']
    """
    unknown = [unit for unit in pruning_units if unit not in PRUNING_UNITS]
    if unknown:
        raise ValueError(f"Option `pruning_units`: unknown {unknown}, expected a subset of {sorted(PRUNING_UNITS)}")
    return {flag: unit in pruning_units for unit, flag in PRUNING_UNITS.items()}


def resolve_teacher_folder(source, cache_dir=None):
    """A local HF WavLM folder: ``source`` itself, or the hub snapshot of the id ``source``."""
    if os.path.isdir(str(source)):
        return str(source)
    from huggingface_hub import snapshot_download

    return snapshot_download(str(source), cache_dir=cache_dir)


@torch.no_grad()
def narrow_head_input(head, index):
    """Keeps the input columns ``index`` of the enhancement head's first BiLSTM layer (both directions).

    With ``index`` the kept last-conv channels, the head gives on the pruned CNN features exactly what it
    gave on the gated ones (the pruned channels were zeros there).

    Example
    -------
    >>> from robustdistiller.models.enhancement import EnhancementHead
    >>> head = EnhancementHead(input_size=6, hidden_size=4, num_layers=1).eval()
    >>> features = torch.randn(1, 10, 6) * torch.tensor([1.0, 0, 1, 1, 0, 1])
    >>> wav = torch.randn(1, 3200)
    >>> before = head(features, wav).mask
    >>> narrow_head_input(head, torch.tensor([0, 2, 3, 5]))
    >>> torch.allclose(head(features[..., [0, 2, 3, 5]], wav).mask, before, atol=1e-6)
    True
    """
    lstm = head.lstm
    index = torch.as_tensor(index, dtype=torch.long, device=lstm.weight_ih_l0.device)
    names = ["weight_ih_l0"] + (["weight_ih_l0_reverse"] if lstm.bidirectional else [])
    for name in names:
        weight = getattr(lstm, name)
        setattr(lstm, name, torch.nn.Parameter(weight.detach().index_select(1, index).clone()))
    lstm.input_size = int(index.numel())
    lstm.flatten_parameters()


def _atomic_torch_save(payload, path):
    temporary = f"{path}.tmp"
    torch.save(payload, temporary)
    os.replace(temporary, path)


def _atomic_dphubert_save(path, model, projections):
    temporary = f"{path}.tmp"
    save_dphubert_checkpoint(temporary, model, projections)
    os.replace(temporary, path)


def _write_summary(output_folder, summary):
    path = os.path.join(output_folder, SUMMARY_FILE)
    with open(f"{path}.tmp", "w", encoding="utf-8") as fout:
        json.dump(summary, fout, indent=2)
    os.replace(f"{path}.tmp", path)


def read_summary(output_folder):
    """``<output_folder>/dpwavlm_summary.json`` as a dict (``{}`` when there is none)."""
    path = os.path.join(output_folder, SUMMARY_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as fin:
        return json.load(fin)


def _stage_hparams(hparams, stage, teacher, lagrangian=None):
    prefix = f"stage{stage}_"
    stage_hparams = dict(hparams)
    stage_hparams.update(
        stage=stage,
        teacher=teacher,
        main_lr=hparams[prefix + "lr"],
        warmup_steps=hparams[prefix + "warmup_steps"],
        max_steps=hparams[prefix + "steps"],
        optimizer_step_limit=hparams[prefix + "steps"],
        epoch_counter=EpochCounter(limit=hparams["number_of_epochs"]),
        lagrangian=lagrangian,
    )
    return stage_hparams


def run_stage(stage, hparams, modules, teacher, datasets, run_opts):
    """Runs (or resumes) one stage with its own checkpoints in ``<save_folder>/stage<N>``.

    ``modules``: ``student``, ``projections``, ``enhancement_head`` (or None) and, in stage 1, ``lagrangian``
    (checkpointed, given to the Brain as an hparam).

    Returns the Brain (its ``optimizer_step`` tells how far the stage went).
    """
    train_data, valid_data, train_sampler = datasets
    lagrangian = modules.pop("lagrangian", None)
    stage_hparams = _stage_hparams(hparams, stage, teacher, lagrangian)
    modules = {name: module for name, module in modules.items() if module is not None}
    recoverables = {**modules, "counter": stage_hparams["epoch_counter"]}
    if lagrangian is not None:
        recoverables["lagrangian"] = lagrangian
    checkpointer = AtomicCheckpointer(
        checkpoints_dir=os.path.join(hparams["save_folder"], f"stage{stage}"), recoverables=recoverables
    )
    recorded = read_run_signature(hparams["save_folder"])  # written by check_run_settings
    if recorded is not None:  # every checkpoint records the run's signature hash; another run's are set aside
        checkpointer.sign(signature_hash(recorded), run_signature_hashes(hparams["save_folder"], recorded))
    brain_modules = dict(modules, student=StudentFeatures(modules["student"]))
    brain = DPWavLMBrain(modules=brain_modules, hparams=stage_hparams, run_opts=run_opts, checkpointer=checkpointer)
    brain.fit(
        stage_hparams["epoch_counter"],
        train_data,
        valid_data,
        train_loader_kwargs={"batch_sampler": train_sampler, "num_workers": hparams["num_workers"]},
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    if brain.optimizer_step < stage_hparams["optimizer_step_limit"]:
        raise RuntimeError(
            f"DPWavLM stage {stage} stopped after {brain.optimizer_step} of {stage_hparams['optimizer_step_limit']} "
            f"optimizer steps: raise `number_of_epochs` ({hparams['number_of_epochs']}) or the data"
        )
    return brain


@torch.no_grad()
def materialise(student, projections, head, lagrangian, hparams):
    """Eval gates -> ``prune()`` in place (head input narrowed); returns the summary entries.

    :func:`save_pruned` then writes the files.
    """
    student.eval()
    kept_channels = student.last_conv_kept_index()  # before prune(): the gates are gone after
    expected = float(student.expected_num_params())
    counts = student.gated_unit_counts()
    gated_params = num_parameters(student)
    student.prune()
    if head is not None and hparams.get("enhancement_input", "cnn") == "cnn":
        narrow_head_input(head, kept_channels.cpu())
    teacher_params = lagrangian.teacher_num_params
    return {
        "target_sparsity": lagrangian.target_sparsity,
        "expected_sparsity": 1.0 - expected / teacher_params,
        "lambda1": float(lagrangian.lambda1),
        "lambda2": float(lagrangian.lambda2),
        "kept": counts,
        "gated_student_num_params": gated_params,
        "pruned_num_params": num_parameters(student),
        "pruned_sparsity": 1.0 - num_parameters(student) / teacher_params,
    }


def save_pruned(output_folder, student, projections, head):
    """Writes the head state, then ``pruned.pth`` (last: its presence marks stage 1 as done)."""
    if head is not None:
        _atomic_torch_save(head.state_dict(), os.path.join(output_folder, PRUNED_HEAD_FILE))
    _atomic_dphubert_save(os.path.join(output_folder, PRUNED_FILE), student, projections)


def _load_compact(hparams, head_template, head_file):
    """Compact student, projections and head from a ``.pth`` (strict, ``weights_only``) and its head file."""
    student, checkpoint = load_dphubert_checkpoint(os.path.join(hparams["output_folder"], PRUNED_FILE))
    projections = LayerProjections(hparams["distill_layers"], student.hidden_size, student.hidden_size)
    projections.load_state_dict(checkpoint["distill_linear_projs"])
    head = None
    if head_template is not None:
        head = head_template
        state = torch.load(os.path.join(hparams["output_folder"], head_file), map_location="cpu", weights_only=True)
        width = state["lstm.weight_ih_l0"].shape[1]
        if head.lstm.input_size != width:
            narrow_head_input(head, torch.arange(width))
        head.load_state_dict(state)
    return student, projections, head


def check_options(hparams):
    """Refuses, before anything is loaded, settings that would fail hours later (e.g. at the start of stage 2).

    Stage lengths and warm-ups (``0 < stageN_warmup_steps < stageN_steps``), ``target_sparsity`` in [0, 1),
    ``sparsity_warmup_steps`` >= 0, ``pruning_units``, ``distill_layers`` (within the teacher's layers is
    checked when the teacher is loaded), ``student_input``, ``cos_type``, ``ascent``.

    Raises
    ------
    robustdistiller.runs.options.OptionError
        Naming the option, its value and what was expected.
    """
    for stage in (1, 2):
        steps = integer_at_least(hparams[f"stage{stage}_steps"], f"stage{stage}_steps", 2)
        warmup = integer_at_least(hparams[f"stage{stage}_warmup_steps"], f"stage{stage}_warmup_steps", 1)
        if warmup >= steps:
            raise OptionError(
                f"Option `stage{stage}_warmup_steps` = {warmup} must be below `stage{stage}_steps` = {steps} "
                f"(the lr warms up, then decays linearly to 0 at the last step)"
            )
        hparams[f"stage{stage}_steps"], hparams[f"stage{stage}_warmup_steps"] = steps, warmup
    if not 0.0 <= float(hparams["target_sparsity"]) < 1.0:
        raise OptionError(f"Option `target_sparsity` = {hparams['target_sparsity']!r}: expected a value in [0, 1)")
    hparams["sparsity_warmup_steps"] = integer_at_least(hparams["sparsity_warmup_steps"], "sparsity_warmup_steps", 0)
    try:
        pruning_flags(hparams["pruning_units"])
        parse_distill_layers(hparams["distill_layers"])
    except ValueError as error:
        raise OptionError(str(error)) from error
    for option, choices in (("student_input", STUDENT_INPUTS), ("cos_type", COS_TYPES), ("ascent", ASCENT_MODES)):
        if hparams[option] not in choices:
            raise OptionError(f"Option `{option}` = {hparams[option]!r}: expected one of {choices}")


def load_teacher(hparams):
    """The frozen teacher (a :class:`DPWavLM` from the HF WavLM folder or hub id ``teacher_source``).

    The folder is read by the distillation's teacher loader
    (:func:`~robustdistiller.models.teacher.load_model_folder`, through :func:`from_hf_model`): a truncated or
    damaged ``model.safetensors`` is an error naming the file.
    """
    folder = resolve_teacher_folder(hparams["teacher_source"], hparams.get("teacher_cache_dir"))
    teacher = from_hf_model(folder).eval()
    teacher.requires_grad_(False)
    return teacher


def _run_started(hparams):
    """Whether the output folder holds any part of a DPWavLM run (a stage checkpoint, ``pruned.pth``...)."""
    output_folder, save_folder = hparams["output_folder"], hparams["save_folder"]
    if any(os.path.isfile(os.path.join(output_folder, name)) for name in (PRUNED_FILE, FINAL_FILE)):
        return True
    for stage in (1, 2):
        folder = os.path.join(save_folder, f"stage{stage}")
        if os.path.isdir(folder) and any(name.startswith("CKPT+") for name in os.listdir(folder)):
            return True
    return False


def check_run_settings(hparams, teacher):
    """Refuses to resume (or to call finished) a run made with other settings; records the settings.

    The signature is ``hparams[run_signature_keys]`` plus the teacher's weights fingerprint, the content of
    the prepared lists (:func:`~robustdistiller.runs.run_folder.data_signature`: call it after the preparation)
    and the enhancement head's shapes (robust variant), compared with ``<save_folder>/run_signature.json``
    whenever the output folder holds any part of a run -- a finished one too, so a rerun with another target sparsity never silently returns the old ``final.pth``. Keys in
    ``accept_changed_settings`` may change (logged). ``train.py`` puts the run options given on the command
    line (``--grad_accumulation_factor``...) into ``hparams`` first (:func:`~robustdistiller.runs.run_folder.with_run_options`).

    Raises
    ------
    robustdistiller.runs.run_folder.ChangedSettingsError
        Listing every changed key with both values.
    """
    extra = {"teacher_fingerprint": weights_fingerprint(teacher), **data_signature(hparams)}
    if hparams["enhancement_weight"] > 0:
        extra.update(architecture_signature({"enhancement_head": hparams.get("enhancement_head")}))
    signature = run_signature(hparams, hparams["run_signature_keys"], extra=extra)
    check_run_signature(
        hparams["save_folder"],
        signature,
        accept=hparams.get("accept_changed_settings", ()),
        resuming=_run_started(hparams),
    )
    if if_main_process():
        write_run_signature(hparams["save_folder"], signature, run_signature_hashes(hparams["save_folder"], signature))
    ddp_barrier()  # every process reads the recorded signature (run_stage)
    return signature


def stages_done(hparams):
    """True (and logged) once ``<output_folder>/final.pth`` exists: a rerun has nothing to do."""
    final_path = os.path.join(hparams["output_folder"], FINAL_FILE)
    if os.path.isfile(final_path):
        logger.info("%s exists: both DPWavLM stages are done, nothing to do", final_path)
        return True
    return False


def run_stages(hparams, datasets, run_opts=None, teacher=None):
    """Stage 1, materialisation and stage 2 (module docstring); returns the summary dict.

    Arguments
    ---------
    hparams : dict
        The loaded ``hparams/dpwavlm.yaml`` / ``hparams/robust_dpwavlm.yaml``.
    datasets : tuple
        ``(train_data, valid_data, train_sampler)`` of ``train.dataio_prepare``.
    run_opts : dict, optional
        SpeechBrain run options (device, precision, DDP).
    teacher : DPWavLM, optional
        The teacher of :func:`load_teacher` (loaded here when not given).
    """
    output_folder = hparams["output_folder"]
    final_path = os.path.join(output_folder, FINAL_FILE)
    if stages_done(hparams):
        return read_summary(output_folder)
    teacher = teacher if teacher is not None else load_teacher(hparams)
    folder = resolve_teacher_folder(hparams["teacher_source"], hparams.get("teacher_cache_dir"))
    teacher_params = hparams["teacher_num_params"] or num_parameters(teacher)
    head = hparams.get("enhancement_head") if hparams["enhancement_weight"] > 0 else None
    summary = read_summary(output_folder)
    summary.update(
        recipe=("RobustDistiller + " if hparams["student_input"] == "noisy" or head is not None else "")
        + ("DPHuBERT" if teacher.is_hubert else "DPWavLM"),
        teacher_source=str(hparams["teacher_source"]),
        teacher_num_params=teacher_params,
        student_input=hparams["student_input"],
        enhancement_weight=hparams["enhancement_weight"],
    )

    if not os.path.isfile(os.path.join(output_folder, PRUNED_FILE)):
        student = from_hf_model(folder, **pruning_flags(hparams["pruning_units"]))
        projections = LayerProjections(hparams["distill_layers"], student.hidden_size, teacher.hidden_size)
        lagrangian = SparsityLagrangian(hparams["target_sparsity"], hparams["sparsity_warmup_steps"], teacher_params)
        initial_sparsity = 1.0 - float(student.expected_num_params()) / teacher_params  # before any resume
        modules = {"student": student, "projections": projections, "lagrangian": lagrangian, "enhancement_head": head}
        brain = run_stage(1, hparams, modules, teacher, datasets, run_opts)
        student, projections = student.cpu(), projections.cpu()
        if head is not None:
            head.cpu()
        summary["stage1"] = {
            "steps": brain.optimizer_step,
            "initial_expected_sparsity": initial_sparsity,
            **materialise(student, projections, head, lagrangian, hparams),
        }
        logger.info(
            "DPWavLM stage 1 done: expected sparsity %.4f (target %.4f), %d -> %d parameters (teacher %d)",
            summary["stage1"]["expected_sparsity"],
            summary["stage1"]["target_sparsity"],
            summary["stage1"]["gated_student_num_params"],
            summary["stage1"]["pruned_num_params"],
            teacher_params,
        )
        if if_main_process():
            _write_summary(output_folder, summary)
            save_pruned(output_folder, student, projections, head)
        ddp_barrier()
    else:
        logger.info("%s exists: stage 1 is done, stage 2 starts (or resumes) from it", PRUNED_FILE)

    student, projections, head = _load_compact(hparams, head, PRUNED_HEAD_FILE)
    modules = {"student": student, "projections": projections, "enhancement_head": head}
    brain = run_stage(2, hparams, modules, teacher, datasets, run_opts)
    student, projections = student.cpu().eval(), projections.cpu()
    if if_main_process():
        if head is not None:
            _atomic_torch_save(head.cpu().state_dict(), os.path.join(output_folder, FINAL_HEAD_FILE))
        _atomic_dphubert_save(final_path, student, projections)
        summary["stage2"] = {"steps": brain.optimizer_step, "final_num_params": num_parameters(student)}
        _write_summary(output_folder, summary)
    ddp_barrier()
    logger.info("DPWavLM done: %s (%d parameters)", final_path, num_parameters(student))
    return summary
