"""Reading the user's data folders: one folder walk and one text reader for every preparer.

Every preparation (LibriSpeech, noise pools, RIRs, the downstream corpora) finds its files with
:func:`walk_folder` or :func:`list_folder`, and reads its text files (transcripts, lists) with
:func:`read_text` / :func:`read_text_lines` (or decode them with :func:`decode_text`), so the same
rules hold everywhere:

- **Symbolic links are followed.** A folder that is a link (a link farm built from several disks:
  ``train-clean-100/<spk> -> /disk2/...``) is walked like a real folder, and its files keep the
  path under the link. ``os.walk`` does not follow them by default: a link farm looked empty.
- **Cycles are cut.** A folder reached a second time (a link to one of its ancestors, or two links
  to the same folder) is walked once; the other visits are left out, counted and warned about.
- **Unreadable folders are counted.** A folder that cannot be listed (no permission, a dead
  network mount, an I/O error) is left out, counted and warned about, naming it and the error.
  ``os.walk`` skips them silently. The top folder itself must be readable: otherwise a
  :class:`FolderReadError` names it.
- **Text that is not UTF-8 names the file and the line.** :func:`read_text` raises a
  :class:`TextFileError` (``'<file>', line N: byte 0xff is not UTF-8 ...``) instead of a bare
  ``UnicodeDecodeError``.

Nothing here writes anything.
"""

import io
import logging
import os

logger = logging.getLogger(__name__)

UNREADABLE_FOLDER = "folder that cannot be listed (its files are not seen: fix its permissions or mount)"
REPEATED_FOLDER = (
    "folder reached again through a symbolic link (a link cycle, or a second link to the same folder): walked once"
)
MAX_RECORDED_FOLDERS = 20


class FolderReadError(OSError):
    """A data folder cannot be listed; the message names it, the error and what to do."""


class TextFileError(ValueError):
    """A text file of a corpus is not UTF-8; the message names the file, the line and the byte."""


class SkippedFolders:
    """Counts the folders a walk leaves out, per reason, with example paths; one warning per reason.

    Arguments
    ---------
    description : str
        What the folders are left out of (a list, a corpus), named in the warnings.

    Example
    -------
    >>> skipped = SkippedFolders("/save/train.csv")
    >>> skipped.add_folder(UNREADABLE_FOLDER, "/data/11", detail="[Errno 13] Permission denied")
    >>> skipped.folder_count(), skipped.folder_messages()[0].split(":")[0]
    (1, '1 folder left out of /save/train.csv')
    """

    def __init__(self, description):
        self.description = description
        self.folders_by_reason = {}

    def add_folder(self, reason, path, detail=""):
        """Records the folder ``path`` as left out for ``reason`` (``detail``: e.g. the error)."""
        entry = self.folders_by_reason.setdefault(reason, {"folders": 0, "examples": []})
        entry["folders"] += 1
        if len(entry["examples"]) < MAX_RECORDED_FOLDERS:
            entry["examples"].append(f"{path} ({detail})" if detail else str(path))
        logger.debug(
            "Leaving folder %s out of %s: %s%s", path, self.description, reason, f" ({detail})" if detail else ""
        )

    def folder_count(self, reason=None):
        """Folders left out for ``reason`` (all reasons if None)."""
        if reason is None:
            return sum(entry["folders"] for entry in self.folders_by_reason.values())
        return self.folders_by_reason.get(reason, {"folders": 0})["folders"]

    def folder_counts(self):
        """``{reason: folders}``."""
        return {reason: entry["folders"] for reason, entry in self.folders_by_reason.items()}

    def folder_messages(self):
        """One line per reason: ``N folders left out of <description>: <reason> (e.g. <path> (<error>))``."""
        return [
            f"{entry['folders']} folder{'s' if entry['folders'] != 1 else ''} left out of {self.description}: "
            f"{reason} (e.g. {entry['examples'][0]})"
            for reason, entry in self.folders_by_reason.items()
        ]

    def messages(self):
        """The warning lines (:meth:`folder_messages`)."""
        return self.folder_messages()

    def warn(self):
        """Logs :meth:`messages` as warnings."""
        for message in self.messages():
            logger.warning(message)

    def error_note(self):
        """``" (N folder(s) left out: <messages>)"`` to end an error the left-out folders may explain, or ``""``.

        Example
        -------
        >>> skipped = SkippedFolders("the lists")
        >>> skipped.error_note()
        ''
        >>> skipped.add_folder(UNREADABLE_FOLDER, "/data/wav/id10002")
        >>> skipped.error_note().split(":")[0]
        ' (1 folder(s) left out'
        """
        count = self.folder_count()
        return f" ({count} folder(s) left out: {'; '.join(self.folder_messages())})" if count else ""


