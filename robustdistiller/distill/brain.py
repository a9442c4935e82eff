"""The SpeechBrain ``Brain`` of RobustDistiller (and of DistilHuBERT: the same Brain without corruption
and without the enhancement head).

One training step: the frozen teacher encodes the clean crops, the student encodes the corrupted
crops and predicts the teacher's target layers, the optional enhancement head estimates a mask over
the noisy STFT magnitude from the student's features; the loss is the per-layer L1 + log-sigmoid
cosine distillation loss plus ``enhancement_weight`` times the masked L1 between the enhanced and the
clean reference magnitudes. Differences from plain ``sb.Brain``:

- the teacher is kept outside ``self.modules``: ``Brain.fit`` switches modules to train mode every
  epoch (which would turn the teacher's dropout and layerdrop on) and DDP would wrap it;
- weight decay applies to everything except biases (two parameter groups; LSTM biases included), and
  gradient clipping covers *all* parameters (SpeechBrain 1.1.2 clips only the first parameter group);
- the training step never waits for the device: lengths and masks are computed on the host, loss
  statistics stay on the device and come to the host once per ``log_interval`` optimizer steps, and a
  non-finite step is skipped on the device (a unit-scale ``GradScaler`` feeds the fused AdamW its
  ``found_inf`` flag; fp16 keeps its usual dynamic scale). A non-finite loss is reported at the next
  log line, naming the loss components and the utterances, and ``nonfinite_patience`` such steps stop
  the run, as in SpeechBrain;
- the training batch sampler is given its epoch (SpeechBrain only does so for samplers it made
  itself), and the recipe's :class:`~robustdistiller.data.batching.FixedBatchSampler` shares every global
  batch between DDP processes itself instead of being wrapped;
- after each validation, PESQ / STOI / SI-SNR of the enhanced waveform on ``quality_utterances``
  validation utterances are logged (the authors' monitoring);
- resumes are honest (docs/failure_and_resume.md, "What a resume checks"): before recovery the run's
  signature (the YAML's ``run_signature_keys``, the teacher's weights fingerprint, the prepared data's and the modules'
  shape fingerprints) is compared with the recorded one, and the checkpointer is given its hash
  (recorded in every checkpoint; another run's checkpoints are set aside, not loaded); after recovery
  the learning-rate schedule is the one the *current* YAML describes (a larger ``number_of_steps``
  extends a finished run), and only then are the run's records written;
- without a validation set (``valid_splits: []``) a checkpoint is saved at the end of every epoch,
  the latest ``checkpoints_to_keep`` kept;
- ``--ckpt_interval_steps`` on the command line replaces the YAML's ``ckpt_interval_minutes`` (and
  the other way round) instead of failing as mutually exclusive.
"""

import json
import logging
import math
import os

import speechbrain as sb
import torch

from robustdistiller.data.batching import FixedBatchSampler
from robustdistiller.runs.checkpoints import RandomState
from robustdistiller.runs.workers import cap_num_workers
from robustdistiller.models.enhancement import stft_magnitude
from robustdistiller.distill.enhancement_quality import QualityMeans, enhanced_waveforms
from robustdistiller.distill.losses import distillation_loss, enhancement_loss, lengths_to_mask
from robustdistiller.export.layout import TRAINING_INFO_FILE
from robustdistiller.runs.options import OptionError
from robustdistiller.runs.run_folder import (
    check_run_signature,
    run_signature_hashes,
    signature_hash,
    write_run_signature,
)

logger = logging.getLogger(__name__)


def is_bias(name):
    """Whether a parameter name denotes a bias (``bias``, ``split_bias``, LSTM ``bias_ih_l0_reverse``...).

    Example
    -------
    >>> [is_bias(name) for name in ("fc.bias", "lstm.bias_hh_l2_reverse", "heads.split_bias", "fc.weight")]
    [True, True, True, False]
    """
    last = name.rsplit(".", 1)[-1]
    return last == "bias" or last.startswith("bias_") or last.endswith("_bias")


