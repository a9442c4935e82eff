"""The Brain shared by the downstream recipes.

:class:`DownstreamBrain`: ``encode`` (upstream + weighted sum), per-epoch corruption seeds, CPU-safe
DDP (no SyncBatchNorm conversion on CPU), :meth:`~DownstreamBrain.evaluate_conditions` (the condition
loop: the best checkpoint tested under every test condition).
"""

import logging
import os

import speechbrain as sb
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)


class DownstreamBrain(sb.Brain):
    """Base Brain of the downstream recipes: a frozen upstream, a weighted layer sum and a head.

    Expected ``hparams``: ``upstream`` (:class:`FrozenUpstream`, *not* in ``modules``), and
    ``modules`` holding ``weighted_sum`` (:class:`WeightedLayerSum`) plus the task's head. The training
    set's :class:`AudioPipeline` (``audio_pipeline`` of a dataset made by
    :func:`~robustdistiller.downstream.data.audio_dataset`) is re-seeded every epoch.
    Subclasses implement ``compute_forward`` (using :meth:`encode`), ``compute_objectives`` and
    ``on_stage_end``, and put the stage's metrics in ``self.stage_stats``.
    """

    def on_fit_start(self):
        """Moves the upstream to the device (it is not a module of the Brain) and keeps it frozen."""
        self.hparams.upstream.to(self.device).eval()
        super().on_fit_start()

    def on_evaluate_start(self, max_key=None, min_key=None):
        """Same as :meth:`on_fit_start` for ``evaluate`` without ``fit``."""
        self.hparams.upstream.to(self.device).eval()
        super().on_evaluate_start(max_key=max_key, min_key=min_key)

    def make_dataloader(self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs):
        """SpeechBrain's loader; remembers the training set's audio pipeline (see :meth:`on_stage_start`)."""
        if stage == sb.Stage.TRAIN:
            self.train_pipeline = getattr(dataset, "audio_pipeline", None)
        return super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)

    def on_stage_start(self, stage, epoch=None):
        """Re-seeds the training pipeline's crops/corruption with the epoch."""
        pipeline = getattr(self, "train_pipeline", None)
        if stage == sb.Stage.TRAIN and pipeline is not None and epoch is not None:
            pipeline.set_epoch(epoch)

    def encode(self, wavs, wav_lens):
        """Upstream layers (no gradient) combined by the learnable weighted sum.

        Returns
        -------
        features : torch.Tensor
            ``[B, F, D]``.
        frame_mask : torch.Tensor
            ``[B, F]`` bool.
        """
        layers, frame_mask = self.hparams.upstream(wavs, wav_lens)
        return self.modules.weighted_sum(layers), frame_mask

    def layer_weights(self):
        """The weighted sum's softmax weights (which upstream layers the task uses)."""
        weighted_sum = self.modules.weighted_sum
        return getattr(weighted_sum, "module", weighted_sum).layer_weights()

    def on_fit_end(self):
        """Logs the layer weights."""
        weights = ", ".join(f"{index}: {weight:.3f}" for index, weight in enumerate(self.layer_weights()))
        logger.info("Weighted-sum layer weights: %s", weights)

    def _wrap_distributed(self):
        """DDP without SpeechBrain's SyncBatchNorm conversion on CPU (it only works on CUDA)."""
        if not self.distributed_launch or not str(self.device).startswith("cpu"):
            return super()._wrap_distributed()
        for name, module in self.modules.items():
            if any(parameter.requires_grad for parameter in module.parameters()):
                self.modules[name] = DistributedDataParallel(
                    module, device_ids=None, find_unused_parameters=self.find_unused_parameters
                )

    def evaluate_untrained(self, dataset, loader_kwargs):
        """Metrics of the untrained head on ``dataset`` (the baseline that learning must beat).

        Call it before ``fit``; the test stage runs with ``self.condition = "untrained"`` (e.g. CTC
        hypotheses go to ``hypotheses/untrained.txt``). Returns None (with a warning) when the output
        folder already has a checkpoint: a resumed run is not untrained.
        """
        if self.checkpointer is not None and self.checkpointer.find_checkpoint() is not None:
            logger.warning("evaluate_untrained: %s has a checkpoint already; no untrained baseline",
                           self.checkpointer.checkpoints_dir)
            return None
        self.stage_stats, self.condition = {}, "untrained"
        self.evaluate(dataset, test_loader_kwargs=dict(loader_kwargs))  # evaluate() adds ckpt_prefix to it
        self.condition = ""
        logger.info("Untrained head: %s", self.stage_stats)
        return dict(self.stage_stats)

    def evaluate_conditions(self, make_test_set, conditions, loader_kwargs, max_key=None, min_key=None):
        """Evaluates the best checkpoint on the test set of every condition.

        Arguments
        ---------
        make_test_set : callable
            ``(name, spec) -> dataset`` for a condition ``spec`` (``{"condition", "snr"}``).
        conditions : dict
            ``name -> spec``, e.g. :data:`DEFAULT_TEST_CONDITIONS`.
        loader_kwargs : dict
            Test DataLoader options.
        max_key, min_key : str, optional
            Checkpoint selection (e.g. ``max_key="accuracy"``).

        Returns
        -------
        dict
            ``name -> self.stage_stats`` of the test stage, plus ``checkpoint``: the name of the
            checkpoint tested (None without one).
        """
        results = {}
        checkpoint = None
        if self.checkpointer is not None:
            found = self.checkpointer.find_checkpoint(max_key=max_key, min_key=min_key)
            checkpoint = None if found is None else os.path.basename(str(found.path))
        for name, spec in conditions.items():
            self.stage_stats, self.condition = {}, name
            self.evaluate(make_test_set(name, spec), max_key=max_key, min_key=min_key, test_loader_kwargs=loader_kwargs)
            results[name] = {**self.stage_stats, "checkpoint": checkpoint}
            logger.info("Test condition %s: %s", name, results[name])
        return results

