"""Conv2D on a launch-bound device (a GPU): the whole batch in a handful of operations.

An engine with the interface of layers/engine.py; computes exactly what ``ConvReference``
(layers/conv.py) computes, and tests hold it to that. The math, with shapes, is in docs/math.md ("Conv2D on a GPU").

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


def _index(xp, h: int, w: int, params, work, dtype) -> GatherIndex:
    """The gather indices of this input size, made once per size and kept in the workspace."""
    kernel_size = tuple(params.weight.shape[2:])
    return work.constant(f"gather-index-{h}x{w}-{dtype}",
                         lambda: GatherIndex(xp, h, w, kernel_size, params.stride, params.padding, dtype))


def _chunks(n: int, columns_per_example: int, work, dtype) -> list[slice]:
    """Slices of the batch whose im2col columns fit the backend's work budget (one, usually)."""
    budget = work.backend.work_bytes
    per_example = columns_per_example * (work.xp.finfo(dtype).bits // 8)
    size = n if budget is None else max(1, min(n, budget // max(1, per_example)))
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def _padded(xp, x, padding, work):
    """x with its zero border, viewed as (N·C, Hp·Wp); the border of the buffer stays zero."""
    n, c, h, w = x.shape
    ph, pw = padding
    if ph == 0 and pw == 0:
        return xp.reshape(x, (n * c, h * w))
    padded = work.scratch("padded", (n, c, h + 2 * ph, w + 2 * pw), x.dtype, zeroed=True)
    padded[:, :, ph:ph + h, pw:pw + w] = x
    return xp.reshape(padded, (n * c, (h + 2 * ph) * (w + 2 * pw)))


def _columns(xp, flat, index: GatherIndex, chunk: slice, c: int):
    """im2col of the examples in ``chunk``: (size, K, L)."""
    size = chunk.stop - chunk.start
    gathered = xp.take(flat[chunk.start * c:chunk.stop * c, ...], index.columns, axis=1)
    return xp.reshape(gathered, (size, -1, index.length))


class GatherConv:
    """Conv2D's launch-bound engine: the whole batch in a handful of operations."""

    @staticmethod
    def forward(xp, x, params, work):
        backend = work.backend
        n, c, h, w = x.shape
        f, _, kh, kw = params.weight.shape
        index = _index(xp, h, w, params, work, x.dtype)
        flat = _padded(xp, x, params.padding, work)
        weight = xp.reshape(params.weight, (f, c * kh * kw))
        chunks = _chunks(n, c * kh * kw * index.length, work, x.dtype)
        if len(chunks) == 1:
            columns = _columns(xp, flat, index, chunks[0], c)
            y = xp.matmul(xp.broadcast_to(weight, (n, *weight.shape)), columns)  # (N, F, L)
        else:
            columns = None  # rebuilt chunk by chunk in backward
            y = xp.empty((n, f, index.length), dtype=x.dtype)
            for chunk in chunks:
                part = _columns(xp, flat, index, chunk, c)
                backend.matmul(xp.broadcast_to(weight, (chunk.stop - chunk.start, *weight.shape)), part, out=y[chunk, ...])
        if params.bias is not None:
            y += xp.reshape(params.bias, (f, 1))
        saved = (flat, columns, chunks, tuple(x.shape))
        return xp.reshape(y, (n, f, index.out_h, index.out_w)), saved

    @staticmethod
    def backward(xp, dy, saved, params, work, need_dx, out):
        backend = work.backend
        flat, columns, chunks, (n, c, h, w) = saved
        f, _, kh, kw = params.weight.shape
        index = _index(xp, h, w, params, work, dy.dtype)
        dy = xp.reshape(dy, (n, f, index.length))
        weight = xp.reshape(params.weight, (f, c * kh * kw))
        # dWᵀ = Σ_n cols_n @ dy_nᵀ, summed straight into the (transposed) gradient buffer
        grad_t = xp.reshape(out["weight"], (f, c * kh * kw)).mT
        dx = xp.empty((n, c, h * w), dtype=dy.dtype) if need_dx and len(chunks) > 1 else None
        for number, chunk in enumerate(chunks):
            part = columns if columns is not None else _columns(xp, flat, index, chunk, c)
            dy_part = dy[chunk, ...]
            products = xp.matmul(part, dy_part.mT)  # (size, K, F)
            if number == 0:
                backend.sum(products, axis=0, out=grad_t)
            else:
                grad_t += xp.sum(products, axis=0)
            if need_dx:
                size = chunk.stop - chunk.start
                d_columns = xp.matmul(xp.broadcast_to(weight.mT, (size, *weight.mT.shape)), dy_part)  # (size, K, L)
                gathered = xp.take(xp.reshape(d_columns, (size * c, -1)), index.pixels, axis=1)
                pixels = backend.fuse(masked_sum)(xp.reshape(gathered, (size * c, h * w, kh * kw)), index.mask)
                if dx is None:
                    dx = xp.reshape(pixels, (n, c, h * w))
                else:
                    dx[chunk, ...] = xp.reshape(pixels, (size, c, h * w))
        grads = {"weight": out["weight"]}
        if params.bias is not None:
            grads["bias"] = backend.sum(dy, axis=(0, 2), out=out["bias"])
        return (xp.reshape(dx, (n, c, h, w)) if need_dx else None), grads
