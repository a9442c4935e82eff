"""The rules every export folder follows: the manifest, overwriting, the lock and the staging folder.

Every export (:func:`robustdistiller.export.student_folder.export_student`, and
:func:`robustdistiller.dpwavlm.export.export_dpwavlm`) writes through :func:`write_export_folder`.

Overwriting. An export writes into an empty or new folder. ``--overwrite`` lets it replace an
*earlier export of ours* only: the folder's ``export_manifest.json`` (format name and version, source,
time, and each file it wrote with its size and SHA-256) must be present and every file it lists
unchanged. Then the listed files are replaced or removed and nothing else is touched. A file the new
export would write that no valid manifest lists (a teacher's ``config.json``, a training run's
``hyperparams.yaml``, a ``README.md``, an export made before manifests existed) is never overwritten: the
export stops with :class:`~robustdistiller.export.errors.ExportError` listing those files, before anything is
written. Files that do not collide (a user's notes next to an export) are left alone. The files are first written
to a staging folder inside the output folder (``.export-staging-XXXXXXXX``) and moved into place at the
end (each with the permissions of a file made with ``open``: readable by others, :func:`make_shareable`), so a
failed export leaves the folder as it was: it removes its own staging folder and nothing
else (a folder it created goes too, but only while it is still empty).

Concurrency. An export holds an exclusive ``flock`` on the output folder while it runs (as a
training run holds its output folder): a second export into the same folder stops at once with
:class:`~robustdistiller.export.errors.ExportFolderInUse`. Staging folders left by a killed export (the lock is gone
with its process) are removed, with a warning naming each, by the next export into the folder; they never
make it "not empty". A write that fails (a full disk) raises
:class:`~robustdistiller.runs.write_errors.WriteFailedError`: "no space left on <device> while writing
<file> (<free> free)".
"""

import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile

from robustdistiller.export.errors import ExportError, ExportFolderInUse
from robustdistiller.runs.write_errors import reporting_write_errors

logger = logging.getLogger(__name__)

MANIFEST_FILE = "export_manifest.json"
MANIFEST_FORMAT = "robustdistiller-export"
MANIFEST_VERSION = 1
_STAGING_PREFIX = ".export-staging-"
_STAGING_NAME = re.compile(r"^" + re.escape(_STAGING_PREFIX) + r"[a-z0-9_]{8}$")  # tempfile.mkdtemp's names


