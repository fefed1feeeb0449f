"""The error types xpnet raises for things a user can cause.

Each message says what was wrong, what was expected and what to do. The CLI prints
``error: <message>`` for these and exits with code 2, never a traceback.
"""


class XpnetError(Exception):
    """Base class of every user-facing xpnet error."""


class DataError(XpnetError, ValueError):
    """A dataset file or folder is missing, unreadable or not in the expected format."""


class DownloadError(XpnetError):
    """A download failed or its checksum did not match."""


class CheckpointError(XpnetError, ValueError):
    """A checkpoint is missing, corrupt, or belongs to another model or shape."""


class TrainingDiverged(XpnetError):
    """The loss became NaN or infinite."""
