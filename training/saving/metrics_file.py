"""metrics.json: a run's settings, its history and the last evaluation's details, for people and tools to read."""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import XpnetError, setting
from ..loop.metrics import per_class_accuracy
from .atomic import write_atomically

# The most bytes a run's metrics.json can hold (10**6 epochs with layer statistics stay below it);
# one read back (on resume, or to tell a run's file from a stranger's) that is larger is not a run's.
MAX_BYTES = 2**30


def write_error(path: Path, exc: OSError) -> XpnetError:
    """The error for an output file that cannot be written."""
    return XpnetError(f"cannot write {path}: {exc.strerror or exc}; free some disk space or choose a writable folder with {setting('out')}")


def write_metrics(path: Path, config: dict, history: list[dict], evaluation=None, layer_stats: dict | None = None) -> None:
    """metrics.json: the config, one object per epoch, the last evaluation's details, and the
    per-layer statistics of ``--layer-stats`` (``layer_stats``) when they were recorded."""
    best = max(history, key=lambda row: row["test_acc"]) if history else None
    document = {"config": config, "history": history, "best_epoch": best["epoch"] if best else None}
    if evaluation is not None:
        document["per_class_accuracy"] = [None if math.isnan(v) else v for v in per_class_accuracy(evaluation.confusion).tolist()]
        document["confusion"] = evaluation.confusion.tolist()
    if layer_stats is not None:
        document["layer_stats"] = layer_stats
    try:
        write_atomically(path, lambda stream: json.dump(document, stream, indent=2), text=True)
    except OSError as exc:
        raise write_error(path, exc) from exc
