"""The device's counter-based random numbers (backends/random.py): the formula, the same bits on
every backend, reproducible for a key, independent across keys, and roughly the right distributions."""
from __future__ import annotations

import numpy as np
import pytest

from backends.counting import count_operations
from backends.random import GAMMA, KEY_MASK, derive_key, device_random, mix64


def test_bits_are_splitmix64_with_random_access(backend):
    """bits[i] = mix64(key + (i+1)·γ): SplitMix64's (i+1)-th output for the seed ``key``."""
    key = derive_key(7, 3, 11)
    bits = backend.to_numpy(device_random(backend).bits(key, (2, 5)))
    state, expected = key, []
    for _ in range(10):  # SplitMix64 as a sequential generator
        state = (state + GAMMA) % 2**64
        expected.append(mix64(state))
    assert bits.dtype == np.uint64 and bits.shape == (2, 5)
    assert [int(b) for b in bits.reshape(-1)] == expected


def test_every_backend_draws_the_same_numbers(backend):
    from backends import get_backend

    cpu = get_backend("cpu")
    key = derive_key(0, 1, 2)
    for draw in (lambda r: r.bits(key, (3, 7)), lambda r: r.integers(key, (50,), 7),
                 lambda r: r.keep_mask(key, (4, 9), 0.3, r.backend.xp.float64),
                 lambda r: r.uniform(key, (40,), r.backend.xp.float32)):
        np.testing.assert_array_equal(backend.to_numpy(draw(device_random(backend))), cpu.to_numpy(draw(device_random(cpu))))


def test_keys_depend_on_every_word_and_its_position():
    keys = {derive_key(0), derive_key(1), derive_key(0, 0), derive_key(0, 1), derive_key(0, 1, 2), derive_key(0, 2, 1),
            derive_key(1, 0, 0), derive_key(0, 0, 1)}
    assert len(keys) == 8 and all(0 <= k <= KEY_MASK for k in keys)
    assert derive_key(5, 1, 2) == derive_key(5, 1, 2)


def test_draws_with_neighbouring_keys_are_uncorrelated():
    from backends import get_backend

    rng = device_random(get_backend("cpu"))
    a = rng.uniform(derive_key(0, 1, 0), (20000,), np.float64)
    b = rng.uniform(derive_key(0, 1, 1), (20000,), np.float64)
    shifted = rng.uniform(derive_key(0, 1, 0), (20001,), np.float64)[1:]  # a's draw one element on
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.03
    assert abs(np.corrcoef(a, shifted)[0, 1]) < 0.03
    assert not np.array_equal(rng.keep_mask(derive_key(0, 1, 0), (100,), 0.5, np.float32),
                              rng.keep_mask(derive_key(0, 1, 1), (100,), 0.5, np.float32))


def test_distributions():
    """Uniform floats fill [0, 1) evenly; integers hit each value evenly; the mask keeps 1 - p."""
    from backends import get_backend

    rng = device_random(get_backend("cpu"))
    n = 100_000
    for dtype in (np.float32, np.float64):
        u = rng.uniform(derive_key(1), (n,), dtype)
        assert u.dtype == dtype and 0.0 <= u.min() and u.max() < 1.0
        counts = np.bincount((u * 20).astype(int), minlength=20)
        chi2 = float(((counts - n / 20) ** 2 / (n / 20)).sum())
        assert chi2 < 45, chi2  # 19 degrees of freedom: P(chi2 > 45) < 0.1 %
    values = rng.integers(derive_key(2), (n,), 7)
    assert values.dtype == np.int64 and values.min() == 0 and values.max() == 6
    counts = np.bincount(values, minlength=7)
    assert float(((counts - n / 7) ** 2 / (n / 7)).sum()) < 25  # 6 degrees of freedom
    for p in (0.0, 0.1, 0.5, 0.9):
        mask = rng.keep_mask(derive_key(3), (n,), p, np.float32)
        kept = mask != 0
        assert set(np.unique(mask)) <= {0.0, np.float32(1 / (1 - p))}
        assert abs(kept.mean() - (1 - p)) < 4 * np.sqrt(p * (1 - p) / n) + 1e-12


def test_a_draw_is_two_operations_and_no_transfer():
    """On a GPU a draw is the key's one-element fill and one fused kernel (the index table is made once)."""
    from helpers import backend_or_skip

    strict = backend_or_skip("strict")
    rng = device_random(strict)
    rng.keep_mask(derive_key(0), (64, 256), 0.3, strict.xp.float32)
    with count_operations() as counts:
        rng.keep_mask(derive_key(1), (64, 256), 0.3, strict.xp.float32)
    assert (counts.operations, counts.transfers) == (2, 0), counts


def test_bad_keys_are_refused():
    from backends import get_backend

    with pytest.raises(ValueError, match="derive_key"):
        device_random(get_backend("cpu")).bits(-1, (3,))
