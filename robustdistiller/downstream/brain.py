"""The Brain shared by the downstream recipes.

:class:`DownstreamBrain`: ``encode`` (upstream + weighted sum), per-epoch corruption seeds, CPU-safe
DDP (no SyncBatchNorm conversion on CPU), the best checkpoint (:attr:`~DownstreamBrain.best_checkpoint_key`,
from the YAML's ``selection_metric`` and ``selection_mode``: kept by
:meth:`~DownstreamBrain.keep_best_checkpoint`, tested by :meth:`~DownstreamBrain.evaluate_conditions`, the
condition loop: the best checkpoint tested under every test condition).
"""

import logging
import os

import speechbrain as sb
from torch.nn.parallel import DistributedDataParallel

from robustdistiller.runs.log_format import format_stats
from robustdistiller.runs.options import OptionError
from robustdistiller.runs.workers import cap_num_workers

logger = logging.getLogger(__name__)

SELECTION_MODES = ("max", "min")
"""Values of a recipe's ``selection_mode``: the best checkpoint has the highest (``max``) or lowest (``min``)
dev ``selection_metric``."""


def checkpoint_selection(hparams):
    """SpeechBrain's key of the best checkpoint from a recipe's ``selection_metric`` and ``selection_mode``.

    Arguments
    ---------
    hparams : dict
        The recipe's options.

    Returns
    -------
    dict
        ``{"max_key": metric}`` or ``{"min_key": metric}`` (the keyword of ``Checkpointer.find_checkpoint``
        and ``Brain.evaluate``).

    Raises
    ------
    robustdistiller.runs.options.OptionError
        A missing metric, or a mode other than ``max`` / ``min`` (the option named).

    Example
    -------
    >>> checkpoint_selection({"selection_metric": "EER", "selection_mode": "min"})
    {'min_key': 'EER'}
    >>> checkpoint_selection({"selection_metric": "accuracy", "selection_mode": "highest"})
    Traceback (most recent call last):
    ...
    robustdistiller.runs.options.OptionError: Option `selection_mode` must be one of ['max', 'min'], got 'highest'.
    """
    metric, mode = hparams.get("selection_metric"), hparams.get("selection_mode")
    if not isinstance(metric, str) or not metric:
        raise OptionError(
            f"Option `selection_metric` must name the dev metric that keeps the best checkpoint "
            f"(e.g. accuracy), got {metric!r}."
        )
    if mode not in SELECTION_MODES:
        raise OptionError(f"Option `selection_mode` must be one of {list(SELECTION_MODES)}, got {mode!r}.")
    return {f"{mode}_key": metric}


class DownstreamBrain(sb.Brain):
    """Base Brain of the downstream recipes: a frozen upstream, a weighted layer sum and a head.

    Expected ``hparams``: ``upstream`` (:class:`FrozenUpstream`, *not* in ``modules``), and
    ``modules`` holding ``weighted_sum`` (:class:`WeightedLayerSum`) plus the task's head. The training
    set's :class:`AudioPipeline` (``audio_pipeline`` of a dataset made by
    :func:`~robustdistiller.downstream.data.audio_dataset`) is re-seeded every epoch.
    Subclasses implement ``compute_forward`` (using :meth:`encode`), ``compute_objectives`` and
    ``on_stage_end``, and put the stage's metrics in ``self.stage_stats``; at the end of a dev stage they
    call :meth:`keep_best_checkpoint`. Which checkpoint is best is :attr:`best_checkpoint_key`, from the
    YAML's ``selection_metric`` (a key of the dev stats) and ``selection_mode`` (``max`` or ``min``).
    """

    selection_hint = ""
    """Advice appended to the error of :meth:`keep_best_checkpoint` when dev lacks ``selection_metric``."""

    @property
    def best_checkpoint_key(self):
        """``{"max_key": metric}`` or ``{"min_key": metric}``: the best checkpoint, from ``hparams``'
        ``selection_metric`` and ``selection_mode`` (:func:`checkpoint_selection`)."""
        return checkpoint_selection(vars(self.hparams))

    def on_fit_start(self):
        """Checks the checkpoint selection, moves the upstream to the device (it is not a module of the
        Brain) and keeps it frozen."""
        checkpoint_selection(vars(self.hparams))  # a wrong selection_metric / selection_mode stops the run here
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
        return super().make_dataloader(dataset, stage, ckpt_prefix, **cap_num_workers(loader_kwargs))

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
            logger.warning(
                "evaluate_untrained: %s has a checkpoint already; no untrained baseline",
                self.checkpointer.checkpoints_dir,
            )
            return None
        self.stage_stats, self.condition = {}, "untrained"
        self.evaluate(dataset, test_loader_kwargs=dict(loader_kwargs))  # evaluate() adds ckpt_prefix to it
        self.condition = ""
        logger.info("Untrained head: %s", self.stage_stats)
        return dict(self.stage_stats)

    def keep_best_checkpoint(self, stats):
        """Saves the end-of-epoch checkpoint with the dev ``stats`` as meta; keeps it and the best one.

        The best is by :attr:`best_checkpoint_key` (SpeechBrain's ``save_and_keep_only``).

        Raises
        ------
        ValueError
            The dev stats do not hold ``selection_metric`` (the stats' keys named).
        """
        ((key, metric),) = self.best_checkpoint_key.items()  # ("max_key", "accuracy")
        if metric not in stats:
            raise ValueError(
                f"selection_metric '{metric}' was not computed on dev (got {sorted(stats)})" + self.selection_hint
            )
        self.checkpointer.save_and_keep_only(meta=stats, **{f"{key}s": [metric]})  # max_keys=[...] / min_keys=[...]

    def evaluate_conditions(self, make_test_set, conditions, loader_kwargs):
        """Evaluates the best checkpoint (:attr:`best_checkpoint_key`) on the test set of every condition.

        Arguments
        ---------
        make_test_set : callable
            ``(name, spec) -> dataset`` for a condition ``spec`` (``{"condition", "snr"}``).
        conditions : dict
            ``name -> spec``, e.g. :data:`DEFAULT_TEST_CONDITIONS`.
        loader_kwargs : dict
            Test DataLoader options.

        Returns
        -------
        dict
            ``name -> self.stage_stats`` of the test stage, plus ``checkpoint``: the name of the
            checkpoint tested (None without one).
        """
        best = self.best_checkpoint_key
        results = {}
        checkpoint = None
        if self.checkpointer is not None:
            found = self.checkpointer.find_checkpoint(**best)
            checkpoint = None if found is None else os.path.basename(str(found.path))
        for name, spec in conditions.items():
            self.stage_stats, self.condition = {}, name
            self.evaluate(make_test_set(name, spec), test_loader_kwargs=loader_kwargs, **best)
            results[name] = {**self.stage_stats, "checkpoint": checkpoint}
            logger.info("Test condition %s: %s", name, format_stats(results[name]))
        return results
