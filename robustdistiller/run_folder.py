"""What makes an output folder belong to one run: an exclusive lock and a resume signature.

- :func:`lock_output_folder` takes an exclusive ``flock`` on ``<output_folder>/.run.lock``. The
  kernel releases it when the process ends, however it ends, so a lock file left by a killed run is
  recognised as stale (nobody holds it) and taken over with a log line naming the dead run. A second
  run in the same folder (whose logs would interleave and whose checkpoint clean-up would delete the
  first run's checkpoints) stops at once with :class:`OutputFolderInUse`.
- :func:`check_run_signature` compares the settings that define a run (teacher, learning rate, crop
  size, target layers...) with those recorded when the run started; a resume that changes any of
  them is refused, listing each key with both values, unless the key is accepted on purpose. The
  signature is written by :func:`write_run_signature`, after a successful recovery.
"""

import atexit
import datetime
import fcntl
import json
import logging
import os
import socket
import sys

logger = logging.getLogger(__name__)

LOCK_FILE = ".run.lock"
SIGNATURE_FILE = "run_signature.json"

_held_locks = {}  # absolute folder -> open lock file (kept open for the life of the process)


class OutputFolderInUse(RuntimeError):
    """Another live process holds the output folder's lock."""


class ChangedSettingsError(ValueError):
    """A resume would continue a run with settings other than those it was started with."""


def _describe_lock(path):
    """The recorded holder of a lock file, as text (empty when unreadable)."""
    try:
        with open(path, encoding="utf-8") as fin:
            holder = json.load(fin)
        return (
            f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}, "
            f"command: {holder.get('command')}"
        )
    except (OSError, ValueError):
        return ""


def lock_output_folder(folder):
    """Takes the exclusive lock of an output folder for the rest of this process.

    Calling it again for the same folder in the same process is a no-op.

    Arguments
    ---------
    folder : str
        The run's output folder (created if missing).

    Returns
    -------
    str
        The lock file's path.

    Raises
    ------
    OutputFolderInUse
        When another live process holds the lock; the message names it.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> os.path.basename(lock_output_folder(folder))
    '.run.lock'
    >>> release_output_folder(folder)
    """
    folder = os.path.abspath(folder)
    path = os.path.join(folder, LOCK_FILE)
    if folder in _held_locks:
        return path
    os.makedirs(folder, exist_ok=True)
    previous_holder = _describe_lock(path) if os.path.exists(path) else ""
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise OutputFolderInUse(
            f"Output folder '{folder}' is in use by another run ({_describe_lock(path) or 'unknown process'}). "
            "Two runs in one folder would interleave their logs and delete each other's checkpoints: wait "
            "for that run to end, or give this one another --output_folder."
        ) from None
    if previous_holder:
        logger.info("Taking over the stale lock of a run that is no longer running (%s).", previous_holder)
    handle.seek(0)
    handle.truncate()
    json.dump(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        },
        handle,
    )
    handle.flush()
    _held_locks[folder] = handle
    atexit.register(release_output_folder, folder)
    return path


def release_output_folder(folder):
    """Releases a lock taken by :func:`lock_output_folder` in this process (no-op when not held)."""
    handle = _held_locks.pop(os.path.abspath(folder), None)
    if handle is not None:
        handle.truncate(0)  # a clean exit leaves no holder behind (a killed run leaves a stale one)
        handle.flush()
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


