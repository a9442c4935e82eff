"""What makes an output folder belong to one run: an exclusive lock and a resume signature.

- :func:`lock_output_folder` takes an exclusive ``flock`` on ``<output_folder>/.run.lock``. The
  kernel releases it when the process ends, however it ends, so a lock file left by a killed run is
  recognised as stale (nobody holds it) and taken over with a log line naming the dead run. A second
  run in the same folder (whose logs would interleave and whose checkpoint clean-up would delete the
  first run's checkpoints) stops at once with :class:`OutputFolderInUse`.
- :func:`check_run_signature` compares the settings that define a run (teacher, learning rate, crop
  size, target layers...) with those recorded when the run started; a resume that changes any of
  them is refused, listing each key with both values, unless the key is accepted on purpose. The
  signature is written by :func:`write_run_signature`, after a successful recovery. Besides the
  YAML's ``run_signature_keys`` it holds what the data is (:func:`data_signature`: the content of
  every prepared list, not its paths) and the shape of every trained module
  (:func:`architecture_signature`).
- :func:`signature_hash` is the short hash of a signature; every checkpoint records it
  (:class:`~robustdistiller.runs.checkpoints.AtomicCheckpointer`), so a checkpoint copied in from
  another run is recognised and set aside instead of resumed. A change accepted on purpose keeps
  the earlier hashes as this run's (``previous_signature_hashes`` in ``run_signature.json``).
- :func:`log_to_output_folder` sends the log to ``<output_folder>/log.txt`` before
  ``sb.create_experiment_directory`` runs, so that a resume can be checked (and refused) before
  anything of the run (``hyperparams.yaml``, ``env.log``, the script copy) is rewritten.
"""

import atexit
import datetime
import fcntl
import hashlib
import json
import logging
import os
import socket
import sys

from robustdistiller.runs.fingerprint import architecture_fingerprint, list_fingerprint

logger = logging.getLogger(__name__)

LOCK_FILE = ".run.lock"
SIGNATURE_FILE = "run_signature.json"
#: Key of ``run_signature.json`` listing the hashes of earlier signatures of the same run (changes
#: accepted on purpose); not a setting, never compared.
PREVIOUS_HASHES_KEY = "previous_signature_hashes"
#: The prepared lists whose content is signed (YAML keys; those absent from a YAML are skipped).
DATA_LIST_KEYS = ("train_csv", "valid_csv", "noise_csv", "rir_csv")

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
    # held open for the life of the run: closing it would release the lock
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115
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


def data_signature(hparams, keys=DATA_LIST_KEYS):
    """What the run's data is: :func:`~robustdistiller.runs.fingerprint.list_fingerprint` of each prepared list.

    Call it after the preparation. Keys are ``<YAML key>_fingerprint`` (``train_csv_fingerprint``...);
    a list the YAML does not name, or a validation list without ``valid_splits``, is left out.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "train.csv")
    >>> _ = open(path, "w").write("ID,duration,wav\\nu1,1.5,/data/u1.flac\\n")
    >>> data_signature({"train_csv": path, "valid_csv": "unused.csv", "valid_splits": []})
    {'train_csv_fingerprint': '1 rows, sha256 ...'}
    """
    return {f"{key}_fingerprint": list_fingerprint(path) for key, path in prepared_lists(hparams, keys).items()}


def prepared_lists(hparams, keys=DATA_LIST_KEYS):
    """``{YAML key: path}`` of the lists the preparation writes for this YAML (see :func:`data_signature`).

    Example
    -------
    >>> prepared_lists({"train_csv": "/s/train.csv", "valid_csv": "/s/valid.csv", "valid_splits": [], "rir_csv": None})
    {'train_csv': '/s/train.csv'}
    """
    lists = {}
    for key in keys:
        path = hparams.get(key)
        if not path or (key == "valid_csv" and not hparams.get("valid_splits", True)):
            continue
        lists[key] = str(path)
    return lists


def architecture_signature(modules):
    """The shape of each trained module (``architecture_<name>``), which every checkpoint must match.

    Example
    -------
    >>> import torch
    >>> architecture_signature({"head": torch.nn.Linear(3, 2), "none": None})
    {'architecture_head': '8 parameters, shapes ...'}
    """
    return {
        f"architecture_{name}": architecture_fingerprint(module)
        for name, module in modules.items()
        if module is not None
    }


