"""Whose file is this? A file at a run file's name is a run's only if its content says so.

A folder may hold a ``metrics.json`` or a ``curves.png`` that some other tool (or the user)
wrote. ``--overwrite`` may replace a run, never such a file, so a run file is recognised by
what is in it, not by its name:

* checkpoint.npz, best.npz: a checkpoint whose header xpnet reads (``read_header``);
* metrics.json: JSON with xpnet's keys: ``config`` (an object), ``history`` (a list of
  objects, each with its ``epoch``) and ``best_epoch``;
* the pictures (curves.png, ...): a PNG that Matplotlib drew (its ``Software`` text chunk,
  which Matplotlib writes right after the image header).

:func:`foreign` says what a file is when it is not a run's, and None when it is.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import CheckpointError
from ..saving import metrics_file
from ..saving.checkpoint import read_header

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_HEAD_BYTES = 4096  # the signature, IHDR, and the text chunk Matplotlib writes next


def foreign(path: Path) -> str | None:
    """None if the regular file ``path`` is a file of an xpnet run; else what it is ("an empty file",
    "a file that is not an xpnet checkpoint", ...)."""
    path = Path(path)
    try:
        size = os.stat(path).st_size
        if size == 0:
            return "an empty file"
        if path.suffix == ".npz":
            return _foreign_checkpoint(path)
        if path.suffix == ".json":
            return _foreign_metrics(path, size)
        return _foreign_picture(path)
    except OSError as exc:
        return f"a file xpnet cannot read ({exc.strerror or exc})"


def _foreign_checkpoint(path: Path) -> str | None:
    try:
        read_header(path)
    except CheckpointError:
        return "a file that is not an xpnet checkpoint"
    return None


def _foreign_metrics(path: Path, size: int) -> str | None:
    if size > metrics_file.MAX_BYTES:
        return f"a file of {size:,} bytes, far more than any metrics.json"
    try:
        with open(path, encoding="utf-8") as stream:
            document = json.load(stream)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return "a file that is not JSON"
    if (isinstance(document, dict) and isinstance(document.get("config"), dict) and "best_epoch" in document
            and isinstance(document.get("history"), list)
            and all(isinstance(row, dict) and "epoch" in row for row in document["history"])):
        return None
    return "JSON that is not an xpnet metrics.json (no config, history and best_epoch)"


def _foreign_picture(path: Path) -> str | None:
    with open(path, "rb") as stream:
        head = stream.read(PNG_HEAD_BYTES)
    if not head.startswith(PNG_SIGNATURE):
        return "a file that is not a PNG image"
    if b"Software\x00Matplotlib" not in head:
        return "a PNG image that xpnet did not draw"
    return None
