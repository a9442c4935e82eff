"""The exceptions of :mod:`robustdistiller.export` (every message names the path it is about)."""


class ExportError(ValueError):
    """A checkpoint or export folder cannot be read or written (the message names the path)."""


class UnfinishedRunError(ExportError):
    """The source is one of our training runs, but it has not written its model yet."""


class ExportFolderInUse(ExportError):
    """Another export (another process, or another call in this one) is writing into the same folder."""
