"""Conv2D: 2-D convolution (cross-correlation, as in PyTorch) by im2col + matmul."""
from __future__ import annotations

from dataclasses import dataclass

from .base import Layer
from .init import uniform_fan_in
from .linear import _check_positive
from .parameter import Parameter
from .windows import pair


@dataclass(frozen=True)
class _Geometry:
    """Where each kernel position reads in the flattened, padded input.

    Each padded image is stored row after row in a flat array whose rows are ``row``
    elements long (the padded width, rounded up to a multiple of the column stride).
    Output pixel (oh, ow) with kernel position (i, j) reads flat element
    ``(sh·oh + i)·row + (sw·ow + j)``. Numbering the outputs ``m = oh·pitch + ow`` with
    ``pitch = sh·row / sw`` turns this into ``offset(i, j) + sw·m``: for every kernel
    position, the whole image's window is one evenly spaced run of the flat array
    (contiguous when sw = 1), so im2col and col2im copy long runs instead of short rows.
    Outputs with ow ≥ OW are "wide" extras that read past the row end; they are computed
    and ignored (their gradient is zero). With stride 1 that is (kw - 1) extra columns
    per row; with stride sh > 1 about sh times the outputs.
    """

    out_h: int
    out_w: int
    row: int  # elements per padded row in the flat input
    pitch: int  # wide outputs per output row
    rows: int  # rows per channel in the flat input: the padded image and, if needed, zero rows after it
    offsets: tuple  # (i, j, offset) for every kernel position, row-major

    @property
    def length(self) -> int:
        """Wide outputs per channel: ``out_h · pitch``."""
        return self.out_h * self.pitch


