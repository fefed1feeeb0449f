"""The training loop's device-side pieces: chunked batch gathering and lazily added tallies.

On a GPU the loop must not cost more launches, or host waits, than the bare step: batches
are gathered and normalised a chunk at a time, and the running loss and accuracy stay on
the device until read. These tests hold each of those to the plain computation.
"""
from __future__ import annotations

import numpy as np
import pytest

from training.data import loader as data_loader
from training.data.loader import DataLoader
from training.tally import CorrectCount, Tally

MEAN, STD = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.3, 0.25])


@pytest.mark.parametrize("chunk_batches", [1, 2, 5])
def test_resident_batches_gathered_in_chunks_equal_the_host_batches(backend, monkeypatch, chunk_batches):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(23, 3, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, size=23)
    monkeypatch.setattr(data_loader, "GATHER_CHUNK_BYTES", chunk_batches * 4 * 4 * 3 * 4 * 4)  # chunk_batches batches of 4
    host = DataLoader(images, labels, 4, backend, MEAN, STD, seed=3, device_resident=False)
    resident = DataLoader(images, labels, 4, backend, MEAN, STD, seed=3, device_resident=True)
    for epoch in (0, 1):
        host.set_epoch(epoch)
        resident.set_epoch(epoch)
        a, b = list(host), list(resident)
        assert len(a) == len(b) == 6
        for (xa, ya), (xb, yb) in zip(a, b):
            np.testing.assert_array_equal(backend.to_numpy(xb), backend.to_numpy(xa))
            np.testing.assert_array_equal(backend.to_numpy(yb), backend.to_numpy(ya))
        order = host.order(epoch)
        expected = (images[order[:4]] / 255.0 - MEAN[:, None, None]) / STD[:, None, None]
        np.testing.assert_allclose(backend.to_numpy(b[0][0]), expected, atol=2e-5)


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
