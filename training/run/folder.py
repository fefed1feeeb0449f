"""A run folder belongs to one run.

The files of a run (checkpoint.npz, best.npz, metrics.json and the pictures: curves.png, confusion.png, mistakes.png, filters.png)
live in one folder, and this module keeps that folder safe:

* :func:`claim` takes it for this process: it creates the folder if needed, and locks it,
  so that a second process cannot write there at the same time. The lock is an advisory
  ``flock`` on the file ``.xpnet.lock``; the system drops it when the process ends, however
  it ends, so a lock file left by a killed process is recognised as stale and taken over.
* Only regular files are read or replaced: a run file's name (or the lock's) taken by a link,
  a folder, a FIFO or a device is refused before anything is read or written (see
  ``training.saving.regular_files``), and a file at a run file's name that is not a run's (by
  its content, see ownership.py) is never replaced, not even with ``overwrite``.
* A new run refuses a folder that already holds a run, unless told to overwrite it; then the
  old run's files are set aside until the new run has saved an epoch (set_aside.py).
* A resumed run accepts only a folder whose run is an earlier state of the checkpoint it
  resumes (each of its files' histories a prefix of the checkpoint's), so a resume never
  rolls a checkpoint back, and never mixes two runs in one folder.
* :meth:`RunFolder.release` unlocks it and removes the folders that :func:`claim` created,
  if nothing was written into them (an early interrupt or error leaves no empty folder).

Locking needs ``fcntl``, which Linux, macOS and the other POSIX systems have; where it is
missing (Windows) the folder is claimed without a lock, and the other rules still hold.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from ..errors import CheckpointError, XpnetError, setting
from ..saving.checkpoint import read_header
from ..saving.regular_files import check_regular, kind_of, open_regular
from .ownership import foreign

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

RUN_FILES = ("checkpoint.npz", "best.npz", "metrics.json", "curves.png", "confusion.png", "mistakes.png", "filters.png",
             "layers.png")  # layers.png: only with layer statistics (--layer-stats)
HISTORY_FILES = ("checkpoint.npz", "best.npz", "metrics.json")  # the files that say which run they belong to
LOCK_NAME = ".xpnet.lock"


class FolderInUseError(XpnetError):
    """Another process holds the folder's lock."""


class RunFolder:
    """A folder this process holds (locked) while it writes a run there."""

    def __init__(self, path: Path, lock_descriptor: int, created: list[Path], stale_lock_of: int | None):
        self.path = path
        self._lock = lock_descriptor
        self._created = created  # folders claim() made, outermost first
        self.stale_lock_of = stale_lock_of  # pid in a lock file whose process had ended, or None

    def created(self, path: Path) -> bool:
        """Whether claim() created the folder ``path`` (so that nothing in it is older than this run)."""
        return Path(path) in self._created

    def run_files(self) -> list[str]:
        """The run files present in the folder."""
        return present_run_files(self.path)

    def release(self) -> None:
        """Unlock the folder; remove the folders claim() created if they are still empty."""
        if self._lock is None:
            return
        try:
            os.unlink(self.path / LOCK_NAME)  # while still locked: nobody else can be using it
        except OSError:
            pass
        os.close(self._lock)  # closing the descriptor drops the flock
        self._lock = None
        _remove_if_empty(self._created)


def claim(path: Path) -> RunFolder:
    """Create ``path`` (with its parents) if needed and lock it for this process.

    Raises XpnetError when it cannot be created or written, or when another process holds
    it. The caller must call ``release()`` on the result, also when it fails later.

    An interrupt anywhere in here removes the folders made so far (each is noted before its
    ``mkdir``). Under cli.py's signal handling, ``train()`` claims the folder with a Ctrl-C only
    recorded, so that none lands between this call and the caller's note of the result.
    """
    path = Path(path)
    created: list[Path] = []
    try:
        _make_folders(path, created)
        descriptor, stale_pid = _lock(path)
    except BaseException:
        _remove_if_empty(created)
        raise
    return RunFolder(path, descriptor, created, stale_pid)


