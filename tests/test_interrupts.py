"""Signal handling (training/interrupts.py): a signal during start-up is recorded and acted on once
start-up may stop, and an interrupt that a finalizer swallowed still stops the next batch. The
signals sent to real runs are in test_faults.py."""
from __future__ import annotations

import signal
import sys

import pytest

from training import interrupts


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


def test_a_signal_recorded_before_the_handlers_is_acted_on():
    """cli.py records signals during its imports and hands the first to catch_signals."""
    interrupts.catch_signals(received=signal.SIGTERM)
    try:
        assert interrupts.received() == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    finally:
        interrupts.restore_signals()
    interrupts.catch_signals()
    try:
        interrupts.check()  # a fresh start forgets the earlier run's signal
        assert interrupts.received() is None
    finally:
        interrupts.restore_signals()


def test_the_first_signal_is_the_one_recorded():
    interrupts.catch_signals()
    try:
        with interrupts.deferred():
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGINT)
        assert interrupts.received() == signal.SIGTERM
    finally:
        interrupts.restore_signals()


def test_while_shutting_down_signals_are_only_recorded():
    """Even inside (and after) a deferred() block: the clean-up after an interrupt is not cut short."""
    interrupts.catch_signals()
    try:
        interrupts.shutting_down()
        signal.raise_signal(signal.SIGINT)
        with interrupts.deferred():
            signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
        interrupts.check()
        assert interrupts.received() == signal.SIGINT
    finally:
        interrupts.restore_signals()
    assert interrupts.received() is None and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_without_catch_signals_nothing_changes():
    """A library user's program: Python's own handler raises at once, and shutting_down() leaves it so."""
    interrupts.shutting_down()
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)
    interrupts.check()
    with interrupts.deferred():
        pass
    assert interrupts.received() is None


def test_catching_twice_restores_the_original_handlers():
    interrupts.catch_signals()
    interrupts.catch_signals()
    interrupts.restore_signals()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_the_stopping_loader_is_its_loader_otherwise():
    class Loader(list):
        epoch = 7

    loader = interrupts.StopOnSignal(Loader([1, 2, 3]))
    assert len(loader) == 3 and loader.epoch == 7 and list(loader) == [1, 2, 3]


class _RaisesWhenCollected:
    def __init__(self, error):
        self.error = error

    def __del__(self):
        raise self.error


@pytest.mark.parametrize("signalled", [False, True], ids=["no-signal", "after-a-signal"])
def test_other_unraisable_exceptions_are_still_reported(monkeypatch, signalled):
    """Only a KeyboardInterrupt that stands for a recorded signal is kept quiet; the hook is given back."""
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: reported.append(unraisable.exc_type))
    previous = sys.unraisablehook
    interrupts.catch_signals()
    try:
        if signalled:
            with interrupts.deferred():
                signal.raise_signal(signal.SIGINT)
        with interrupts.quiet_unraisable():
            _RaisesWhenCollected(ValueError("a real problem"))
            _RaisesWhenCollected(KeyboardInterrupt())
        assert sys.unraisablehook is previous
    finally:
        interrupts.restore_signals()
    assert reported == ([ValueError] if signalled else [ValueError, KeyboardInterrupt])


def test_import_whole_finishes_the_import_then_stops(monkeypatch):
    imported = []

    def import_module(name):
        signal.raise_signal(signal.SIGINT)  # during the import: recorded only
        imported.append(name)

    monkeypatch.setattr(interrupts.importlib, "import_module", import_module)
    interrupts.catch_signals()
    try:
        with pytest.raises(KeyboardInterrupt):
            interrupts.import_whole("json", "csv")
        assert imported == ["json", "csv"]
    finally:
        interrupts.restore_signals()
