"""Crash-safe checkpoints: atomic saves and a recovery that skips a damaged checkpoint.

SpeechBrain's ``Checkpointer`` writes ``CKPT.yaml`` first and then each file in place, and recovery
takes the newest folder with a ``CKPT.yaml``; a kill in the middle of a save (likely with step-based
intervals: a save every few minutes) leaves a folder that fails every later resume with a torch zip
error naming no file. :class:`AtomicCheckpointer` is a drop-in replacement:

- a checkpoint is written into a hidden ``.partial-CKPT+...`` folder (files flushed to disk) and
  renamed to ``CKPT+...`` only when complete, so a listed checkpoint is always whole; leftovers of
  an interrupted save are removed, with a log line, at the next save or recovery;
- recovery tries the preferred checkpoint (newest, or best by ``min_key``/``max_key``) and, when one
  of its files cannot be read (truncated, missing, disk error), warns naming the checkpoint and the
  file and falls back to the next one; a ``CKPT.yaml`` that cannot be parsed is skipped the same way.
"""

import logging
import os
import pathlib
import shutil

import yaml
from speechbrain.utils.checkpoints import (
    CKPT_PREFIX,
    DEFAULT_LOAD_HOOKS,
    DEFAULT_SAVE_HOOKS,
    METAFNAME,
    PARAMFILE_EXT,
    Checkpoint,
    Checkpointer,
    get_default_hook,
    mark_as_loader,
    mark_as_saver,
    register_checkpoint_hooks,
)
from speechbrain.utils.distributed import ddp_barrier, ddp_broadcast, if_main_process

logger = logging.getLogger(__name__)

PARTIAL_PREFIX = ".partial-"


class CheckpointRecoveryError(RuntimeError):
    """No checkpoint of a folder that has some could be loaded."""


def _fsync_file(path):
    """Flushes a written file to disk (a rename after a crash must not expose empty files)."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


class AtomicCheckpointer(Checkpointer):
    """A ``Checkpointer`` whose checkpoints appear only when complete and whose recovery falls back.

    Same arguments as ``speechbrain.utils.checkpoints.Checkpointer``.

    Example
    -------
    >>> import tempfile, torch
    >>> model = torch.nn.Linear(2, 2)
    >>> checkpointer = AtomicCheckpointer(tempfile.mkdtemp(), recoverables={"model": model})
    >>> saved = checkpointer.save_checkpoint(meta={"step": 1})
    >>> saved.path.name.startswith("CKPT+"), sorted(path.name for path in saved.path.iterdir())
    (True, ['CKPT.yaml', 'model.ckpt'])
    >>> checkpointer.recover_if_possible().meta["step"]
    1
    """

    def save_checkpoint(self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO):
        """Saves every recoverable into a hidden folder, then renames it into place (see the module)."""
        final_dir = partial_dir = None
        if if_main_process():
            self.remove_partial_checkpoints()
            final_dir = self._new_checkpoint_dirpath() if name is None else self._custom_checkpoint_dirpath(name)
            partial_dir = final_dir.with_name(PARTIAL_PREFIX + final_dir.name)
            os.makedirs(partial_dir)
            saved_meta = self._save_checkpoint_metafile(partial_dir / METAFNAME, meta, end_of_epoch)
        partial_dir = ddp_broadcast(partial_dir, src=0)

        for recoverable_name, obj in self.recoverables.items():
            savepath = partial_dir / f"{recoverable_name}{PARAMFILE_EXT}"
            if recoverable_name in self.custom_save_hooks:
                self.custom_save_hooks[recoverable_name](obj, savepath)
                continue
            default_hook = get_default_hook(obj, DEFAULT_SAVE_HOOKS)
            if default_hook is None:
                raise RuntimeError(
                    f"Don't know how to save {type(obj)} (recoverable '{recoverable_name}'). "
                    "Register a default hook or add a custom hook for this object."
                )
            default_hook(obj, savepath)
        ddp_barrier()  # every process has written its files before the folder is published

        checkpoint = None
        if if_main_process():
            for path in partial_dir.iterdir():
                _fsync_file(path)
            if final_dir.exists():  # a custom name saved again replaces the older checkpoint
                shutil.rmtree(final_dir)
            os.rename(partial_dir, final_dir)
            paramfiles = {path.stem: path for path in final_dir.iterdir() if path.suffix == PARAMFILE_EXT}
            kind = "end-of-epoch" if end_of_epoch else "intra-epoch"
            logger.log(verbosity, "Saved an %s checkpoint in %s", kind, final_dir)
            checkpoint = Checkpoint(final_dir, saved_meta, paramfiles)
        # Every process sees the published folder before going on: SpeechBrain's delete_checkpoints lists the
        # checkpoints on each process and runs one collective per deletion, so two processes that list
        # different folders (one before the rename, one after) deadlock (found with torchrun, gloo, 2 CPUs).
        ddp_barrier()
        return checkpoint

    def remove_partial_checkpoints(self):
        """Deletes what interrupted saves left behind (hidden ``.partial-CKPT+*`` folders)."""
        if not self.checkpoints_dir.is_dir():
            return
        for path in self.checkpoints_dir.iterdir():
            if path.is_dir() and path.name.startswith(PARTIAL_PREFIX + CKPT_PREFIX):
                logger.warning("Removing %s, left by an interrupted checkpoint save.", path)
                shutil.rmtree(path)

    def list_checkpoints(self):
        """Every complete checkpoint; one whose ``CKPT.yaml`` cannot be read is skipped with a warning."""
        checkpoints = []
        for checkpoint_dir in self._list_checkpoint_dirs():
            try:
                with open(checkpoint_dir / METAFNAME, encoding="utf-8") as fin:
                    meta = yaml.load(fin, Loader=yaml.SafeLoader)
                if not isinstance(meta, dict) or "end-of-epoch" not in meta:
                    raise ValueError(f"expected a mapping with 'end-of-epoch', got {meta!r}")
            except (OSError, ValueError, yaml.YAMLError) as error:
                logger.warning("Skipping checkpoint %s: its %s cannot be read (%s).", checkpoint_dir, METAFNAME, error)
                continue
            paramfiles = {path.stem: path for path in checkpoint_dir.iterdir() if path.suffix == PARAMFILE_EXT}
            checkpoints.append(Checkpoint(checkpoint_dir, meta, paramfiles))
        return checkpoints

    def recover_if_possible(self, importance_key=None, max_key=None, min_key=None, ckpt_predicate=None):
        """Loads the preferred loadable checkpoint; a damaged one is skipped with a warning.

        Returns the checkpoint loaded, or None when there is none. Raises
        :class:`CheckpointRecoveryError` (naming every checkpoint and its error) when checkpoints
        exist but none can be loaded.
        """
        if if_main_process():
            self.remove_partial_checkpoints()
        candidates = self.find_checkpoints(importance_key, max_key, min_key, ckpt_predicate, max_num_checkpoints=None)
        if not candidates:
            logger.info("Would load a checkpoint here, but none found yet.")
            return None
        failures = []
        for checkpoint in candidates:
            try:
                self.load_checkpoint(checkpoint)
            except Exception as error:  # noqa: BLE001 -- any unreadable file means: try the previous one
                failed_file = getattr(error, "checkpoint_file", None)
                failures.append(f"{checkpoint.path}: {failed_file or ''} {type(error).__name__}: {error}")
                logger.warning(
                    "Checkpoint %s cannot be loaded (%s%s: %s); falling back to the previous checkpoint.",
                    checkpoint.path, f"{failed_file}, " if failed_file else "", type(error).__name__, error,
                )
                continue
            if failures:
                logger.warning("Recovered from %s after skipping %d damaged checkpoint(s).", checkpoint.path, len(failures))
            return checkpoint
        raise CheckpointRecoveryError(
            f"None of the {len(candidates)} checkpoint(s) in {self.checkpoints_dir} can be loaded:\n  "
            + "\n  ".join(failures)
            + "\nMove the damaged folders away to start from scratch, or restore them from a backup."
        )

    def _call_load_hooks(self, checkpoint):
        """As SpeechBrain's, but a file missing from the checkpoint or unreadable names itself."""
        missing = [
            name for name in self.recoverables
            if name not in checkpoint.paramfiles and not self.optional_recoverables.get(name, False)
            and not self.allow_partial_load and "dataloader" not in name
        ]
        if missing:
            error = FileNotFoundError(f"the checkpoint has no file for {', '.join(missing)}")
            error.checkpoint_file = str(pathlib.Path(checkpoint.path) / f"{missing[0]}{PARAMFILE_EXT}")
            raise error
        logger.info("Loading a checkpoint from %s", checkpoint.path)
        for name in self.recoverables:
            if name not in checkpoint.paramfiles:
                continue
            try:
                self._load_one(checkpoint, name)
            except Exception as error:  # noqa: BLE001
                error.checkpoint_file = str(checkpoint.paramfiles[name])
                raise

    def _load_one(self, checkpoint, name):
        """Loads one recoverable from its file with its custom or SpeechBrain's default hook."""
        obj, path = self.recoverables[name], checkpoint.paramfiles[name]
        end_of_epoch = checkpoint.meta["end-of-epoch"]
        if name in self.custom_load_hooks:
            self.custom_load_hooks[name](obj, path, end_of_epoch)
            return
        default_hook = get_default_hook(obj, DEFAULT_LOAD_HOOKS)
        if default_hook is None:
            raise RuntimeError(f"Don't know how to load {type(obj)} (recoverable '{name}').")
        default_hook(obj, path, end_of_epoch)