def _normalised(value):
    """A JSON-comparable form of a YAML value (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(value, default=str))


def with_run_options(hparams, run_opts):
    """``hparams`` with the SpeechBrain run options given on the command line put in (a shallow copy).

    ``--grad_accumulation_factor=1``, ``--max_grad_norm``, ``--precision``... are SpeechBrain run options: the
    Brain uses them instead of the YAML's values, which stay unchanged in ``hparams``. A signature must
    record what the run really uses.

    Example
    -------
    >>> with_run_options({"grad_accumulation_factor": 4, "lr": 0.1}, {"grad_accumulation_factor": 1})
    {'grad_accumulation_factor': 1, 'lr': 0.1}
    """
    if not run_opts:
        return dict(hparams)
    given = getattr(run_opts, "overridden_args", None)
    values = run_opts if isinstance(run_opts, dict) else run_opts.as_dict()
    if given is None:
        given = set(values)
    effective = dict(hparams)
    effective.update({key: values[key] for key in given if key in hparams and key in values})
    return effective


def run_signature(hparams, keys, extra=None):
    """The settings that define a run: ``hparams[key]`` for each key, plus ``extra`` values.

    Example
    -------
    >>> run_signature({"lr": 0.0002, "target_layers": (4, 8, 12), "seed": 1}, ["lr", "target_layers"])
    {'lr': 0.0002, 'target_layers': [4, 8, 12]}
    """
    missing = [key for key in keys if key not in hparams]
    if missing:
        raise KeyError(f"run_signature_keys names {missing}, which are not keys of the YAML")
    signature = {key: _normalised(hparams[key]) for key in keys}
    signature.update(_normalised(extra or {}))
    return signature


def read_run_signature(save_folder):
    """The recorded signature of a run, or None when the folder has none."""
    path = os.path.join(save_folder, SIGNATURE_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fin:
        return json.load(fin)


def check_run_signature(save_folder, signature, accept=(), resuming=True):
    """Refuses to resume a run whose defining settings changed, unless accepted on purpose.

    Arguments
    ---------
    save_folder : str
        Where the run's checkpoints and ``run_signature.json`` are.
    signature : dict
        The settings of this invocation (:func:`run_signature`).
    accept : sequence of str
        Keys whose change is accepted (``--accept_changed_settings=[lr]``); the change is logged.
    resuming : bool
        Whether there is a checkpoint to resume; a folder without one is a fresh start (nothing
        to compare with).

    Returns
    -------
    dict
        The changed keys as ``{key: (recorded, now)}`` (all accepted when this returns).

    Raises
    ------
    ChangedSettingsError
        Listing every changed key that is not accepted, with both values.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> write_run_signature(folder, {"lr": 0.0002})
    >>> check_run_signature(folder, {"lr": 0.0002})
    {}
    >>> check_run_signature(folder, {"lr": 0.001}, accept=["lr"])
    {'lr': (0.0002, 0.001)}
    """
    recorded = read_run_signature(save_folder)
    if not resuming or recorded is None:
        if resuming:
            logger.warning(
                "Resuming a run in %s that has no %s (started by an older version): its settings cannot be "
                "compared; recording the current ones.", save_folder, SIGNATURE_FILE,
            )
        return {}
    signature = _normalised(signature)
    changed = {
        key: (recorded.get(key, "<not recorded>"), signature.get(key, "<not set>"))
        for key in sorted(set(recorded) | set(signature))
        if recorded.get(key, "<not recorded>") != signature.get(key, "<not set>")
    }
    refused = {key: values for key, values in changed.items() if key not in accept}
    if refused:
        lines = "\n".join(f"  {key}: recorded {old!r}, now {new!r}" for key, (old, new) in refused.items())
        raise ChangedSettingsError(
            f"The run in {save_folder} was started with other settings; resuming it with these would mix "
            f"two runs:\n{lines}\nStart a new run with another --output_folder, restore the recorded values, "
            f"or accept the change on purpose with --accept_changed_settings=[{','.join(refused)}]."
        )
    for key, (old, new) in changed.items():
        logger.warning("Resuming with a changed setting, accepted on purpose: %s %r -> %r", key, old, new)
    return changed


def write_run_signature(save_folder, signature):
    """Records the run's defining settings (atomically: a temporary file renamed into place)."""
    os.makedirs(save_folder, exist_ok=True)
    path = os.path.join(save_folder, SIGNATURE_FILE)
    with open(path + ".tmp", "w", encoding="utf-8") as fout:
        json.dump(_normalised(signature), fout, indent=2)
    os.replace(path + ".tmp", path)