def _scan(folder):
    """``(subfolder names, file names)`` of one folder, sorted; links to folders count as folders.

    A link whose target is missing (a dangling link) is listed as a file: the reader then names it
    as unreadable. Raises ``OSError`` when the folder cannot be listed.
    """
    subfolders, files = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                is_folder = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_folder = False
            (subfolders if is_folder else files).append(entry.name)
    return sorted(subfolders), sorted(files)


def _folder_identity(path):
    status = os.stat(path)  # follows links: the identity of the real folder
    return status.st_dev, status.st_ino


def list_folder(folder, description="Data folder", skipped=None):
    """``(subfolder names, file names)`` of one folder, sorted, following symbolic links.

    Arguments
    ---------
    folder : str
        The folder.
    description : str
        What it is (named in the error), e.g. ``"Speech Commands folder"``.
    skipped : object with an ``add_folder(reason, path, detail)`` method, optional
        Given: a folder that cannot be listed is recorded there (:data:`UNREADABLE_FOLDER`) and
        ``([], [])`` returned, for the sub-folders of a corpus. None: it is an error.

    Returns
    -------
    tuple of (list of str, list of str)

    Raises
    ------
    FolderReadError
        The folder cannot be listed and ``skipped`` is None (the message names it and the error).

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> os.mkdir(os.path.join(folder, "sub"))
    >>> _ = open(os.path.join(folder, "a.wav"), "w").close()
    >>> os.symlink(os.path.join(folder, "sub"), os.path.join(folder, "link"))
    >>> list_folder(folder)
    (['link', 'sub'], ['a.wav'])
    """
    try:
        return _scan(folder)
    except OSError as error:
        if skipped is not None:
            skipped.add_folder(UNREADABLE_FOLDER, folder, detail=str(error))
            return [], []
        raise FolderReadError(
            error.errno,
            f"{description} '{folder}' cannot be listed ({error.strerror or error}): give the user "
            f"running the preparation read and execute permission on it (e.g. chmod a+rx), or check its mount",
        ) from error


def walk_folder(folder, skipped, description="Data folder"):
    """Walks ``folder`` top-down like ``os.walk``, following symbolic links, each real folder once.

    Arguments
    ---------
    folder : str
        The top folder (made absolute). It must be readable: otherwise :class:`FolderReadError`.
    skipped : object with an ``add_folder(reason, path, detail)`` method
        Receives every folder left out: :data:`UNREADABLE_FOLDER` (cannot be listed, with the
        error) and :data:`REPEATED_FOLDER` (already walked: a link cycle or a second link), e.g. a
        :class:`SkippedFolders` or :class:`robustdistiller.data.prepare.lists.LeftOutFiles`.
    description : str
        What the top folder is (named in its error).

    Yields
    ------
    tuple of (str, list of str, list of str)
        ``(directory, subfolder names, file names)``, names sorted; the paths keep the links (a file
        under the link ``spk -> /disk2/spk`` is ``<folder>/spk/...``). As with ``os.walk``, removing
        names from the yielded subfolder list prunes them.

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "a", "b"))
    >>> os.symlink(root, os.path.join(root, "a", "b", "loop"))  # a cycle
    >>> skipped = SkippedFolders("demo")
    >>> [os.path.relpath(directory, root) for directory, _, _ in walk_folder(root, skipped)]
    ['.', 'a', 'a/b']
    >>> skipped.folder_counts() == {REPEATED_FOLDER: 1}
    True
    """
    top = os.path.abspath(folder)
    subfolders, files = list_folder(top, description)
    visited = {_folder_identity(top)}
    yield from _walk(top, subfolders, files, visited, skipped)


