"""Standard output and error whose reader may go away (``python cli.py | head``).

When the reading end of a pipe is closed, the next write fails with BrokenPipeError
(Python ignores SIGPIPE, so the process is not killed). The advice of Python's
documentation (signal module, "Note on SIGPIPE") is to point the stream's file descriptor
at os.devnull, so that later writes, and the interpreter's own flush at exit, succeed
quietly; and not to restore SIGPIPE's default action, which would kill the process.

:class:`ReaderMayLeave` does exactly that for one stream: it wraps ``sys.stdout`` or
``sys.stderr``; after the first BrokenPipeError it sends everything to os.devnull and
remembers, in ``reader_left``, that the reader went away. Training goes on (its results
are files, not printed text); the CLI decides what exit code a shortened output deserves.
"""
from __future__ import annotations

import contextlib
import os
import sys


class ReaderMayLeave:
    """A text stream that stops writing, instead of failing, once its reader has left."""

    def __init__(self, stream):
        self.stream = stream
        self.reader_left = stream is None  # sys.stdout is None when descriptor 1 was closed at start

    def write(self, text: str) -> int:
        if not self.reader_left:
            try:
                return self.stream.write(text)
            except BrokenPipeError:
                self._reader_went_away()
        return len(text)

    def flush(self) -> None:
        if not self.reader_left:
            try:
                self.stream.flush()
            except BrokenPipeError:
                self._reader_went_away()

    def isatty(self) -> bool:
        return not self.reader_left and self.stream.isatty()

    def __getattr__(self, name):  # encoding, fileno, ...: the wrapped stream's
        return getattr(self.stream, name)

    def _reader_went_away(self) -> None:
        self.reader_left = True
        try:
            descriptor = self.stream.fileno()
        except (AttributeError, OSError, ValueError):  # not backed by a descriptor (e.g. captured in a test)
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, descriptor)
        finally:
            os.close(devnull)


@contextlib.contextmanager
def readers_may_leave():
    """Within this block sys.stdout and sys.stderr are :class:`ReaderMayLeave` streams.

    Yields ``(stdout, stderr)``, the two wrappers, whose ``reader_left`` tells afterwards
    whether a reader went away.
    """
    saved = sys.stdout, sys.stderr
    stdout, stderr = ReaderMayLeave(sys.stdout), ReaderMayLeave(sys.stderr)
    sys.stdout, sys.stderr = stdout, stderr
    try:
        yield stdout, stderr
    finally:
        sys.stdout, sys.stderr = saved