def file_sha256(path, chunk_size=1 << 20):
    """SHA-256 of a file (hex), read in chunks.

    Example
    -------
    >>> path = os.path.join(tempfile.mkdtemp(), "abc.txt")
    >>> with open(path, "w") as fout:
    ...     _ = fout.write("abc")
    >>> file_sha256(path)[:16]
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fin:
        for block in iter(lambda: fin.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder, names, source):
    """Writes ``export_manifest.json``: format, version, source, time and each file's size and SHA-256.

    Arguments
    ---------
    folder : str
        The folder holding the files.
    names : iterable of str
        The files of ``folder`` the export wrote (plain names).
    source : str
        What was exported (for the record).

    Returns
    -------
    dict
        The manifest.

    Example
    -------
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "config.json"), "w") as fout:
    ...     _ = fout.write("{}")
    >>> manifest = write_manifest(folder, ["config.json"], source="example")
    >>> read_manifest(folder)["files"]["config.json"]["bytes"], modified_files(folder, manifest)
    (2, [])
    """
    files = {}
    for name in sorted(names):
        path = os.path.join(folder, name)
        files[name] = {"bytes": os.path.getsize(path), "sha256": file_sha256(path)}
    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": str(source),
        "files": files,
    }
    with open(os.path.join(folder, MANIFEST_FILE), "w", encoding="utf-8") as fout:
        json.dump(manifest, fout, indent=2)
        fout.write("\n")
    return manifest


def _is_plain_name(name):
    """A file name without any directory part, or one in the ``onnx`` subfolder (what a manifest may list)."""
    if isinstance(name, str) and name.startswith("onnx/"):
        name = name[len("onnx/") :]
    return isinstance(name, str) and name not in ("", ".", "..", MANIFEST_FILE) and "/" not in name and "\\" not in name


def _folder_entries(folder, ignore=()):
    """Entries of ``folder`` (not in ``ignore``), with the files of its ``onnx`` subfolder as ``onnx/<name>``."""
    entries = set(os.listdir(folder)) - set(ignore)
    onnx_folder = os.path.join(folder, "onnx")
    if "onnx" in entries and os.path.isdir(onnx_folder):
        entries |= {f"onnx/{name}" for name in os.listdir(onnx_folder)}
    return sorted(entries)


def read_manifest(folder):
    """The manifest of an earlier export in ``folder``, or None if there is none we wrote.

    None also for an unreadable file, another program's ``export_manifest.json``, a newer format
    version, or a file list naming anything but plain file names (a manifest never points outside its
    folder).
    """
    path = os.path.join(folder, MANIFEST_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fin:
            manifest = json.load(fin)
    except (OSError, ValueError) as error:
        logger.warning("Cannot read %s (%s): not treated as an earlier export", path, error)
        return None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    valid = (
        isinstance(files, dict)
        and manifest.get("format") == MANIFEST_FORMAT
        and isinstance(manifest.get("format_version"), int)
        and manifest["format_version"] <= MANIFEST_VERSION
        and all(
            _is_plain_name(name) and isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
            for name, entry in files.items()
        )
    )
    if not valid:
        logger.warning("%s is not a manifest of this version of robustdistiller.export", path)
        return None
    return manifest


def modified_files(folder, manifest):
    """Files a manifest lists that are present but no longer what the export wrote (size or SHA-256)."""
    changed = []
    for name, entry in sorted(manifest["files"].items()):
        path = os.path.join(folder, name)
        if not os.path.lexists(path):
            continue  # removed since: nothing to lose
        if (
            not os.path.isfile(path)
            or ("bytes" in entry and os.path.getsize(path) != entry["bytes"])
            or file_sha256(path) != entry["sha256"]
        ):
            changed.append(name)
    return changed


def replaceable_files(output_folder, names, overwrite, ignore=()):
    """The files of ``output_folder`` an export that writes ``names`` removes first; raises if unsafe.

    Arguments
    ---------
    output_folder : str
        The export folder (may not exist).
    names : iterable of str
        The files the export writes (the manifest is added).
    overwrite : bool
        ``--overwrite``.
    ignore : sequence of str
        Entries of ``output_folder`` not to count (the staging folder).

    Returns
    -------
    list of str
        The files of an earlier export (its manifest included) to remove; empty for a new or empty
        folder, or a folder whose files do not collide with ``names`` (``overwrite`` given).

    Raises
    ------
    ExportError
        A non-empty folder without ``overwrite``; an earlier export whose files were changed; or a
        file the export would write that no valid manifest lists. The message lists the files.
    """
    existing = _folder_entries(output_folder, ignore) if os.path.isdir(output_folder) else []
    if not existing:
        return []
    if not overwrite:
        raise ExportError(
            f"Export folder '{output_folder}' is not empty; choose another (new or empty) folder, or pass "
            f"--overwrite to replace an earlier export there (only the files its {MANIFEST_FILE} lists)"
        )
    manifest = read_manifest(output_folder)
    owned = []
    if manifest is not None:
        changed = modified_files(output_folder, manifest)
        if changed:
            raise ExportError(
                f"Export folder '{output_folder}' holds an earlier export whose files changed since it was "
                f"written (size or SHA-256 differs from {MANIFEST_FILE}): {', '.join(changed)}. --overwrite "
                f"replaces only an unmodified export: move those files away, or choose another folder"
            )
        owned = [name for name in manifest["files"] if os.path.lexists(os.path.join(output_folder, name))]
        owned.append(MANIFEST_FILE)
    collisions = sorted(name for name in set(names) | {MANIFEST_FILE} if name in existing and name not in owned)
    if collisions:
        if manifest is not None:
            reason = f"its {MANIFEST_FILE} does not list them"
        elif MANIFEST_FILE in existing:
            reason = f"its {MANIFEST_FILE} is not one an export of this version wrote"
        else:
            reason = f"it has no {MANIFEST_FILE}, so it is no export of ours"
        raise ExportError(
            f"Export folder '{output_folder}' holds files the export would overwrite but did not write "
            f"({reason}): {', '.join(collisions)}. --overwrite replaces only an earlier export's own files; "
            f"choose another (new or empty) export folder"
        )
    return owned


@contextlib.contextmanager
def locked_export_folder(folder):
    """Holds an exclusive ``flock`` on the export folder itself for the duration of the block.

    Like a training run's lock (:mod:`robustdistiller.runs.run_folder`), the kernel releases it when the
    process ends, however it ends. The folder's own inode is locked, so no lock file is left in a
    user's folder. A second export into the same folder (another process, or another call in this one:
    each call opens the folder anew) stops with :class:`~robustdistiller.export.errors.ExportFolderInUse`. On a file
    system without ``flock`` support the export goes on with a warning.

    Example
    -------
    >>> folder = tempfile.mkdtemp()
    >>> with locked_export_folder(folder):
    ...     try:
    ...         with locked_export_folder(folder):
    ...             pass
    ...     except ExportFolderInUse:
    ...         print("refused")
    refused
    """
    try:
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as error:
        raise ExportError(f"Cannot open the export folder '{folder}': {error.strerror or error}") from error
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ExportFolderInUse(
                f"Export folder '{folder}' is in use by another export (it holds the folder's lock): wait for it "
                f"to finish, then run this command again (with --overwrite to replace what it wrote)"
            ) from None
        except OSError as error:  # e.g. a network file system without flock
            logger.warning("Cannot lock %s (%s): a concurrent export into it would not be detected", folder, error)
        try:
            replaced = os.stat(folder).st_ino != os.fstat(descriptor).st_ino
        except OSError:
            replaced = True
        if replaced:
            raise ExportFolderInUse(f"Export folder '{folder}' was removed or replaced while this export started")
        yield
    finally:
        os.close(descriptor)  # releases the lock


def remove_stale_staging(folder):
    """Removes the staging folders (``.export-staging-XXXXXXXX``) a killed export left in ``folder``.

    Called with the folder's lock held (:func:`locked_export_folder`): no live export owns them then.
    Only hidden folders with exactly the names ``tempfile.mkdtemp`` gives a staging folder are removed,
    each with a warning naming it.

    Returns
    -------
    list of str
        The names removed.
    """
    removed = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if _STAGING_NAME.match(name) and os.path.isdir(path) and not os.path.islink(path):
            logger.warning("Removing %s, the staging folder of an export that was interrupted.", path)
            shutil.rmtree(path)
            removed.append(name)
    return removed


def _current_umask():
    """The process's umask (read without changing it where ``/proc`` tells it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fin:
            for line in fin:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_shareable(path):
    """Sets a written file to ``0o666 & ~umask`` (0644 under the usual umask), a folder to ``0o777 & ~umask``.

    Writers that go through ``tempfile.mkstemp`` (``transformers``' ``save_pretrained`` writes
    ``model.safetensors`` so) leave 0600 files, and ``tempfile.mkdtemp`` 0700 folders: an export is meant to be
    read by others (a shared model folder, a Hub upload), so every exported file gets the permissions of a file
    made with ``open``.

    Example
    -------
    >>> folder = tempfile.mkdtemp()
    >>> descriptor, path = tempfile.mkstemp(dir=folder)
    >>> os.close(descriptor)
    >>> make_shareable(path)
    >>> oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~_current_umask())
    True
    """
    mode = (0o777 if os.path.isdir(path) else 0o666) & ~_current_umask()
    os.chmod(path, mode)


