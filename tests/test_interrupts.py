"""Signal handling (training/interrupts.py): a signal during start-up is recorded and acted on once
start-up may stop, and an interrupt that a finalizer swallowed still stops the next batch. The
signals sent to real runs are in test_faults.py."""
from __future__ import annotations

import signal

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
