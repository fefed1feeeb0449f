"""Conv2D on a CPU: row-wise im2col in cache-sized tiles, over the cores.

Computes exactly what ``conv2d_reference`` (layers/conv.py) computes; tests hold it to
that. The math, with shapes, is in docs/math.md ("Conv2D on the CPU").

Row-wise im2col: ``R[(c, j), m]`` holds the input under kernel column j for the span of
positions m, kh times smaller than full im2col. One matmul with the weight as
(kh·F, C·kw) gives every kernel row's partial output ``Z[(i, f), m]``;
``y[f, m] = Σ_i Z[(i, f), m + i·shift]``. Backward stacks dy shifted by each kernel row,
``D[(i, f), m] = dy[f, m - i·shift]``; then ``dW = D @ Rᵀ``, ``dR = W2ᵀ @ D`` and col2im
adds each kernel column's run of dR back onto dx.

The batch goes through in tiles of a few images (``Backend.batch_tile``) so that R, Z and
D stay in the CPU cache, and the tiles of each thread's part of the batch
(``Backend.map_slices``) run in parallel; backward rebuilds each tile's R from the saved
padded input instead of keeping R for the whole batch. R, Z, D and dR live in buffers each
thread keeps between calls: fresh arrays of that size page-fault at every tile.
"""
from __future__ import annotations

from dataclasses import dataclass

from .windows import output_size


