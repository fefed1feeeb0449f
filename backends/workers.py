"""The cpu backend's worker threads: they run the parts of ``Backend.map_slices``.

A few daemon threads, started together, take the parts of each map from one queue.
Why not ``concurrent.futures.ThreadPoolExecutor``? Its workers are threads that the
interpreter's exit waits for, and it registers a new worker (so that the exit can tell it
to stop) only after starting it: a Ctrl-C between the two left a worker that the exit
then waited for forever. Daemon threads are not waited for at exit. And a map that a
Ctrl-C interrupts starts no further part and waits for those already running before it
raises, so no part goes on writing into an output after the map has returned or raised.
A forked child (``multiprocessing`` on Linux) has none of its parent's threads, so it
forgets its parent's pools and starts its own.
"""
from __future__ import annotations

import os
import queue
import threading
from typing import Any, Callable, Sequence

_POOLS: dict[int, WorkerThreads] = {}


class _Map:
    """One call of :meth:`WorkerThreads.map`: its parts, their outcomes, and what is still running.
    Everything but ``finished`` changes under ``lock`` only."""

    def __init__(self, function: Callable[[Any], Any], parts: Sequence):
        self.function, self.parts = function, parts
        self.outcomes: list = [None] * len(parts)  # (True, result) or (False, exception), by part
        self.started = self.running = 0
        self.stopped = False  # the caller was interrupted: no part starts any more
        self.lock = threading.Lock()
        self.finished = threading.Event()  # set once no part runs and none will start

    def take(self) -> int | None:
        """The index of the next part to run, or None when there is none left (or the map stopped)."""
        with self.lock:
            if self.stopped or self.started == len(self.parts):
                return None
            self.started += 1
            self.running += 1
            return self.started - 1

    def done(self, index: int, outcome: tuple) -> None:
        with self.lock:
            self.outcomes[index] = outcome
            self.running -= 1
            if self.running == 0 and (self.stopped or self.started == len(self.parts)):
                self.finished.set()

    def stop(self) -> None:
        """Start no further part; ``finished`` is set once those running are done."""
        with self.lock:
            self.stopped = True
            if self.running == 0:
                self.finished.set()


class WorkerThreads:
    """``count`` daemon threads that run the parts of a map."""

    def __init__(self, count: int):
        self._maps: queue.SimpleQueue = queue.SimpleQueue()  # one entry per part to run
        for index in range(count):
            threading.Thread(target=self._work, name=f"xpnet-worker-{index}", daemon=True).start()

    def _work(self) -> None:
        while True:
            call = self._maps.get()
            index = call.take()
            if index is not None:
                try:
                    outcome = (True, call.function(call.parts[index]))
                except BaseException as exc:  # handed to the caller, which raises it
                    outcome = (False, exc)
                call.done(index, outcome)
            del call  # hold nothing of a finished map while waiting for the next

    def map(self, function: Callable[[Any], Any], parts: Sequence) -> list:
        """``[function(part) for part in parts]``, the parts run in the threads. Raises the first
        failing part's exception once all parts are done."""
        if not parts:
            return []
        call = _Map(function, parts)
        try:
            for _ in parts:
                self._maps.put(call)  # each entry runs whichever part is next
            call.finished.wait()
        except KeyboardInterrupt:
            call.stop()
            _wait_through_interrupts(call.finished)
            raise
        for succeeded, value in call.outcomes:
            if not succeeded:
                raise value
        return [value for _, value in call.outcomes]


def _wait_through_interrupts(event: threading.Event) -> None:
    """``event.wait()``, going on waiting if another Ctrl-C interrupts it (a part takes milliseconds)."""
    while True:
        try:
            event.wait()
            return
        except KeyboardInterrupt:
            continue


def worker_threads(count: int) -> WorkerThreads:
    """The process's pool of ``count`` worker threads, started on first use."""
    if count not in _POOLS:
        _POOLS[count] = WorkerThreads(count)
    return _POOLS[count]


if hasattr(os, "register_at_fork"):  # a forked child has none of its parent's threads: it starts its own
    os.register_at_fork(after_in_child=_POOLS.clear)
