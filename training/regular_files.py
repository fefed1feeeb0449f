"""Opening a file to read only if it is a regular file: never a FIFO that blocks, a device
that never ends (/dev/zero), or a folder.

A name a user gives (``--resume``, ``--evaluate``, ``--checkpoint``, ``--predict``) can name
anything. ``open()`` on a FIFO waits for a writer forever, and reading /dev/zero never
ends, so the file is opened with O_NONBLOCK (which makes opening a FIFO return at once) and
then refused by its type, taken from the open descriptor itself (no race with a rename).
"""
from __future__ import annotations

import os
import stat
from typing import BinaryIO

KINDS = {stat.S_IFDIR: "a folder", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
         stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket"}


class NotARegularFile(Exception):
    """``path`` names something other than a regular file; ``kind`` says what ("a FIFO (named pipe)")."""

    def __init__(self, path, kind: str):
        super().__init__(f"{path} is {kind}, not a regular file")
        self.path, self.kind = path, kind


def open_regular(path, limit: int | None = None) -> BinaryIO:
    """``path`` opened for binary reading, if it is a regular file (of at most ``limit`` bytes, if given).

    Raises NotARegularFile for anything else (a file larger than ``limit`` is "a file of N
    bytes, more than ..."), and OSError as ``open`` would (missing, no permission).
    """
    try:
        descriptor = _descriptor(path)
    except IsADirectoryError:  # Windows; on POSIX a folder opens, and fstat tells
        raise NotARegularFile(path, "a folder") from None
    try:
        status = os.fstat(descriptor)
        kind = stat.S_IFMT(status.st_mode)
        if kind != stat.S_IFREG:
            raise NotARegularFile(path, KINDS.get(kind, "not a regular file"))
        if limit is not None and status.st_size > limit:
            raise NotARegularFile(path, f"a file of {status.st_size} bytes, more than the {limit} expected")
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def _descriptor(path) -> int:
    """A descriptor of ``path`` open for reading; without blocking (a FIFO with no writer opens at once)."""
    return os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
