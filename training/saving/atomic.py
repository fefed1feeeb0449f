"""Writing a file so that a crash, a full disk or Ctrl-C never leaves half of it."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable

from .. import interrupts
from .regular_files import check_regular


def write_atomically(path: Path, write: Callable[[IO], None], text: bool = False) -> None:
    """Make ``path`` hold what ``write(stream)`` writes, or leave it as it was.

    ``write`` fills a temporary file in the same folder; it is flushed to disk and renamed
    over ``path`` (``os.replace`` is atomic), and the folder entry is flushed too. Any
    failure (an OSError from a full disk or an unwritable folder, or an exception from
    ``write``) removes the temporary file and propagates: the previous ``path``, if any, is
    untouched. A stop signal that arrives meanwhile (see ``training.interrupts``) lets the
    file be finished first. The file gets the permissions of any new file (0666 less the
    umask), not the owner-only 0600 of a temporary file.

    Only a regular file at ``path`` is replaced: a link, a folder, a FIFO or a device there
    raises NotARegularFile (regular_files.py) before anything is written. The temporary file
    is created with O_EXCL (``mkstemp``), which follows no link, and the rename replaces the
    name itself, never what a link at it points to.
    """
    path = Path(path)
    folder = path.parent
    check_regular(path, "move it away, or write to another folder")
    with interrupts.deferred():
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(handle, "w" if text else "wb", **({"encoding": "utf-8"} if text else {})) as stream:
                write(stream)
                stream.flush()
                os.fsync(stream.fileno())
                _set_mode(stream.fileno(), temporary)
            os.replace(temporary, path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
        _fsync_folder(folder)


def _set_mode(descriptor: int, temporary: str) -> None:
    """Give the open temporary file the mode of a new file (by its descriptor: no name to be swapped meanwhile)."""
    if os.chmod in os.supports_fd:
        os.chmod(descriptor, new_file_mode())
    else:  # Windows
        os.chmod(temporary, new_file_mode())


def new_file_mode() -> int:
    """The mode ``open()`` would give a new file: 0o666 without the bits of the umask."""
    return 0o666 & ~current_umask()


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows."""
    try:  # Linux 4.7+: no window in which another thread could create a file with umask 0
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Flush the folder's entries (the rename) to disk where the system allows it."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
