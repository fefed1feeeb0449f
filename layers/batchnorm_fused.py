"""BatchNorm's launch-bound engine: a handful of operations per pass.

An engine with the interface of layers/engine.py; computes exactly what
``BatchNormReference`` (layers/batchnorm.py) computes, and tests hold it to that. Each
chain of element-wise work, and each per-channel sum with the arithmetic around it, is a
function that ``Backend.fuse`` makes one kernel on a GPU (elsewhere they run as the plain
calls). ``axes`` is a static switch: each set of axes is its own kernel.
"""
from __future__ import annotations


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


def channel_shape(ndim: int, channels: int) -> tuple[int, ...]:
    """(1, C, 1, ...): per-channel values shaped to broadcast over an input of ``ndim`` axes."""
    return (1, channels) + (1,) * (ndim - 2)


def channel_axes(ndim: int) -> tuple[int, ...]:
    """Every axis but the channels' (axis 1): what the statistics sum over."""
    return (0,) + tuple(range(2, ndim))


def eval_forward(xp, x, params, work):
    """Eval mode, one fused kernel (every fast engine's): the running statistics."""
    shape = channel_shape(x.ndim, params.weight.shape[0])
    return work.backend.fuse(normalise_running)(x, xp.reshape(params.running_mean, shape),
                                                xp.reshape(params.running_var, shape), xp.reshape(params.weight, shape),
                                                xp.reshape(params.bias, shape), params.eps), None


def update_statistics(mean, var, count, params, work):
    """Fold the batch's (mean, var) into the running statistics; 1/σ shaped to broadcast."""
    return work.backend.fuse(update_running_stats)(params.running_mean, params.running_var, mean, var, params.momentum,
                                                   1 - params.momentum, count / (count - 1), params.eps)


class FusedBatchNorm:
    """BatchNorm's engine for launch-bound devices: fused kernels over the whole batch."""

    @staticmethod
    def forward(xp, x, params, work):
        if not params.training:
            return eval_forward(xp, x, params, work)
        fuse, c = work.backend.fuse, params.weight.shape[0]
        axes, shape = channel_axes(x.ndim), channel_shape(x.ndim, c)
        count = x.size // c
        mean = fuse(scaled_sum, axes=axes)(x, 1.0 / count)
        var = fuse(centered_square_sum, axes=axes)(x, xp.reshape(mean, shape), 1.0 / count)
        mean_b = xp.reshape(mean, shape)
        inverse_std_b = xp.reshape(update_statistics(mean, var, count, params, work), shape)
        y = fuse(normalise)(x, mean_b, inverse_std_b, xp.reshape(params.weight, shape), xp.reshape(params.bias, shape))
        return y, (x, mean_b, inverse_std_b, count)

    @staticmethod
    def backward(xp, dy, saved, params, work, need_dx, out):
        x, mean, inverse_std, count = saved
        backend = work.backend
        axes, shape = channel_axes(x.ndim), channel_shape(x.ndim, params.weight.shape[0])
        dbeta = backend.sum(dy, axis=axes, out=out["bias"])
        dgamma = backend.fuse(centered_product_sum, axes=axes)(dy, x, mean, inverse_std)
        grads = {"weight": dgamma, "bias": dbeta}
        if not need_dx:
            return None, grads
        return backend.fuse(input_gradient)(dy, x, mean, inverse_std, xp.reshape(params.weight, shape),
                                            xp.reshape(dbeta, shape), xp.reshape(dgamma, shape), 1.0 / count), grads
