"""Random numbers made on the device, the same on every backend, with no random state to carry.

The array API has no random module, and drawing on the host and copying the numbers over
would cost a host→device copy per step. So xpnet uses a *counter-based* generator, the
idea behind Philox (cuRAND, PyTorch on CUDA) and Threefry (JAX): the i-th number of a
draw is a pure function of a key and of i,

    bits[i] = mix64(key + (i + 1)·γ)      (uint64 arithmetic, mod 2^64)

with γ = 0x9E3779B97F4A7C15 (2^64 / golden ratio) and ``mix64`` the SplitMix64 finaliser
(three xor-shifts and two multiplications). This is exactly SplitMix64 (Steele, Lea and
Flood, 2014; it passes BigCrush) with random access: a stream seeded with ``key`` gives
``bits[i]`` as its (i+1)-th output. Two draws with different keys overlap only if their
keys differ by a multiple of γ smaller than the draw, which for 63-bit keys derived by
hashing is about as likely as a 64-bit hash collision.

The key of a draw is made on the host from small integers: ``derive_key(seed, stream,
counter...)`` — a model's seed, which layer draws (each Dropout layer has its own stream),
and a counter such as the training step. Because a key is a function of (seed, step),
resuming a run at step s draws exactly what the uninterrupted run drew: there is no
generator state to save beyond the step number.

On the device a draw is one fused kernel (``Backend.fuse``): the element indices times γ
are made once per size and kept, so a draw reads them, adds the key and mixes. Every
constant is a 0-d uint64 array (and the key is written into one, a one-element fill), so
the arithmetic is unsigned 64-bit on NumPy, CuPy and array-api-strict alike, and the
numbers are bit-identical on every backend.

Not for cryptography: for dropout masks and augmentation shifts, where what matters is
that the numbers look independent and are reproducible.
"""
from __future__ import annotations

MASK64 = (1 << 64) - 1
KEY_MASK = (1 << 63) - 1  # keys are kept below 2^63, so every device fills them as a plain integer
GAMMA = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB


