"""The DPWavLM Brain: DPHuBERT's joint distillation + structured pruning (stage 1) and final distillation (stage 2).

One training step (``docs/reference/dphubert.md`` "Distillation objective", "RobustDistiller + DPWavLM choices"):

* the **clean** crop goes through the frozen teacher (a :class:`~robustdistiller.dpwavlm.model.DPWavLM` built
  from the HF WavLM folder, eval mode, no grad), whose 13 hidden states are DPHuBERT's targets: index 0 is
  the feature-projection output *before* the positional convolution (the teacher's own modules are run,
  so no hook is needed), then the 12 layer outputs;
* the student (the gated :class:`DPWavLM` in stage 1, the materialised compact one in stage 2, train mode)
  hears the **corrupted** crop in the robust variant (``student_input: noisy``) or the clean one
  (``student_input: clean``, plain DPWavLM);
* loss = :func:`~robustdistiller.dpwavlm.objective.layer_to_layer_loss` over the projected layers 0/4/8/12
  (padding-masked), ``+ enhancement_weight * enhancement loss`` (the head reads the student's CNN features,
  the input of its feature projection) and, in stage 1, ``+ lambda1 (s - t) + lambda2 (s - t)^2``
  (:class:`~robustdistiller.dpwavlm.objective.SparsityLagrangian`, ramp counted in optimizer steps);
* :meth:`DPWavLMBrain.init_optimizers` calls :func:`~robustdistiller.dpwavlm.schedule.build_optimizer`
  (main / log_alpha / lambda groups); every optimizer step sets the shared warm-up/decay factor, unscales,
  calls :func:`~robustdistiller.dpwavlm.schedule.prepare_optimizer_step` (ascent + clipping over **all**
  groups) and steps.

The checkpoints hold the student (gates included), the projections, the multipliers, the enhancement head,
the optimizer, the epoch counter and the Brain's step counters (added by the stage driver,
:mod:`robustdistiller.dpwavlm.stages`).
"""

import logging

import speechbrain as sb
import torch

from robustdistiller.distill.brain import command_line_interval_wins
from robustdistiller.dpwavlm.objective import layer_to_layer_loss
from robustdistiller.dpwavlm.schedule import LinearDecaySchedule, build_optimizer, prepare_optimizer_step
from robustdistiller.models.enhancement import stft_magnitude
from robustdistiller.inference.interface import absolute_lengths
from robustdistiller.distill.losses import enhancement_loss, lengths_to_mask
from robustdistiller.runs.workers import cap_num_workers

logger = logging.getLogger(__name__)

#: What the student hears (YAML ``student_input``).
STUDENT_INPUTS = ("noisy", "clean")


def _unwrap(module):
    return getattr(module, "module", module)


