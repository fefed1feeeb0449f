"""Running totals of per-step results that stay on the device until they are read.

A training step makes a loss (a 0-d device array) and predicted classes. Adding them into
running totals every step would cost the GPU more launches per step, and reading them
every step would make the host wait for the device. These tallies keep the step results
as they are and add them up only when read, every few steps (for the progress bar) and
at the end of an epoch: a few launches per read instead of a few per step.

>>> loss_sum, correct = Tally(xp), CorrectCount(backend)
>>> loss_sum.add(loss, weight=batch_size)    # no device work
>>> correct.add(xp.argmax(logits, axis=1), labels)
>>> loss_sum.total(), correct.total()        # Σ weight·loss and Σ [predicted == label]
"""
from __future__ import annotations


class Tally:
    """``Σ weight_i · value_i`` over the 0-d device arrays ``value_i`` added, read as a float.

    Weights are host numbers (batch sizes). Values of equal weight are summed on the
    device in one stack and one sum each, in float64, then read back once.
    """

    def __init__(self, xp):
        self.xp = xp
        self._pending: dict[float, list] = {}  # weight → values not yet added up
        self._total = 0.0

    def add(self, value, weight: float = 1.0) -> None:
        self._pending.setdefault(weight, []).append(value)

    def total(self) -> float:
        """The weighted sum so far (reads the device: call it every few steps, not every step)."""
        xp = self.xp
        for weight, values in self._pending.items():
            self._total += weight * float(xp.sum(xp.astype(xp.stack(values), xp.float64)))
        self._pending = {}
        return self._total


def correct_predictions(xp, predicted, labels):
    """How many predicted classes equal the labels, as a 0-d array (one fused kernel)."""
    return xp.sum(xp.astype(predicted == labels, xp.int64))


class CorrectCount:
    """``Σ [predicted == label]`` over the batches added, counted on the device when read."""

    def __init__(self, backend):
        self.backend = backend
        self._predicted, self._labels = [], []
        self._total = 0

    def add(self, predicted, labels) -> None:
        self._predicted.append(predicted)
        self._labels.append(labels)

    def total(self) -> int:
        """The count so far (reads the device: call it every few steps, not every step)."""
        if self._predicted:
            xp = self.backend.xp
            hits = self.backend.fuse(correct_predictions)(xp.concat(self._predicted), xp.concat(self._labels))
            self._total += int(hits)
            self._predicted, self._labels = [], []
        return self._total
