"""Standard output and error that fail, or cannot encode, never cost a run (issue 21).

* A stream that raises OSError(ENOSPC), BrokenPipeError or "closed file" after k writes,
  for k drawn by hypothesis: the wrapper (training/run/streams.py) never raises, stops
  writing at the first failure, and names the stream; a whole training run under it still
  saves every file and exits 0, with one warning line on the other stream.
* ASCII, Latin-1 and cp1252 consoles (PYTHONIOENCODING, in a subprocess), a strict UTF-8
  one with a file name that is not UTF-8, and stdout on /dev/full: the run completes, no
  traceback, and what the encoding lacks is written as ``->`` or a backslash escape.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cli
from training.run.streams import ReaderMayLeave, encodable

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = ["best.npz", "checkpoint.npz", "confusion.png", "curves.png", "filters.png", "metrics.json", "mistakes.png"]
FAILURES = {"ENOSPC": lambda: OSError(errno.ENOSPC, "No space left on device"), "EPIPE": BrokenPipeError,
            "EIO": lambda: OSError(errno.EIO, "Input/output error"), "closed": lambda: ValueError("I/O operation on closed file.")}
WHY = {"ENOSPC": "No space left on device (free some disk space there)", "EIO": "Input/output error",
       "closed": "I/O operation on closed file."}
pytestmark = pytest.mark.usefixtures("private_cache")


class FailingStream(io.StringIO):
    """A text stream that fails with ``failure()`` from its write number ``k`` on (0: the first), and on flush after that."""

    def __init__(self, k: int, failure, encoding: str = "utf-8"):
        super().__init__()
        self.left, self.failure, self._encoding = k, failure, encoding
        self.failed = False  # whether it has raised

    @property
    def encoding(self):
        return self._encoding

    def write(self, text: str) -> int:
        if self.left <= 0:
            self.failed = True
            raise self.failure()
        text.encode(self._encoding)  # UnicodeEncodeError, as a real stream of this encoding
        self.left -= 1
        return super().write(text)

    def flush(self) -> None:
        if self.left <= 0:
            self.failed = True
            raise self.failure()


@settings(max_examples=40, deadline=None)
@given(k=st.integers(0, 20), failure=st.sampled_from(list(FAILURES)), texts=st.lists(st.text(max_size=30), max_size=30),
       encoding=st.sampled_from(["utf-8", "ascii", "latin-1", "cp1252"]))
def test_the_wrapper_never_raises_and_stops_at_the_first_failure(k, failure, texts, encoding):
    stream = FailingStream(k, FAILURES[failure], encoding)
    guarded = ReaderMayLeave(stream, "standard output")
    for text in texts:
        assert guarded.write(text) == len(text)
        guarded.flush()
    assert guarded.reader_left == (len(texts) >= max(k, 1))  # the k-th write's flush fails (k = 0: the first write)
    assert stream.getvalue() == "".join(encodable(text, encoding) for text in texts[:k])
    if guarded.reader_left and failure != "EPIPE":
        assert guarded.failure_line().startswith("warning: writing to standard output failed: ")
    else:
        assert guarded.failure_line() is None  # a reader that leaves is the normal end of a pipe


@given(text=st.text())
def test_encodable_text_is_encodable_and_keeps_what_it_can(text):
    for encoding in ("ascii", "latin-1", "cp1252", "utf-8"):
        shown = encodable(text, encoding)
        shown.encode(encoding)
        if encoding == "utf-8" and not any(0xD800 <= ord(c) <= 0xDFFF for c in text):
            assert shown == text
    assert encodable("Conv2D(3→6)", "ascii") == "Conv2D(3->6)"
    assert encodable("\udcff.png", "utf-8") == "\\udcff.png"


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=st.integers(0, 14), failure=st.sampled_from(list(FAILURES)), which=st.sampled_from(["stdout", "stderr"]))
def test_a_run_whose_stream_fails_at_any_write_still_saves_everything(k, failure, which, tmp_path_factory, monkeypatch):
    out = tmp_path_factory.mktemp("streams") / "run"
    failing, other = FailingStream(k, FAILURES[failure]), io.StringIO()
    monkeypatch.setattr(sys, which, failing)
    monkeypatch.setattr(sys, "stderr" if which == "stdout" else "stdout", other)
    code = cli.main(TINY[:-1] + ["--epochs", "2", "--out", str(out)])  # not quiet: a summary and lines to print
    assert code == 0 and sorted(p.name for p in out.iterdir()) == RUN_FILES
    lines = other.getvalue().splitlines()
    assert "Traceback" not in other.getvalue() + failing.getvalue()
    warnings = [line for line in lines if line.startswith("warning: writing to")]
    name = {"stdout": "standard output", "stderr": "standard error"}[which]
    if failing.failed and failure != "EPIPE":  # a reader that left is the normal end of a pipe: no warning
        assert warnings == [f"warning: writing to {name} failed: {WHY[failure]}; printing there stopped, the work went on"]
    else:
        assert warnings == []
    if which == "stdout" and k == 0:
        assert failing.failed and failing.getvalue() == ""


def _cli(args, env_extra, tmp_path, **options) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), XPNET_CACHE=str(tmp_path / "cache"), **env_extra)
    options = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **options}
    return subprocess.run([sys.executable, "cli.py", *args], cwd=ROOT, env=env, timeout=300, **options)


@pytest.mark.parametrize("encoding", ["ascii", "latin-1", "cp1252"])
def test_a_console_of_any_encoding_shows_the_whole_run(encoding, tmp_path):
    out = tmp_path / "run"
    done = _cli(TINY[:-1] + ["--epochs", "1", "--out", str(out)], {"PYTHONIOENCODING": encoding}, tmp_path)
    stdout = done.stdout.decode(encoding)
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
    assert "Conv2D(3->6" in stdout and "done: final test accuracy" in stdout
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES


def test_a_file_name_that_is_not_utf8_on_a_strict_utf8_stdout(tmp_path, finished_run):
    from PIL import Image

    name = os.fsdecode(b"digit-\xff.png")  # the byte 0xff as Python keeps it: a surrogate escape
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / name)
    done = _cli(["--predict", str(tmp_path / name), "--checkpoint", str(finished_run / "best.npz"), "--device", "cpu"],
                {"PYTHONIOENCODING": "utf-8:strict"}, tmp_path)
    assert done.returncode == 0 and done.stderr == b"", done.stderr
    assert done.stdout.decode("utf-8").startswith(f"{tmp_path}/digit-\\udcff.png: ")


def test_stdout_on_a_full_disk_keeps_the_run_and_says_which_file(tmp_path):
    out = tmp_path / "run"
    with open("/dev/full", "w") as full:
        done = _cli(TINY[:-1] + ["--epochs", "1", "--out", str(out)], {}, tmp_path, stdout=full, stderr=subprocess.PIPE)
    assert done.returncode == 0 and sorted(p.name for p in out.iterdir()) == RUN_FILES
    lines = done.stderr.decode().splitlines()
    assert lines == ["warning: writing to standard output (/dev/full) failed: No space left on device (free some disk "
                     "space there); printing there stopped, the work went on"], lines


def test_evaluate_output_cut_short_by_a_full_disk_exits_1(tmp_path, finished_run):
    with open("/dev/full", "w") as full:
        done = _cli(["--evaluate", str(finished_run / "best.npz"), "--device", "cpu", "--quiet"], {}, tmp_path,
                    stdout=full, stderr=subprocess.PIPE)
    assert done.returncode == 1 and b"(/dev/full) failed: No space left on device" in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_a_closed_stderr_and_stdout_keep_the_run(tmp_path):
    out = tmp_path / "run"
    done = _cli(TINY[:-1] + ["--epochs", "1", "--out", str(out)], {}, tmp_path, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, close_fds=True, preexec_fn=lambda: (os.close(1), os.close(2)))
    assert done.returncode == 0 and sorted(p.name for p in out.iterdir()) == RUN_FILES


def test_parse_error_on_a_failing_stderr_is_still_exit_2(monkeypatch):
    monkeypatch.setattr(sys, "stderr", FailingStream(0, FAILURES["ENOSPC"]))
    with pytest.raises(SystemExit) as exit_, contextlib.redirect_stdout(io.StringIO()):
        cli.main(["--epochs", "0"])
    assert exit_.value.code == 2