def _remove_if_empty(created: list[Path]) -> None:
    """Remove the folders in ``created`` (outermost first), innermost first, as long as they are empty."""
    for folder in reversed(created):
        try:
            folder.rmdir()  # only succeeds on an empty folder
        except FileNotFoundError:  # noted, but an interrupt came before its mkdir made it
            continue
        except OSError:
            break


def present_run_files(folder: Path) -> list[str]:
    """The names of RUN_FILES that exist in ``folder``."""
    return [name for name in RUN_FILES if os.path.lexists(Path(folder) / name)]  # a dangling link is there too


def check_run_file_kinds(folder: RunFolder) -> None:
    """Refuse a folder where a run file's name is taken by a link, a folder, a FIFO or a device:
    a run would write through it, fail on it, or block on it. Checked before anything is read."""
    for name in RUN_FILES:
        check_regular(folder.path / name, f"move it away, or choose another {setting('out')}")


def check_strangers(folder: RunFolder) -> None:
    """Refuse a folder where a file at a run file's name is not a run's (ownership.py): no run may replace it."""
    for name in folder.run_files():
        what = foreign(folder.path / name)
        if what is not None:
            raise XpnetError(f"{folder.path / name} is {what}, so no run's; a run there would replace it, "
                             f"so xpnet leaves it alone ({setting('overwrite')} replaces only a run's files): "
                             f"move it away, or choose another {setting('out')}")


def check_new_run(folder: RunFolder, overwrite: bool) -> None:
    """A new run may write into ``folder`` only if it holds no run, or if told to overwrite it."""
    present = folder.run_files()
    if not present or overwrite:
        return
    resume = f", continue it with {setting('resume')} {folder.path / 'checkpoint.npz'}" if "checkpoint.npz" in present else ""
    raise XpnetError(
        f"{folder.path} already holds a run ({', '.join(present)}); a new run there would replace it: "
        f"choose another {setting('out')}{resume}, or pass {setting('overwrite')} to replace it"
    )


def check_resume_target(folder: RunFolder, source: Path, source_history: list, overwrite: bool) -> list[str]:
    """A run resumed from ``source`` may write into ``folder`` only if that loses nothing.

    Every file in the folder that records a history (checkpoint.npz, best.npz,
    metrics.json) must hold an earlier state of the resumed run: its history a prefix of
    ``source_history``. Then each file the resumed run writes is further along than the
    one it replaces. Raises XpnetError for the first file that is not; with ``overwrite``,
    returns the names of all such files instead (for the caller to remove).
    """
    conflicts = resume_conflicts(folder, source, source_history)
    if conflicts and not overwrite:
        raise XpnetError(conflicts[0][1])
    return [name for name, _ in conflicts]


def resume_conflicts(folder: RunFolder, source: Path, source_history: list) -> list[tuple[str, str]]:
    """(file name, why) for each run file in ``folder`` that a run resumed from ``source`` would wrongly replace."""
    present = folder.run_files()
    conflicts, identified = [], False
    for name in HISTORY_FILES:
        path = folder.path / name
        if name not in present:
            continue
        identified = True
        if _same_file(path, source):
            continue
        history = read_history(path)
        if history is None or not is_prefix(history, source_history):
            conflicts.append((name, _resume_conflict(folder.path, name, history, source, source_history)))
    if present and not identified:
        conflicts += [(name, f"{folder.path} holds files of a run ({', '.join(present)}) but no checkpoint or metrics.json "
                             f"that shows which; resuming {source} there could mix two runs: choose another {setting('out')}, "
                             f"or pass {setting('overwrite')}") for name in present]
    return conflicts


def _resume_conflict(folder: Path, name: str, history: list | None, source: Path, source_history: list) -> str:
    target = folder / name
    if history is None:
        return (f"{target} cannot be read, so it may hold another run that resuming {source} there would replace: "
                f"choose another {setting('out')}, or pass {setting('overwrite')} to replace it")
    if is_prefix(source_history, history):
        hint = "" if name != "checkpoint.npz" else f"resume from {target} instead, "
        return (f"{target} holds epoch {len(history)} of this run, more than {source} (epoch {len(source_history)}); "
                f"resuming from there would roll it back: {hint}write the resumed run to another {setting('out')}, "
                f"or pass {setting('overwrite')} to replace it")
    return (f"{target} belongs to another run (its history differs from that of {source}); resuming there would "
            f"replace that run: choose another {setting('out')}, or pass {setting('overwrite')} to replace it")


