"""Standard output and error that never stop a run: any encoding, and a reader or disk that goes away.

Training's results are files (checkpoints, metrics, pictures), not printed text, so nothing
that happens to stdout or stderr may cost a run:

* **A reader that leaves** (``python cli.py | head``): the next write fails with
  BrokenPipeError (Python ignores SIGPIPE, so the process is not killed).
* **A stream that fails** otherwise: a full disk (ENOSPC), an I/O error, a stream closed
  under the program. The text is lost either way.
* **An encoding that lacks a character**: an ASCII, Latin-1 or cp1252 console or log file
  cannot show the model summary's ``→``, and a strict UTF-8 one cannot show a file name
  that is not UTF-8 (Python keeps its bytes as "surrogate escapes").

:class:`ReaderMayLeave` wraps ``sys.stdout`` or ``sys.stderr`` against all three. A character
the stream cannot encode is written as an ASCII stand-in (``->`` for ``→``, see FALLBACKS) or
else as a backslash escape (``\\udcff``), as ``errors="backslashreplace"`` would. At the
first failed write the wrapper stops writing and points the stream's file descriptor at
os.devnull, as Python's documentation advises for SIGPIPE (signal module, "Note on
SIGPIPE"), so that the interpreter's own flush at exit succeeds quietly too; it remembers
that the output was cut short (``reader_left``) and why (``failure``). The CLI then says so
in one line on whichever stream still works (:func:`report_failures`) and decides what exit
code a shortened output deserves; training goes on.
"""
from __future__ import annotations

import contextlib
import errno
import os
import sys

# Stand-ins for the few non-ASCII characters xpnet prints, where a stream cannot encode them.
FALLBACKS = {"→": "->", "←": "<-", "×": "x", "·": "*", "≥": ">=", "≤": "<=", "…": "...", "—": "-", "–": "-",
             "²": "^2", "√": "sqrt", "±": "+/-", "μ": "mu", "λ": "lambda", "γ": "gamma", "ε": "eps", "█": "#"}


def encodable(text: str, encoding: str | None) -> str:
    """``text`` as ``encoding`` can write it: FALLBACKS for the characters it lacks, backslash escapes for the rest."""
    encoding = encoding or "utf-8"
    for char, stand_in in FALLBACKS.items():
        if char in text:
            try:
                char.encode(encoding)
            except (UnicodeEncodeError, LookupError):
                text = text.replace(char, stand_in)
    try:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:  # an encoding Python does not know: ASCII is safe
        return text.encode("ascii", "backslashreplace").decode("ascii")


class ReaderMayLeave:
    """A text stream that writes what its encoding can, and stops writing, instead of failing,
    once it cannot write at all (its reader left, its disk is full, it was closed).

    ``name`` is what messages call it ("standard output"); ``failure`` is the error that
    stopped it, None while it writes or when only its reader left (a normal end of a pipe).
    """

    def __init__(self, stream, name: str = "standard output"):
        self.stream = stream
        self.name = name
        self.failure: BaseException | None = None
        self.reader_left = stream is None  # sys.stdout is None when descriptor 1 was closed at start

    def write(self, text: str) -> int:
        if not self.reader_left:
            try:
                try:
                    return self.stream.write(text)
                except UnicodeEncodeError:  # nothing was written: the whole text is encoded first
                    self.stream.write(encodable(text, getattr(self.stream, "encoding", None)))
                    return len(text)  # what the caller gave, as if written as it was
            except (OSError, ValueError) as exc:  # ValueError: "I/O operation on closed file"
                self._stopped(exc)
        return len(text)

    def flush(self) -> None:
        if not self.reader_left:
            try:
                self.stream.flush()
            except (OSError, ValueError) as exc:
                self._stopped(exc)

    def isatty(self) -> bool:
        return not self.reader_left and self.stream.isatty()

    def __getattr__(self, name):  # encoding, fileno, ...: the wrapped stream's
        return getattr(self.stream, name)

    def _stopped(self, exc: BaseException) -> None:
        self.reader_left = True
        if not isinstance(exc, BrokenPipeError):
            self.failure = exc
        try:
            descriptor = self.stream.fileno()
        except (AttributeError, OSError, ValueError):  # not backed by a descriptor (e.g. captured in a test)
            return
        self.name = _described(self.name, descriptor)  # now, while the descriptor still names the file
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, descriptor)
        finally:
            os.close(devnull)

    def failure_line(self) -> str | None:
        """One line that says why this stream stopped, naming its file; None if it did not fail."""
        if self.failure is None:
            return None
        exc = self.failure
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        advice = " (free some disk space there)" if getattr(exc, "errno", None) == errno.ENOSPC else ""
        return f"warning: writing to {self.name} failed: {why}{advice}; printing there stopped, the work went on"


def _described(name: str, descriptor: int) -> str:
    """``name`` and, where the system says (Linux), the file behind ``descriptor``: "standard output (/tmp/log)"."""
    try:
        target = os.readlink(f"/proc/self/fd/{descriptor}")
    except OSError:
        return name
    return f"{name} ({target})"


def report_failures(stdout: ReaderMayLeave, stderr: ReaderMayLeave) -> None:
    """Say in one line, on whichever stream still works, why the other one stopped."""
    for failed, other in ((stdout, stderr), (stderr, stdout)):
        line = failed.failure_line()
        if line is not None and not other.reader_left:
            print(line, file=other, flush=True)


@contextlib.contextmanager
def readers_may_leave():
    """Within this block sys.stdout and sys.stderr are :class:`ReaderMayLeave` streams.

    Yields ``(stdout, stderr)``, the two wrappers, whose ``reader_left`` and ``failure``
    tell afterwards whether a stream stopped, and why.
    """
    saved = sys.stdout, sys.stderr
    stdout, stderr = ReaderMayLeave(sys.stdout, "standard output"), ReaderMayLeave(sys.stderr, "standard error")
    sys.stdout, sys.stderr = stdout, stderr
    try:
        yield stdout, stderr
    finally:
        sys.stdout, sys.stderr = saved
