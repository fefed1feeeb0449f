"""MaxPool2D: the maximum of each window."""
from __future__ import annotations

from .base import Layer
from .windows import pair, window_slices


class MaxPool2D(Layer):
    """``y[n, c, oh, ow] = max_{i,j} x[n, c, s·oh + i, s·ow + j]``.

    Shapes: x (N, C, H, W) → y (N, C, OH, OW), ``OH = (H - kh) // sh + 1`` (likewise OW);
    stride defaults to the kernel size; windows may overlap (stride < kernel).

    Forward takes the element-wise maximum of the kh·kw strided views of x (one view per
    kernel position). Backward sends each dy to one input element: walking the kernel
    positions in row-major order, the first one whose value equals the maximum takes
    what is left of dy (as in PyTorch, ties go to the first maximum); overlapping
    windows add up.
    """

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size", minimum=1)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", minimum=1)

    def output_shape(self, input_shape):
        n, c, h, w = input_shape
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        return (n, c, (h - kh) // sh + 1, (w - kw) // sw + 1)

    def forward(self, x):
        xp = self.xp
        self._check_input(x, rank=4, expected="(N, C, H, W)")
        kh, kw = self.kernel_size
        if x.shape[2] < kh or x.shape[3] < kw:
            raise ValueError(f"{self!r}: input {tuple(x.shape)} is smaller than the {kh}x{kw} window")
        _, _, oh, ow = self.output_shape(tuple(x.shape))
        best = xp.empty((x.shape[0], x.shape[1], oh, ow), dtype=x.dtype)

        def pool(part):
            maximum = None
            for _, _, rows, columns in window_slices(self.kernel_size, self.stride, oh, ow):
                window = x[part, :, rows, columns]
                maximum = window if maximum is None else xp.maximum(maximum, window)
            best[part, ...] = maximum

        self.backend.map_slices(pool, x.shape[0])
        self._cache = (x, best) if self.training else None
        return best

    def backward(self, dy):
        xp = self.xp
        x, best = self._saved()
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        oh, ow = dy.shape[2], dy.shape[3]
        # Without overlap, every input element is written at most once: plain assignment
        # into an uninitialised array, unless some rows/columns belong to no window.
        tiles = (sh, sw) == (kh, kw)
        covers_all = tiles and x.shape[2] == oh * kh and x.shape[3] == ow * kw
        dx = xp.empty(x.shape, dtype=dy.dtype) if covers_all else xp.zeros(x.shape, dtype=dy.dtype)
        last = kh * kw - 1

        def route(part):
            remaining = dy[part, ...]
            for position, (_, _, rows, columns) in enumerate(window_slices(self.kernel_size, self.stride, oh, ow)):
                if position == last:
                    share = remaining  # no earlier position held the maximum, so this one does
                else:
                    # 1 where this position is the maximum; multiplying is faster than where()
                    hit = xp.astype(x[part, :, rows, columns] == best[part, ...], dy.dtype)
                    share = remaining * hit
                    remaining = remaining - share
                if tiles:
                    dx[part, :, rows, columns] = share
                else:
                    dx[part, :, rows, columns] += share

        self.backend.map_slices(route, x.shape[0])
        return dx

    def extra_repr(self) -> str:
        text = f"kernel_size={self.kernel_size}"
        return text if self.stride == self.kernel_size else text + f", stride={self.stride}"
