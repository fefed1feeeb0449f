"""The DataLoader in each of its modes yields the right images, not only the right labels:
every batch of a whole pass is compared with the images taken by hand from the documented
order and normalised here."""
from __future__ import annotations

import numpy as np
import pytest

from training.data import DataLoader

MEAN, STD = np.array([0.4, 0.5, 0.6]), np.array([0.25, 0.2, 0.3])
SEED, EPOCH = 3, 2


def distinct_images(n: int):
    """Images that all differ (so a batch of the wrong images cannot match) and their labels."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)  # distinct even where the random bytes might not be
    return images, rng.integers(0, 10, n).astype(np.int64)


@pytest.mark.parametrize("drop_last", [False, True], ids=["keep-last", "drop-last"])
@pytest.mark.parametrize("resident", [False, True], ids=["host-gather", "device-resident"])
@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffled", "in-order"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_batch_holds_the_right_images(backend, shuffle, resident, drop_last, dtype):
    n, size = 11, 4
    images, labels = distinct_images(n)
    loader = DataLoader(images, labels, size, backend, MEAN, STD, shuffle=shuffle, seed=SEED,
                        drop_last=drop_last, device_resident=resident, dtype=dtype)
    loader.set_epoch(EPOCH)
    order = np.random.default_rng([SEED, EPOCH]).permutation(n) if shuffle else np.arange(n)
    batches = [(backend.to_numpy(x), backend.to_numpy(y)) for x, y in loader]
    assert [len(y) for _, y in batches] == ([4, 4] if drop_last else [4, 4, 3])
    for number, (x, y) in enumerate(batches):
        index = order[number * size:(number + 1) * size]
        expected = (images[index] / 255.0 - MEAN[:, None, None]) / STD[:, None, None]
        assert x.dtype == np.dtype(dtype) and x.shape == expected.shape
        np.testing.assert_allclose(x, expected, rtol=0, atol=2e-5 if dtype == "float32" else 1e-12,
                                   err_msg=f"batch {number}")
        np.testing.assert_array_equal(y, labels[index], err_msg=f"batch {number}")
