"""write_atomically: a file is either the old one or the complete new one."""
from __future__ import annotations

import os
import re

import pytest

from training.saving.atomic import write_atomically
from training.saving.plots import plot_curves
from training.saving.regular_files import NotARegularFile


def test_success_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    write_atomically(path, lambda stream: stream.write("new"), text=True)
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file(tmp_path, failure):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def write(stream):
        stream.write(b"half of the new")
        raise failure

    with pytest.raises(type(failure)):
        write_atomically(path, write)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_plots_are_written_through_it(tmp_path, monkeypatch):
    history = [{"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.1 / e, "train_acc": 0.5, "test_acc": 0.4} for e in (1, 2)]
    path = plot_curves(history, tmp_path / "curves.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    calls = []
    monkeypatch.setattr("training.saving.plots.write_atomically", lambda *args, **kwargs: calls.append(args[0]))
    plot_curves(history, tmp_path / "again.png")
    assert calls == [tmp_path / "again.png"]


@pytest.mark.parametrize("kind", ["link", "dangling", "folder", "fifo"])
def test_only_a_regular_file_is_replaced(tmp_path, kind):
    """A link at the name is neither written through nor replaced; a folder or a FIFO is left alone (and not opened)."""
    outside = tmp_path / "outside.txt"
    outside.write_text("the user's")
    path = tmp_path / "run" / "metrics.json"
    path.parent.mkdir()
    if kind == "link":
        path.symlink_to(outside)
    elif kind == "dangling":
        path.symlink_to(tmp_path / "nowhere.txt")
    elif kind == "folder":
        path.mkdir()
    else:
        os.mkfifo(path)
    with pytest.raises(NotARegularFile, match=f"^{re.escape(str(path))} is a"):
        write_atomically(path, lambda stream: stream.write("new"), text=True)
    assert outside.read_text() == "the user's" and not (tmp_path / "nowhere.txt").exists()
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"], "no temporary file is left"
