"""BatchNorm2D and BatchNorm1D: normalise each channel by the batch's statistics (PyTorch semantics).

The math is ``batchnorm_reference`` and ``batchnorm_backward_reference`` below, written
plainly. The layer computes the same in one of two ways, chosen by what the backend prefers
(docs/math.md, "BatchNorm"):

* on a GPU (and wherever the backend does not tile), a handful of operations per pass:
  each chain of element-wise work, and each per-channel sum with the arithmetic around it,
  is a function that ``Backend.fuse`` makes one kernel;
* on the CPU, cache-sized tiles of the batch over the cores: each pass reads the
  activations from memory once, and a tile's second look (its centred values) comes from
  the cache. The statistics of the tiles are merged exactly (Chan et al.'s formula).

Tests hold both to the references.
"""
from __future__ import annotations

from .base import Layer, check_positive
from .parameter import Parameter


def batchnorm_reference(xp, x, gamma, beta, axes, eps):
    """Training-mode forward: ``(y, mean, var)`` with the batch's mean and biased variance.

    x: (N, C, ...); gamma, beta: (C,); ``axes``: every axis but the channels'. Returns
    y like x, and mean and var (C,):  y = γ·(x - mean)/√(var + eps) + β.
    """
    shape = _channel_shape(x.ndim, gamma.shape[0])
    mean = xp.mean(x, axis=axes, keepdims=True)
    var = xp.mean((x - mean) ** 2, axis=axes, keepdims=True)
    x_hat = (x - mean) / xp.sqrt(var + eps)
    y = xp.reshape(gamma, shape) * x_hat + xp.reshape(beta, shape)
    return y, xp.reshape(mean, (-1,)), xp.reshape(var, (-1,))


def batchnorm_backward_reference(xp, x, gamma, dy, axes, eps):
    """(dx, dγ, dβ) of the training-mode forward, for dL/dy = dy.

    With M = the elements per channel, x̂ = (x - mean)/σ and σ = √(var + eps):
    dβ = Σ dy, dγ = Σ dy·x̂ (sums over ``axes``), dx = (γ/σ)·(dy - (dβ + x̂·dγ)/M).
    """
    shape = _channel_shape(x.ndim, gamma.shape[0])
    count = x.size // gamma.shape[0]
    mean = xp.mean(x, axis=axes, keepdims=True)
    sigma = xp.sqrt(xp.mean((x - mean) ** 2, axis=axes, keepdims=True) + eps)
    x_hat = (x - mean) / sigma
    dbeta = xp.sum(dy, axis=axes)
    dgamma = xp.sum(dy * x_hat, axis=axes)
    dx = xp.reshape(gamma, shape) / sigma * (dy - (xp.reshape(dbeta, shape) + x_hat * xp.reshape(dgamma, shape)) / count)
    return dx, dgamma, dbeta


# -- the fused forms (one kernel each on a GPU; ``axes`` is a static switch) ------------------
def scaled_sum(xp, x, scale, *, axes):
    """``Σ scale·x`` over ``axes``: the per-channel mean with scale = 1/M.

    (Scaled before the sum: in a fused kernel an argument cannot be used after the reduction.)"""
    return xp.sum(x * scale, axis=axes)


def centered_square_sum(xp, x, mean, scale, *, axes):
    """``Σ scale·(x - mean)²`` over ``axes``: the biased variance (two-pass, so no cancellation)."""
    centered = x - mean
    return xp.sum(centered * centered * scale, axis=axes)


def update_running_stats(xp, running_mean, running_var, mean, var, momentum, one_minus_momentum, unbias, eps):
    """running ← (1 - momentum)·running + momentum·batch, with the unbiased variance var·M/(M-1),
    in place; returns 1/√(var + eps) for the normalisation. ``one_minus_momentum`` comes
    computed on the host: in a CuPy kernel, 1 - momentum of two numbers would be float16."""
    running_mean[...] = one_minus_momentum * running_mean + momentum * mean
    running_var[...] = one_minus_momentum * running_var + momentum * (var * unbias)
    return 1 / xp.sqrt(var + eps)


def normalise(xp, x, mean, inverse_std, gamma, beta):
    """y = (x - mean)·(γ/σ) + β, the statistics shaped to broadcast over x."""
    return (x - mean) * (inverse_std * gamma) + beta


def normalise_running(xp, x, running_mean, running_var, gamma, beta, eps):
    """Eval mode: y = (x - running_mean)·γ/√(running_var + eps) + β."""
    return (x - running_mean) * (gamma / xp.sqrt(running_var + eps)) + beta


def centered_product_sum(xp, dy, x, mean, inverse_std, *, axes):
    """dγ = Σ dy·x̂ over ``axes``, with x̂ = (x - mean)/σ."""
    return xp.sum(dy * ((x - mean) * inverse_std), axis=axes)