@dataclass(frozen=True)
class RowGeometry:
    """Where the kernel reads in the flattened, padded input.

    Each padded image is stored row after row in a flat array whose rows are ``row``
    elements long (the padded width rounded up to a multiple of the column stride sw).
    Number the outputs ``m = oh·pitch + ow`` with ``pitch = sh·row / sw``. Then output m
    with kernel position (i, j) reads flat element ``j + sw·(m + i·shift)``, with
    ``shift = row / sw``: kernel row i is the same read as kernel row 0, ``i·shift``
    outputs later. Outputs with ow ≥ OW are "wide" extras that read past the row end;
    they are computed and ignored (their gradient is zero): (kw - 1) extra columns per
    row at stride 1, about sh times the outputs at row stride sh > 1.
    """

    out_h: int
    out_w: int
    row: int  # elements per padded row in the flat input
    pitch: int  # wide outputs per output row
    shift: int  # outputs between kernel rows i and i + 1
    rows: int  # rows per channel in the flat input: the padded image and, if needed, zero rows after it
    kernel_h: int

    @property
    def length(self) -> int:
        """Wide outputs per channel: ``out_h · pitch``."""
        return self.out_h * self.pitch

    @property
    def span(self) -> int:
        """Positions of the row-wise columns: the outputs plus (kh - 1) kernel-row shifts."""
        return self.length + (self.kernel_h - 1) * self.shift

    @classmethod
    def of(cls, h: int, w: int, kernel_size, stride, padding) -> "RowGeometry":
        (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
        out_h, out_w = output_size(h, kh, sh, ph), output_size(w, kw, sw, pw)
        row = -(-(w + 2 * pw) // sw) * sw
        shift = row // sw
        pitch = sh * shift
        span = out_h * pitch + (kh - 1) * shift
        elements_read = (kw - 1) + sw * (span - 1) + 1
        return cls(out_h, out_w, row, pitch, shift, max(h + 2 * ph, -(-elements_read // row)), kh)


class RowwiseConv:
    """The CPU engine of one Conv2D layer: forward and backward by row-wise im2col in tiles."""

    def __init__(self, layer):
        self.layer = layer
        self._forward_calls = 0
        self._columns_held = {}  # columns buffer name → (buffer id, forward call, tile start, tile stop) it holds

    def _weight_rows(self):
        """The weight as (kh·F, C·kw): row (i, f), column (c, j)."""
        layer = self.layer
        f, c, (kh, kw) = layer.out_channels, layer.in_channels, layer.kernel_size
        return layer.xp.reshape(layer.xp.permute_dims(layer.weight.data, (2, 0, 1, 3)), (kh * f, c * kw))

    def _padded_flat(self, x, geometry: RowGeometry):
        """x zero-padded into rows of ``geometry.row``, flattened: (N, C, rows·row)."""
        n, c, h, w = x.shape
        ph, pw = self.layer.padding
        # zeroed when allocated; later calls only overwrite the interior, so the padding stays zero
        padded = self.layer._scratch("padded", (n, c, geometry.rows, geometry.row), x.dtype, zeroed=True)
        padded[:, :, ph:ph + h, pw:pw + w] = x
        return self.layer.xp.reshape(padded, (n, c, geometry.rows * geometry.row))

    def _tile_size(self, geometry: RowGeometry, part: slice, dtype) -> int:
        """Images per tile: as many as the backend's cache budget allows for R and Z (or D)."""
        layer = self.layer
        (kh, kw), f = layer.kernel_size, layer.out_channels
        elements = (layer.in_channels * kw + kh * f) * geometry.span
        return min(layer.backend.batch_tile(elements * (layer.xp.finfo(dtype).bits // 8)) or part.stop,
                   part.stop - part.start)

    def _padded_rows(self) -> int:
        """Rows of the R buffer: C·kw, plus zero rows up to a multiple of 8 when that adds at most 1/8.

        The weight-gradient matmul (kh·F, span) @ (span, rows) runs about 1.4x faster in
        OpenBLAS with 16 rows than with LNet's first layer's 15; the zero rows give zero
        gradient columns, which are dropped.
        """
        rows = self.layer.in_channels * self.layer.kernel_size[1]
        padded = -(-rows // 8) * 8
        return padded if 8 * (padded - rows) <= rows else rows

    def _column_tiles(self, flat, geometry: RowGeometry, part: slice, forward_call: int):
        """Row-wise im2col, tile by tile: yields (tile, R) with R (tile size, padded rows, span).

        Row c·kw + j of R is input channel c under kernel column j; rows past C·kw are
        zero (``_padded_rows``). R lives in one buffer per thread (per ``part``),
        overwritten by the next tile. A buffer still holding this tile's columns from the
        same forward call (``forward_call``) is used as it is.
        """
        layer = self.layer
        c, kw, sw, span = layer.in_channels, layer.kernel_size[1], layer.stride[1], geometry.span
        name = f"columns@{part.start}"
        shape = (self._tile_size(geometry, part, flat.dtype), self._padded_rows(), span)
        buffer = layer._scratch(name, shape, flat.dtype, zeroed=True)  # the padding rows stay zero
        for start in range(part.start, part.stop, buffer.shape[0]):
            tile = slice(start, min(start + buffer.shape[0], part.stop))
            columns = buffer[:tile.stop - tile.start, ...]
            if self._columns_held.get(name) != (id(buffer), forward_call, tile.start, tile.stop):
                for j in range(kw):
                    columns[:, j:c * kw:kw, :] = flat[tile, :, j:j + sw * (span - 1) + 1:sw]
                self._columns_held[name] = (id(buffer), forward_call, tile.start, tile.stop)
            yield tile, columns

    def forward(self, x):
        """y (N, F, OH, OW) and what backward needs."""
        layer, xp = self.layer, self.layer.xp
        n, c, h, w = x.shape
        (kh, kw), f = layer.kernel_size, layer.out_channels
        geometry = RowGeometry.of(h, w, layer.kernel_size, layer.stride, layer.padding)
        flat = self._padded_flat(x, geometry)
        self._forward_calls += 1
        forward_call = self._forward_calls
        weight_rows = self._weight_rows()
        length, shift = geometry.length, geometry.shift
        y = xp.empty((n, f, length), dtype=x.dtype)
        bias = None if layer.bias is None else layer.bias.data[:, None]

        def multiply(part):
            # each tile's products land in one buffer per thread, kept between calls
            tile_size = self._tile_size(geometry, part, x.dtype)
            products = layer._scratch(f"products@{part.start}", (tile_size, kh * f, geometry.span), x.dtype)
            for tile, columns in self._column_tiles(flat, geometry, part, forward_call):
                size = tile.stop - tile.start
                z = layer.backend.matmul(weight_rows, columns[:, :c * kw, :], out=products[:size, ...])
                z = xp.reshape(z, (size, kh, f, geometry.span))
                y[tile, ...] = z[:, 0, :, :length] if bias is None else z[:, 0, :, :length] + bias
                for i in range(1, kh):
                    y[tile, ...] += z[:, i, :, i * shift:i * shift + length]

        layer.backend.map_slices(multiply, n)
        saved = (flat, geometry, tuple(x.shape), forward_call)
        y = xp.reshape(y, (n, f, geometry.out_h, geometry.pitch))
        return y[:, :, :, :geometry.out_w], saved

    def backward(self, dy, saved, input_grad: bool):
        """Set the parameter gradients; return dx (N, C, H, W) if ``input_grad``."""
        layer, xp = self.layer, self.layer.xp
        flat, geometry, (n, c, h, w), forward_call = saved
        (kh, kw), (ph, pw), sw = layer.kernel_size, layer.padding, layer.stride[1]
        f, length, shift, span = layer.out_channels, geometry.length, geometry.shift, geometry.span
        weight_rows = self._weight_rows()
        dflat = xp.zeros(flat.shape, dtype=dy.dtype) if input_grad else None

        def multiply(part):
            tile_size = self._tile_size(geometry, part, dy.dtype)
            # dy widened to the L outputs, then stacked once per kernel row, shifted:
            # D[(i, f), m] = dy[f, m - i·shift]. Both buffers start zeroed and only the
            # same regions are ever written, so the wide extras and the rest of each
            # shifted row stay zero.
            wide = layer._scratch(f"dy@{part.start}", (tile_size, f, geometry.out_h, geometry.pitch), dy.dtype,
                                  zeroed=True)
            stacked = layer._scratch(f"stacked@{part.start}", (tile_size, kh, f, span), dy.dtype, zeroed=True)
            if input_grad:  # dR, in a buffer per thread kept between calls, like the forward's products
                column_grads = layer._scratch(f"column_grads@{part.start}", (tile_size, c * kw, span), dy.dtype)
            grad = None
            for tile, columns in self._column_tiles(flat, geometry, part, forward_call):
                size = tile.stop - tile.start
                wide[:size, :, :, :geometry.out_w] = dy[tile, ...]
                dy_wide = xp.reshape(wide[:size, ...], (size, f, length))
                for i in range(kh):
                    stacked[:size, i, :, i * shift:i * shift + length] = dy_wide
                d = xp.reshape(stacked[:size, ...], (size, kh * f, span))
                # Σ_n D_n @ R_nᵀ as a batched matmul and a sum (tensordot over (n, m)
                # would first copy R into a transposed layout)
                partial = xp.sum(xp.matmul(d, columns.mT), axis=0)[:, :c * kw]
                grad = partial if grad is None else grad + partial
                if input_grad:
                    d_columns = layer.backend.matmul(weight_rows.mT, d, out=column_grads[:size, ...])  # (size, C·kw, span)
                    # for one kernel column the run touches each element once, so "+=" on
                    # the slice is an exact scatter-add
                    for j in range(kw):
                        dflat[tile, :, j:j + sw * (span - 1) + 1:sw] += d_columns[:, j::kw, :]
            return grad

        partial_sums = layer.backend.map_slices(multiply, n)
        grad = partial_sums[0]
        for partial in partial_sums[1:]:
            grad = grad + partial  # (kh·F, C·kw), rows (i, f), columns (c, j)
        layer.weight.grad = xp.permute_dims(xp.reshape(grad, (kh, f, c, kw)), (1, 2, 0, 3))
        if layer.bias is not None:
            layer.backend.sum(dy, axis=(0, 2, 3), out=layer.bias.grad_buffer())
        if not input_grad:
            return None
        return xp.reshape(dflat, (n, c, geometry.rows, geometry.row))[:, :, ph:ph + h, pw:pw + w]
