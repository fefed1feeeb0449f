"""Logs that read well when not in a terminal (issue 17, item 6).

A progress bar is a line redrawn in place with '\\r': fine in a terminal, noise in a file or
a CI log (a 12-epoch run wrote about 370 redraws). There the trainer writes one line per
epoch, as Keras' verbose=2 does; in a terminal the bar stays.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY
from test_trainer import separable_loader

from backends import get_backend
from models import build_model
from training.loop.trainer import Trainer
from training.optim import SGD

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.usefixtures("private_cache")
def test_a_run_into_a_file_writes_one_line_per_epoch_and_no_redraws(tmp_path):
    argv = [flag for flag in TINY if flag != "--quiet"] + ["--epochs", "2", "--out", str(tmp_path / "run")]
    log = tmp_path / "log.txt"
    with open(log, "w") as stream:  # stdout and stderr both into the file, as `python cli.py > log.txt 2>&1`
        finished = subprocess.run([sys.executable, str(REPO / "cli.py"), *argv], cwd=REPO, env=dict(os.environ),
                                  stdout=stream, stderr=subprocess.STDOUT, timeout=300)
    text = log.read_text()
    assert finished.returncode == 0, text
    assert "\r" not in text, "a progress bar was redrawn into the file"
    epoch_lines = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["1/2", "2/2"], text
    assert "train loss" in epoch_lines[0] and "test acc" in epoch_lines[0]
    assert text.splitlines()[-1].startswith("done: final test accuracy")


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as sys.stderr does in an interactive shell."""

    def isatty(self) -> bool:
        return True


def test_in_a_terminal_the_bar_is_drawn(rng, monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    loader = separable_loader(rng, 64, 16)
    model = build_model("mlp", seed=0)
    trainer = Trainer(model, SGD(model.parameters(), lr=0.01), get_backend("cpu"), log=lambda message: None)
    trainer.fit(loader, loader, epochs=1)
    assert "\r" in terminal.getvalue() and "epoch 1/1" in terminal.getvalue() and "batch" in terminal.getvalue()
