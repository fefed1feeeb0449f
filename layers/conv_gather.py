"""Conv2D on a launch-bound device (a GPU): the whole batch in a handful of operations.

Computes exactly what ``conv2d_reference`` (layers/conv.py) computes; tests hold it to
that. The math, with shapes, is in docs/math.md ("Conv2D on a GPU").

With K = C·kh·kw and L = OH·OW:

* im2col is one gather: the padded input viewed as (N·C, Hp·Wp) and ``xp.take`` of the
  K/C·L positions each channel's columns read (an index made once per input size), so
  ``cols`` (N, K, L) has row c·kh·kw + i·kw + j = channel c under kernel position (i, j);
* forward: ``y_n = W2 @ cols_n + b`` with W2 the weight as (F, K): one batched matmul;
* backward: ``dW = Σ_n dy_n @ cols_nᵀ`` (computed transposed, straight into the
  gradient buffer), ``db = Σ dy``, ``dcols_n = W2ᵀ @ dy_n``, and col2im as a second
  gather: each input pixel collects the (at most kh·kw) entries of dcols that read it,
  through an index and a 0/1 mask made once per size, and sums them (one fused kernel).

So a forward is 4 or 5 launches and a backward 4 (first layer) to 8, whatever the
kernel size, against one per kernel position or kernel row in a loop of slice copies.
Batches whose columns exceed ``Backend.work_bytes`` go through in chunks, so memory
stays bounded at large batch sizes.
"""
from __future__ import annotations

from .windows import output_size


def masked_sum(xp, gathered, mask):
    """Σ over the last axis of ``gathered * mask``: col2im's sum of the entries that hit a pixel."""
    return xp.sum(gathered * mask, axis=2)


