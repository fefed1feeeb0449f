"""MaxPool2D: the maximum of each window.

The math is ``maxpool_reference`` and ``maxpool_backward_reference``: a loop over the
kh·kw window positions, each a strided view of the whole batch. Three engines with the
interface of layers/engine.py run it: ``PoolReference`` (the math, ``engine="reference"``),
``ThreadedPool`` (CPU: the same loops over parts of the batch in threads) and
``WindowPool`` (launch-bound: a reduction over a window view, two fused kernels back).
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import Layer
from .engine import Engines
from .windows import output_size, pair, window_slices


def maxpool_reference(xp, x, kernel_size, stride, out=None):
    """``y[n, c, oh, ow] = max_{i,j} x[n, c, sh·oh + i, sw·ow + j]``: the element-wise maximum
    of the kh·kw strided views of x, one per kernel position. Written into ``out`` if given."""
    out_h, out_w = output_size(x.shape[2], kernel_size[0], stride[0]), output_size(x.shape[3], kernel_size[1], stride[1])
    maximum = None
    for _, _, rows, columns in window_slices(kernel_size, stride, out_h, out_w):
        window = x[:, :, rows, columns]
        maximum = window if maximum is None else xp.maximum(maximum, window)
    if out is None:
        return xp.asarray(maximum, copy=True)
    out[...] = maximum
    return out


def maxpool_backward_reference(xp, x, y, dy, kernel_size, stride, out=None):
    """dx: each dy goes to one element of its window, the first that equals the maximum.

    Walking the kernel positions in row-major order, the first one whose value equals the
    maximum takes what is left of dy (as in PyTorch, ties go to the first maximum);
    overlapping windows add up. ``out``: where to write dx; it must hold zeros, unless
    the windows tile x exactly (each element then belongs to exactly one window).
    """
    (kh, kw), (sh, sw) = kernel_size, stride
    out_h, out_w = dy.shape[2], dy.shape[3]
    one_window_each = (sh, sw) == (kh, kw) and x.shape[2] == out_h * kh and x.shape[3] == out_w * kw
    dx = xp.zeros(x.shape, dtype=dy.dtype) if out is None else out
    remaining, last = dy, kh * kw - 1
    for position, (_, _, rows, columns) in enumerate(window_slices(kernel_size, stride, out_h, out_w)):
        if position == last:
            share = remaining  # no earlier position held the maximum, so this one does
        else:
            share = remaining * xp.astype(x[:, :, rows, columns] == y, dy.dtype)
            remaining = remaining - share
        if one_window_each:
            dx[:, :, rows, columns] = share
        else:
            dx[:, :, rows, columns] += share
    return dx


def first_max_rank(xp, windows, maxima, ranks):
    """Per window, the highest rank among the positions that hold its maximum.

    ``ranks`` counts down from kh·kw at the window's first position, so the highest rank
    marks the first maximum (one fused kernel on a GPU, reduction included)."""
    return xp.max(xp.astype(windows == maxima, ranks.dtype) * ranks, axis=(3, 5))


def route_to_first_max(xp, windows, maxima, ranks, best, dy):
    """dy at the position of its window whose rank is the best (``first_max_rank``), 0 elsewhere."""
    rank = xp.astype(windows == maxima, ranks.dtype) * ranks
    return dy * xp.astype((rank == best) & (best > 0), dy.dtype)


@dataclass(frozen=True)
class PoolParams:
    """What every pool engine reads: the window's size and its stride, (height, width) each."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]


def _covered(shape, params: PoolParams) -> bool:
    """Whether the windows cover an input of ``shape`` exactly, without overlap."""
    (kh, kw), (sh, sw) = params.kernel_size, params.stride
    return ((sh, sw) == (kh, kw) and shape[2] == output_size(shape[2], kh, sh) * kh
            and shape[3] == output_size(shape[3], kw, sw) * kw)


class PoolReference:
    """The definition of max-pooling (the engine ``engine="reference"`` runs); saved: (x, y)."""

    @staticmethod
    def forward(xp, x, params: PoolParams, work=None):
        y = maxpool_reference(xp, x, params.kernel_size, params.stride)
        return y, (x, y)

    @staticmethod
    def backward(xp, dy, saved, params: PoolParams, work=None, need_dx=True, out=None):
        x, y = saved
        return maxpool_backward_reference(xp, x, y, dy, params.kernel_size, params.stride), {}


