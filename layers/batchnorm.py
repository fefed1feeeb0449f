"""BatchNorm2D and BatchNorm1D: normalise each channel by the batch's statistics (PyTorch semantics).

The math is ``batchnorm_reference`` and ``batchnorm_backward_reference`` below, written
plainly, which ``BatchNormReference`` runs with the running statistics. The layer
computes the same with one of two faster engines (layers/engine.py's interface), chosen
by the backend (docs/math.md, "BatchNorm"):

* layers/batchnorm_fused.py (GPU, launch-bound): a handful of operations per pass, each
  chain of element-wise work a kernel that ``Backend.fuse`` makes;
* layers/batchnorm_tiles.py (CPU): cache-sized tiles of the batch over the cores, the
  statistics of the tiles merged exactly.

Tests hold both to the references.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import Layer, check_positive
from .batchnorm_fused import FusedBatchNorm, channel_axes, channel_shape
from .batchnorm_tiles import TiledBatchNorm
from .engine import Engines
from .parameter import Parameter


def batchnorm_reference(xp, x, gamma, beta, axes, eps):
    """Training-mode forward: ``(y, mean, var)`` with the batch's mean and biased variance.

    x: (N, C, ...); gamma, beta: (C,); ``axes``: every axis but the channels'. Returns
    y like x, and mean and var (C,):  y = γ·(x - mean)/√(var + eps) + β.
    """
    shape = channel_shape(x.ndim, gamma.shape[0])
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
    shape = channel_shape(x.ndim, gamma.shape[0])
    count = x.size // gamma.shape[0]
    mean = xp.mean(x, axis=axes, keepdims=True)
    sigma = xp.sqrt(xp.mean((x - mean) ** 2, axis=axes, keepdims=True) + eps)
    x_hat = (x - mean) / sigma
    dbeta = xp.sum(dy, axis=axes)
    dgamma = xp.sum(dy * x_hat, axis=axes)
    dx = xp.reshape(gamma, shape) / sigma * (dy - (xp.reshape(dbeta, shape) + x_hat * xp.reshape(dgamma, shape)) / count)
    return dx, dgamma, dbeta


@dataclass(frozen=True)
class BatchNormParams:
    """What every BatchNorm engine reads: γ (``weight``) and β (``bias``), (C,); the running
    statistics (C,), which a training forward updates in place; eps, momentum, and the mode."""

    weight: Any
    bias: Any
    running_mean: Any
    running_var: Any
    eps: float
    momentum: float
    training: bool


class BatchNormReference:
    """The definition of batch normalisation (the engine ``engine="reference"`` runs)."""

    @staticmethod
    def forward(xp, x, params: BatchNormParams, work=None):
        """Training: ``batchnorm_reference``, and running ← (1 - momentum)·running + momentum·batch
        with the unbiased variance var·M/(M-1). Eval: the running statistics in place of the batch's."""
        c = params.weight.shape[0]
        shape = channel_shape(x.ndim, c)
        if not params.training:
            x_hat = (x - xp.reshape(params.running_mean, shape)) / xp.sqrt(xp.reshape(params.running_var, shape) + params.eps)
            return xp.reshape(params.weight, shape) * x_hat + xp.reshape(params.bias, shape), None
        y, mean, var = batchnorm_reference(xp, x, params.weight, params.bias, channel_axes(x.ndim), params.eps)
        count, momentum = x.size // c, params.momentum
        params.running_mean[...] = (1 - momentum) * params.running_mean + momentum * mean
        params.running_var[...] = (1 - momentum) * params.running_var + momentum * var * (count / (count - 1))
        return y, x

    @staticmethod
    def backward(xp, dy, x, params: BatchNormParams, work=None, need_dx=True, out=None):
        """``batchnorm_backward_reference``: dx, {weight: dγ, bias: dβ}."""
        dx, dgamma, dbeta = batchnorm_backward_reference(xp, x, params.weight, dy, channel_axes(x.ndim), params.eps)
        return (dx if need_dx else None), {"weight": dgamma, "bias": dbeta}


ENGINES = Engines(reference=BatchNormReference, cpu=TiledBatchNorm, launch_bound=FusedBatchNorm)


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

    def forward(self, x):
        self._check_input(x)
        if x.ndim not in self.input_ranks or x.shape[1] != self.num_features:
            raise ValueError(f"{self!r} expects input {self.expected}, got {tuple(x.shape)}")
        self._check_param_dtype(x)
        if self.training and x.size // self.num_features < 2:
            raise ValueError(f"{self!r} needs more than one value per channel in training, got input {tuple(x.shape)}; "
                             "use a batch of 2 or more, or eval()")
        y, saved = ENGINES.pick(self.backend).forward(self.xp, x, self._params(), self.work)
        self._cache = saved if self.training else None
        return y

    def backward(self, dy):
        return self._engine_backward(ENGINES, dy, need_dx=True)

    def backward_params(self, dy) -> None:
        self._engine_backward(ENGINES, dy, need_dx=False)

    def _params(self) -> BatchNormParams:
        return BatchNormParams(self.weight.data, self.bias.data, self.running_mean, self.running_var, self.eps,
                               self.momentum, self.training)

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
