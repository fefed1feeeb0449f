"""SIGINT and SIGTERM at any moment of a real ``python cli.py`` run, start-up included.

Each signal is sent at a random moment of the run's life. Whatever the moment, the run
ends without a traceback from xpnet, keeps every epoch it completed (the message says
which, and the checkpoint holds it), and leaves no lock, temporary file or empty folder.
The moments are random on purpose: each test run tries new ones, and a failure prints
the moment that broke it. (test_reliability.py covers a signal mid-epoch and the exact
resume after it.)

What xpnet cannot handle is the first tens of milliseconds, before cli.py's first line:
the interpreter starting, importing ``site`` and compiling cli.py, with Python's own
SIGINT handler (a traceback, or a bare "KeyboardInterrupt", and no files).
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cli_helpers import TINY
from training import interrupts
from training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parent.parent
RUN = [sys.executable, str(REPO / "cli.py"), *TINY, "--epochs", "2"]
MOMENTS = 8  # signals sent, two runs at a time: about 10 s in all
FILES = ["best.npz", "checkpoint.npz", "confusion.png", "curves.png", "filters.png", "metrics.json", "mistakes.png"]


def _default_sigint():  # a child of a background job may inherit SIGINT ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(out: Path, cache: Path) -> subprocess.Popen:
    return subprocess.Popen(RUN + ["--out", str(out)], cwd=out.parent, env={**os.environ, "XPNET_CACHE": str(cache)},
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_default_sigint)


def interrupted_at(delay: float, signum: int, out: Path, cache: Path) -> tuple[int, str, str]:
    process = start(out, cache)
    time.sleep(delay)
    process.send_signal(signum)
    try:
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, stdout, stderr


def check_outcome(code: int, stdout: str, stderr: str, signum: int, out: Path) -> None:
    """What any moment may give: the run stopped (130) or finished (0), and its folder is sound."""
    files = sorted(os.listdir(out)) if out.exists() else None
    assert files != [], "an empty run folder was left behind"
    assert not [name for name in files or [] if name.startswith(".")], f"lock or temporary file left: {files}"
    if "Traceback" in stderr or "Fatal Python error" in stderr or stderr.strip() == "KeyboardInterrupt":
        # Only Python's own start-up may show these: before the first line of cli.py runs, the
        # interpreter starts, imports site and compiles cli.py (about 60 ms), with its own handler.
        assert str(REPO) not in stderr and files is None, stderr
        return
    assert "Exception ignored" not in stderr, stderr
    if code == -signum:  # killed the system's way: before Python set up its handlers, or while it shut down
        assert files is None or ("done:" in stdout and files == FILES), (stdout, stderr, files)
        return
    if code == 0:
        assert files == FILES and load_checkpoint(out / "checkpoint.npz").epoch == 2
        return
    assert code == 130, (code, stderr)
    last = stderr.strip().splitlines()[-1]
    saved = re.fullmatch(r"interrupted: (\S+) holds epoch (\d); continue with: python cli.py --resume \1 --epochs 2", last)
    if saved:
        assert Path(saved[1]) == out / "checkpoint.npz" and load_checkpoint(out / "checkpoint.npz").epoch == int(saved[2])
        metrics = json.loads((out / "metrics.json").read_text())
        assert len(metrics["history"]) in (int(saved[2]) - 1, int(saved[2]))  # metrics.json is written just after
    else:
        assert last in (f"interrupted before an epoch ended; nothing was saved in {out}", "interrupted"), stderr
        assert files is None


def test_a_signal_at_any_moment_loses_nothing(tmp_path):
    cache = tmp_path / "cache"
    started = time.monotonic()
    code, _, err = interrupted_at(0, 0, tmp_path / "whole", cache)  # signal 0 checks the process, sends nothing
    lifetime = time.monotonic() - started
    assert code == 0, err
    rng = random.Random()
    trials = [(rng.uniform(0, lifetime), rng.choice([signal.SIGINT, signal.SIGTERM]), tmp_path / f"run{i}")
              for i in range(MOMENTS)]
    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(lambda trial: interrupted_at(*trial, cache), trials))
    for (delay, signum, out), (code, stdout, stderr) in zip(trials, outcomes):
        try:
            check_outcome(code, stdout, stderr, signum, out)
        except AssertionError as failure:
            raise AssertionError(f"{signal.Signals(signum).name} {delay:.3f} s after the start "
                                 f"(of a {lifetime:.2f} s run): exit code {code}\n{stderr}") from failure


def test_a_signal_during_start_up_is_acted_on_once_start_up_may_stop():
    """The handler only records a signal while imports run; check() then raises it."""
    interrupts.catch_signals()
    try:
        with interrupts.deferred():
            signal.raise_signal(signal.SIGTERM)  # recorded, not raised
        assert interrupts.received() == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # outside deferred(): raised at once
    finally:
        interrupts.restore_signals()
    assert interrupts.received() is None
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_interrupt_swallowed_by_a_finalizer_stops_the_next_batch(capsys):
    """Python drops a KeyboardInterrupt raised in a __del__ (it prints "Exception ignored in ...");
    the signal stays recorded, nothing is printed, and the loader stops at the next batch."""

    class RaisesWhenCollected:
        def __del__(self):
            signal.raise_signal(signal.SIGTERM)  # the handler raises KeyboardInterrupt inside __del__

    interrupts.catch_signals()
    try:
        with interrupts.quiet_unraisable():
            loader = interrupts.StopOnSignal([1, 2, 3])
            seen = []
            with pytest.raises(KeyboardInterrupt):
                for batch in loader:
                    seen.append(batch)
                    if batch == 1:
                        RaisesWhenCollected()  # collected at once: the interrupt is swallowed
        assert seen == [1]
    finally:
        interrupts.restore_signals()
    assert "Exception ignored" not in capsys.readouterr().err
