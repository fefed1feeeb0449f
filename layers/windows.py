"""Helpers shared by the sliding-window layers (Conv2D, MaxPool2D)."""
from __future__ import annotations


def pair(value, name: str, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints as ``(height, width)``, each at least ``minimum``."""
    values = (value, value) if isinstance(value, int) else tuple(value)
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values):
        raise ValueError(f"{name} must be an int or a pair of ints ≥ {minimum}, got {value!r}")
    return values


def output_size(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    """Window positions along one axis: ``(size + 2·padding - kernel) // stride + 1``."""
    return (size + 2 * padding - kernel) // stride + 1


def window_slices(kernel_size, stride, out_h: int, out_w: int):
    """For each kernel position (i, j): the row and column slices it reads.

    ``x[..., rows, columns]`` has shape (..., out_h, out_w): element (oh, ow) is
    ``x[..., sh·oh + i, sw·ow + j]``.
    """
    (kh, kw), (sh, sw) = kernel_size, stride
    for i in range(kh):
        for j in range(kw):
            yield i, j, slice(i, i + sh * (out_h - 1) + 1, sh), slice(j, j + sw * (out_w - 1) + 1, sw)


def zero_pad(xp, x, padding: tuple[int, int]):
    """(N, C, H, W) zero-padded by ``padding`` on both sides of the last two axes (there is no xp.pad)."""
    ph, pw = padding
    n, c, h, w = x.shape
    padded = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    padded[:, :, ph:ph + h, pw:pw + w] = x
    return padded
