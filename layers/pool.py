"""MaxPool2D: the maximum of each window."""
from __future__ import annotations

from .base import Layer
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


class MaxPool2D(Layer):
    """``y[n, c, oh, ow] = max_{i,j} x[n, c, s·oh + i, s·ow + j]``.

    Shapes: x (N, C, H, W) → y (N, C, OH, OW), ``OH = (H - kh) // sh + 1`` (likewise OW);
    stride defaults to the kernel size; windows may overlap (stride < kernel).

    Computes ``maxpool_reference`` and ``maxpool_backward_reference``. On the CPU, those
    loops run over parts of the batch in threads. On a launch-bound device, when the
    windows cover the input exactly without overlap (stride = kernel, the usual case), x is viewed as
    (N, C, OH, kh, OW, kw): forward is one reduction over the window axes, backward two
    fused kernels that find each window's first maximum and route dy to it.
    """

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size", minimum=1)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", minimum=1)

    def output_shape(self, input_shape):
        n, c, h, w = input_shape
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        return (n, c, output_size(h, kh, sh), output_size(w, kw, sw))

    def _windows(self, x):
        """x as (N, C, OH, kh, OW, kw) when the windows cover it exactly without overlap (a view); else None."""
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        if not self.backend.launch_bound or (sh, sw) != (kh, kw):
            return None
        n, c, out_h, out_w = self.output_shape(tuple(x.shape))
        if x.shape[2] != out_h * kh or x.shape[3] != out_w * kw:
            return None
        return self.xp.reshape(x, (n, c, out_h, kh, out_w, kw))

    def forward(self, x):
        self._check_input(x, rank=4, expected="(N, C, H, W)")
        kh, kw = self.kernel_size
        if x.shape[2] < kh or x.shape[3] < kw:
            raise ValueError(f"{self!r}: input {tuple(x.shape)} is smaller than the {kh}x{kw} window")
        windows = self._windows(x)
        if windows is not None:
            y = self.xp.max(windows, axis=(3, 5))
        else:
            y = self.xp.empty(self.output_shape(tuple(x.shape)), dtype=x.dtype)
            self.backend.map_slices(
                lambda part: maxpool_reference(self.xp, x[part, ...], self.kernel_size, self.stride, out=y[part, ...]),
                x.shape[0])
        self._cache = (x, windows, y) if self.training else None
        return y

    def backward(self, dy):
        x, windows, y = self._saved()
        if windows is not None:
            return self._backward_windows(windows, y, dy)
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        covered = (sh, sw) == (kh, kw) and x.shape[2] == dy.shape[2] * kh and x.shape[3] == dy.shape[3] * kw
        dx = (self.xp.empty if covered else self.xp.zeros)(x.shape, dtype=dy.dtype)
        self.backend.map_slices(
            lambda part: maxpool_backward_reference(self.xp, x[part, ...], y[part, ...], dy[part, ...],
                                                    self.kernel_size, self.stride, out=dx[part, ...]),
            x.shape[0])
        return dx

    def _backward_windows(self, windows, y, dy):
        xp, backend = self.xp, self.backend
        n, c, out_h, kh, out_w, kw = windows.shape
        # rank of window position (i, j): kh·kw for the first, 1 for the last
        ranks = self._constant(f"ranks-{dy.dtype}", lambda: xp.reshape(xp.arange(kh * kw, 0, -1, dtype=dy.dtype),
                                                                      (1, 1, 1, kh, 1, kw)))
        maxima = xp.reshape(y, (n, c, out_h, 1, out_w, 1))
        best = backend.fuse(first_max_rank)(windows, maxima, ranks)
        dx = backend.fuse(route_to_first_max)(windows, maxima, ranks, xp.reshape(best, (n, c, out_h, 1, out_w, 1)),
                                              xp.reshape(dy, (n, c, out_h, 1, out_w, 1)))
        return xp.reshape(dx, (n, c, out_h * kh, out_w * kw))

    def extra_repr(self) -> str:
        text = f"kernel_size={self.kernel_size}"
        return text if self.stride == self.kernel_size else text + f", stride={self.stride}"
