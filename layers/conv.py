"""Conv2D: 2-D convolution (cross-correlation, as in PyTorch).

The math is ``ConvReference`` below: one kernel position at a time, the definition
written with array operations (``conv2d_reference`` and ``conv2d_backward_reference``
call it with plain arguments). The layer runs one of three engines with the interface of
layers/engine.py, chosen by the backend:

* ``ConvReference`` (``engine="reference"``): the math itself;
* layers/conv_rows.py (CPU): row-wise im2col in cache-sized tiles over the cores;
* layers/conv_gather.py (GPU, launch-bound): im2col and col2im as index gathers, the
  whole batch in a handful of operations.

Tests hold both fast engines, on every backend, to the reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import Layer, check_positive
from .conv_gather import GatherConv
from .conv_rows import RowwiseConv
from .engine import Engines
from .init import uniform_fan_in
from .parameter import Parameter
from .windows import output_size, pair, window_slices, zero_pad


@dataclass(frozen=True)
class ConvParams:
    """What every conv engine reads: weight (F, C, kh, kw), bias (F,) or None, stride and padding (pairs)."""

    weight: Any
    bias: Any
    stride: tuple[int, int]
    padding: tuple[int, int]


class ConvReference:
    """The definition of Conv2D, one kernel position at a time (the engine ``engine="reference"`` runs)."""

    @staticmethod
    def forward(xp, x, params: ConvParams, work=None):
        """``y[n, f, oh, ow] = b[f] + Σ_{c,i,j} W[f, c, i, j] · x_pad[n, c, sh·oh + i, sw·ow + j]``.

        x (N, C, H, W) → y (N, F, OH, OW); saved: x. For each kernel position (i, j),
        the inputs it sees form a strided view (N, C, OH, OW) of the padded input, and
        their contribution is a sum over C with W[:, :, i, j].
        """
        weight, stride, padding = params.weight, params.stride, params.padding
        f, _, kh, kw = weight.shape
        x_pad = zero_pad(xp, x, padding)
        out_h, out_w = output_size(x.shape[2], kh, stride[0], padding[0]), output_size(x.shape[3], kw, stride[1], padding[1])
        y = xp.zeros((x.shape[0], out_h, out_w, f), dtype=x.dtype)
        for i, j, rows, columns in window_slices((kh, kw), stride, out_h, out_w):
            y += xp.tensordot(x_pad[:, :, rows, columns], weight[:, :, i, j], axes=([1], [1]))  # (N, OH, OW, F)
        y = xp.permute_dims(y, (0, 3, 1, 2))
        return (y if params.bias is None else y + xp.reshape(params.bias, (1, f, 1, 1))), x

    @staticmethod
    def backward(xp, dy, x, params: ConvParams, work=None, need_dx=True, out=None):
        """dx and {weight: dW, bias: db} for dL/dy = dy (N, F, OH, OW).

        Each kernel position (i, j) read the strided view ``x_pad[:, :, rows, columns]``, so:
        ``dW[:, :, i, j] = Σ_{n,oh,ow} dy ⊗ view``, ``dview += Σ_f dy · W[:, :, i, j]`` (the
        views of different positions overlap, so their gradients add up in dx_pad), and
        ``db = Σ_{n,oh,ow} dy``. dx is dx_pad without its border.
        """
        weight, (ph, pw) = params.weight, params.padding
        _, c, kh, kw = weight.shape
        n, _, h, w = x.shape
        x_pad = zero_pad(xp, x, params.padding)
        dx_pad = xp.zeros(x_pad.shape, dtype=dy.dtype)
        dw = xp.zeros(weight.shape, dtype=dy.dtype)
        for i, j, rows, columns in window_slices((kh, kw), params.stride, dy.shape[2], dy.shape[3]):
            dw[:, :, i, j] = xp.tensordot(dy, x_pad[:, :, rows, columns], axes=([0, 2, 3], [0, 2, 3]))
            dx_pad[:, :, rows, columns] += xp.permute_dims(xp.tensordot(dy, weight[:, :, i, j], axes=([1], [0])),
                                                           (0, 3, 1, 2))
        grads = {"weight": dw}
        if params.bias is not None:
            grads["bias"] = xp.sum(dy, axis=(0, 2, 3))
        return (dx_pad[:, :, ph:ph + h, pw:pw + w] if need_dx else None), grads


ENGINES = Engines(reference=ConvReference, cpu=RowwiseConv, launch_bound=GatherConv)


def conv2d_reference(xp, x, weight, bias, stride, padding):
    """``ConvReference.forward`` with plain arguments: y (N, F, OH, OW)."""
    return ConvReference.forward(xp, x, ConvParams(weight, bias, stride, padding))[0]


def conv2d_backward_reference(xp, x, weight, dy, stride, padding):
    """``ConvReference.backward`` with plain arguments: (dx, dW, db)."""
    dx, grads = ConvReference.backward(xp, dy, x, ConvParams(weight, weight[:, 0, 0, 0], stride, padding))
    return dx, grads["weight"], grads["bias"]


class Conv2D(Layer):
    """``y[n, f] = b[f] + Σ_c Σ_ij W[f, c, i, j] · x_pad[n, c, s·oh + i, s·ow + j]``.

    Shapes: x (N, C, H, W) → y (N, F, OH, OW) with ``OH = (H + 2·ph - kh) // sh + 1``
    (likewise OW); weight (F, C, kh, kw), bias (F,), as in torch.nn.Conv2d.

    Forward and backward run ``ConvReference``, or the engine that computes the same
    faster on the backend (see the module docstring).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True, rng=None):
        super().__init__()
        check_positive(in_channels=in_channels, out_channels=out_channels)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = pair(kernel_size, "kernel_size", minimum=1)
        self.stride = pair(stride, "stride", minimum=1)
        self.padding = pair(padding, "padding", minimum=0)
        kh, kw = self.kernel_size
        fan_in = in_channels * kh * kw
        self.weight = Parameter(self.backend.asarray(uniform_fan_in(rng, (out_channels, in_channels, kh, kw), fan_in)))
        self.bias = Parameter(self.backend.asarray(uniform_fan_in(rng, (out_channels,), fan_in))) if bias else None

    def output_shape(self, input_shape):
        n, _, h, w = input_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (n, self.out_channels, output_size(h, kh, sh, ph), output_size(w, kw, sw, pw))

    def forward(self, x):
        self._check_input(x, rank=4, expected=f"(N, {self.in_channels}, H, W)")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{self!r} expects input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        self._check_param_dtype(x)
        h, w = x.shape[2], x.shape[3]
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ValueError(f"{self!r}: input {h}x{w} with padding {self.padding} is smaller than the kernel {kh}x{kw}")
        y, saved = ENGINES.pick(self.backend).forward(self.xp, x, self._params(), self.work)
        self._cache = saved if self.training else None
        return y

    def backward(self, dy):
        return self._engine_backward(ENGINES, dy, need_dx=True)

    def backward_params(self, dy) -> None:
        self._engine_backward(ENGINES, dy, need_dx=False)

    def _params(self) -> ConvParams:
        return ConvParams(self.weight.data, None if self.bias is None else self.bias.data, self.stride, self.padding)

    def extra_repr(self) -> str:
        text = f"{self.in_channels}→{self.out_channels}, kernel_size={self.kernel_size}"
        if self.stride != (1, 1):
            text += f", stride={self.stride}"
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        return text + ("" if self.bias is not None else ", bias=False")