def read_history(path: Path) -> list | None:
    """The history (list of per-epoch rows) a run file records, or None if it cannot be read."""

    try:
        if path.suffix == ".npz":
            return read_header(path).get("history", [])
        with open(path, encoding="utf-8") as stream:
            history = json.load(stream).get("history")
        return history if isinstance(history, list) else None
    except (CheckpointError, OSError, ValueError, AttributeError, RecursionError):
        return None


def is_prefix(short: list, long: list) -> bool:
    """Whether ``short`` is the first rows of ``long`` (rows compared as JSON, so NaN equals NaN)."""
    canonical = lambda row: json.dumps(row, sort_keys=True)  # noqa: E731
    return len(short) <= len(long) and all(canonical(a) == canonical(b) for a, b in zip(short, long))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# -- creating and locking ------------------------------------------------------------------------
def _make_folders(path: Path, created: list[Path]) -> None:
    """mkdir -p ``path``, appending to ``created`` each folder it makes, outermost first (noted just
    before its mkdir, so that an interrupt at any moment leaves no folder made and not noted)."""
    missing = []
    folder = path
    while not folder.exists() and not folder.is_symlink():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    if not folder.is_dir() and folder not in missing:
        what = kind_of(folder) or "a file"  # a dangling link, a FIFO ...
        raise XpnetError(f"cannot create the output folder {path}: {folder} is {what}, not a folder; "
                         f"choose another with {setting('out')}")
    for folder in reversed(missing):
        created.append(folder)
        try:
            folder.mkdir()
        except FileExistsError:  # made meanwhile by another process: not ours to remove
            created.pop()
            continue
        except OSError as exc:
            created.pop()
            raise XpnetError(f"cannot create the output folder {path}: {exc.strerror or exc}; choose another with {setting('out')}") from exc


def _lock(folder: Path) -> tuple[int, int | None]:
    """Take the lock of ``folder``: (its open descriptor, the pid of a stale lock it replaced or None)."""
    path = folder / LOCK_NAME
    advice = f"remove it (xpnet makes its lock file itself), or choose another {setting('out')}"
    while True:
        try:
            descriptor = open_regular(path, os.O_RDWR | os.O_CREAT, advice)  # never through a link, never a FIFO
        except OSError as exc:
            raise XpnetError(f"the output folder {folder} is not writable: {exc.strerror or exc}; choose another with {setting('out')}") from exc
        if fcntl is None:
            return descriptor, None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(descriptor)
            os.close(descriptor)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise XpnetError(f"cannot lock the output folder {folder}: {exc.strerror or exc}; choose another with {setting('out')}") from exc
            who = f"process {holder}" if holder else "another process"
            raise FolderInUseError(f"{folder} is in use by another xpnet run ({who}); wait for it to end, or choose another {setting('out')}")
        # A previous holder may have removed the file between our open and our flock: then we
        # hold a lock on a file nobody else can see, so start again with the file now at ``path``.
        if _is_same_descriptor(descriptor, path):
            break
        os.close(descriptor)
    stale = _read_pid(descriptor)
    try:
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
    except BaseException as exc:  # a full disk, say: give the lock up again, leaving no file behind
        os.unlink(path)
        os.close(descriptor)
        if isinstance(exc, OSError):
            raise XpnetError(f"cannot write the lock file {path}: {exc.strerror or exc}; free some disk space, "
                             f"or choose another {setting('out')}") from exc
        raise
    return descriptor, stale


def _is_same_descriptor(descriptor: int, path: Path) -> bool:
    try:
        on_disk = os.lstat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(descriptor)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _read_pid(descriptor: int) -> int | None:
    """The process id written in a lock file, or None when it holds none."""
    try:
        text = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
