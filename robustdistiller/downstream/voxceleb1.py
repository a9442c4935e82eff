"""The two on-disk layouts of VoxCeleb1 that the SID and ASV recipes accept.

* merged: ``<data_folder>/wav/idNNNNN/<video>/NNNNN.wav`` (both archives unzipped into one folder);
* s3prl's documented layout (s3prl 0.4.18, ``downstream/docs/superb.md``): the dev archive unzipped in
  ``<data_folder>/dev/`` and the test archive in ``<data_folder>/test/``, i.e.
  ``<data_folder>/dev/wav/<speaker>/...`` and ``<data_folder>/test/wav/<speaker>/...``. s3prl's SID
  loader finds a listed file by globbing ``<data_folder>/*/wav/<path>``; here likewise every
  ``<data_folder>/*/wav`` folder is read (``dev``, ``test``, or any other name).

:func:`voxceleb1_wav_folders` finds the folders (``wav/`` first, then ``*/wav`` in name order) and
:func:`speaker_folders` maps each speaker to the one holding it: split and trial lists name files
relative to ``wav/`` (``id10001/1zcIwhmdeo4/00001.wav``) and resolve through it
(:func:`resolve_listed_path`).

Folders are listed with :func:`robustdistiller.data.files.list_folder`: symbolic links are followed
(``dev``, ``wav`` or speaker folders may be links into other disks: a link farm), the data folder and
each ``wav`` folder must be readable (else a :class:`~robustdistiller.data.files.FolderReadError` names
it), and any other folder that cannot be listed (a ``<data_folder>/*`` folder, a speaker or video
folder) is left out, counted and warned about (:class:`~robustdistiller.data.files.SkippedFolders`),
never dropped silently. The depth is fixed (``wav/<speaker>/<video>/<file>``), so a link cycle cannot
make a walk loop.
"""

import logging
import os

from robustdistiller.data.files import SkippedFolders, list_folder

logger = logging.getLogger(__name__)

LAYOUTS = (
    "<data_folder>/wav/idNNNNN/<video>/NNNNN.wav (both archives in one wav/ folder)",
    "<data_folder>/dev/wav/idNNNNN/... and <data_folder>/test/wav/idNNNNN/... (s3prl's layout; any "
    "<data_folder>/*/wav/ folder is read)",
)


def voxceleb1_wav_folders(data_folder, skipped=None):
    """The ``wav`` folders of a VoxCeleb1 folder: ``wav/`` if present, then every ``*/wav/``, sorted.

    Arguments
    ---------
    data_folder : str
        The VoxCeleb1 folder.
    skipped : robustdistiller.data.files.SkippedFolders, optional
        Receives the ``<data_folder>/*`` folders that cannot be listed (they might hold a ``wav``
        folder). None: they are warned about here.

    Raises
    ------
    FileNotFoundError
        ``data_folder`` is missing, or holds neither layout (both are named in the message, and the
        folders that could not be listed).
    robustdistiller.data.files.FolderReadError
        ``data_folder`` cannot be listed.

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> for part in ("test", "dev"):
    ...     os.makedirs(os.path.join(root, part, "wav", "id10001"))
    >>> [os.path.relpath(folder, root) for folder in voxceleb1_wav_folders(root)]
    ['dev/wav', 'test/wav']
    """
    if not os.path.isdir(data_folder):
        raise FileNotFoundError(
            f"VoxCeleb1 folder '{data_folder}' not found (data_folder); expected " + " or ".join(LAYOUTS)
        )
    own_record = skipped is None
    skipped = SkippedFolders(f"the VoxCeleb1 wav folders of {data_folder}") if own_record else skipped
    folders = []
    merged = os.path.join(data_folder, "wav")
    subfolders = list_folder(data_folder, "VoxCeleb1 folder (data_folder)")[0]
    if "wav" in subfolders:
        folders.append(merged)
    for name in subfolders:
        if name.startswith(".") or name == "wav":
            continue
        candidate = os.path.join(data_folder, name)
        if "wav" in list_folder(candidate, skipped=skipped)[0]:  # unreadable: counted in skipped
            folders.append(os.path.join(candidate, "wav"))
    if own_record:
        skipped.warn()
    if not folders:
        raise FileNotFoundError(
            f"VoxCeleb1 folder '{data_folder}' has no wav folder. Looked for {LAYOUTS[0]}, and for "
            f"{LAYOUTS[1]}; found neither '{merged}' nor any '{os.path.join(data_folder, '*', 'wav')}'"
            f"{skipped.error_note()}"
        )
    return folders


def speaker_folders(wav_folders):
    """``{speaker: wav folder holding it}``; a speaker in several folders keeps the first (logged).

    Hidden entries (``.*``, e.g. macOS ``._*`` files) and plain files are ignored; speaker folders
    that are symbolic links to folders count as speaker folders.

    Raises
    ------
    robustdistiller.data.files.FolderReadError
        A wav folder cannot be listed (named).

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "disk2", "id10002"))
    >>> os.makedirs(os.path.join(root, "wav", "id10001"))
    >>> os.symlink(os.path.join(root, "disk2", "id10002"), os.path.join(root, "wav", "id10002"))
    >>> sorted(speaker_folders([os.path.join(root, "wav")]))
    ['id10001', 'id10002']
    """
    owner, duplicates = {}, []
    for folder in wav_folders:
        for speaker in list_folder(folder, "VoxCeleb1 wav folder")[0]:
            if speaker.startswith("."):
                continue
            if speaker in owner:
                duplicates.append(speaker)
            else:
                owner[speaker] = folder
    if duplicates:
        logger.warning(
            "VoxCeleb1: %d speakers are in more than one wav folder (e.g. %s); the first folder of %s is used",
            len(duplicates),
            duplicates[:3],
            wav_folders,
        )
    return owner


def resolve_listed_path(relative_path, owners, wav_folders):
    """Absolute path of a listed file (``idNNNNN/<video>/NNNNN.wav``) in the folder of its speaker.

    A speaker found in no folder resolves under the first folder (the file is then reported missing).

    Example
    -------
    >>> resolve_listed_path("id10270/x/00001.wav", {"id10270": "/v/test/wav"}, ["/v/dev/wav", "/v/test/wav"])
    '/v/test/wav/id10270/x/00001.wav'
    """
    speaker = relative_path.split("/", 1)[0]
    return os.path.join(owners.get(speaker, wav_folders[0]), relative_path)


def describe_wav_folders(wav_folders):
    """One line for logs and errors: ``'wav/'`` or ``'dev/wav/ + test/wav/'`` style.

    Example
    -------
    >>> describe_wav_folders(["/v/dev/wav", "/v/test/wav"])
    '/v/dev/wav + /v/test/wav'
    """
    return " + ".join(wav_folders)