def input_gradient(xp, dy, x, mean, inverse_std, gamma, dbeta, dgamma, inverse_count):
    """dx = (γ/σ)·(dy - (dβ + x̂·dγ)/M)."""
    x_hat = (x - mean) * inverse_std
    return (gamma * inverse_std) * (dy - (dbeta + x_hat * dgamma) * inverse_count)


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


def _channel_shape(ndim: int, channels: int) -> tuple[int, ...]:
    """(1, C, 1, ...): per-channel values shaped to broadcast over an input of ``ndim`` axes."""
    return (1, channels) + (1,) * (ndim - 2)


class _BatchNorm(Layer):
    """Shared by BatchNorm1D and BatchNorm2D, which differ only in the inputs they take.

    Training: normalise each channel with the batch's mean and biased variance over every
    axis but the channels', then scale by γ (``weight``, starts at 1) and shift by β
    (``bias``, starts at 0); update ``running_mean`` and ``running_var`` (buffers) as
    ``(1 - momentum)·running + momentum·batch``, with the unbiased variance. Eval: the
    same with the running statistics. As torch.nn.BatchNorm1d/2d with affine=True and
    track_running_stats=True.
    """

    buffer_names = ("running_mean", "running_var")
    input_ranks: tuple[int, ...] = ()
    expected = ""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        check_positive(num_features=num_features)
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise ValueError(f"eps must be a positive number, got {eps!r}")
        if not (isinstance(momentum, (int, float)) and 0.0 <= momentum <= 1.0):
            raise ValueError(f"momentum must be a number in [0, 1], got {momentum!r}")
        self.num_features, self.eps, self.momentum = num_features, float(eps), float(momentum)
        xp = self.xp
        self.weight = Parameter(xp.ones((num_features,), dtype=self.dtype))
        self.bias = Parameter(xp.zeros((num_features,), dtype=self.dtype))
        self.running_mean = xp.zeros((num_features,), dtype=self.dtype)
        self.running_var = xp.ones((num_features,), dtype=self.dtype)

    def _axes(self, ndim: int) -> tuple[int, ...]:
        return (0,) + tuple(range(2, ndim))

    def forward(self, x):
        self._check_input(x)
        if x.ndim not in self.input_ranks or x.shape[1] != self.num_features:
            raise ValueError(f"{self!r} expects input {self.expected}, got {tuple(x.shape)}")
        self._check_param_dtype(x)
        xp, fuse = self.xp, self.backend.fuse
        shape = _channel_shape(x.ndim, self.num_features)
        gamma, beta = xp.reshape(self.weight.data, shape), xp.reshape(self.bias.data, shape)
        if not self.training:
            self._cache = None
            return fuse(normalise_running)(x, xp.reshape(self.running_mean, shape), xp.reshape(self.running_var, shape),
                                           gamma, beta, self.eps)
        axes = self._axes(x.ndim)
        count = x.size // self.num_features
        if count < 2:
            raise ValueError(f"{self!r} needs more than one value per channel in training, got input {tuple(x.shape)}; "
                             "use a batch of 2 or more, or eval()")
        tile = self._tile(x)
        if tile is None:
            mean = fuse(scaled_sum, axes=axes)(x, 1.0 / count)
            var = fuse(centered_square_sum, axes=axes)(x, xp.reshape(mean, shape), 1.0 / count)
        else:
            mean, var = self._statistics_in_tiles(x, tile)
        mean_b = xp.reshape(mean, shape)
        inverse_std = fuse(update_running_stats)(self.running_mean, self.running_var, mean, var, self.momentum,
                                                 1 - self.momentum, count / (count - 1), self.eps)
        inverse_std_b = xp.reshape(inverse_std, shape)
        self._cache = (x, mean_b, inverse_std_b, count)
        if tile is None:
            return fuse(normalise)(x, mean_b, inverse_std_b, gamma, beta)
        scale = inverse_std_b * gamma
        return self._affine_in_tiles(tile, x, scale, beta - mean_b * scale)

    # -- the CPU's form: tiles of the batch over the cores --------------------------------------
    def _tile(self, x) -> int | None:
        """Examples per tile on a backend that tiles (the CPU), else None: a tile, its centred copy and
        a product of the two fit in the backend's cache budget."""
        return self.backend.batch_tile(3 * (x.size // x.shape[0]) * (self.xp.finfo(x.dtype).bits // 8))

    def _tiles(self, part: slice, tile: int):
        for start in range(part.start, part.stop, tile):
            yield slice(start, min(start + tile, part.stop))

    def _statistics_in_tiles(self, x, tile: int):
        """(mean, biased var), each (C,): every tile's own mean and Σ(x - mean_tile)², merged."""
        xp, c = self.xp, self.num_features
        axes, shape = self._axes(x.ndim), _channel_shape(x.ndim, c)

        def part_statistics(part):
            found = []
            for piece in self._tiles(part, tile):
                block = x[piece, ...]
                n = block.size // c
                mean = xp.sum(block, axis=axes) / n
                centered = block - xp.reshape(mean, shape)
                centered *= centered
                found.append((n, mean, xp.sum(centered, axis=axes)))
            return found

        parts = [entry for found in self.backend.map_slices(part_statistics, x.shape[0]) for entry in found]
        mean, square = merge_statistics(*zip(*parts))
        return mean, square / (x.size // c)

    def _affine_in_tiles(self, tile: int, x, scale, shift):
        """y = x·scale + shift (per channel), tile by tile into a new array."""
        y = self.xp.empty(x.shape, dtype=x.dtype)

        def part_affine(part):
            for piece in self._tiles(part, tile):
                out = y[piece, ...]
                out[...] = x[piece, ...] * scale
                out += shift

        self.backend.map_slices(part_affine, x.shape[0])
        return y

    def _backward_in_tiles(self, tile: int, dy, x, mean, inverse_std, count, input_grad: bool):
        """Σ dy and Σ dy·(x - mean) per channel, tile by tile; then, if asked, dx tile by tile."""
        xp, c = self.xp, self.num_features
        axes, shape = self._axes(x.ndim), _channel_shape(x.ndim, c)

        def part_sums(part):
            sum_dy = sum_dy_centered = None
            for piece in self._tiles(part, tile):
                block = dy[piece, ...]
                centered = x[piece, ...] - mean
                centered *= block
                a, b = xp.sum(block, axis=axes), xp.sum(centered, axis=axes)
                sum_dy, sum_dy_centered = (a, b) if sum_dy is None else (sum_dy + a, sum_dy_centered + b)
            return sum_dy, sum_dy_centered

        parts = self.backend.map_slices(part_sums, x.shape[0])
        dbeta, dgamma = sum(p[0] for p in parts), sum(p[1] for p in parts) * xp.reshape(inverse_std, (-1,))
        self.bias.grad, self.weight.grad = dbeta, dgamma
        if not input_grad:
            return None
        # dx = a·dy + k·(x - mean) + b, with a = γ/σ, k = -a·dγ/(σM), b = -a·dβ/M
        a = xp.reshape(self.weight.data, shape) * inverse_std
        k = -a * inverse_std * xp.reshape(dgamma, shape) / count
        b = -a * xp.reshape(dbeta, shape) / count
        dx = xp.empty(x.shape, dtype=dy.dtype)

        def part_dx(part):
            for piece in self._tiles(part, tile):
                out, centered = dx[piece, ...], x[piece, ...] - mean
                out[...] = dy[piece, ...] * a
                centered *= k
                out += centered
                out += b

        self.backend.map_slices(part_dx, x.shape[0])
        return dx

    def backward(self, dy):
        return self._backward(dy, input_grad=True)

    def backward_params(self, dy) -> None:
        self._backward(dy, input_grad=False)

    def _backward(self, dy, input_grad: bool):
        x, mean, inverse_std, count = self._saved()
        xp, backend = self.xp, self.backend
        tile = self._tile(x)
        if tile is not None:
            return self._backward_in_tiles(tile, dy, x, mean, inverse_std, count, input_grad)
        axes = self._axes(x.ndim)
        shape = _channel_shape(x.ndim, self.num_features)
        dbeta = backend.sum(dy, axis=axes, out=self.bias.grad_buffer())
        self.weight.grad = backend.fuse(centered_product_sum, axes=axes)(dy, x, mean, inverse_std)
        if not input_grad:
            return None
        return backend.fuse(input_gradient)(dy, x, mean, inverse_std, xp.reshape(self.weight.data, shape),
                                           xp.reshape(dbeta, shape), xp.reshape(self.weight.grad, shape), 1.0 / count)

    def extra_repr(self) -> str:
        text = f"{self.num_features}"
        if self.eps != 1e-5:
            text += f", eps={self.eps}"
        if self.momentum != 0.1:
            text += f", momentum={self.momentum}"
        return text


class BatchNorm2D(_BatchNorm):
    """Batch normalisation of images: x (N, C, H, W) → y (N, C, H, W), statistics over (N, H, W).

    ``BatchNorm2D(num_features, eps=1e-5, momentum=0.1)`` as torch.nn.BatchNorm2d:
    parameters ``weight`` γ and ``bias`` β (C,); buffers ``running_mean``, ``running_var`` (C,).
    """

    input_ranks = (4,)
    expected = "(N, C, H, W) with C = num_features"


class BatchNorm1D(_BatchNorm):
    """Batch normalisation of features: x (N, C) or (N, C, L), statistics over (N) or (N, L).

    ``BatchNorm1D(num_features, eps=1e-5, momentum=0.1)`` as torch.nn.BatchNorm1d.
    """

    input_ranks = (2, 3)
    expected = "(N, C) or (N, C, L) with C = num_features"
