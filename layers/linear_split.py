"""Linear's fast engine: each matmul written in place, split over the cores when it is large.

An engine with the interface of layers/engine.py; computes exactly what
``LinearReference`` (layers/linear.py) computes, and tests hold it to that.

Every matmul writes its result into its destination (the weight gradient straight into
its flat buffer, ``Backend.matmul(out=)``). On the cpu backend a large one is split over
the cores (``Backend.map_slices``): by output features in forward and for dW, so each
thread owns whole rows of the result, and by examples for dx. Elsewhere (a GPU, strict)
``map_slices`` makes it one call.
"""
from __future__ import annotations


def _flops(params, batch_size: int) -> int:
    """Floating-point operations of one of the layer's matmuls (forward, dW or dx)."""
    out_features, in_features = params.weight.shape
    return 2 * batch_size * in_features * out_features


class SplitLinear:
    """Linear's fast engine (every backend): in-place matmuls, split over threads where that pays."""

    @staticmethod
    def forward(xp, x, params, work):
        backend, weight = work.backend, params.weight
        y = xp.empty((x.shape[0], weight.shape[0]), dtype=x.dtype)

        def multiply(features):  # y[:, features] = x @ W[features].T
            backend.matmul(x, weight[features, ...].mT, out=y[:, features])

        backend.map_slices(multiply, weight.shape[0], work=_flops(params, x.shape[0]))
        if params.bias is not None:
            y += params.bias
        return y, x

    @staticmethod
    def backward(xp, dy, x, params, work, need_dx, out):
        backend, weight = work.backend, params.weight
        grad = out["weight"]

        def multiply_grad(features):  # dW[features] = dy[:, features].T @ x
            backend.matmul(dy[:, features].mT, x, out=grad[features, ...])

        backend.map_slices(multiply_grad, weight.shape[0], work=_flops(params, dy.shape[0]))
        grads = {"weight": grad}
        if params.bias is not None:
            grads["bias"] = backend.sum(dy, axis=0, out=out["bias"])
        if not need_dx:
            return None, grads
        dx = xp.empty((dy.shape[0], weight.shape[1]), dtype=dy.dtype)

        def multiply_input(examples):  # dx[examples] = dy[examples] @ W
            backend.matmul(dy[examples, ...], weight, out=dx[examples, ...])

        backend.map_slices(multiply_input, dy.shape[0], work=_flops(params, dy.shape[0]))
        return dx, grads
