"""The SpeechBrain ``Brain`` of RobustDistiller (and of DistilHuBERT: the same Brain without corruption
and without the enhancement head).

One training step: the frozen teacher encodes the clean crops, the student encodes the corrupted
crops and predicts the teacher's target layers, the optional enhancement head estimates a mask over
the noisy STFT magnitude from the student's features; the loss is the per-layer L1 + log-sigmoid
cosine distillation loss plus ``enhancement_weight`` times the masked L1 between the enhanced and the
clean reference magnitudes. Differences from plain ``sb.Brain``:

- the teacher is kept outside ``self.modules``: ``Brain.fit`` switches modules to train mode every
  epoch (which would turn the teacher's dropout and layerdrop on) and DDP would wrap it;
- weight decay applies to everything except biases (two parameter groups), and gradient clipping
  covers *all* parameters (SpeechBrain 1.1.2 clips only the first parameter group);
- a non-finite loss names the loss component at fault before SpeechBrain's own skip/patience logic.
"""

import logging
import math

import speechbrain as sb
import torch

from robustdistiller.enhancement import stft_magnitude
from robustdistiller.losses import distillation_loss, enhancement_loss, lengths_to_mask

logger = logging.getLogger(__name__)


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
    >>> groups = weight_decay_parameter_groups(torch.nn.Linear(3, 2), 0.01)
    >>> [(len(group["params"]), group["weight_decay"]) for group in groups]
    [(1, 0.01), (1, 0.0)]
    """
    decayed, not_decayed = [], []
    for name, parameter in modules.named_parameters():
        if not parameter.requires_grad:
            continue
        (not_decayed if name.endswith("bias") else decayed).append(parameter)
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": not_decayed, "weight_decay": 0.0},
    ]


class RunningMeans:
    """Averages of named scalar statistics over the batches of one stage.

    Example
    -------
    >>> means = RunningMeans()
    >>> means.update({"loss": 1.0}); means.update({"loss": 3.0})
    >>> means.summary()
    {'loss': 2.0}
    """

    def __init__(self):
        self.totals = {}
        self.counts = {}

    def update(self, statistics):
        """Adds one batch's statistics (floats)."""
        for name, value in statistics.items():
            self.totals[name] = self.totals.get(name, 0.0) + float(value)
            self.counts[name] = self.counts.get(name, 0) + 1

    def summary(self):
        """Returns the mean of each statistic."""
        return {name: self.totals[name] / self.counts[name] for name in self.totals}