def weight_decay_parameter_groups(modules, weight_decay):
    """Splits trainable parameters into a decayed group and a bias group without decay.

    The paper decays everything except biases, so LayerNorm weights are decayed, unlike
    SpeechBrain's ``rm_vector_weight_decay`` (which exempts every vector).

    Arguments
    ---------
    modules : torch.nn.Module
        Modules whose parameters are optimised.
    weight_decay : float
        Decoupled weight decay of non-bias parameters.

    Returns
    -------
    list of dict
        Parameter groups for a ``torch.optim`` optimizer.

    Example
    -------
    >>> groups = weight_decay_parameter_groups(torch.nn.LSTM(3, 2), 0.01)
    >>> [(len(group["params"]), group["weight_decay"]) for group in groups]
    [(2, 0.01), (2, 0.0)]
    """
    decayed, not_decayed = [], []
    for name, parameter in modules.named_parameters():
        if not parameter.requires_grad:
            continue
        (not_decayed if is_bias(name) else decayed).append(parameter)
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": not_decayed, "weight_decay": 0.0},
    ]


def make_tensorboard_logger(enabled, save_dir):
    """SpeechBrain's ``TensorboardLogger`` writing to ``save_dir`` when ``enabled``, else None.

    Example
    -------
    >>> make_tensorboard_logger(False, "unused") is None
    True
    """
    if not enabled:
        return None
    return sb.utils.train_logger.TensorboardLogger(save_dir)


class DeviceMeans:
    """Means of named scalar statistics, accumulated where they are computed (no host copy per batch).

    Example
    -------
    >>> means = DeviceMeans()
    >>> means.update({"loss": torch.tensor(1.0)}); means.update({"loss": torch.tensor(3.0)})
    >>> means.summary()
    {'loss': 2.0}
    """

    def __init__(self):
        self.totals = {}
        self.count = 0

    def update(self, statistics):
        """Adds one batch's statistics (0-dim tensors or floats); non-finite batches are left out."""
        values = torch.stack([torch.as_tensor(value, dtype=torch.float32) for value in statistics.values()])
        finite = torch.isfinite(values).all()
        values = torch.where(finite, values, torch.zeros_like(values))
        for name, value in zip(statistics, values):
            self.totals[name] = self.totals[name] + value if name in self.totals else value
        self.count = self.count + finite.to(torch.float32)

    def summary(self):
        """The mean of each statistic (one device-to-host copy)."""
        if not self.totals:
            return {}
        values = (torch.stack(list(self.totals.values())) / torch.clamp(torch.as_tensor(self.count), min=1.0)).tolist()
        return dict(zip(self.totals, values))


def command_line_interval_wins(hparams, run_opts):
    """Lets ``--ckpt_interval_steps`` (or ``--ckpt_interval_minutes``) on the command line replace the
    YAML's other checkpoint interval, which SpeechBrain would reject as mutually exclusive.

    Every recipe's Brain calls it (the distillation's and DPWavLM's); ``hparams`` is changed in place.

    Example
    -------
    >>> hparams = {"ckpt_interval_minutes": 30}
    >>> command_line_interval_wins(hparams, {"ckpt_interval_steps": 2})
    >>> hparams
    {'ckpt_interval_minutes': 0}
    """
    if hparams is None or run_opts is None:
        return
    given = getattr(run_opts, "overridden_args", None)
    if given is None:
        given = set(run_opts)
    values = run_opts if isinstance(run_opts, dict) else run_opts.as_dict()
    for chosen, other in (
        ("ckpt_interval_steps", "ckpt_interval_minutes"),
        ("ckpt_interval_minutes", "ckpt_interval_steps"),
    ):
        if (
            chosen in given
            and other not in given
            and float(values[chosen] or 0) > 0
            and float(hparams.get(other) or 0) > 0
        ):
            logger.info(
                "%s=%s from the command line replaces the YAML's %s=%s.", chosen, values[chosen], other, hparams[other]
            )
            hparams[other] = 0


