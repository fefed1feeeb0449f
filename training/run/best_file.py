"""best.npz on a resume into another folder: the best epoch so far may be one the folder has no weights of.

A run resumed from ``A/checkpoint.npz`` (epoch 8, say) into a folder B starts with A's
history. If that history's best epoch is an earlier one (7), its weights are in A/best.npz,
not in the checkpoint; B has none. The trainer writes B/best.npz only when an epoch beats
epoch 7, so that best.npz is always the epoch the run reports as best (the first of the
highest test accuracy); :func:`seed_best_file` gives B the weights of epoch 7 to begin with,
copied from A/best.npz (or from the checkpoint itself when it is the best epoch), checked to
be that epoch of this run.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import CheckpointError
from ..saving.atomic import write_atomically
from ..saving.checkpoint import read_header
from ..saving.metrics_file import write_error
from ..saving.regular_files import kind_of, open_regular
from .folder import is_prefix


def best_epoch(history: list[dict]) -> int | None:
    """The epoch of the first highest test accuracy in ``history`` (as every report finds it); None if empty."""
    return max(history, key=lambda row: row["test_acc"])["epoch"] if history else None


def seed_best_file(folder: Path, source: Path, history: list[dict], log) -> None:
    """Make ``folder``/best.npz hold the best epoch of ``history`` (a run resumed from ``source``), if it does
    not already and a file next to ``source`` does; else say that best.npz waits for an epoch that beats it."""
    best = best_epoch(history)
    target = Path(folder) / "best.npz"
    if best is None or holds_epoch(target, best, history):
        return
    for candidate in (Path(source).parent / "best.npz", Path(source)):
        if holds_epoch(candidate, best, history):
            _copy(candidate, target)
            return
    log(f"note: no saved weights of epoch {best}, the best so far, were found next to {source}; "
        f"{target} will hold the first epoch that beats it")


def holds_epoch(path: Path, epoch: int, history: list[dict]) -> bool:
    """Whether ``path`` is a regular file holding a checkpoint of ``epoch`` of the run whose history is ``history``."""
    if kind_of(path) is not None or not path.is_file():
        return False
    try:
        header = read_header(path)
    except CheckpointError:
        return False
    saved = header.get("history", [])
    return header.get("epoch") == epoch and len(saved) == epoch and is_prefix(saved, history)


def _copy(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` atomically, reading only a regular file."""
    try:
        descriptor = open_regular(source, os.O_RDONLY, "move it away")
        with os.fdopen(descriptor, "rb") as stream:
            write_atomically(target, lambda out: shutil.copyfileobj(stream, out))
    except OSError as exc:
        raise write_error(target, exc) from exc
