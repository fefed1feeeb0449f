"""The error types xpnet raises for things a user can cause.

Each message says what was wrong, what was expected and what to do. The CLI prints
``error: <message>`` for these and exits with code 2, never a traceback.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator


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


# -- naming a setting in a message --------------------------------------------------------------
# A message about a setting names it as its reader knows it: the command line's reader as a
# flag (--lr), a library user as the RunConfig field ('lr'). cli.py sets the naming for the
# whole run with settings_named(); every message made meanwhile uses it.
_naming: ContextVar[Callable[[str], str]] = ContextVar("setting_naming", default=lambda name: repr(name))


def setting(name: str) -> str:
    """How messages name the setting ``name`` (a RunConfig field): ``'lr'``, or ``--lr`` in the CLI."""
    return _naming.get()(name)


@contextmanager
def settings_named(naming: Callable[[str], str]) -> Iterator[None]:
    """Within this block, messages name a setting ``name`` as ``naming(name)``."""
    token = _naming.set(naming)
    try:
        yield
    finally:
        _naming.reset(token)
