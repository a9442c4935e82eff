"""Write failures (a full disk, a quota, an I/O error) reported with the file, the device and the free space.

A full disk shows up in two forms. Python writes raise ``OSError`` with ``errno.ENOSPC`` (or
``EDQUOT`` for a quota); ``torch.save`` to a path writes through PyTorch's C++ zip writer, which loses
the errno and raises ``RuntimeError: [enforce fail at inline_container.cc:...] . unexpected pos ...``
or ``PytorchStreamWriter failed writing file ...``. :func:`reporting_write_errors` wraps a write and
turns both into :class:`WriteFailedError`, whose message reads::

    no space left on /dev/sdb1 (mounted on /data) while writing /data/run/save/.../student.ckpt (12.0 KiB free)

The torch form carries no errno, so it is called "no space left" when the device has less than
:data:`LOW_SPACE_BYTES` free after the failure (a write that failed for lack of space leaves the
device practically full), and "cannot write" with the free space and torch's message otherwise. Other
errors pass through unchanged. Used around checkpoint saves (:mod:`robustdistiller.runs.checkpoints`) and
exports (:mod:`robustdistiller.export`).
"""

import contextlib
import errno
import os
import shutil

LOW_SPACE_BYTES = 64 * 1024 * 1024
"""Free space under which a torch writer failure (no errno) is reported as a full disk."""

SPACE_ERRNOS = {errno.ENOSPC: "no space left", getattr(errno, "EDQUOT", errno.ENOSPC): "disk quota exceeded"}
# Markers of PyTorch's C++ zip writer failing (torch.save to a path): the errno is not kept.
TORCH_WRITER_MARKERS = ("inline_container", "PytorchStreamWriter", "file write failed", "unexpected pos")


class WriteFailedError(OSError):
    """A file could not be written; the message names the file, the device and its free space.

    An ``OSError`` (``errno`` ``ENOSPC`` for a full disk), so code catching ``OSError`` still catches it.
    """

    def __str__(self):
        return str(self.strerror)


def format_bytes(count):
    """A byte count in binary units.

    Example
    -------
    >>> format_bytes(0), format_bytes(12288), format_bytes(5 * 1024 ** 3)
    ('0 B', '12.0 KiB', '5.0 GiB')
    """
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def _existing_ancestor(path):
    """``path`` or its nearest existing parent folder (what a failed write leaves may be gone)."""
    path = os.path.abspath(os.fspath(path))
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def device_of(path):
    """The device and mount point holding ``path``, as text (``"/dev/sdb1 (mounted on /data)"``).

    Falls back to the mount point alone when ``/proc/self/mounts`` cannot be read.

    Example
    -------
    >>> device_of("/").endswith("(mounted on /)")
    True
    """
    mount_point = os.path.realpath(_existing_ancestor(path))
    while not os.path.ismount(mount_point) and os.path.dirname(mount_point) != mount_point:
        mount_point = os.path.dirname(mount_point)
    device = None
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as fin:
            for line in fin:
                fields = line.split()
                if len(fields) >= 2 and fields[1].replace("\\040", " ") == mount_point:
                    device = fields[0]  # the last entry for a mount point is the visible one
    except OSError:
        pass
    return f"{device} (mounted on {mount_point})" if device else f"the device mounted on {mount_point}"


def free_bytes(path):
    """Bytes free for this user on the device holding ``path`` (None when unknown)."""
    try:
        return shutil.disk_usage(_existing_ancestor(path)).free
    except OSError:
        return None


def is_torch_write_failure(error):
    """Whether ``error`` is PyTorch's zip writer failing to write (the form a full disk takes in ``torch.save``).

    Example
    -------
    >>> is_torch_write_failure(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"))
    True
    >>> is_torch_write_failure(RuntimeError("size mismatch"))
    False
    """
    return isinstance(error, RuntimeError) and any(marker in str(error) for marker in TORCH_WRITER_MARKERS)


def write_error_message(path, error):
    """The message of :class:`WriteFailedError` for ``error`` raised while writing ``path``, or None.

    None for errors that are no write failure (they pass through :func:`reporting_write_errors`).

    Example
    -------
    >>> message = write_error_message("/tmp/x/student.ckpt", OSError(errno.ENOSPC, "No space left on device"))
    >>> message.startswith("no space left on ") and "while writing /tmp/x/student.ckpt (" in message
    True
    """
    path = os.path.abspath(os.fspath(path))
    free = free_bytes(path)
    free_text = "free space unknown" if free is None else f"{format_bytes(free)} free"
    if isinstance(error, OSError) and error.errno in SPACE_ERRNOS:
        return f"{SPACE_ERRNOS[error.errno]} on {device_of(path)} while writing {path} ({free_text})"
    if is_torch_write_failure(error):
        if free is not None and free < LOW_SPACE_BYTES:
            return f"no space left on {device_of(path)} while writing {path} ({free_text})"
        return f"cannot write {path} on {device_of(path)} ({free_text}): {error}"
    if isinstance(error, OSError) and error.errno in (errno.EIO, errno.EROFS):
        return f"cannot write {path} on {device_of(path)} ({free_text}): {error.strerror or error}"
    return None


@contextlib.contextmanager
def reporting_write_errors(path):
    """Runs a write of ``path``; a write failure becomes :class:`WriteFailedError` naming file, device, free space.

    Arguments
    ---------
    path : str
        The file (or folder) being written, for the message.

    Raises
    ------
    WriteFailedError
        From an ``OSError`` with ``ENOSPC`` / ``EDQUOT`` / ``EIO`` / ``EROFS`` or PyTorch's zip writer
        failing (see the module docstring); the original error is chained. Other errors pass unchanged.

    Example
    -------
    >>> try:
    ...     with reporting_write_errors("/tmp/model.ckpt"):
    ...         raise OSError(errno.ENOSPC, "No space left on device")
    ... except WriteFailedError as error:
    ...     print(str(error).split(" on ")[0], error.errno == errno.ENOSPC)
    no space left True
    """
    try:
        yield
    except WriteFailedError:
        raise
    except (OSError, RuntimeError) as error:
        failure = as_write_error(path, error)
        if failure is None:
            raise
        raise failure from error


def as_write_error(path, error):
    """``error`` (raised while writing ``path``) as a :class:`WriteFailedError`, or None for other errors.

    For callers that learn which file failed only after the error (see :func:`reporting_write_errors`).
    """
    if isinstance(error, WriteFailedError):
        return error
    message = write_error_message(path, error)
    if message is None:
        return None
    code = error.errno if isinstance(error, OSError) and error.errno else errno.ENOSPC
    if message.startswith("cannot write") and not isinstance(error, OSError):
        code = errno.EIO
    return WriteFailedError(code, message)
