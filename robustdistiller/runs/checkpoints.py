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
  file and falls back to the next one; a ``CKPT.yaml`` that cannot be parsed is skipped the same way;
- every checkpoint records the hash of the run's signature (``run_signature`` in ``CKPT.yaml``,
  :meth:`AtomicCheckpointer.sign`); at recovery a checkpoint of another run (another hash) is not
  loaded;
- nothing that cannot be loaded is deleted: a checkpoint of another run, of another model (files or
  tensors this model does not have) or a damaged one is moved to ``<checkpoints_dir>/.unloadable/``
  with a warning saying which of the three it is (SpeechBrain's keep logic would otherwise delete it
  at the next save). Tensors of another *shape* in a checkpoint of this run mean the model was
  edited: :class:`ModelChangedError` names the module, the tensor and both shapes, and nothing is moved.
"""

import logging
import os
import pathlib
import re
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

from robustdistiller.runs.write_errors import reporting_write_errors

logger = logging.getLogger(__name__)

PARTIAL_PREFIX = ".partial-"
UNLOADABLE_FOLDER = ".unloadable"
SIGNATURE_META_KEY = "run_signature"

_SIZE_MISMATCH = re.compile(
    r"size mismatch for ([^:\s]+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from checkpoint, "
    r"the shape in current model is torch\.Size\(\[([^\]]*)\]\)"
)


class CheckpointRecoveryError(RuntimeError):
    """No checkpoint of a folder that has some could be loaded."""


class ModelChangedError(RuntimeError):
    """A checkpoint of this run holds tensors of other shapes: the model was edited since it was saved."""


def shape_mismatches(error):
    """``(tensor, checkpoint shape, model shape)`` of each size mismatch in a ``load_state_dict`` error.

    Example
    -------
    >>> import torch
    >>> try:
    ...     torch.nn.Linear(3, 2).load_state_dict(torch.nn.Linear(4, 2).state_dict())
    ... except RuntimeError as error:
    ...     print(shape_mismatches(error))
    [('weight', '[2, 4]', '[2, 3]')]
    """
    return [(name, f"[{old}]", f"[{new}]") for name, old, new in _SIZE_MISMATCH.findall(str(error))]


def _unloadable_kind(error, ours=False):
    """Why a checkpoint could not be loaded: "another model" (files or tensors this model does not have)
    or "damaged" (a file that cannot be read, or missing from a checkpoint this run wrote: ``ours``)."""
    if ours:
        return "damaged"
    text = str(error)
    if isinstance(error, FileNotFoundError) and "has no file for" in text:
        return "another model"
    if isinstance(error, (RuntimeError, KeyError)) and ("Missing key(s)" in text or "Unexpected key(s)" in text):
        return "another model"
    return "damaged"


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

    run_signature_hash = None  # set by sign(): recorded in every checkpoint
    run_signature_hashes = frozenset()  # hashes of this run's checkpoints (earlier accepted signatures too)

    def sign(self, signature_hash, accepted_hashes=()):
        """Records ``signature_hash`` in every checkpoint saved from now on; at recovery, checkpoints with
        another hash than it or ``accepted_hashes`` are another run's (set aside, not loaded).

        Example
        -------
        >>> import tempfile, torch
        >>> checkpointer = AtomicCheckpointer(tempfile.mkdtemp(), recoverables={"model": torch.nn.Linear(2, 2)})
        >>> checkpointer.sign("run-a")
        >>> checkpointer.save_checkpoint().meta["run_signature"]
        'run-a'
        >>> checkpointer.sign("run-b")
        >>> checkpointer.recover_if_possible() is None  # run-a's checkpoint is set aside
        True
        >>> sorted(os.listdir(checkpointer.checkpoints_dir / ".unloadable"))  # doctest: +ELLIPSIS
        ['CKPT+...']
        """
        self.run_signature_hash = signature_hash
        self.run_signature_hashes = frozenset({signature_hash, *accepted_hashes})

    def save_checkpoint(self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO):
        """Saves every recoverable into a hidden folder, then renames it into place (see the module)."""
        if self.run_signature_hash is not None:
            meta = {**meta, SIGNATURE_META_KEY: self.run_signature_hash}
        final_dir = partial_dir = None
        if if_main_process():
            self._move_set_aside()  # under DDP, what the recovery set aside (before the keep logic runs)
            self.remove_partial_checkpoints()
            final_dir = self._new_checkpoint_dirpath() if name is None else self._custom_checkpoint_dirpath(name)
            partial_dir = final_dir.with_name(PARTIAL_PREFIX + final_dir.name)
            os.makedirs(partial_dir)
            with reporting_write_errors(partial_dir / METAFNAME):
                saved_meta = self._save_checkpoint_metafile(partial_dir / METAFNAME, meta, end_of_epoch)
        partial_dir = ddp_broadcast(partial_dir, src=0)

        for recoverable_name, obj in self.recoverables.items():
            savepath = partial_dir / f"{recoverable_name}{PARAMFILE_EXT}"
            if recoverable_name in self.custom_save_hooks:
                with reporting_write_errors(savepath):
                    self.custom_save_hooks[recoverable_name](obj, savepath)
                continue
            default_hook = get_default_hook(obj, DEFAULT_SAVE_HOOKS)
            if default_hook is None:
                raise RuntimeError(
                    f"Don't know how to save {type(obj)} (recoverable '{recoverable_name}'). "
                    "Register a default hook or add a custom hook for this object."
                )
            with reporting_write_errors(savepath):  # a full disk: "no space left on <device> while writing <file>"
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
        """Loads the preferred loadable checkpoint of this run; what cannot be loaded is set aside.

        Returns the checkpoint loaded, or None when there is none. Checkpoints of another run (their
        ``run_signature`` hash is not this run's), of another model, or damaged are moved to
        ``<checkpoints_dir>/.unloadable/`` with a warning each (never deleted), and the next one is tried.

        Raises
        ------
        ModelChangedError
            When a checkpoint of this run has tensors of other shapes (the model was edited), naming the
            module, the tensor and both shapes; nothing is moved.
        CheckpointRecoveryError
            When checkpoints exist but none can be loaded (each is named, with its error).
        """
        if if_main_process():
            self.remove_partial_checkpoints()
        candidates = self.find_checkpoints(importance_key, max_key, min_key, ckpt_predicate, max_num_checkpoints=None)
        if not candidates:
            logger.info("Would load a checkpoint here, but none found yet.")
            return None
        failures, set_aside = [], []
        loaded = None
        try:
            for checkpoint in candidates:
                recorded_hash = checkpoint.meta.get(SIGNATURE_META_KEY)
                ours = recorded_hash is not None and recorded_hash in self.run_signature_hashes
                if self.run_signature_hashes and recorded_hash is not None and not ours:
                    reason = (
                        f"another run's checkpoint (signature hash {recorded_hash}; this run's is "
                        f"{self.run_signature_hash}): copied in from another output folder?"
                    )
                    set_aside.append((checkpoint, reason))
                    failures.append(f"{checkpoint.path}: {reason}")
                    continue
                try:
                    self.load_checkpoint(checkpoint)
                except Exception as error:  # noqa: BLE001 -- any unreadable file means: try the previous one
                    failed_file = getattr(error, "checkpoint_file", None)
                    mismatches = shape_mismatches(error)
                    if mismatches:
                        raise self._model_changed(checkpoint, failed_file, mismatches) from error
                    kind = _unloadable_kind(error, ours=ours)
                    reason = f"{kind}: {f'{failed_file}, ' if failed_file else ''}{type(error).__name__}: {error}"
                    failures.append(f"{checkpoint.path}: {reason}")
                    set_aside.append((checkpoint, reason))
                    logger.warning(
                        "Checkpoint %s cannot be loaded (%s); falling back to the previous checkpoint.",
                        checkpoint.path,
                        reason,
                    )
                    continue
                loaded = checkpoint
                break
        finally:
            self._set_aside(set_aside)
        if loaded is not None:
            if failures:
                logger.warning("Recovered from %s after setting aside %d checkpoint(s).", loaded.path, len(failures))
            return loaded
        if len(set_aside) == len(candidates) and all(reason.startswith("another run") for _, reason in set_aside):
            logger.warning("No checkpoint of this run in %s: starting from scratch.", self.checkpoints_dir)
            return None
        raise CheckpointRecoveryError(
            f"None of the {len(candidates)} checkpoint(s) in {self.checkpoints_dir} can be loaded:\n  "
            + "\n  ".join(failures)
            + f"\nThey were moved to {self.checkpoints_dir / UNLOADABLE_FOLDER} (nothing was deleted): re-run to "
            "start from scratch, or restore the damaged files from a backup and move the folders back."
        )

    def _model_changed(self, checkpoint, failed_file, mismatches):
        module = pathlib.Path(failed_file).stem if failed_file else "?"
        shapes = "; ".join(f"{name}: {old} in the checkpoint, {new} in the model" for name, old, new in mismatches[:5])
        more = f" (and {len(mismatches) - 5} more)" if len(mismatches) > 5 else ""
        return ModelChangedError(
            f"The model changed since checkpoint {checkpoint.path} was saved: module '{module}' has tensors of "
            f"other shapes ({shapes}{more}). The checkpoints are intact and were left in place: restore the "
            "model's settings (e.g. the YAML the run was started with, <output_folder>/hyperparams.yaml), or "
            "start a new run with another --output_folder."
        )

    def _set_aside(self, entries):
        """Moves checkpoints that cannot be loaded to ``<checkpoints_dir>/.unloadable/`` (main process).

        Under DDP the move waits for the next save (every process is past recovery then; a barrier here
        could hang, e.g. in a recovery that only the main process runs), which moves them before
        SpeechBrain's keep logic runs.
        """
        import torch

        self._pending_set_aside = getattr(self, "_pending_set_aside", []) + list(entries)
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            self._move_set_aside()

    def _move_set_aside(self):
        entries, self._pending_set_aside = getattr(self, "_pending_set_aside", []), []
        if not entries or not if_main_process():
            return
        folder = self.checkpoints_dir / UNLOADABLE_FOLDER
        folder.mkdir(exist_ok=True)
        for checkpoint, reason in entries:
            source = pathlib.Path(checkpoint.path)
            if not source.is_dir():
                continue
            target, number = folder / source.name, 1
            while target.exists():
                target, number = folder / f"{source.name}.{number}", number + 1
            os.rename(source, target)
            logger.warning(
                "Set aside checkpoint %s as %s, not deleted -- %s. Delete it yourself once you do not need it.",
                source,
                target,
                reason,
            )

    def _call_load_hooks(self, checkpoint):
        """As SpeechBrain's, but a file missing from the checkpoint or unreadable names itself."""
        missing = [
            name
            for name in self.recoverables
            if name not in checkpoint.paramfiles
            and not self.optional_recoverables.get(name, False)
            and not self.allow_partial_load
            and "dataloader" not in name
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
    get their own generators (:meth:`~robustdistiller.distill.brain.DistillationBrain.make_dataloader`).
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
            "numpy": [
                kind,
                torch.from_numpy(keys.astype("int64")),
                int(position),
                int(has_gauss),
                float(cached_gaussian),
            ],
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