def mix64(z: int) -> int:
    """The SplitMix64 finaliser on a Python integer (host side): a bijection of 64-bit words."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    return z ^ (z >> 31)


def derive_key(seed: int, *counters: int) -> int:
    """A 63-bit key for the draw named by ``seed`` and ``counters`` (all integers ≥ 0 or < 0).

    Each word is folded in as one SplitMix64 step: ``key ← mix64(key + (word + 1)·γ)``,
    so (seed, 1, 2) and (seed, 2, 1) give unrelated keys.
    """
    key = mix64(seed & MASK64)
    for word in counters:
        key = mix64(key + ((word & MASK64) + 1) * GAMMA)
    return key & KEY_MASK


def splitmix_bits(xp, base, key, mix1, mix2, s30, s27, s31):
    """``mix64(base + key)`` element-wise on uint64 arrays: one fused kernel on a GPU.

    base: (i + 1)·γ for each element i; key and the constants: 0-d uint64 arrays.
    """
    z = base + key
    z = (z ^ (z >> s30)) * mix1
    z = (z ^ (z >> s27)) * mix2
    return z ^ (z >> s31)


def keep_mask(xp, base, key, mix1, mix2, s30, s27, s31, threshold, scale):
    """Inverted dropout's mask: ``scale`` where bits ≥ threshold (probability 1 - p), else 0.

    ``threshold`` = p·2^64 (uint64), ``scale`` = 1/(1 - p) in the activations' dtype.
    """
    bits = splitmix_bits(xp, base, key, mix1, mix2, s30, s27, s31)
    return xp.astype(bits >= threshold, scale.dtype) * scale


def below(xp, base, key, mix1, mix2, s30, s27, s31, high):
    """Integers uniform in [0, high), as int64 (the modulo bias is below high/2^64)."""
    return xp.astype(splitmix_bits(xp, base, key, mix1, mix2, s30, s27, s31) % high, xp.int64)


def unit_interval(xp, base, key, mix1, mix2, s30, s27, s31, shift, ulp):
    """Floats uniform in [0, 1): the top t bits times 2^-t, t = 53 (float64) or 24 (float32),
    so every value is exact and below 1 (``shift`` = 64 - t, ``ulp`` = 2^-t in the output dtype)."""
    bits = splitmix_bits(xp, base, key, mix1, mix2, s30, s27, s31)
    return xp.astype(bits >> shift, ulp.dtype) * ulp


class DeviceRandom:
    """Counter-based random numbers on one backend's device.

    >>> rng = DeviceRandom(backend)
    >>> mask = rng.keep_mask(derive_key(seed, stream, step), (64, 2048), p=0.3, dtype=xp.float32)

    Each method makes one fused kernel (plus a one-element fill of the key), never reads
    anything back to the host, and gives the same numbers on every backend for the same
    key and shape.
    """

    def __init__(self, backend):
        self.backend = backend
        xp = backend.xp
        u64 = xp.uint64
        self._mixers = tuple(backend.constant(v, u64) for v in (MIX1, MIX2, 30, 27, 31))
        self._gamma = backend.constant(GAMMA, u64)
        self._key = xp.zeros((), dtype=u64)
        self._bases: dict[int, object] = {}

    def _base(self, size: int):
        """(i + 1)·γ mod 2^64 for i < size (made once per size, kept on the device)."""
        base = self._bases.get(size)
        if base is None:
            xp = self.backend.xp
            base = self._bases[size] = (xp.arange(1, size + 1, dtype=xp.uint64)) * self._gamma
        return base

    def _arguments(self, key: int, size: int):
        if not 0 <= key <= KEY_MASK:
            raise ValueError(f"a key must be an integer in [0, 2^63), got {key!r}; make one with derive_key")
        self._key[...] = key  # one fill: the key reaches the kernel without a host→device copy
        return (self._base(size), self._key, *self._mixers)

    def bits(self, key: int, shape: tuple[int, ...]):
        """uint64 words, ``shape``."""
        size = _size(shape)
        bits = self.backend.fuse(splitmix_bits)(*self._arguments(key, size))
        return self.backend.xp.reshape(bits, shape)

    def keep_mask(self, key: int, shape: tuple[int, ...], p: float, dtype):
        """Inverted dropout's mask, ``shape``, of ``dtype``: 1/(1 - p) with probability 1 - p, else 0."""
        backend = self.backend
        threshold = backend.constant(min(int(p * 2.0**64), MASK64), backend.xp.uint64)
        scale = backend.constant(1.0 / (1.0 - p), dtype)
        mask = backend.fuse(keep_mask)(*self._arguments(key, _size(shape)), threshold, scale)
        return backend.xp.reshape(mask, shape)

    def integers(self, key: int, shape: tuple[int, ...], high: int):
        """int64 integers uniform in [0, high), ``shape``."""
        xp = self.backend.xp
        values = self.backend.fuse(below)(*self._arguments(key, _size(shape)), self.backend.constant(high, xp.uint64))
        return xp.reshape(values, shape)

    def uniform(self, key: int, shape: tuple[int, ...], dtype):
        """Floats uniform in [0, 1), ``shape``, of ``dtype``."""
        backend = self.backend
        mantissa = 53 if backend.xp.finfo(dtype).bits == 64 else 24  # bits a float of this dtype holds exactly
        values = backend.fuse(unit_interval)(*self._arguments(key, _size(shape)),
                                             backend.constant(64 - mantissa, backend.xp.uint64),
                                             backend.constant(2.0**-mantissa, dtype))
        return backend.xp.reshape(values, shape)


def _size(shape) -> int:
    size = 1
    for dim in shape:
        size *= int(dim)
    return size


def device_random(backend) -> DeviceRandom:
    """The DeviceRandom of ``backend`` (one per backend, made on first use)."""
    cached = getattr(backend, "_device_random", None)
    if cached is None:
        cached = DeviceRandom(backend)
        try:
            backend._device_random = cached
        except AttributeError:  # pragma: no cover - Backend is a plain dataclass
            pass
    return cached