class GatherIndex:
    """The gather indices of one input size (made once, on the device).

    ``columns`` (kh·kw·L,): flat padded position read by kernel position (i, j) for output
    l = oh·OW + ow: ``(sh·oh + i)·Wp + sw·ow + j``.
    ``pixels`` (H·W·kh·kw,) and ``mask`` (H·W, kh·kw): for input pixel (r, s) and kernel
    position (i, j), the entry ``(i·kw + j)·L + l`` of a channel's dcols that reads it
    (mask 1), or 0 with mask 0 where no output reads the pixel through (i, j).
    """

    def __init__(self, xp, h: int, w: int, kernel_size, stride, padding, dtype):
        (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
        out_h, out_w = output_size(h, kh, sh, ph), output_size(w, kw, sw, pw)
        length, width = out_h * out_w, w + 2 * pw

        def axis(size, position, ndim):  # arange(size) shaped to broadcast along ``position``
            shape = [1] * ndim
            shape[position] = size
            return xp.reshape(xp.arange(size, dtype=xp.int64), tuple(shape))

        i, j, oh, ow = (axis(size, k, 4) for k, size in enumerate((kh, kw, out_h, out_w)))
        self.columns = xp.reshape((sh * oh + i) * width + sw * ow + j, (-1,))

        r, s, i, j = (axis(size, k, 4) for k, size in enumerate((h, w, kh, kw)))
        rows_from, cols_from = r + ph - i, s + pw - j  # padded position minus kernel offset = sh·oh, sw·ow
        valid = ((rows_from >= 0) & (rows_from % sh == 0) & (rows_from // sh < out_h)
                 & (cols_from >= 0) & (cols_from % sw == 0) & (cols_from // sw < out_w))
        entry = (i * kw + j) * length + (rows_from // sh) * out_w + cols_from // sw
        self.pixels = xp.reshape(xp.where(valid, entry, xp.zeros_like(entry)), (-1,))
        self.mask = xp.reshape(xp.astype(valid, dtype), (h * w, kh * kw))
        self.out_h, self.out_w, self.length = out_h, out_w, length


class GatherConv:
    """The launch-bound engine of one Conv2D layer."""

    def __init__(self, layer):
        self.layer = layer
        self._indices: dict[tuple, GatherIndex] = {}

    def _index(self, h: int, w: int, dtype) -> GatherIndex:
        key = (h, w, str(dtype))
        if key not in self._indices:
            layer = self.layer
            self._indices[key] = GatherIndex(layer.xp, h, w, layer.kernel_size, layer.stride, layer.padding, dtype)
        return self._indices[key]

    def _chunks(self, n: int, columns_per_example: int, dtype) -> list[slice]:
        """Slices of the batch whose im2col columns fit the backend's work budget (one, usually)."""
        budget = self.layer.backend.work_bytes
        per_example = columns_per_example * (self.layer.xp.finfo(dtype).bits // 8)
        size = n if budget is None else max(1, min(n, budget // max(1, per_example)))
        return [slice(start, min(start + size, n)) for start in range(0, n, size)]

    def _padded(self, x):
        """x with its zero border, viewed as (N·C, Hp·Wp); the border of the buffer stays zero."""
        layer, xp = self.layer, self.layer.xp
        n, c, h, w = x.shape
        ph, pw = layer.padding
        if ph == 0 and pw == 0:
            return xp.reshape(x, (n * c, h * w))
        padded = layer._scratch("padded", (n, c, h + 2 * ph, w + 2 * pw), x.dtype, zeroed=True)
        padded[:, :, ph:ph + h, pw:pw + w] = x
        return xp.reshape(padded, (n * c, (h + 2 * ph) * (w + 2 * pw)))

    def _columns(self, flat, index: GatherIndex, chunk: slice, c: int):
        """im2col of the examples in ``chunk``: (size, K, L)."""
        size = chunk.stop - chunk.start
        gathered = self.layer.xp.take(flat[chunk.start * c:chunk.stop * c, ...], index.columns, axis=1)
        return self.layer.xp.reshape(gathered, (size, -1, index.length))

    def forward(self, x):
        layer, xp, backend = self.layer, self.layer.xp, self.layer.backend
        n, c, h, w = x.shape
        f, (kh, kw) = layer.out_channels, layer.kernel_size
        index = self._index(h, w, x.dtype)
        flat = self._padded(x)
        weight = xp.reshape(layer.weight.data, (f, c * kh * kw))
        chunks = self._chunks(n, c * kh * kw * index.length, x.dtype)
        if len(chunks) == 1:
            columns = self._columns(flat, index, chunks[0], c)
            y = xp.matmul(xp.broadcast_to(weight, (n, *weight.shape)), columns)  # (N, F, L)
        else:
            columns = None  # rebuilt chunk by chunk in backward
            y = xp.empty((n, f, index.length), dtype=x.dtype)
            for chunk in chunks:
                part = self._columns(flat, index, chunk, c)
                backend.matmul(xp.broadcast_to(weight, (chunk.stop - chunk.start, *weight.shape)), part, out=y[chunk, ...])
        if layer.bias is not None:
            y += xp.reshape(layer.bias.data, (f, 1))
        saved = (flat, columns, chunks, tuple(x.shape))
        return xp.reshape(y, (n, f, index.out_h, index.out_w)), saved

    def backward(self, dy, saved, input_grad: bool):
        layer, xp, backend = self.layer, self.layer.xp, self.layer.backend
        flat, columns, chunks, (n, c, h, w) = saved
        f, (kh, kw) = layer.out_channels, layer.kernel_size
        index = self._index(h, w, dy.dtype)
        dy = xp.reshape(dy, (n, f, index.length))
        weight = xp.reshape(layer.weight.data, (f, c * kh * kw))
        # dWᵀ = Σ_n cols_n @ dy_nᵀ, summed straight into the (transposed) gradient buffer
        grad_t = xp.reshape(layer.weight.grad_buffer(), (f, c * kh * kw)).mT
        dx = xp.empty((n, c, h * w), dtype=dy.dtype) if input_grad and len(chunks) > 1 else None
        for number, chunk in enumerate(chunks):
            part = columns if columns is not None else self._columns(flat, index, chunk, c)
            dy_part = dy[chunk, ...]
            products = xp.matmul(part, dy_part.mT)  # (size, K, F)
            if number == 0:
                backend.sum(products, axis=0, out=grad_t)
            else:
                grad_t += xp.sum(products, axis=0)
            if input_grad:
                size = chunk.stop - chunk.start
                d_columns = xp.matmul(xp.broadcast_to(weight.mT, (size, *weight.mT.shape)), dy_part)  # (size, K, L)
                gathered = xp.take(xp.reshape(d_columns, (size * c, -1)), index.pixels, axis=1)
                pixels = backend.fuse(masked_sum)(xp.reshape(gathered, (size * c, h * w, kh * kw)), index.mask)
                if dx is None:
                    dx = xp.reshape(pixels, (n, c, h * w))
                else:
                    dx[chunk, ...] = xp.reshape(pixels, (size, c, h * w))
        if layer.bias is not None:
            backend.sum(dy, axis=(0, 2), out=layer.bias.grad_buffer())
        return xp.reshape(dx, (n, c, h, w)) if input_grad else None