class ThreadedPool:
    """The reference's loops over parts of the batch, in the cpu backend's threads."""

    @staticmethod
    def forward(xp, x, params: PoolParams, work):
        (kh, kw), (sh, sw) = params.kernel_size, params.stride
        y = xp.empty((x.shape[0], x.shape[1], output_size(x.shape[2], kh, sh), output_size(x.shape[3], kw, sw)),
                     dtype=x.dtype)
        work.backend.map_slices(
            lambda part: maxpool_reference(xp, x[part, ...], params.kernel_size, params.stride, out=y[part, ...]),
            x.shape[0])
        return y, (x, y)

    @staticmethod
    def backward(xp, dy, saved, params: PoolParams, work, need_dx=True, out=None):
        x, y = saved
        dx = (xp.empty if _covered(x.shape, params) else xp.zeros)(x.shape, dtype=dy.dtype)
        work.backend.map_slices(
            lambda part: maxpool_backward_reference(xp, x[part, ...], y[part, ...], dy[part, ...],
                                                    params.kernel_size, params.stride, out=dx[part, ...]),
            x.shape[0])
        return dx, {}


class WindowPool:
    """Launch-bound: when the windows cover x exactly (stride = kernel, the usual case), x viewed
    as (N, C, OH, kh, OW, kw); forward is one reduction over the window axes, backward two fused
    kernels that find each window's first maximum and route dy to it. Otherwise ``ThreadedPool``."""

    @staticmethod
    def forward(xp, x, params: PoolParams, work):
        if not _covered(x.shape, params):
            return ThreadedPool.forward(xp, x, params, work)
        (kh, kw), (n, c, h, w) = params.kernel_size, x.shape
        windows = xp.reshape(x, (n, c, h // kh, kh, w // kw, kw))
        y = xp.max(windows, axis=(3, 5))
        return y, (windows, y)

    @staticmethod
    def backward(xp, dy, saved, params: PoolParams, work, need_dx=True, out=None):
        windows, y = saved
        if windows.ndim != 6:
            return ThreadedPool.backward(xp, dy, saved, params, work)
        n, c, out_h, kh, out_w, kw = windows.shape
        fuse = work.backend.fuse
        # rank of window position (i, j): kh·kw for the first, 1 for the last
        ranks = work.constant(f"ranks-{dy.dtype}", lambda: xp.reshape(xp.arange(kh * kw, 0, -1, dtype=dy.dtype),
                                                                      (1, 1, 1, kh, 1, kw)))
        maxima = xp.reshape(y, (n, c, out_h, 1, out_w, 1))
        best = fuse(first_max_rank)(windows, maxima, ranks)
        dx = fuse(route_to_first_max)(windows, maxima, ranks, xp.reshape(best, (n, c, out_h, 1, out_w, 1)),
                                      xp.reshape(dy, (n, c, out_h, 1, out_w, 1)))
        return xp.reshape(dx, (n, c, out_h * kh, out_w * kw)), {}


ENGINES = Engines(reference=PoolReference, cpu=ThreadedPool, launch_bound=WindowPool)


class MaxPool2D(Layer):
    """``y[n, c, oh, ow] = max_{i,j} x[n, c, s·oh + i, s·ow + j]``.

    Shapes: x (N, C, H, W) → y (N, C, OH, OW), ``OH = (H - kh) // sh + 1`` (likewise OW);
    stride defaults to the kernel size; windows may overlap (stride < kernel).

    Computes ``maxpool_reference`` and ``maxpool_backward_reference``, with the engine
    the backend asks for (see the module docstring). The gradient of each window goes
    to its first maximum, as in PyTorch.
    """

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size", minimum=1)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", minimum=1)

    def output_shape(self, input_shape):
        n, c, h, w = input_shape
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        return (n, c, output_size(h, kh, sh), output_size(w, kw, sw))

    def forward(self, x):
        self._check_input(x, rank=4, expected="(N, C, H, W)")
        kh, kw = self.kernel_size
        if x.shape[2] < kh or x.shape[3] < kw:
            raise ValueError(f"{self!r}: input {tuple(x.shape)} is smaller than the {kh}x{kw} window")
        y, saved = ENGINES.pick(self.backend).forward(self.xp, x, PoolParams(self.kernel_size, self.stride), self.work)
        self._cache = saved if self.training else None
        return y

    def backward(self, dy):
        engine = ENGINES.pick(self.backend)
        dx, _ = engine.backward(self.xp, dy, self._saved(), PoolParams(self.kernel_size, self.stride), self.work)
        return dx

    def extra_repr(self) -> str:
        text = f"kernel_size={self.kernel_size}"
        return text if self.stride == self.kernel_size else text + f", stride={self.stride}"
