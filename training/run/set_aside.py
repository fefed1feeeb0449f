"""``--overwrite`` without losing a run: the old run's files wait aside until the new run has saved an epoch.

Deleting the old run's files first would lose that run if the new one then failed (a full
disk, a diverging loss, Ctrl-C) before saving anything. So they are moved (renamed: atomic,
on the same disk, nothing copied) into a hidden folder inside the run folder,

    <run folder>/.xpnet-replaced-<pid>/checkpoint.npz, best.npz, ...

and then either removed, once the new run's first checkpoint is saved (:meth:`SetAside.discard`),
or moved back, when the new run ends before that (:meth:`SetAside.restore`). If the process is
killed in between, the next run in that folder puts them back (:func:`recover`).
"""
from __future__ import annotations

import os
from pathlib import Path

PREFIX = ".xpnet-replaced-"


class SetAside:
    """The files of the run that ``--overwrite`` replaces in ``folder``, while the new run has saved no epoch."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.aside: Path | None = None  # the hidden folder, once files were moved into it
        self.names: list[str] = []

    def move(self, names: list[str]) -> None:
        """Move the files ``names`` of ``folder`` into a new hidden folder inside it."""
        if not names:
            return
        self.aside = _new_hidden_folder(self.folder)
        for name in names:
            os.rename(self.folder / name, self.aside / name)  # rename moves a name: it follows no link
            self.names.append(name)

    @property
    def pending(self) -> bool:
        """Whether files are set aside, neither removed nor restored yet."""
        return self.aside is not None

    def discard(self) -> list[str]:
        """Remove the files set aside (the new run has saved an epoch); returns their names."""
        if self.aside is None:
            return []
        names, aside = self.names, self.aside
        for name in names:
            try:
                os.unlink(aside / name)
            except OSError:  # gone already, or cannot be removed: it only costs disk space
                pass
        try:
            aside.rmdir()
        except OSError:  # something else was put there: it stays
            pass
        self.aside, self.names = None, []
        return names

    def restore(self) -> list[str]:
        """Move the files set aside back (the new run saved nothing); returns the names that could not be."""
        if self.aside is None:
            return []
        left = _move_back(self.aside, self.folder, self.names)
        self.aside, self.names = None, []
        return left


def recover(folder: Path, run_files: list[str]) -> list[str]:
    """Move back what a killed run left set aside in ``folder`` (whose lock this process holds); returns the
    names moved back. Only into a folder that holds none of the ``run_files`` (the names of a run's files),
    so that two runs never mix: a run that saved its first epoch has left its own files there."""
    if any(os.path.lexists(Path(folder) / name) for name in run_files):
        return []
    restored = []
    for aside, names in left_aside(folder, run_files).items():
        left = _move_back(aside, Path(folder), names)
        restored += [name for name in names if name not in left]
    return restored


def left_aside(folder: Path, run_files: list[str]) -> dict[Path, list[str]]:
    """The hidden folders in ``folder`` that still hold files of a run set aside by a killed run,
    with their names: those :func:`recover` could not put back, because ``folder`` holds a run's
    files of its own (a run killed after it saved its first epoch, before it removed them)."""
    found = {}
    for aside in sorted(Path(folder).glob(PREFIX + "*")):
        if aside.is_symlink() or not aside.is_dir():
            continue
        names = sorted(entry.name for entry in aside.iterdir() if entry.name in run_files)
        if names:
            found[aside] = names
    return found


def _move_back(aside: Path, folder: Path, names: list[str]) -> list[str]:
    """Rename each of ``names`` from ``aside`` back into ``folder`` unless that name is taken there; remove
    ``aside`` if it is then empty. Returns the names left aside."""
    left = []
    for name in names:
        try:
            if os.path.lexists(folder / name):
                raise FileExistsError(name)
            os.rename(aside / name, folder / name)
        except OSError:
            left.append(name)
    try:
        aside.rmdir()  # only when empty
    except OSError:
        pass
    return left


def _new_hidden_folder(folder: Path) -> Path:
    """A new, empty folder ``.xpnet-replaced-<pid>[-n]`` in ``folder`` (mkdir follows no link at its name)."""
    for attempt in range(100):
        path = folder / (f"{PREFIX}{os.getpid()}" + (f"-{attempt}" if attempt else ""))
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free name like {folder / PREFIX}{os.getpid()}")
