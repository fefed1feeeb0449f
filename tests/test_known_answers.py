"""Known answers: the device's random numbers against values computed elsewhere, not by the module itself.

A test that computes its expected numbers with backends/random.py's own ``mix64`` passes
whatever constant that function holds. These tests compare with numbers the module did
not make:

* SplitMix64's published outputs (the task "Pseudo-random numbers/Splitmix64" on Rosetta
  Code, whose algorithm and constants are those of Vigna's reference splitmix64.c,
  https://prng.di.unimi.it/splitmix64.c): the first five outputs for the seed 1234567.
  Every dropout mask, augmentation shift and uniform float is derived from these words by
  a plain formula, written out here.
* One dropout mask and one augmentation shift pattern, pinned. They depend on how keys
  are derived (``derive_key``) and on the streams each user of the generator picks.
  **If a change alters them on purpose, update the pinned values here and say so in the
  change**: every saved run's masks and shifts change with them, so resumed runs of old
  checkpoints no longer continue as they would have.
"""
from __future__ import annotations

import numpy as np
import pytest

from backends.random import derive_key, device_random, mix64

SEED = 1234567
# Rosetta Code, "Pseudo-random numbers/Splitmix64": the first five integers for the seed 1234567.
PUBLISHED = [6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431,
             16408922859458223821]


def test_the_generator_gives_splitmix64s_published_outputs(backend):
    """A stream keyed ``k`` gives SplitMix64's outputs for the seed ``k``, on every backend."""
    bits = backend.to_numpy(device_random(backend).bits(SEED, (5,)))
    assert bits.dtype == np.uint64
    assert [int(b) for b in bits] == PUBLISHED
    assert [int(b) for b in backend.to_numpy(device_random(backend).bits(SEED, (1, 2)))[0]] == PUBLISHED[:2]


def splitmix64(seed: int, n: int) -> list[int]:
    """SplitMix64 as published (Rosetta Code's pseudocode), written out here: the first ``n`` outputs."""
    mask, outputs = 2**64 - 1, []
    for _ in range(n):
        seed = (seed + 0x9E3779B97F4A7C15) & mask
        z = seed
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        outputs.append(z ^ (z >> 31))
    return outputs


def test_the_keys_at_both_ends_and_the_word_zero(backend):
    """Keys 0 and 2^63 - 1 (the range derive_key gives) draw SplitMix64's outputs; 2^63 is refused.
    The key -γ mod 2^64 makes the first word 0: kept by a mask at p = 0 (bits >= threshold 0)."""
    assert splitmix64(SEED, 5) == PUBLISHED  # the reference above, checked against the published outputs
    rng = device_random(backend)
    for key in (0, 2**63 - 1):
        assert [int(b) for b in backend.to_numpy(rng.bits(key, (3,)))] == splitmix64(key, 3), key
    for key in (2**63, -1):
        with pytest.raises(ValueError, match=rf"^a key must be an integer in \[0, 2\^63\), got {key}; make one with derive_key$"):
            rng.bits(key, (3,))
    zero_first = 2**64 - 0x9E3779B97F4A7C15
    assert int(backend.to_numpy(rng.bits(zero_first, (2,)))[0]) == 0
    assert backend.to_numpy(rng.keep_mask(zero_first, (2,), 0.0, backend.xp.float32)).tolist() == [1.0, 1.0]


def test_one_generator_per_backend():
    from backends import get_backend

    cpu = get_backend("cpu")
    assert device_random(cpu) is device_random(cpu)


def test_the_host_mixer_is_splitmix64s_finaliser():
    """``mix64(seed + n·γ)`` is the n-th output, γ = 0x9E3779B97F4A7C15 as published."""
    gamma = 0x9E3779B97F4A7C15
    assert [mix64(SEED + n * gamma) for n in range(1, 6)] == PUBLISHED
    assert mix64(SEED + gamma + 2**64) == PUBLISHED[0]  # the input is taken mod 2^64


def test_every_kind_of_draw_is_its_formula_of_the_published_words(backend):
    """Uniform floats are the top 53 (float64) or 24 (float32) bits times 2^-t; integers the
    words mod ``high``; the dropout mask keeps the words >= p·2^64, scaled by 1/(1 - p)."""
    xp, rng = backend.xp, device_random(backend)
    uniform64 = backend.to_numpy(rng.uniform(SEED, (5,), xp.float64))
    assert uniform64.tolist() == [(word >> 11) * 2.0**-53 for word in PUBLISHED]
    uniform32 = backend.to_numpy(rng.uniform(SEED, (5,), xp.float32))
    assert uniform32.dtype == np.float32 and uniform32.tolist() == [(word >> 40) * 2.0**-24 for word in PUBLISHED]
    assert backend.to_numpy(rng.integers(SEED, (5,), 7)).tolist() == [word % 7 for word in PUBLISHED]
    for p in (0.3, 0.5):
        mask = backend.to_numpy(rng.keep_mask(SEED, (5,), p, xp.float32))
        expected = [np.float32(1 / (1 - p)) if word >= int(p * 2.0**64) else 0.0 for word in PUBLISHED]
        assert mask.dtype == np.float32 and mask.tolist() == expected, p


# -- pinned: a deliberate change of key derivation or streams must update these -----------------
def test_pinned_keys():
    """derive_key(seed, words...) folds each word in as one SplitMix64 step; these are its values today."""
    assert derive_key(0) == 0  # mix64(0) = 0
    assert derive_key(7, 1, 2) == 8891371613472784619
    assert derive_key(2**64 + 7, 1, 2) == derive_key(7, 1, 2)  # every word is taken mod 2^64
    assert derive_key(SEED) == mix64(SEED) & (2**63 - 1)


def test_pinned_dropout_masks(backend):
    """Dropout(0.5, seed=3, stream=1): its first two masks on a (2, 8) input (1 = kept)."""
    from layers import Dropout

    layer = Dropout(0.5, seed=3, stream=1).to(backend, "float32")
    x = backend.asarray(np.ones((2, 8), np.float32))
    masks = [(backend.to_numpy(layer.forward(x)) != 0).astype(int).tolist() for _ in range(2)]
    assert masks == [[[0, 1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 0, 0, 0, 0, 1]],
                     [[1, 1, 0, 1, 1, 0, 1, 0], [0, 0, 0, 1, 0, 0, 0, 0]]]


def test_pinned_augmentation_shifts(backend):
    """RandomShift(3, seed=0): the (row, column) shifts of the 6 images of epoch 1, batch 2."""
    from training.data.augment import RandomShift

    rows, columns = RandomShift(3, seed=0).shifts(backend, 6, (1, 2))
    assert rows.tolist() == [-3, -3, -3, -1, -1, -1]
    assert columns.tolist() == [3, 1, 1, -3, 3, -2]
