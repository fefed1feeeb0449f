"""The running loss and accuracy of an epoch (training/tally.py): they stay on the device, added
lazily, until read, and equal the plain computation."""
from __future__ import annotations

import numpy as np
import pytest

from training.loop.tally import CorrectCount, Tally


def test_tally_adds_weighted_values_when_read(backend):
    xp = backend.xp
    tally = Tally(xp)
    values = [(0.5, 64), (0.25, 64), (2.0, 10)]
    for value, weight in values[:2]:
        tally.add(xp.asarray(value, dtype=xp.float32), weight=weight)
    assert tally.total() == pytest.approx(0.5 * 64 + 0.25 * 64, rel=1e-12)
    tally.add(xp.asarray(values[2][0], dtype=xp.float32), weight=values[2][1])
    assert tally.total() == pytest.approx(sum(v * w for v, w in values), rel=1e-12)
    assert tally.total() == pytest.approx(sum(v * w for v, w in values), rel=1e-12)  # reading twice adds nothing


def test_correct_count_counts_matches_over_batches(backend):
    predicted = [np.array([1, 2, 3]), np.array([0, 0]), np.array([5])]
    labels = [np.array([1, 0, 3]), np.array([0, 1]), np.array([5])]
    count = CorrectCount(backend)
    count.add(backend.asarray(predicted[0]), backend.asarray(labels[0]))
    assert count.total() == 2
    for p, y in zip(predicted[1:], labels[1:]):
        count.add(backend.asarray(p), backend.asarray(y))
    assert count.total() == 4 and count.total() == 4