class DistillationBrain(sb.Brain):
    """Brain for noise-robust layer-to-layer distillation.

    Expected ``modules``: ``student`` (:class:`~robustdistiller.student.DistillerStudent`) and,
    when ``enhancement_weight > 0``, ``enhancement_head``
    (:class:`~robustdistiller.enhancement.EnhancementHead`). Expected ``hparams``: ``teacher``
    (:class:`~robustdistiller.teacher.FrozenTeacher`), ``cosine_weight``, ``enhancement_weight``,
    ``enhancement_input`` (``"cnn"`` or ``"last_hidden"``), ``weight_decay``, ``lr_scheduler``,
    ``train_corruptor``, ``train_logger``, ``log_interval``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # SpeechBrain 1.1.2 leaves ``--optimizer_step_limit`` given on the command line a string.
        if self.optimizer_step_limit is not None:
            self.optimizer_step_limit = int(self.optimizer_step_limit)

    def on_fit_start(self):
        """Moves the teacher to the device (it is not a module of the Brain) and keeps it in eval."""
        super().on_fit_start()
        self.hparams.teacher.to(self.device).eval()

    def init_optimizers(self):
        """AdamW over two parameter groups: weight decay on all but biases."""
        if self.opt_class is None:
            return
        parameter_groups = weight_decay_parameter_groups(self.modules, self.hparams.weight_decay)
        self.optimizer = self.opt_class(parameter_groups)
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    def compute_forward(self, batch, stage):
        """Teacher on clean crops, student (and enhancement head) on corrupted crops."""
        batch = batch.to(self.device)
        clean_wavs, wav_lens = batch.clean_sig
        noisy_wavs, _ = batch.noisy_sig
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
                features, noisy_wavs, wav_lens, feature_mask=student_output.frame_mask
            )
        return teacher_output, student_output, enhancement_output

    @property
    def enhancement_enabled(self):
        """Whether the multi-task enhancement head is part of this run (weight > 0)."""
        return self.hparams.enhancement_weight > 0 and "enhancement_head" in self.modules

    def compute_objectives(self, predictions, batch, stage):
        """Distillation loss on valid frames, plus the weighted enhancement L1."""
        teacher_output, student_output, enhancement_output = predictions
        # Teacher and student share the CNN geometry; distillation_loss trims any one-frame
        # difference explicitly before masking the padded frames.
        distillation = distillation_loss(
            student_output.predictions.float(),
            teacher_output.layers,
            student_output.frame_mask,
            cosine_weight=self.hparams.cosine_weight,
        )
        loss = distillation["loss"]
        statistics = {"distillation_loss": distillation["loss"].detach()}
        for index, layer in enumerate(self.hparams.target_layers):
            statistics[f"l1_layer{layer}"] = distillation["l1"][index].detach()
            statistics[f"cosine_layer{layer}"] = distillation["cosine"][index].detach()
            statistics[f"cosine_similarity_layer{layer}"] = distillation["cosine_similarity"][index].detach()
        if enhancement_output is not None:
            reference_wavs, wav_lens = batch.reference_sig
            clean_magnitude = stft_magnitude(reference_wavs.float())
            head = getattr(self.modules.enhancement_head, "module", self.modules.enhancement_head)  # DDP
            valid_frames = head.valid_frames(reference_wavs, wav_lens, feature_mask=student_output.frame_mask)
            stft_mask = lengths_to_mask(valid_frames, enhancement_output.enhanced_magnitude.shape[1])
            enhancement = enhancement_loss(
                enhancement_output.enhanced_magnitude.float(), clean_magnitude, stft_mask
            )
            loss = loss + self.hparams.enhancement_weight * enhancement
            statistics["enhancement_loss"] = enhancement.detach()
        statistics["loss"] = loss.detach()
        if not torch.isfinite(loss):
            self._report_nonfinite(statistics, batch)
        self.batch_statistics = statistics
        return loss

    def _report_nonfinite(self, statistics, batch):
        """Names the non-finite loss components and the utterances of the batch."""
        culprits = [name for name, value in statistics.items() if not math.isfinite(float(value))]
        logger.warning(
            "Non-finite loss in component(s) %s for utterances %s; SpeechBrain skips this step "
            "(and stops after `nonfinite_patience` such batches).",
            ", ".join(culprits),
            ", ".join(batch.id[:8]) + (" ..." if len(batch.id) > 8 else ""),
        )

    def on_fit_batch_start(self, batch, should_step):
        """Sets the learning rate of the coming optimizer step (warm-up starts from 0)."""
        if should_step:
            self.hparams.lr_scheduler(self.optimizer)

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Accumulates the loss components; logs them every ``log_interval`` optimizer steps."""
        statistics = {name: float(value) for name, value in self.batch_statistics.items()}
        if not math.isfinite(statistics["loss"]):
            return
        self.stage_statistics.update(statistics)
        if should_step and self.optimizer_step % self.hparams.log_interval == 0 and sb.utils.distributed.if_main_process():
            lr = self.optimizer.param_groups[0]["lr"]
            logger.info(
                "step %d lr %.3g %s",
                self.optimizer_step,
                lr,
                " ".join(f"{name}={value:.4f}" for name, value in statistics.items()),
            )

    def evaluate_batch(self, batch, stage):
        """Evaluation step that also accumulates the loss components."""
        loss = super().evaluate_batch(batch, stage)
        statistics = {name: float(value) for name, value in self.batch_statistics.items()}
        if math.isfinite(statistics["loss"]):
            self.stage_statistics.update(statistics)
        return loss

    def on_stage_start(self, stage, epoch=None):
        """Resets statistics; tells the training corruptor the epoch (new draws every epoch)."""
        self.stage_statistics = RunningMeans()
        if stage == sb.Stage.TRAIN and epoch is not None:
            self.hparams.train_corruptor.set_epoch(epoch)

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs every loss component; checkpoints after validation (best and latest kept)."""
        summary = self.stage_statistics.summary()
        summary["loss"] = stage_loss
        if stage == sb.Stage.TRAIN:
            self.train_summary = summary
            return
        if stage == sb.Stage.VALID:
            lr = self.optimizer.param_groups[0]["lr"] if self.optimizer_step else 0.0
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "optimizer_step": self.optimizer_step, "lr": lr},
                train_stats=getattr(self, "train_summary", None),
                valid_stats=summary,
            )
            self.checkpointer.save_and_keep_only(
                meta={"valid_loss": stage_loss, "optimizer_step": self.optimizer_step},
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
        SpeechBrain also steps after a non-finite loss in fp32/bf16 (it only counts it), which would
        write NaN into the weights and then into the checkpoints: such a step is skipped here.
        """
        self.scaler.unscale_(self.optimizer)
        trainable = [parameter for parameter in self.modules.parameters() if parameter.requires_grad]
        self.gradient_norm = float(torch.nn.utils.clip_grad_norm_(trainable, self.max_grad_norm))
        if not self.scaler.is_enabled() and not math.isfinite(self.gradient_norm):
            logger.warning("Non-finite gradient norm at step %d: the step is skipped.", self.optimizer_step + 1)
            self.optimizer.zero_grad(set_to_none=True)
            return
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_step += 1