def _walk(directory, subfolders, files, visited, skipped):
    yield directory, subfolders, files
    for name in list(subfolders):
        path = os.path.join(directory, name)
        try:
            identity = _folder_identity(path)
            if identity in visited:
                skipped.add_folder(REPEATED_FOLDER, path, detail=f"-> {os.path.realpath(path)}")
                continue
            visited.add(identity)
            listing = _scan(path)
        except OSError as error:
            skipped.add_folder(UNREADABLE_FOLDER, path, detail=str(error))
            continue
        yield from _walk(path, *listing, visited, skipped)


def find_all_files(folder, skipped, description="Data folder"):
    """Every file under ``folder`` (links followed, cycles cut), as sorted absolute paths.

    See :func:`walk_folder`; hidden files are included (the caller decides).

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "x"))
    >>> _ = open(os.path.join(root, "x", "a.wav"), "w").close()
    >>> [os.path.relpath(path, root) for path in find_all_files(root, SkippedFolders("demo"))]
    ['x/a.wav']
    """
    return [
        os.path.join(directory, name)
        for directory, _, names in walk_folder(folder, skipped, description)
        for name in names
    ]


def read_text(path, description="Text file"):
    """The content of a UTF-8 text file, decoded, newlines untouched (:func:`read_text_lines` splits it).

    Arguments
    ---------
    path : str
        The file.
    description : str
        What it is (named in the error), e.g. ``"LibriSpeech transcript"``.

    Returns
    -------
    str

    Raises
    ------
    TextFileError
        A byte sequence is not UTF-8: the message names the file, the line, the column and the bytes.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "1-2.trans.txt")
    >>> _ = open(path, "wb").write(b"1-2-0001 HELLO\\n1-2-0002 CAF\\xc9\\n")
    >>> read_text(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    robustdistiller.data.files.TextFileError: Text file '...1-2.trans.txt', line 2: byte 0xc9 at column 13 is not ...
    """
    with open(path, "rb") as binary_file:
        content = binary_file.read()
    return decode_text(content, path, description)


def decode_text(content, path, description="Text file"):
    """``content`` (bytes read from ``path``) decoded as UTF-8; an error names the file and the line.

    For readers that decode only part of a file (e.g. the lines they use), with the line numbers of
    the file kept: replace the other lines by empty ones. :func:`read_text` reads and decodes a file.

    Raises
    ------
    TextFileError
        See :func:`read_text`.

    Example
    -------
    >>> decode_text(b"ok\\n\\n[x] caf\\xc3\\xa9\\n", "/data/a.txt")
    'ok\\n\\n[x] café\\n'
    >>> decode_text(b"ok\\n\\n[x] caf\\xe9\\n", "/data/a.txt", "Label file")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    robustdistiller.data.files.TextFileError: Label file '/data/a.txt', line 3: byte 0xe9 at column 8 is not UTF-8 ...
    """
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        line_start = content.rfind(b"\n", 0, error.start) + 1
        line_number = content.count(b"\n", 0, error.start) + 1
        bad_bytes = " ".join(f"0x{byte:02x}" for byte in content[error.start : error.end])
        raise TextFileError(
            f"{description} '{path}', line {line_number}: byte{'s' if error.end - error.start > 1 else ''} "
            f"{bad_bytes} at column {error.start - line_start + 1} {'are' if error.end - error.start > 1 else 'is'} "
            f"not UTF-8 ({error.reason}). The file must be UTF-8 text: replace it with an intact copy from "
            f"the corpus archive, or convert it (e.g. iconv -f latin1 -t utf-8)."
        ) from None
    return text


def read_text_lines(path, description="Text file"):
    """The lines of a UTF-8 text file (:func:`read_text`), without their newline.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "list.txt")
    >>> _ = open(path, "wb").write(b"a b\\r\\nc\\n")
    >>> read_text_lines(path)
    ['a b', 'c']
    """
    return [line.rstrip("\n") for line in io.StringIO(read_text(path, description), newline=None)]
