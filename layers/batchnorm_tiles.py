"""BatchNorm's CPU engine: cache-sized tiles of the batch over the cores.

An engine with the interface of layers/engine.py; computes exactly what
``BatchNormReference`` (layers/batchnorm.py) computes, and tests hold it to that. Each
pass reads the activations from memory once, and a tile's second look (its centred
values) comes from the cache. The statistics of the tiles are merged exactly (Chan et
al.'s formula, ``merge_statistics``). Eval mode is the fused engine's one kernel.
"""
from __future__ import annotations

from .batchnorm_fused import channel_axes, channel_shape, eval_forward, update_statistics


def merge_statistics(counts, means, squares):
    """The mean and Σ(x - mean)² of a union of parts from each part's (count, mean, Σ(x - mean_part)²).

    Chan, Golub and LeVeque's pairwise formula, for all parts at once: with M = Σ n_t,
    mean = Σ n_t·m_t / M and Σ(x - mean)² = Σ_t [S_t + n_t·(m_t - mean)²]. Exact in exact
    arithmetic, and free of the cancellation of Σx² - M·mean².
    """
    total = sum(counts)
    mean = sum(n * m for n, m in zip(counts, means)) / total
    square = sum(s + n * ((m - mean) * (m - mean)) for n, m, s in zip(counts, means, squares))
    return mean, square


def _tile(xp, x, work) -> int:
    """Examples per tile: a tile, its centred copy and a product of the two fit in the backend's
    cache budget (the whole part where the backend does not tile)."""
    return work.backend.batch_tile(3 * (x.size // x.shape[0]) * (xp.finfo(x.dtype).bits // 8)) or x.shape[0]


def _tiles(part: slice, tile: int):
    for start in range(part.start, part.stop, tile):
        yield slice(start, min(start + tile, part.stop))


class TiledBatchNorm:
    """BatchNorm's engine for the CPU: every pass tile by tile, the tiles of each thread's part in turn."""

    @staticmethod
    def forward(xp, x, params, work):
        if not params.training:
            return eval_forward(xp, x, params, work)
        backend, c = work.backend, params.weight.shape[0]
        axes, shape = channel_axes(x.ndim), channel_shape(x.ndim, c)
        tile = _tile(xp, x, work)

        def part_statistics(part):  # each tile's own mean and Σ(x - mean_tile)²
            found = []
            for piece in _tiles(part, tile):
                block = x[piece, ...]
                n = block.size // c
                mean = xp.sum(block, axis=axes) / n
                centered = block - xp.reshape(mean, shape)
                centered *= centered
                found.append((n, mean, xp.sum(centered, axis=axes)))
            return found

        parts = [entry for found in backend.map_slices(part_statistics, x.shape[0]) for entry in found]
        mean, square = merge_statistics(*zip(*parts))
        count = x.size // c
        var = square / count
        mean_b = xp.reshape(mean, shape)
        inverse_std_b = xp.reshape(update_statistics(mean, var, count, params, work), shape)
        scale = inverse_std_b * xp.reshape(params.weight, shape)
        shift = xp.reshape(params.bias, shape) - mean_b * scale
        y = xp.empty(x.shape, dtype=x.dtype)

        def part_affine(part):  # y = x·scale + shift (per channel)
            for piece in _tiles(part, tile):
                y_piece = y[piece, ...]
                y_piece[...] = x[piece, ...] * scale
                y_piece += shift

        backend.map_slices(part_affine, x.shape[0])
        return y, (x, mean_b, inverse_std_b, count)

    @staticmethod
    def backward(xp, dy, saved, params, work, need_dx, out):
        """Σ dy and Σ dy·(x - mean) per channel, tile by tile; then, if asked, dx tile by tile."""
        x, mean, inverse_std, count = saved
        backend = work.backend
        axes, shape = channel_axes(x.ndim), channel_shape(x.ndim, params.weight.shape[0])
        tile = _tile(xp, x, work)

        def part_sums(part):
            sum_dy = sum_dy_centered = None
            for piece in _tiles(part, tile):
                block = dy[piece, ...]
                centered = x[piece, ...] - mean
                centered *= block
                a, b = xp.sum(block, axis=axes), xp.sum(centered, axis=axes)
                sum_dy, sum_dy_centered = (a, b) if sum_dy is None else (sum_dy + a, sum_dy_centered + b)
            return sum_dy, sum_dy_centered

        parts = backend.map_slices(part_sums, x.shape[0])
        dbeta, dgamma = sum(p[0] for p in parts), sum(p[1] for p in parts) * xp.reshape(inverse_std, (-1,))
        grads = {"weight": dgamma, "bias": dbeta}
        if not need_dx:
            return None, grads
        # dx = a·dy + k·(x - mean) + b, with a = γ/σ, k = -a·dγ/(σM), b = -a·dβ/M
        a = xp.reshape(params.weight, shape) * inverse_std
        k = -a * inverse_std * xp.reshape(dgamma, shape) / count
        b = -a * xp.reshape(dbeta, shape) / count
        dx = xp.empty(x.shape, dtype=dy.dtype)

        def part_dx(part):
            for piece in _tiles(part, tile):
                dx_piece, centered = dx[piece, ...], x[piece, ...] - mean
                dx_piece[...] = dy[piece, ...] * a
                centered *= k
                dx_piece += centered
                dx_piece += b

        backend.map_slices(part_dx, x.shape[0])
        return dx, grads