def signature_hash(signature):
    """Short SHA-256 of a signature (order of keys and tuples vs lists do not matter).

    Example
    -------
    >>> signature_hash({"lr": 0.1, "layers": (4, 8)}) == signature_hash({"layers": [4, 8], "lr": 0.1})
    True
    >>> len(signature_hash({"lr": 0.1}))
    16
    """
    signature = {key: value for key, value in _normalised(signature).items() if key != PREVIOUS_HASHES_KEY}
    return hashlib.sha256(json.dumps(signature, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def run_signature_hashes(save_folder, signature):
    """The hashes that mark a checkpoint as this run's: the current signature's, the recorded one's and
    its earlier ones (changes accepted on purpose). Call it after :func:`check_run_signature` passed."""
    hashes = {signature_hash(signature)}
    recorded = _read_signature_file(save_folder)
    if recorded is not None:
        hashes.add(signature_hash(recorded))
        hashes.update(recorded.get(PREVIOUS_HASHES_KEY, []))
    return hashes


def _read_signature_file(save_folder):
    path = os.path.join(save_folder, SIGNATURE_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as fin:
            recorded = json.load(fin)
        if not isinstance(recorded, dict):
            raise ValueError(f"expected a JSON object, got {type(recorded).__name__}")
    except (OSError, ValueError) as error:
        raise ChangedSettingsError(
            f"'{path}' cannot be read ({error}): it records the settings of the run in {save_folder}. "
            "Restore it from a backup, or start a new run with another --output_folder."
        ) from error
    return recorded


def read_run_signature(save_folder):
    """The recorded signature of a run (without its earlier hashes), or None when the folder has none."""
    recorded = _read_signature_file(save_folder)
    if recorded is None:
        return None
    recorded.pop(PREVIOUS_HASHES_KEY, None)
    return recorded


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
            _warn_once(
                save_folder,
                "Resuming a run in %s that has no %s (started by an older version): its settings cannot be "
                "compared; recording the current ones.",
                save_folder,
                SIGNATURE_FILE,
            )
        return {}
    signature = {key: value for key, value in _normalised(signature).items() if key != PREVIOUS_HASHES_KEY}
    changed = {
        key: (recorded.get(key, "<not recorded>"), signature.get(key, "<not set>"))
        for key in sorted(set(recorded) | set(signature))
        if recorded.get(key, "<not recorded>") != signature.get(key, "<not set>")
    }
    # Keys an older version did not sign (the data and architecture fingerprints...) are recorded now.
    newly_signed = [key for key, (old, _) in changed.items() if old == "<not recorded>"]
    for key in newly_signed:
        _warn_once(
            save_folder,
            "The run in %s was started by a version that did not record %s; recording it now (%r).",
            save_folder,
            key,
            changed.pop(key)[1],
        )
    refused = {key: values for key, values in changed.items() if key not in accept}
    if refused:
        lines = "\n".join(f"  {key}: recorded {old!r}, now {new!r}" for key, (old, new) in refused.items())
        raise ChangedSettingsError(
            f"The run in {save_folder} was started with other settings; resuming it with these would mix "
            f"two runs:\n{lines}\nStart a new run with another --output_folder, restore the recorded values, "
            f"or accept the change on purpose with --accept_changed_settings=[{','.join(refused)}]."
        )
    for key, (old, new) in changed.items():
        _warn_once(save_folder, "Resuming with a changed setting, accepted on purpose: %s %r -> %r", key, old, new)
    return changed


_WARNED = set()


def _warn_once(save_folder, template, *arguments):
    """Logs a warning once per process and run folder: the recipe checks the signature before it rewrites the
    run's records and the Brain checks it again before recovery (for code that builds the Brain itself), with
    the same outcome; the reader needs to see it once (another run's same change is warned about again)."""
    text = template % arguments
    if (os.path.abspath(save_folder), text) not in _WARNED:
        _WARNED.add((os.path.abspath(save_folder), text))
        logger.warning(text)


def write_run_signature(save_folder, signature, hashes=()):
    """Records the run's defining settings (atomically: a temporary file renamed into place).

    ``hashes`` (:func:`run_signature_hashes`) other than the signature's own are recorded as
    ``previous_signature_hashes``: checkpoints written before a change accepted on purpose stay this run's.
    """
    os.makedirs(save_folder, exist_ok=True)
    path = os.path.join(save_folder, SIGNATURE_FILE)
    content = {key: value for key, value in _normalised(signature).items() if key != PREVIOUS_HASHES_KEY}
    previous = sorted(set(hashes) - {signature_hash(content)})
    if previous:
        content[PREVIOUS_HASHES_KEY] = previous
    with open(path + ".tmp", "w", encoding="utf-8") as fout:
        json.dump(content, fout, indent=2)
    os.replace(path + ".tmp", path)


def log_to_output_folder(output_folder):
    """Sends the log to ``<output_folder>/log.txt`` (as ``sb.create_experiment_directory`` does) now.

    The recipes call it before checking a resume, so that the preparation and a refusal are logged,
    and call ``sb.create_experiment_directory`` (which writes ``hyperparams.yaml``, ``env.log`` and
    the script copy) only once the check passed. Main process only (no-op elsewhere).
    """
    import speechbrain as sb

    if not sb.utils.distributed.if_main_process():
        return
    os.makedirs(output_folder, exist_ok=True)
    log_file = os.path.join(output_folder, "log.txt")
    sb.utils.logger.setup_logging(sb.core.DEFAULT_LOG_CONFIG, {"handlers": {"file_handler": {"filename": log_file}}})
    # an error (a refused resume...) goes to log.txt too, as after sb.create_experiment_directory
    sys.excepthook = getattr(sb.core, "_logging_excepthook", sys.excepthook)
