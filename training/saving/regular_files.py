"""Only regular files: xpnet never writes through a link, and reads or replaces nothing but a regular file.

A folder xpnet writes into (a run folder, the data folder of ``--download``, the synthetic-data
cache) may hold, at a name xpnet uses, something that is not a regular file:

* a symbolic link, perhaps to a file outside the folder (writing through it would change that
  file) or to nothing (opening it to write would create a file wherever it points);
* a folder;
* a FIFO (named pipe): opening it blocks until another process opens its other end;
* a device such as /dev/zero: reading it never ends.

So a name is looked at with ``lstat`` (which does not follow links) before it is read or
replaced, and a file is opened with ``O_NOFOLLOW`` (a link at the name fails the open instead
of being followed) and ``O_NONBLOCK`` (a FIFO opens at once), then checked with ``fstat``.
Anything but a regular file gives one error that names the path, says what it is and what to do.

A file the user names to be read (``--resume``, ``--evaluate``, ``--checkpoint``, a ``--predict``
image) may be a link: the user chose it, and only reading follows it (``open_to_read``). Its
target must still be a regular file, of bounded size where the caller knows a bound.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from ..errors import XpnetError

# Absent on Windows (which has no FIFOs, and needs privileges for links): there the check by lstat remains.
NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


class NotARegularFile(XpnetError):
    """Something other than a regular file at a name xpnet reads or writes (``path``, ``kind``)."""

    def __init__(self, path: Path, kind: str, advice: str = ""):
        where = f", where xpnet keeps a regular file; it leaves it alone: {advice}" if advice else ", not a regular file"
        super().__init__(f"{path} is {kind}{where}")
        self.path, self.kind = Path(path), kind


def kind_of(path: Path) -> str | None:
    """What is at ``path`` if it is not a regular file ("a folder", "a symbolic link to ...");
    None when it is a regular file or there is nothing there."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError:
        return None  # cannot be looked at (a parent without permission): the open itself will say so
    return kind_of_mode(status.st_mode, path)


def kind_of_mode(mode: int, path: Path | None = None) -> str | None:
    """The kind of file of an ``st_mode`` (None: a regular file); a link's target is named when ``path`` is given."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(path) if path is not None else None
        except OSError:
            target = None
        return f"a symbolic link to {target}" if target is not None else "a symbolic link"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_regular(path: Path, advice: str, error: type[XpnetError] = NotARegularFile) -> None:
    """Raise ``error`` (naming ``path``, what it is, and ``advice``) unless ``path`` is a regular file or absent."""
    kind = kind_of(path)
    if kind is not None:
        raise _error(error, path, kind, advice)


def open_regular(path: Path, flags: int, advice: str, error: type[XpnetError] = NotARegularFile, mode: int = 0o666) -> int:
    """``os.open(path, flags)`` that follows no link, never blocks on a FIFO, and gives only a regular file.

    Returns a blocking descriptor of a regular file. Something else at ``path`` raises ``error``
    (and, where ``O_CREAT`` is in ``flags``, creates nothing); other failures raise the OSError.
    """
    check_regular(path, advice, error)  # before opening: opening a device can do things of its own
    try:
        descriptor = os.open(path, flags | NO_FOLLOW, mode)
    except OSError:
        kind = kind_of(path)  # put there meanwhile, or the open failed on what it found
        if kind is not None:
            raise _error(error, path, kind, advice) from None
        raise
    kind = kind_of_mode(os.fstat(descriptor).st_mode)
    if kind is not None:
        os.close(descriptor)
        raise _error(error, path, kind, advice)
    if getattr(os, "O_NONBLOCK", 0):
        os.set_blocking(descriptor, True)  # O_NONBLOCK was only for the open
    return descriptor


def open_to_read(path: Path, limit: int | None = None) -> BinaryIO:
    """``path`` opened for binary reading, following links, if it is a regular file (of at most ``limit`` bytes).

    Raises NotARegularFile for anything else (a file larger than ``limit`` is "a file of N
    bytes, more than ..."), and OSError as ``open`` would (missing, no permission). The type is
    taken from the open descriptor, so a rename between a check and the open cannot fool it.
    """
    try:
        descriptor = _read_descriptor(path)
    except IsADirectoryError:  # Windows; on POSIX a folder opens, and fstat tells
        raise NotARegularFile(path, "a folder") from None
    try:
        status = os.fstat(descriptor)
        kind = kind_of_mode(status.st_mode)
        if kind is not None:
            raise NotARegularFile(path, kind)
        if limit is not None and status.st_size > limit:
            raise NotARegularFile(path, f"a file of {status.st_size} bytes, more than the {limit} expected")
        if getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(descriptor, True)  # O_NONBLOCK was only for the open
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def _read_descriptor(path: Path) -> int:
    """A descriptor of ``path`` open for reading, without blocking (a FIFO with no writer opens at once)."""
    return os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0))


def _error(error: type[XpnetError], path: Path, kind: str, advice: str) -> XpnetError:
    if error is NotARegularFile:
        return NotARegularFile(path, kind, advice)
    return error(str(NotARegularFile(path, kind, advice)))
