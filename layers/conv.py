"""Conv2D: 2-D convolution (cross-correlation, as in PyTorch) by im2col + matmul."""
from __future__ import annotations

from .base import Layer
from .init import uniform_fan_in
from .linear import _check_positive
from .parameter import Parameter
from .windows import pad_images, pair, window_slices


class Conv2D(Layer):
    """``y[n, f] = b[f] + Σ_c Σ_ij W[f, c, i, j] · x_pad[n, c, s·oh + i, s·ow + j]``.

    Shapes: x (N, C, H, W) → y (N, F, OH, OW) with ``OH = (H + 2·ph - kh) // sh + 1``
    (likewise OW); weight (F, C, kh, kw), bias (F,), as in torch.nn.Conv2d.

    im2col: the kh·kw shifted, strided views of the padded input are copied into
    ``cols`` (N, C·kh·kw, OH·OW), so the convolution is one batched matmul
    ``W2 @ cols`` with W2 = weight reshaped (F, C·kh·kw). Backward:
    ``dW2 = Σ_n dy_n @ cols_nᵀ``, ``db = Σ dy``, ``dcols = W2ᵀ @ dy``, and col2im adds
    each kernel position's slice of dcols back onto dx.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True, rng=None):
        super().__init__()
        _check_positive(in_channels=in_channels, out_channels=out_channels)
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
        return (n, self.out_channels, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)

    def forward(self, x):
        xp = self.xp
        self._check_input(x, rank=4, expected=f"(N, {self.in_channels}, H, W)")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{self!r} expects input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        self._check_param_dtype(x)
        n, c, h, w = x.shape
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ValueError(f"{self!r}: input {h}x{w} with padding {self.padding} is smaller than the kernel {kh}x{kw}")
        _, f, oh, ow = self.output_shape(tuple(x.shape))

        k = c * kh * kw
        weight = xp.reshape(self.weight.data, (f, k))
        cols = self._scratch("cols", (n, c, kh, kw, oh, ow), x.dtype)  # kept for backward
        y = xp.empty((n, f, oh * ow), dtype=x.dtype)

        def im2col_and_multiply(part):
            padded = pad_images(xp, x[part, ...], self.padding)
            for i, j, rows, columns in window_slices(self.kernel_size, self.stride, oh, ow):
                cols[part, :, i, j, :, :] = padded[:, :, rows, columns]
            y[part, ...] = xp.matmul(weight, xp.reshape(cols[part, ...], (-1, k, oh * ow)))  # (n, F, OH·OW)

        self.backend.map_slices(im2col_and_multiply, n)
        if self.bias is not None:
            y += self.bias.data[:, None]
        self._cache = (xp.reshape(cols, (n, k, oh * ow)), tuple(x.shape)) if self.training else None
        return xp.reshape(y, (n, f, oh, ow))

    def backward_params(self, dy) -> None:
        xp = self.xp
        cols, _ = self._saved()
        n, f = dy.shape[0], self.out_channels
        dy = xp.reshape(dy, (n, f, -1))
        # Σ_n dy_n @ cols_nᵀ as one batched matmul and a sum: tensordot over (n, p) would
        # first copy cols into a transposed layout, which costs 7x more here.
        partial_sums = self.backend.map_slices(lambda part: xp.sum(xp.matmul(dy[part, ...], cols[part, ...].mT), axis=0), n)
        grad = partial_sums[0]
        for partial in partial_sums[1:]:
            grad = grad + partial  # (F, C·kh·kw)
        self.weight.grad = xp.reshape(grad, self.weight.shape)
        if self.bias is not None:
            self.bias.grad = xp.sum(dy, axis=(0, 2))

    def backward(self, dy):
        xp = self.xp
        self.backward_params(dy)
        _, (n, c, h, w) = self._saved()
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        f, oh, ow = dy.shape[1], dy.shape[2], dy.shape[3]
        weight = xp.reshape(self.weight.data, (f, c * kh * kw))
        dy = xp.reshape(dy, (n, f, oh * ow))
        dpadded = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dy.dtype)

        def multiply_and_col2im(part):
            dcols = xp.reshape(xp.matmul(weight.mT, dy[part, ...]), (-1, c, kh, kw, oh, ow))
            # Within one kernel position the strided slice touches each element once, so
            # "+=" on the slice is an exact scatter-add.
            for i, j, rows, columns in window_slices(self.kernel_size, self.stride, oh, ow):
                dpadded[part, :, rows, columns] += dcols[:, :, i, j, :, :]

        self.backend.map_slices(multiply_and_col2im, n)
        return dpadded[:, :, ph:ph + h, pw:pw + w]

    def extra_repr(self) -> str:
        text = f"{self.in_channels}→{self.out_channels}, kernel_size={self.kernel_size}"
        if self.stride != (1, 1):
            text += f", stride={self.stride}"
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        return text + ("" if self.bias is not None else ", bias=False")