@register_checkpoint_hooks
class RandomState:
    """The global random generators (torch CPU and CUDA, NumPy, Python) as a checkpoint recoverable.

    With it, a run resumed from a checkpoint draws the same dropout masks (and any other global
    random numbers) as the uninterrupted run would have drawn from that step on. The data pipeline
    does not need it: crops and corruptions are seeded per utterance and epoch, and the data loaders
    get their own generators (:meth:`~robustdistiller.brain.DistillationBrain.make_dataloader`).
    Under DDP the main process's state is saved, so after a resume every process continues with it.

    Example
    -------
    >>> import tempfile, torch
    >>> path = os.path.join(tempfile.mkdtemp(), "random_state.ckpt")
    >>> state = RandomState()
    >>> state.save(path)
    >>> expected = torch.rand(3)
    >>> state.load(path)
    >>> torch.equal(torch.rand(3), expected)
    True
    """

    @mark_as_saver
    def save(self, path):
        """Writes the current states of every global generator."""
        import random

        import numpy
        import torch

        kind, keys, position, has_gauss, cached_gaussian = numpy.random.get_state()
        version, python_state, gauss_next = random.getstate()
        # Plain types and tensors only: the file loads with weights_only=True (no pickled objects).
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype("int64")), int(position), int(has_gauss), float(cached_gaussian)],
            "python": [version, list(python_state), gauss_next],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(state, path)

    @mark_as_loader
    def load(self, path, end_of_epoch=False):
        """Restores the states written by :meth:`save` (CUDA only when both runs have it)."""
        import random

        import numpy
        import torch

        state = torch.load(path, weights_only=True)
        torch.set_rng_state(state["torch"])
        kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
        numpy.random.set_state((kind, keys.numpy().astype("uint32"), position, has_gauss, cached_gaussian))
        version, python_state, gauss_next = state["python"]
        random.setstate((version, tuple(python_state), gauss_next))
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
