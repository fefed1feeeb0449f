"""Ctrl-C and SIGTERM at any moment: the run stops at once and loses nothing that was saved.

Python's own SIGINT handler raises KeyboardInterrupt wherever the main thread happens to
be, and that has two weak spots:

* The exception may land in code that cannot pass it on: a ``__del__`` method or a weak
  reference's callback. Python then prints "Exception ignored in ..." and carries on, so
  the signal is lost (we saw training go on after a SIGTERM, once in 12 tries).
* It may land half-way through writing a file.

So :func:`catch_signals` installs one handler for SIGINT and SIGTERM that *records* the
signal and then raises KeyboardInterrupt, as Python would. The record lets the program
make sure the interrupt is not lost:

* :func:`check` raises KeyboardInterrupt again if a signal has arrived. The CLI calls it
  between the steps of its start-up, and :class:`StopOnSignal` calls it before every batch,
  so a swallowed interrupt ends the run one batch later.
* Inside :func:`deferred` (used by ``training.saving.atomic.write_atomically``), the handler only
  records the signal: the file is finished, and the next :func:`check` stops the run.
* :func:`quiet_unraisable` keeps Python from printing a swallowed KeyboardInterrupt.

Without :func:`catch_signals` (a library user's own program) nothing changes: Python's
handler raises KeyboardInterrupt, :func:`check` and :func:`deferred` do nothing.
"""
from __future__ import annotations

import contextlib
import importlib
import signal
import sys

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: int | None = None  # the first stop signal that arrived since catch_signals()
_defer_depth = 0  # > 0 while inside deferred(): record only, never raise
_installed: dict[int, object] = {}  # signal -> the handler that catch_signals() replaced


def _on_stop_signal(signum, frame) -> None:
    global _received
    if _received is None:
        _received = signum
    if _defer_depth == 0:
        raise KeyboardInterrupt


def catch_signals(received: int | None = None) -> None:
    """Handle SIGINT and SIGTERM as described above, from now on (main thread only).

    ``received``: a stop signal that arrived before, while a program's start-up only
    recorded signals; :func:`check` then acts on it.
    """
    global _received, _defer_depth
    _received, _defer_depth = received, 0
    for signum in STOP_SIGNALS:
        previous = signal.signal(signum, _on_stop_signal)
        if signum not in _installed:
            _installed[signum] = previous


def shutting_down() -> None:
    """From now on only record signals: the program is already on its way out.

    Used while it reports an interrupt and cleans up (releases its lock, removes an empty
    folder), so that a second Ctrl-C cannot cut that short. Without :func:`catch_signals` (a
    library user's own program, a notebook) it does nothing.
    """
    global _defer_depth
    if _installed:
        _defer_depth += 1


def restore_signals() -> None:
    """Put back the handlers that :func:`catch_signals` replaced, and forget any signal."""
    global _received, _defer_depth
    for signum, previous in _installed.items():
        signal.signal(signum, previous)
    _installed.clear()
    _received, _defer_depth = None, 0


def received() -> int | None:
    """The stop signal that arrived (signal.SIGINT or signal.SIGTERM), or None."""
    return _received


def check() -> None:
    """Raise KeyboardInterrupt if a stop signal has arrived (even one already raised once)."""
    if _received is not None and _defer_depth == 0:
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred():
    """Within this block a stop signal is only recorded; the next :func:`check` acts on it."""
    global _defer_depth
    _defer_depth += 1
    try:
        yield
    finally:
        _defer_depth -= 1


class StopOnSignal:
    """A data loader that checks for a stop signal before handing out each batch.

    Wraps a ``DataLoader``: ``len``, ``set_epoch`` and every other attribute are the
    wrapped loader's. Costs one comparison per batch.
    """

    def __init__(self, loader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            check()
            yield batch

    def __getattr__(self, name):
        return getattr(self.loader, name)


@contextlib.contextmanager
def quiet_unraisable():
    """Keep Python from printing a KeyboardInterrupt that a finalizer swallowed.

    Such an interrupt is not lost: the signal was recorded, and the next :func:`check`
    raises it again. Any other unraisable exception is reported as usual.
    """
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if unraisable.exc_type is KeyboardInterrupt and _received is not None:
            return
        previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def import_whole(*names: str) -> None:
    """Import the modules ``names`` with stop signals deferred, then act on a signal that came meanwhile.

    An import cut short by KeyboardInterrupt leaves a module half-initialised (NumPy then
    refuses to load a second time), and the clean-up after an interrupt needs several of
    them. Importing them in one piece delays a Ctrl-C by at most the import time.
    """
    with deferred():
        for name in names:
            importlib.import_module(name)
    check()
