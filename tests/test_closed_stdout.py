"""A closed standard output (``python cli.py | head -1``) stops the printing, not the training."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import TINY, finished_run  # noqa: F401 (fixture)
from training.checkpoint import load_checkpoint
from training.streams import ReaderMayLeave

REPO = Path(__file__).resolve().parent.parent
NOT_QUIET = [flag for flag in TINY if flag != "--quiet"]


def run_with_reader_gone(argv, tmp_path: Path, stderr_too: bool = False) -> tuple[int, str]:
    """Run ``python cli.py argv`` with the read end of its stdout closed at once (as by ``head -0``).

    Returns (exit code, stderr); with ``stderr_too`` stderr goes into the same closed pipe.
    """
    env = {**os.environ, "XPNET_CACHE": str(tmp_path / "cache")}
    process = subprocess.Popen([sys.executable, str(REPO / "cli.py"), *argv], cwd=tmp_path, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT if stderr_too else subprocess.PIPE)
    process.stdout.close()  # the reader leaves before the first line
    err = "" if stderr_too else process.stderr.read()
    code = process.wait(timeout=120)
    if not stderr_too:
        process.stderr.close()
    return code, err


@pytest.mark.parametrize("stderr_too", [False, True], ids=["stdout", "stdout-and-stderr"])
def test_training_goes_on_when_its_reader_leaves(tmp_path, stderr_too):
    out = tmp_path / "run"
    code, err = run_with_reader_gone(NOT_QUIET + ["--epochs", "1", "--out", str(out)], tmp_path, stderr_too)
    assert code == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err
    assert load_checkpoint(out / "checkpoint.npz").epoch == 1
    assert sorted(os.listdir(out)) == ["best.npz", "checkpoint.npz", "confusion.png", "curves.png", "filters.png", "metrics.json", "mistakes.png"]


def test_predict_stops_printing_and_says_so_in_its_exit_code(tmp_path, finished_run):
    from PIL import Image

    images = []
    for index in range(3):
        images.append(tmp_path / f"{index}.png")
        Image.fromarray(np.full((32, 32, 3), 40 * index, np.uint8)).save(images[-1])
    code, err = run_with_reader_gone(["--predict", *map(str, images), "--checkpoint", str(finished_run / "best.npz"),
                                      "--device", "cpu"], tmp_path)
    assert code == 1 and err == "", err  # 1: Python's own exit code when its output pipe breaks


def test_a_stream_whose_reader_left_goes_to_devnull():
    """After a BrokenPipeError the descriptor is os.devnull, so later writes and the final flush succeed."""
    read_end, write_end = os.pipe()
    stream = io.TextIOWrapper(io.FileIO(write_end, "w"), write_through=True)
    guarded = ReaderMayLeave(stream)
    guarded.write("seen\n")
    assert os.read(read_end, 100) == b"seen\n"
    os.close(read_end)
    assert guarded.write("lost\n") == 5 and guarded.reader_left
    guarded.write("more\n")
    guarded.flush()
    stream.write("directly, as the interpreter does at exit\n")
    stream.flush()
    assert os.path.samestat(os.fstat(write_end), os.stat(os.devnull))
    stream.close()