class StudentFeatures(torch.nn.Module):
    """The student as the Brain's module: ``forward`` returns all hidden states and the CNN features.

    DDP synchronises gradients only through ``forward``, and :meth:`DPWavLM.forward` returns only the last
    hidden state; this wrapper makes ``forward`` what the Brain needs. Checkpoint the wrapped ``model``.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, wavs, lengths):
        return self.model.extract_features(wavs, lengths, return_cnn_features=True)


class DPWavLMBrain(sb.Brain):
    """Brain of one DPWavLM stage (see the module docstring).

    Modules (``modules``): ``student`` (:class:`StudentFeatures` around the :class:`DPWavLM`), ``projections``
    (:class:`~robustdistiller.dpwavlm.objective.LayerProjections`), optionally ``enhancement_head`` (robust
    variant). Hparams used: ``lagrangian`` (stage 1 only; an hparam so that DDP leaves it alone), ``teacher``
    (frozen :class:`DPWavLM`), ``stage``
    (1 or 2), ``student_input``, ``main_lr``, ``log_alpha_lr``, ``lambda_lr``, ``weight_decay``, ``betas``,
    ``eps``, ``ascent``, ``warmup_steps``, ``max_steps``, ``max_grad_norm``, ``l1_weight``, ``l2_weight``,
    ``cos_weight``, ``cos_type``, ``enhancement_weight``, ``log_interval``, ``train_logger``,
    ``epoch_counter``; ``optimizer_step_limit`` stops the stage. ``--ckpt_interval_steps`` on the command line
    replaces the YAML's ``ckpt_interval_minutes`` as in the distillation Brain (:func:`command_line_interval_wins`).
    """

    def __init__(self, *args, **kwargs):
        command_line_interval_wins(kwargs.get("hparams"), kwargs.get("run_opts"))
        super().__init__(*args, **kwargs)

    def on_fit_start(self):
        if self.hparams.student_input not in STUDENT_INPUTS:
            raise ValueError(
                f"Option `student_input` = {self.hparams.student_input!r}: expected one of {STUDENT_INPUTS}"
            )
        self.schedule = LinearDecaySchedule(self.hparams.warmup_steps, self.hparams.max_steps)
        self.hparams.teacher.to(self.device).eval()
        if self._lagrangian is not None:
            self._lagrangian.to(self.device)
        self._statistics = {}
        super().on_fit_start()

    @property
    def _student(self):
        """The :class:`DPWavLM` (unwrapped from DDP and :class:`StudentFeatures`)."""
        return _unwrap(self.modules.student).model

    @property
    def _head(self):
        head = getattr(self.modules, "enhancement_head", None)
        return _unwrap(head) if head is not None else None

    @property
    def _lagrangian(self):
        # an hparam, not a module: kept out of DDP (its gradients are the same on every process)
        return getattr(self.hparams, "lagrangian", None)

    @property
    def enhancement_enabled(self):
        return self._head is not None and self.hparams.enhancement_weight > 0

    def compute_forward(self, batch, stage):
        """Teacher targets (clean), student hidden states (noisy or clean), enhancement head output."""
        batch = batch.to(self.device)
        clean_wavs, wav_lens = batch.clean_sig
        lengths = absolute_lengths(wav_lens, clean_wavs.shape[1])
        with torch.no_grad():
            self.hparams.teacher.eval()
            teacher_hiddens, _ = self.hparams.teacher.extract_features(clean_wavs, lengths)
        student_wavs = batch.noisy_sig.data if self.hparams.student_input == "noisy" else clean_wavs
        student_hiddens, frame_lengths, cnn_features = self.modules.student(student_wavs, lengths)
        enhancement = None
        if self.enhancement_enabled:
            enhancement = self.modules.enhancement_head(
                cnn_features, student_wavs, wav_lens=wav_lens, feature_lengths=frame_lengths.cpu()
            )
        return {
            "teacher": teacher_hiddens,
            "student": student_hiddens,
            "frame_lengths": frame_lengths,
            "enhancement": enhancement,
        }

    def compute_objectives(self, predictions, batch, stage):
        """Distillation (+ enhancement) (+ the Lagrangian term in stage 1 training)."""
        frame_lengths = predictions["frame_lengths"]
        frame_mask = lengths_to_mask(frame_lengths, predictions["student"][0].shape[1])
        distillation = layer_to_layer_loss(
            self.modules.projections,
            predictions["student"],
            predictions["teacher"],
            frame_mask,
            l1_weight=self.hparams.l1_weight,
            l2_weight=self.hparams.l2_weight,
            cos_weight=self.hparams.cos_weight,
            cos_type=self.hparams.cos_type,
        )
        loss = distillation["loss"]
        statistics = {"distillation_loss": distillation["loss"].detach()}
        if predictions["enhancement"] is not None:
            output = predictions["enhancement"]
            reference_wavs, wav_lens = batch.reference_sig
            clean_magnitude = stft_magnitude(reference_wavs.float())
            valid_frames = self._head.valid_frames(reference_wavs, wav_lens.cpu(), feature_lengths=frame_lengths.cpu())
            stft_mask = lengths_to_mask(valid_frames.to(self.device), output.enhanced_magnitude.shape[1])
            enhancement = enhancement_loss(output.enhanced_magnitude.float(), clean_magnitude, stft_mask)
            loss = loss + self.hparams.enhancement_weight * enhancement
            statistics["enhancement_loss"] = enhancement.detach()
        if self._lagrangian is not None:
            student = self._student
            regularisation = self._lagrangian(
                student.expected_num_params().float(), completed_steps=self.optimizer_step
            )
            if stage == sb.Stage.TRAIN:
                loss = loss + regularisation["loss"].float()
                statistics["regularisation_loss"] = regularisation["loss"].detach()
            statistics["expected_sparsity"] = regularisation["expected_sparsity"].detach()
            statistics["target_sparsity"] = torch.tensor(regularisation["target_sparsity"])
            statistics["lambda1"] = self._lagrangian.lambda1.detach().clone()
            statistics["lambda2"] = self._lagrangian.lambda2.detach().clone()
        self._statistics = statistics
        return loss

    def init_optimizers(self):
        """DPHuBERT's AdamW groups (:func:`build_optimizer`), checkpointed as ``optimizer``."""
        extra = [self.modules.enhancement_head] if self.enhancement_enabled else []
        self.optimizer = build_optimizer(
            self._student,
            self.modules.projections,
            self._lagrangian,
            extra_modules=extra,
            main_lr=self.hparams.main_lr,
            log_alpha_lr=self.hparams.log_alpha_lr,
            lambda_lr=self.hparams.lambda_lr,
            weight_decay=self.hparams.weight_decay,
            betas=tuple(self.hparams.betas),
            eps=self.hparams.eps,
            ascent=self.hparams.ascent,
        )
        self.optimizers_dict = {"optimizer": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    def optimizers_step(self):
        """One optimizer step: lr factor, unscale, ascent + clipping over all groups, step."""
        factor = self.schedule(self.optimizer, self.optimizer_step + 1)
        self.scaler.unscale_(self.optimizer)
        grad_norm = prepare_optimizer_step(self.optimizer, self.max_grad_norm)
        if not self.scaler.is_enabled() and self.skip_nonfinite_grads:
            self.check_gradients()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_step += 1
        if self.optimizer_step % max(1, self.hparams.log_interval) == 0:
            values = {key: float(value) for key, value in self._statistics.items()}
            values.update(lr_factor=factor, grad_norm=float(grad_norm))
            logger.info(
                "stage %d, step %d: %s",
                self.hparams.stage,
                self.optimizer_step,
                ", ".join(f"{key} {value:.4g}" for key, value in values.items()),
            )

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """SpeechBrain's loader, ``num_workers`` capped at the CPU count (:func:`~robustdistiller.runs.workers.cap_num_workers`)."""
        return super().make_dataloader(dataset, stage, ckpt_prefix, **cap_num_workers(loader_kwargs))

    def on_stage_start(self, stage, epoch=None):
        self._stage_sums = {}
        self._stage_count = 0

    def fit_batch(self, batch):
        loss = super().fit_batch(batch)
        self._accumulate()
        return loss

    def evaluate_batch(self, batch, stage):
        loss = super().evaluate_batch(batch, stage)
        self._accumulate()
        return loss

    def _accumulate(self):
        for key, value in self._statistics.items():
            self._stage_sums[key] = self._stage_sums.get(key, 0.0) + float(value)
        self._stage_count += 1

    def stage_statistics(self):
        """Means of the last stage's loss components (e.g. ``expected_sparsity``)."""
        return {key: value / max(1, self._stage_count) for key, value in self._stage_sums.items()}

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs the stage; saves a checkpoint after each validation (or each training epoch without one)."""
        statistics = {"loss": stage_loss, **self.stage_statistics()}
        if stage == sb.Stage.TRAIN:
            self.train_stats = statistics
            if not self._has_validation and self.checkpointer is not None:
                self.checkpointer.save_and_keep_only(
                    meta={"optimizer_step": self.optimizer_step}, num_to_keep=self.hparams.checkpoints_to_keep
                )
        elif stage == sb.Stage.VALID:
            self.hparams.train_logger.log_stats(
                stats_meta={"dpwavlm_stage": self.hparams.stage, "epoch": epoch, "optimizer_step": self.optimizer_step},
                train_stats=getattr(self, "train_stats", None),
                valid_stats=statistics,
            )
            if self.checkpointer is not None:
                self.checkpointer.save_and_keep_only(
                    meta={"valid_loss": stage_loss, "optimizer_step": self.optimizer_step},
                    num_to_keep=self.hparams.checkpoints_to_keep,
                )

    def fit(self, epoch_counter, train_set, valid_set=None, **kwargs):
        self._has_validation = valid_set is not None
        return super().fit(epoch_counter, train_set, valid_set, **kwargs)

    @property
    def finished(self):
        """True once ``optimizer_step_limit`` optimizer steps are done."""
        return self.optimizer_step >= self.hparams.optimizer_step_limit
