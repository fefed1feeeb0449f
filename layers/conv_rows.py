"""Conv2D on a CPU: row-wise im2col in cache-sized tiles, over the cores.

An engine with the interface of layers/engine.py; computes exactly what ``ConvReference``
(layers/conv.py) computes, and tests hold it to that. The math, with shapes, is in docs/math.md ("Conv2D on the CPU").

Row-wise im2col: ``R[(c, j), m]`` holds the input under kernel column j for the span of
positions m, kh times smaller than full im2col. One matmul with the weight as
(kh·F, C·kw) gives every kernel row's partial output ``Z[(i, f), m]``;
``y[f, m] = Σ_i Z[(i, f), m + i·shift]``. Backward stacks dy shifted by each kernel row,
``D[(i, f), m] = dy[f, m - i·shift]``; then ``dW = D @ Rᵀ``, ``dR = W2ᵀ @ D`` and col2im
adds each kernel column's run of dR back onto dx.

The batch goes through in tiles of a few images (``Backend.batch_tile``) so that R, Z and
D stay in the CPU cache, and the tiles of each thread's part of the batch
(``Backend.map_slices``) run in parallel; backward rebuilds each tile's R from the saved
padded input instead of keeping R for the whole batch. R, Z, D and dR live in the
workspace, one set per thread, kept between calls: fresh arrays of that size page-fault
at every tile.
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


def _weight_rows(xp, weight):
    """The weight (F, C, kh, kw) as (kh·F, C·kw): row (i, f), column (c, j)."""
    f, c, kh, kw = weight.shape
    return xp.reshape(xp.permute_dims(weight, (2, 0, 1, 3)), (kh * f, c * kw))


def _padded_flat(xp, x, padding, geometry: RowGeometry, work):
    """x zero-padded into rows of ``geometry.row``, flattened: (N, C, rows·row)."""
    n, c, h, w = x.shape
    ph, pw = padding
    # zeroed when allocated; later calls only overwrite the interior, so the padding stays zero
    padded = work.scratch("padded", (n, c, geometry.rows, geometry.row), x.dtype, zeroed=True)
    padded[:, :, ph:ph + h, pw:pw + w] = x
    return xp.reshape(padded, (n, c, geometry.rows * geometry.row))


def _tile_size(weight, geometry: RowGeometry, part: slice, work, dtype) -> int:
    """Images per tile: as many as the backend's cache budget allows for R and Z (or D)."""
    f, c, kh, kw = weight.shape
    elements = (c * kw + kh * f) * geometry.span
    return min(work.backend.batch_tile(elements * (work.xp.finfo(dtype).bits // 8)) or part.stop,
               part.stop - part.start)


def _padded_rows(channels: int, kernel_w: int) -> int:
    """Rows of the R buffer: C·kw, plus zero rows up to a multiple of 8 when that adds at most 1/8.

    OpenBLAS runs the weight-gradient matmul (kh·F, span) @ (span, rows) faster with 16
    rows than with LNet's first layer's 15 (docs/benchmarks.md, "Measurements behind
    choices in layers/"); the zero rows give zero gradient columns, which are dropped.
    """
    rows = channels * kernel_w
    padded = -(-rows // 8) * 8
    return padded if 8 * (padded - rows) <= rows else rows


def _column_tiles(flat, weight, stride, geometry: RowGeometry, part: slice, work, forward_call: int):
    """Row-wise im2col, tile by tile: yields (tile, R) with R (tile size, padded rows, span).

    Row c·kw + j of R is input channel c under kernel column j; rows past C·kw are zero
    (``_padded_rows``). R lives in one buffer per thread (per ``part``), overwritten by
    the next tile. A buffer still holding this tile's columns from the same forward call
    (``forward_call``; backward right after forward, on a tile that fits the batch) is
    used as it is.
    """
    _, c, _, kw = weight.shape
    sw, span = stride[1], geometry.span
    name = f"columns@{part.start}"
    shape = (_tile_size(weight, geometry, part, work, flat.dtype), _padded_rows(c, kw), span)
    buffer = work.scratch(name, shape, flat.dtype, zeroed=True)  # the padding rows stay zero
    held = work.notes.setdefault("columns held", {})  # buffer name → (buffer id, forward call, tile)
    for start in range(part.start, part.stop, buffer.shape[0]):
        tile = slice(start, min(start + buffer.shape[0], part.stop))
        columns = buffer[:tile.stop - tile.start, ...]
        if held.get(name) != (id(buffer), forward_call, tile.start, tile.stop):
            for j in range(kw):
                columns[:, j:c * kw:kw, :] = flat[tile, :, j:j + sw * (span - 1) + 1:sw]
            held[name] = (id(buffer), forward_call, tile.start, tile.stop)
        yield tile, columns


class RowwiseConv:
    """Conv2D's CPU engine: forward and backward by row-wise im2col in tiles, over the cores."""

    @staticmethod
    def forward(xp, x, params, work):
        """y (N, F, OH, OW) and what backward needs."""
        backend, weight = work.backend, params.weight
        n, c, h, w = x.shape
        f, _, kh, kw = weight.shape
        geometry = RowGeometry.of(h, w, (kh, kw), params.stride, params.padding)
        flat = _padded_flat(xp, x, params.padding, geometry, work)
        forward_call = work.notes["forward calls"] = work.notes.get("forward calls", 0) + 1
        weight_rows = _weight_rows(xp, weight)
        length, shift = geometry.length, geometry.shift
        y = xp.empty((n, f, length), dtype=x.dtype)
        bias = None if params.bias is None else params.bias[:, None]

        def multiply(part):
            # each tile's products land in one buffer per thread, kept between calls
            tile_size = _tile_size(weight, geometry, part, work, x.dtype)
            products = work.scratch(f"products@{part.start}", (tile_size, kh * f, geometry.span), x.dtype)
            for tile, columns in _column_tiles(flat, weight, params.stride, geometry, part, work, forward_call):
                size = tile.stop - tile.start
                z = backend.matmul(weight_rows, columns[:, :c * kw, :], out=products[:size, ...])
                z = xp.reshape(z, (size, kh, f, geometry.span))
                y[tile, ...] = z[:, 0, :, :length] if bias is None else z[:, 0, :, :length] + bias
                for i in range(1, kh):
                    y[tile, ...] += z[:, i, :, i * shift:i * shift + length]

        backend.map_slices(multiply, n)
        saved = (flat, geometry, tuple(x.shape), forward_call)
        y = xp.reshape(y, (n, f, geometry.out_h, geometry.pitch))
        return y[:, :, :, :geometry.out_w], saved

    @staticmethod
    def backward(xp, dy, saved, params, work, need_dx, out):
        """dx (N, C, H, W) if ``need_dx``, and the gradients (the bias's written into ``out``)."""
        backend, weight = work.backend, params.weight
        flat, geometry, (n, c, h, w), forward_call = saved
        f, _, kh, kw = weight.shape
        (ph, pw), sw = params.padding, params.stride[1]
        length, shift, span = geometry.length, geometry.shift, geometry.span
        weight_rows = _weight_rows(xp, weight)
        dflat = xp.zeros(flat.shape, dtype=dy.dtype) if need_dx else None

        def multiply(part):
            tile_size = _tile_size(weight, geometry, part, work, dy.dtype)
            # dy widened to the L outputs, then stacked once per kernel row, shifted:
            # D[(i, f), m] = dy[f, m - i·shift]. Both buffers start zeroed and only the
            # same regions are ever written, so the wide extras and the rest of each
            # shifted row stay zero.
            wide = work.scratch(f"dy@{part.start}", (tile_size, f, geometry.out_h, geometry.pitch), dy.dtype,
                                zeroed=True)
            stacked = work.scratch(f"stacked@{part.start}", (tile_size, kh, f, span), dy.dtype, zeroed=True)
            if need_dx:  # dR, in a buffer per thread kept between calls, like the forward's products
                column_grads = work.scratch(f"column_grads@{part.start}", (tile_size, c * kw, span), dy.dtype)
            grad = None
            for tile, columns in _column_tiles(flat, weight, params.stride, geometry, part, work, forward_call):
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
                if need_dx:
                    d_columns = backend.matmul(weight_rows.mT, d, out=column_grads[:size, ...])  # (size, C·kw, span)
                    # for one kernel column the run touches each element once, so "+=" on
                    # the slice is an exact scatter-add
                    for j in range(kw):
                        dflat[tile, :, j:j + sw * (span - 1) + 1:sw] += d_columns[:, j::kw, :]
            return grad

        partial_sums = backend.map_slices(multiply, n)
        grad = partial_sums[0]
        for partial in partial_sums[1:]:
            grad = grad + partial  # (kh·F, C·kw), rows (i, f), columns (c, j)
        grads = {"weight": xp.permute_dims(xp.reshape(grad, (kh, f, c, kw)), (1, 2, 0, 3))}
        if params.bias is not None:
            grads["bias"] = backend.sum(dy, axis=(0, 2, 3), out=out["bias"])
        if not need_dx:
            return None, grads
        return xp.reshape(dflat, (n, c, geometry.rows, geometry.row))[:, :, ph:ph + h, pw:pw + w], grads