def write_export_folder(output_folder, expected_names, overwrite, source_description, write, source=None):
    """The overwrite rules, lock, staging and manifest of every export (module docstring, "Overwriting").

    Arguments
    ---------
    output_folder : str
        The export folder (created when missing; removed again if the export fails and it is still
        empty).
    expected_names : list of str
        The files the export may write, checked before anything is written.
    overwrite : bool
        Replace an unmodified earlier export (only the files its manifest lists).
    source_description : str
        What was exported, for the manifest.
    write : callable
        ``write(staging_folder)`` writes the files; its return value is passed on.
    source : str, optional
        The checkpoint the export reads: refused as the output folder.

    Returns
    -------
    (list of str, object)
        The files written (the manifest included) and what ``write`` returned.

    Raises
    ------
    ExportError
        See :func:`replaceable_files`; :class:`~robustdistiller.export.errors.ExportFolderInUse` while another export
        holds the folder.
    robustdistiller.runs.write_errors.WriteFailedError
        A file could not be written (a full disk): the message names it, the device and the free space.
        Only this export's staging folder is removed then; the folder keeps what it held.
    """
    output_folder = os.path.abspath(output_folder)
    if isinstance(source, (str, os.PathLike)) and os.path.abspath(os.fspath(source)) == output_folder:
        raise ExportError(f"The export folder '{output_folder}' is the checkpoint source itself")
    if os.path.lexists(output_folder) and not os.path.isdir(output_folder):
        raise ExportError(f"The export folder '{output_folder}' is a file, not a folder: choose another path")
    created = not os.path.isdir(output_folder)
    with reporting_write_errors(output_folder):
        os.makedirs(output_folder, exist_ok=True)
    failed = True
    try:
        with locked_export_folder(output_folder):
            remove_stale_staging(output_folder)
            replaceable_files(output_folder, expected_names, overwrite)  # fail early
            with reporting_write_errors(os.path.join(output_folder, _STAGING_PREFIX + "*")):
                staging = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=output_folder)
            try:
                with reporting_write_errors(staging):  # each file is named by the writer; this catches the rest
                    result = write(staging)
                names = [name for name in _folder_entries(staging) if os.path.isfile(os.path.join(staging, name))]
                # again with the files really written; the folder may also have changed meanwhile
                stale = replaceable_files(output_folder, names, overwrite, ignore=(os.path.basename(staging),))
                for name in sorted(stale, key=lambda name: name != MANIFEST_FILE):  # the old manifest first
                    os.remove(os.path.join(output_folder, name))
                for name in names:
                    os.makedirs(os.path.dirname(os.path.join(output_folder, name)), exist_ok=True)
                    make_shareable(os.path.join(staging, name))  # 0600 from mkstemp-based writers
                    os.replace(os.path.join(staging, name), os.path.join(output_folder, name))
                onnx_folder = os.path.join(output_folder, "onnx")
                if os.path.isdir(onnx_folder) and not os.listdir(onnx_folder):
                    os.rmdir(onnx_folder)  # an earlier export's ONNX files, replaced by an export without them
                with reporting_write_errors(os.path.join(output_folder, MANIFEST_FILE)):
                    write_manifest(output_folder, names, source_description)
            finally:
                shutil.rmtree(staging, ignore_errors=True)  # only this export's own staging
        failed = False
    finally:
        if failed and created:
            try:  # a folder this export created and nobody wrote into since; never a folder with files
                os.rmdir(output_folder)
            except OSError:
                pass
    return sorted(names + [MANIFEST_FILE]), result