class Conv2D(Layer):
    """``y[n, f] = b[f] + Σ_c Σ_ij W[f, c, i, j] · x_pad[n, c, s·oh + i, s·ow + j]``.

    Shapes: x (N, C, H, W) → y (N, F, OH, OW) with ``OH = (H + 2·ph - kh) // sh + 1``
    (likewise OW); weight (F, C, kh, kw), bias (F,), as in torch.nn.Conv2d.

    im2col: the kh·kw windows of the padded input are copied into ``cols``
    (n, C·kh·kw, L), L = OH·pitch wide output positions (see _Geometry), so the
    convolution is one batched matmul ``W2 @ cols`` with W2 = weight reshaped
    (F, C·kh·kw). Backward: ``dW2 = Σ_n dy_n @ cols_nᵀ``, ``db = Σ dy``,
    ``dcols = W2ᵀ @ dy``, and col2im adds each kernel position's run of dcols back onto
    dx. The batch is processed in tiles of a few images (``Backend.batch_tile``) so that
    ``cols`` stays in the CPU cache; backward rebuilds each tile's columns from the saved
    padded input instead of keeping the whole matrix (77 MB for LNet's first layer at
    batch 250) in memory.
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

    def _geometry(self, h: int, w: int) -> _Geometry:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        _, _, out_h, out_w = self.output_shape((1, 1, h, w))
        row = -(-(w + 2 * pw) // sw) * sw
        pitch = sh * row // sw
        offsets = tuple((i, j, i * row + j) for i in range(kh) for j in range(kw))
        elements_read = offsets[-1][2] + sw * (out_h * pitch - 1) + 1
        rows = max(h + 2 * ph, -(-elements_read // row))
        return _Geometry(out_h, out_w, row, pitch, rows, offsets)

    def _padded_flat(self, x, geometry: _Geometry):
        """x zero-padded into rows of ``geometry.row``, flattened: (N, C, rows·row)."""
        n, c, h, w = x.shape
        ph, pw = self.padding
        # zeroed when allocated; later calls only overwrite the interior, so the padding stays zero
        padded = self._scratch("padded", (n, c, geometry.rows, geometry.row), x.dtype, zeroed=True)
        padded[:, :, ph:ph + h, pw:pw + w] = x
        return self.xp.reshape(padded, (n, c, geometry.rows * geometry.row))

    def _tile_size(self, geometry: _Geometry, part: slice, dtype) -> int:
        """Images per im2col tile: as many as the backend's cache budget allows."""
        bytes_per_image = self.in_channels * len(geometry.offsets) * geometry.length * (self.xp.finfo(dtype).bits // 8)
        return min(self.backend.batch_tile(bytes_per_image) or part.stop, part.stop - part.start)

    def _column_tiles(self, flat, geometry: _Geometry, part: slice):
        """im2col, tile by tile: yields (tile, cols) with cols (tile size, C·kh·kw, L).

        The columns live in one buffer per thread (per ``part``), overwritten by the next
        tile; on backends that do not tile, the buffer holds the whole batch.
        """
        xp = self.xp
        c, (kh, kw), sw = self.in_channels, self.kernel_size, self.stride[1]
        length = geometry.length
        tile_size = self._tile_size(geometry, part, flat.dtype)
        buffer = self._scratch(f"cols@{part.start}", (tile_size, c, kh, kw, length), flat.dtype)
        for start in range(part.start, part.stop, tile_size):
            tile = slice(start, min(start + tile_size, part.stop))
            cols = buffer[:tile.stop - tile.start, ...]
            for i, j, offset in geometry.offsets:
                cols[:, :, i, j, :] = flat[tile, :, offset:offset + sw * (length - 1) + 1:sw]
            yield tile, xp.reshape(cols, (tile.stop - tile.start, c * kh * kw, length))

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
        geometry = self._geometry(h, w)
        flat = self._padded_flat(x, geometry)
        weight = xp.reshape(self.weight.data, (self.out_channels, -1))
        y = xp.empty((n, self.out_channels, geometry.length), dtype=x.dtype)

        def multiply(part):
            for tile, cols in self._column_tiles(flat, geometry, part):
                y[tile, ...] = xp.matmul(weight, cols)

        self.backend.map_slices(multiply, n)
        if self.bias is not None:
            y += self.bias.data[:, None]
        self._cache = (flat, geometry, tuple(x.shape)) if self.training else None
        y = xp.reshape(y, (n, self.out_channels, geometry.out_h, geometry.pitch))
        return y[:, :, :, :geometry.out_w]

    def backward_params(self, dy) -> None:
        self._backward(dy, input_grad=False)

    def backward(self, dy):
        return self._backward(dy, input_grad=True)

    def _backward(self, dy, input_grad: bool):
        xp = self.xp
        flat, geometry, (n, c, h, w) = self._saved()
        (kh, kw), (ph, pw), sw = self.kernel_size, self.padding, self.stride[1]
        f, length, out_w = self.out_channels, geometry.length, geometry.out_w
        weight = xp.reshape(self.weight.data, (f, c * kh * kw))
        dflat = xp.zeros(flat.shape, dtype=dy.dtype) if input_grad else None

        def multiply(part):
            # dy widened to the L output positions; zero at the wide extras (never written
            # here), which read past the row end and must contribute nothing
            wide = self._scratch(f"dy@{part.start}", (self._tile_size(geometry, part, dy.dtype), f, geometry.out_h,
                                                      geometry.pitch), dy.dtype, zeroed=True)
            grad = None
            for tile, cols in self._column_tiles(flat, geometry, part):
                size = tile.stop - tile.start
                dy_wide = wide[:size, ...]
                dy_wide[:, :, :, :out_w] = dy[tile, ...]
                dy_wide = xp.reshape(dy_wide, (size, f, length))
                # Σ_n dy_n @ cols_nᵀ as a batched matmul and a sum (tensordot over (n, m)
                # would first copy cols into a transposed layout)
                partial = xp.sum(xp.matmul(dy_wide, cols.mT), axis=0)
                grad = partial if grad is None else grad + partial
                if input_grad:
                    dcols = xp.reshape(xp.matmul(weight.mT, dy_wide), (size, c, kh, kw, length))
                    # within one kernel position the run touches each element once, so
                    # "+=" on the slice is an exact scatter-add
                    for i, j, offset in geometry.offsets:
                        dflat[tile, :, offset:offset + sw * (length - 1) + 1:sw] += dcols[:, :, i, j, :]
            return grad

        partial_sums = self.backend.map_slices(multiply, n)
        grad = partial_sums[0]
        for partial in partial_sums[1:]:
            grad = grad + partial  # (F, C·kh·kw)
        self.weight.grad = xp.reshape(grad, self.weight.shape)
        if self.bias is not None:
            self.bias.grad = xp.sum(dy, axis=(0, 2, 3))
        if not input_grad:
            return None
        return xp.reshape(dflat, (n, c, geometry.rows, geometry.row))[:, :, ph:ph + h, pw:pw + w]

    def extra_repr(self) -> str:
        text = f"{self.in_channels}→{self.out_channels}, kernel_size={self.kernel_size}"
        if self.stride != (1, 1):
            text += f", stride={self.stride}"
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        return text + ("" if self.bias is not None else ", bias=False")