class DistillationBrain(sb.Brain):
    """Brain for noise-robust layer-to-layer distillation.

    Expected ``modules``: ``student`` (:class:`~robustdistiller.models.student.DistillerStudent`) and,
    when ``enhancement_weight > 0``, ``enhancement_head``
    (:class:`~robustdistiller.models.enhancement.EnhancementHead`). Expected ``hparams``: ``teacher``
    (:class:`~robustdistiller.models.teacher.FrozenTeacher`), ``cosine_weight``, ``enhancement_weight``,
    ``enhancement_input`` (``"cnn"`` or ``"last_hidden"``), ``weight_decay``, ``lr_scheduler``,
    ``train_corruptor``, ``train_logger``, ``log_interval``; optional ``quality_utterances``
    (validation utterances scored with PESQ / STOI / SI-SNR, default 0) and ``tensorboard_logger``.

    Extra arguments
    ---------------
    run_signature : dict, optional
        The settings that define the run (:func:`~robustdistiller.runs.run_folder.run_signature`); a
        resume that changes one of them is refused unless its key is in the YAML's
        ``accept_changed_settings``. Recorded in ``<save_folder>/run_signature.json``.
    run_info : dict, optional
        Written to ``<save_folder>/distillation_info.json`` (read by the export's model card),
        like the signature only after a successful recovery.
    """

    def __init__(self, *args, run_signature=None, run_info=None, **kwargs):
        command_line_interval_wins(kwargs.get("hparams"), kwargs.get("run_opts"))
        super().__init__(*args, **kwargs)
        self.run_signature = run_signature
        self.run_info = run_info
        # SpeechBrain 1.1.2 leaves ``--optimizer_step_limit`` given on the command line a string.
        if self.optimizer_step_limit is not None:
            self.optimizer_step_limit = int(self.optimizer_step_limit)
        if not self.scaler.is_enabled():
            # A unit-scale scaler (powers of two are exact, growth never happens) only to detect
            # non-finite gradients on the device: the fused AdamW then skips such a step itself.
            self.scaler = torch.GradScaler(self.device_type, init_scale=1.0, growth_interval=2**31 - 1)
            if self.checkpointer is not None:
                self.checkpointer.add_recoverable("scaler", self.scaler, optional_load=True)
        if self.checkpointer is not None:
            # Dropout masks after a resume continue as in the uninterrupted run.
            self.checkpointer.add_recoverable("random_state", RandomState(), optional_load=True)
        self.pending_steps = []  # (optimizer step, utterance ids, statistics on the device) until the next log
        self.stage_statistics = DeviceMeans()
        self.host_train_loss = None  # None until the first log line of the stage
        self.quality = None

    def on_fit_start(self):
        """Checks the resume signature, recovers, continues the schedule, writes the run's records.

        The teacher moves to the device (it is not a module of the Brain) and stays in eval mode.
        """
        save_folder = str(self.checkpointer.checkpoints_dir) if self.checkpointer is not None else None
        hashes = ()
        if self.run_signature is not None and save_folder is not None:
            check_run_signature(
                save_folder,
                self.run_signature,
                accept=getattr(self.hparams, "accept_changed_settings", ()),
                resuming=bool(self.checkpointer.list_checkpoints()),
            )
            hashes = run_signature_hashes(save_folder, self.run_signature)
            if hasattr(self.checkpointer, "sign"):  # an AtomicCheckpointer: another run's checkpoints are set aside
                self.checkpointer.sign(signature_hash(self.run_signature), hashes)
        planned_schedule = self._schedule_settings()
        super().on_fit_start()  # recovery
        self._continue_schedule(planned_schedule)
        self.hparams.teacher.to(self.device).eval()
        if save_folder is not None and sb.utils.distributed.if_main_process():
            if self.run_signature is not None:
                write_run_signature(save_folder, self.run_signature, hashes)
            if self.run_info is not None:
                with open(os.path.join(save_folder, TRAINING_INFO_FILE), "w", encoding="utf-8") as fout:
                    json.dump(self.run_info, fout, indent=2)

    def _schedule_settings(self):
        """(peak lr, warm-up steps, total steps) of the YAML's scheduler, before recovery replaces them."""
        scheduler = self.hparams.lr_scheduler
        return scheduler.lr0, scheduler.num_warmup_steps, scheduler.num_training_steps

    def _continue_schedule(self, planned):
        """After recovery: the restored schedule takes the current YAML's length (and peak lr).

        SpeechBrain restores the scheduler's whole state, so a resumed run with a larger
        ``number_of_steps`` would run its extra steps at learning rate 0 (a finished run's schedule
        has reached 0). The step count is kept; the peak learning rate, the warm-up and the total
        length become the current YAML's: the remaining steps follow the schedule a run of the new
        length would have had (the peak lr can only differ when ``lr`` is accepted as changed).
        """
        scheduler = self.hparams.lr_scheduler
        restored = self._schedule_settings()
        if restored == planned:
            return
        if self.optimizer_step > planned[2]:
            raise OptionError(
                f"This run has already made {self.optimizer_step} optimizer steps, more than "
                f"number_of_steps={planned[2]}: give --number_of_steps >= {self.optimizer_step} to extend it, "
                "or evaluate/export the finished run as it is."
            )
        scheduler.lr0, scheduler.num_warmup_steps, scheduler.num_training_steps = planned
        logger.warning(
            "Resumed at step %d with a new schedule: %d steps in all (was %d), %d warm-up steps (was %d), "
            "peak lr %g (was %g); learning rate of the next step %.3g.",
            self.optimizer_step,
            planned[2],
            restored[2],
            planned[1],
            restored[1],
            planned[0],
            restored[0],
            scheduler.calculate_lr(scheduler.current_step + 1),
        )

    def _fit_train(self, train_set, epoch, enable):
        """SpeechBrain's training epoch, skipped (with its validation) when the run is already finished.

        Otherwise a resumed finished run would validate and save one more checkpoint per call.
        """
        self._finished_before_epoch = self._optimizer_step_limit_exceeded
        if self._finished_before_epoch:
            logger.info(
                "The run is finished (%d optimizer steps); nothing to train. Give a larger "
                "--number_of_steps to extend it.",
                self.optimizer_step,
            )
            return
        super()._fit_train(train_set, epoch, enable)

    def _fit_valid(self, valid_set, epoch, enable):
        """Validation (see :meth:`_fit_train`); without a validation set, an end-of-epoch checkpoint."""
        if getattr(self, "_finished_before_epoch", False):
            return
        if valid_set is None:
            self.checkpointer.save_and_keep_only(
                meta={"optimizer_step": self.optimizer_step},
                num_to_keep=self.hparams.checkpoints_to_keep,
            )
            return
        super()._fit_valid(valid_set, epoch, enable)

    def init_optimizers(self):
        """AdamW over two parameter groups: weight decay on all but biases."""
        if self.opt_class is None:
            return
        parameter_groups = weight_decay_parameter_groups(self.modules, self.hparams.weight_decay)
        self.optimizer = self.opt_class(parameter_groups)
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """SpeechBrain's loader, with a generator of its own.

        A DataLoader draws its workers' base seed from the global generator each time it is
        iterated; its own generator leaves the global one (dropout) to the model, so a resumed run
        draws exactly what the uninterrupted run drew (the data pipeline is seeded per utterance).
        """
        if "generator" not in loader_kwargs:
            loader_kwargs["generator"] = torch.Generator().manual_seed(int(getattr(self.hparams, "seed", 0)))
        return super().make_dataloader(dataset, stage, ckpt_prefix, **cap_num_workers(loader_kwargs))

    def _train_loader_specifics(self, dataset, loader_kwargs):
        """Gives the training batch sampler its epoch, and leaves a DDP-aware one unwrapped.

        SpeechBrain calls ``set_epoch`` only on ``self.train_sampler``, which it sets for samplers it
        creates or wraps for DDP; a user's batch sampler outside DDP would replay the first epoch's
        order in every epoch (and after a resume). :class:`FixedBatchSampler` shares every global
        batch between processes itself, so SpeechBrain's ``DistributedSamplerWrapper`` (which deals
        out whole batches, multiplying the global batch by the world size) must not wrap it.
        """
        batch_sampler = loader_kwargs.get("batch_sampler")
        if isinstance(batch_sampler, FixedBatchSampler):
            self.train_sampler = batch_sampler
            return loader_kwargs
        loader_kwargs = super()._train_loader_specifics(dataset, loader_kwargs)
        if self.train_sampler is None and hasattr(loader_kwargs.get("batch_sampler"), "set_epoch"):
            self.train_sampler = loader_kwargs["batch_sampler"]
        return loader_kwargs

    def compute_forward(self, batch, stage):
        """Teacher on clean crops, student (and enhancement head) on corrupted crops.

        Only the waveforms go to the device: the relative lengths stay on the host, where the
        models compute lengths and masks without waiting for the device. The first call of a run
        checks the teacher's bf16 / fp16 targets against fp32 ones on its batch
        (:meth:`~robustdistiller.models.teacher.FrozenTeacher.check_precision`).
        """
        clean_wavs, wav_lens = batch.clean_sig
        noisy_wavs = batch.noisy_sig.data
        clean_wavs = clean_wavs.to(self.device, non_blocking=True)
        noisy_wavs = noisy_wavs.to(self.device, non_blocking=True)
        wav_lens = wav_lens.cpu()
        if not getattr(self, "_teacher_precision_checked", False):
            # Start of run: bf16 / fp16 targets against fp32 ones on this batch; refused below
            # teacher_precision_min_cosine (FrozenTeacher.check_precision; nothing to do in fp32).
            self.hparams.teacher.check_precision(clean_wavs, wav_lens)
            self._teacher_precision_checked = True
        teacher_output = self.hparams.teacher(clean_wavs, wav_lens)
        student_output = self.modules.student(noisy_wavs, wav_lens)
        enhancement_output = None
        if self.enhancement_enabled:
            if self.hparams.enhancement_input == "cnn":
                features = student_output.cnn_features
            else:
                features = student_output.hidden_states[-1]
            # Packed sequences: padding never reaches valid frames through the backward LSTM.
            enhancement_output = self.modules.enhancement_head(
                features,
                noisy_wavs,
                wav_lens,
                feature_mask=student_output.frame_mask,
                feature_lengths=student_output.frame_lengths,
            )
        return teacher_output, student_output, enhancement_output

    @property
    def enhancement_enabled(self):
        """Whether the multi-task enhancement head is part of this run (weight > 0)."""
        return self.hparams.enhancement_weight > 0 and "enhancement_head" in self.modules

    @property
    def _head(self):
        """The enhancement head, unwrapped from DDP."""
        return getattr(self.modules.enhancement_head, "module", self.modules.enhancement_head)

    def compute_objectives(self, predictions, batch, stage):
        """Distillation loss on valid frames, plus the weighted enhancement L1."""
        teacher_output, student_output, enhancement_output = predictions
        validate = stage != sb.Stage.TRAIN  # host reads of masks only outside the training step
        # Teacher and student share the CNN geometry; distillation_loss trims any one-frame
        # difference explicitly before masking the padded frames.
        distillation = distillation_loss(
            student_output.predictions.float(),
            teacher_output.layers,
            student_output.frame_mask,
            cosine_weight=self.hparams.cosine_weight,
            validate=validate,
        )
        loss = distillation["loss"]
        statistics = {"distillation_loss": distillation["loss"].detach()}
        for index, layer in enumerate(self.hparams.target_layers):
            statistics[f"l1_layer{layer}"] = distillation["l1"][index].detach()
            statistics[f"cosine_layer{layer}"] = distillation["cosine"][index].detach()
            statistics[f"cosine_similarity_layer{layer}"] = distillation["cosine_similarity"][index].detach()
        if enhancement_output is not None:
            reference_wavs, wav_lens = batch.reference_sig
            reference_wavs = reference_wavs.to(self.device, non_blocking=True)
            clean_magnitude = stft_magnitude(reference_wavs.float())
            valid_frames = self._head.valid_frames(
                reference_wavs, wav_lens.cpu(), feature_lengths=student_output.frame_lengths
            )
            stft_mask = lengths_to_mask(valid_frames.to(self.device), enhancement_output.enhanced_magnitude.shape[1])
            enhancement = enhancement_loss(
                enhancement_output.enhanced_magnitude.float(), clean_magnitude, stft_mask, validate=validate
            )
            loss = loss + self.hparams.enhancement_weight * enhancement
            statistics["enhancement_loss"] = enhancement.detach()
            if stage == sb.Stage.VALID and self.quality is not None and self.quality.remaining:
                self._score_enhancement(batch, enhancement_output, valid_frames)
        statistics["loss"] = loss.detach()
        self.batch_statistics = statistics
        if validate and not torch.isfinite(loss):
            self._report_nonfinite([(None, list(batch.id), statistics)])
        return loss

    def _score_enhancement(self, batch, enhancement_output, valid_frames):
        """PESQ / STOI / SI-SNR of the enhanced waveforms of a validation batch (the first ones)."""
        noisy_wavs, wav_lens = batch.noisy_sig
        head = self._head
        enhanced = enhanced_waveforms(
            enhancement_output.mask.detach().float().cpu(),
            noisy_wavs.cpu(),
            wav_lens.cpu(),
            valid_frames.cpu(),
            head.n_fft,
            head.win_length,
            head.hop_length,
        )
        self.quality.update_batch(batch.id, enhanced, batch.reference_sig.data.cpu(), noisy_wavs.cpu(), wav_lens.cpu())

    def _report_nonfinite(self, steps):
        """Names the non-finite loss components and the utterances of each given step."""
        for step, utterance_ids, statistics in steps:
            values = dict(zip(statistics, torch.stack(list(statistics.values())).float().tolist()))
            culprits = [name for name, value in values.items() if not math.isfinite(value)]
            logger.warning(
                "Non-finite loss%s in component(s) %s for utterances %s; the optimizer step is skipped "
                "(the run stops after `nonfinite_patience` = %d such batches in an epoch).",
                "" if step is None else f" at step {step}",
                ", ".join(culprits),
                ", ".join(utterance_ids[:8]) + (" ..." if len(utterance_ids) > 8 else ""),
                self.nonfinite_patience,
            )

    def fit_batch(self, batch):
        """One training step without a host-device synchronisation.

        As ``sb.Brain.fit_batch`` but without its per-step ``isfinite`` check and ``loss.cpu()``:
        both wait for the device. Non-finite losses are checked at the next log line
        (:meth:`on_fit_batch_end`); the step itself is skipped on the device.
        """
        should_step = (self.step % self.grad_accumulation_factor) == 0
        self.on_fit_batch_start(batch, should_step)
        with self.no_sync(not should_step):
            with self.training_ctx:
                outputs = self.compute_forward(batch, sb.Stage.TRAIN)
                loss = self.compute_objectives(outputs, batch, sb.Stage.TRAIN)
            self.scaler.scale(loss / self.grad_accumulation_factor).backward()
        if should_step:
            self.optimizers_step()
        self.on_fit_batch_end(batch, outputs, loss, should_step)
        return loss.detach()

    def update_average(self, loss, avg_loss):
        """The running training loss as last brought to the host (refreshed every log line, and at the first
        optimizer step of a stage, so the progress bar never shows a placeholder 0)."""
        if self.host_train_loss is None:  # micro-batches before the first optimizer step: this batch's loss
            return float(loss)
        return self.host_train_loss

    def on_fit_batch_start(self, batch, should_step):
        """Sets the learning rate of the coming optimizer step (warm-up starts from 0)."""
        if should_step:
            self.hparams.lr_scheduler(self.optimizer)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Accumulates the loss components on the device; every ``log_interval`` optimizer steps,
        brings them to the host once, logs them and checks for non-finite losses."""
        statistics = self.batch_statistics
        self.stage_statistics.update(statistics)
        self.pending_steps.append((self.optimizer_step, list(batch.id), statistics))
        first_of_stage = self.host_train_loss is None
        if should_step and (first_of_stage or self.optimizer_step % self.hparams.log_interval == 0):
            self.flush_step_statistics()

    def flush_step_statistics(self):
        """Host side of the training statistics since the last call: log line, TensorBoard, NaN checks."""
        if not self.pending_steps:
            return
        losses = torch.stack([statistics["loss"].float() for _, _, statistics in self.pending_steps]).tolist()
        nonfinite = [entry for entry, value in zip(self.pending_steps, losses) if not math.isfinite(value)]
        last_statistics = self.pending_steps[-1][2]
        self.pending_steps = []
        summary = self.stage_statistics.summary()
        self.host_train_loss = summary.get("loss", 0.0)
        gradient_norm = float(self.gradient_norm) if torch.is_tensor(getattr(self, "gradient_norm", None)) else 0.0
        lr = self.optimizer.param_groups[0]["lr"]
        if sb.utils.distributed.if_main_process():
            values = dict(zip(last_statistics, torch.stack(list(last_statistics.values())).float().tolist()))
            logger.info(
                "step %d lr %.3g grad_norm %.3g %s",
                self.optimizer_step,
                lr,
                gradient_norm,
                " ".join(f"{name}={value:.4f}" for name, value in values.items()),
            )
            tensorboard = getattr(self.hparams, "tensorboard_logger", None)
            if tensorboard is not None and tensorboard.writer is not None:
                for name, value in values.items():
                    tensorboard.writer.add_scalar(f"train/{name}", value, self.optimizer_step)
                tensorboard.writer.add_scalar("train/lr", lr, self.optimizer_step)
                tensorboard.writer.add_scalar("train/gradient_norm", gradient_norm, self.optimizer_step)
        if nonfinite:
            self._report_nonfinite(nonfinite)
            self.nonfinite_count += len(nonfinite)
            if self.nonfinite_count > self.nonfinite_patience:
                raise ValueError(
                    f"Loss is not finite and patience is exhausted ({self.nonfinite_count} non-finite "
                    f"batches this epoch, nonfinite_patience={self.nonfinite_patience}). To debug, "
                    "set log_interval: 1 and look at the warnings above."
                )

    def evaluate_batch(self, batch, stage):
        """Evaluation step that also accumulates the loss components."""
        loss = super().evaluate_batch(batch, stage)
        self.stage_statistics.update(self.batch_statistics)
        return loss

    def on_stage_start(self, stage, epoch=None):
        """Resets statistics; tells the training corruptor the epoch (new draws every epoch)."""
        self.stage_statistics = DeviceMeans()
        self.pending_steps = []
        self.host_train_loss = None
        self.quality = None
        if stage == sb.Stage.VALID and self.enhancement_enabled:
            utterances = int(getattr(self.hparams, "quality_utterances", 0) or 0)
            if utterances > 0:
                self.quality = QualityMeans(max_utterances=utterances, sample_rate=self.hparams.sample_rate)
        if stage == sb.Stage.TRAIN and epoch is not None:
            self.hparams.train_corruptor.set_epoch(epoch)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs every loss component; checkpoints after validation (best and latest kept)."""
        if stage == sb.Stage.TRAIN:
            self.flush_step_statistics()
        summary = self.stage_statistics.summary()
        summary["loss"] = summary.get("loss", stage_loss)
        if self.quality is not None:
            quality = self.quality.summary()
            summary.update({f"enhanced_{name}": quality[name] for name in ("pesq", "stoi", "si_snr")})
            summary["noisy_si_snr"] = quality["si_snr_noisy"]
            logger.info(
                "Enhanced validation speech (%d utterances scored, %d skipped): PESQ %.3f, STOI %.3f, "
                "SI-SNR %.2f dB (noisy input %.2f dB)",
                quality["num_scored"],
                quality["num_skipped"],
                quality["pesq"],
                quality["stoi"],
                quality["si_snr"],
                quality["si_snr_noisy"],
            )
        if stage == sb.Stage.TRAIN:
            self.train_summary = summary
            return
        tensorboard = getattr(self.hparams, "tensorboard_logger", None)
        if stage == sb.Stage.VALID:
            lr = self.optimizer.param_groups[0]["lr"] if self.optimizer_step else 0.0
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "optimizer_step": self.optimizer_step, "lr": lr},
                train_stats=getattr(self, "train_summary", None),
                valid_stats=summary,
            )
            if tensorboard is not None and tensorboard.writer is not None:
                for name, value in summary.items():
                    tensorboard.writer.add_scalar(f"valid/{name}", value, self.optimizer_step)
            self.checkpointer.save_and_keep_only(
                meta={"valid_loss": summary["loss"], "optimizer_step": self.optimizer_step},
                min_keys=["valid_loss"],
                num_to_keep=self.hparams.checkpoints_to_keep,
            )
        else:
            self.hparams.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current}, test_stats=summary
            )
        self.last_stage_summary = summary

    def optimizers_step(self):
        """One optimizer step with gradient clipping over *all* parameters; never a non-finite step.

        SpeechBrain 1.1.2 clips each optimizer's first parameter group only (here: the decayed
        weights, leaving biases unclipped); the paper clips the global norm of every parameter.
        A step whose gradients are not finite is skipped: the scaler's ``found_inf`` flag reaches a
        fused AdamW on the device (other optimizers make ``GradScaler.step`` read it on the host).
        The gradient norm stays on the device (``self.gradient_norm``) until the next log line.
        """
        self.scaler.unscale_(self.optimizer)
        trainable = [parameter for parameter in self.modules.parameters() if parameter.requires_grad]
        self.gradient_norm = torch.nn.utils.clip_grad_norm_(trainable, self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_step += 1
