"""MaxPool2D: the maximum of each window."""
from __future__ import annotations

from .base import Layer
from .windows import pair, window_slices


class MaxPool2D(Layer):
    """``y[n, c, oh, ow] = max_{i,j} x[n, c, s·oh + i, s·ow + j]``.

    Shapes: x (N, C, H, W) → y (N, C, OH, OW), ``OH = (H - kh) // sh + 1`` (likewise OW);
    stride defaults to the kernel size; windows may overlap (stride < kernel).

    Forward keeps, for each output, which kernel position held the maximum (the first
    one in row-major window order when several are equal, as in PyTorch). Backward sends
    each dy to that one input element; overlapping windows add up.
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
        best = None
        for i, j, rows, columns in window_slices(self.kernel_size, self.stride, oh, ow):
            window = x[:, :, rows, columns]
            position = xp.asarray(i * kw + j, dtype=xp.int8 if kh * kw < 128 else xp.int32)
            if best is None:
                best, argmax = window, xp.zeros(window.shape, dtype=position.dtype)
                continue
            larger = window > best  # strictly larger: ties keep the first maximum
            best = xp.where(larger, window, best)
            argmax = xp.where(larger, position, argmax)
        if best is x or kh * kw == 1:
            best = xp.asarray(best, copy=True)
        self._cache = (argmax, tuple(x.shape)) if self.training else None
        return best

    def backward(self, dy):
        xp = self.xp
        argmax, shape = self._saved()
        _, kw = self.kernel_size
        oh, ow = dy.shape[2], dy.shape[3]
        dx = xp.zeros(shape, dtype=dy.dtype)
        zeros = xp.zeros_like(dy)
        for i, j, rows, columns in window_slices(self.kernel_size, self.stride, oh, ow):
            position = xp.asarray(i * kw + j, dtype=argmax.dtype)
            dx[:, :, rows, columns] += xp.where(argmax == position, dy, zeros)
        return dx

    def extra_repr(self) -> str:
        text = f"kernel_size={self.kernel_size}"
        return text if self.stride == self.kernel_size else text + f", stride={self.stride}"
