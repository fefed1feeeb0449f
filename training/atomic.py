"""Writing a file so that a crash or a full disk never leaves half of it."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable


def write_atomically(path: Path, write: Callable[[IO], None], text: bool = False) -> None:
    """Make ``path`` hold what ``write(stream)`` writes, or leave it as it was.

    ``write`` fills a temporary file in the same folder; it is flushed to disk and renamed
    over ``path`` (``os.replace`` is atomic), and the folder entry is flushed too. Any
    failure (an OSError from a full disk or an unwritable folder, or an interrupt) removes
    the temporary file and propagates: the previous ``path``, if any, is untouched.
    """
    path = Path(path)
    folder = path.parent
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "w" if text else "wb", **({"encoding": "utf-8"} if text else {})) as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    _fsync_folder(folder)


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
