"""Element-wise and shape-only layers: ReLU, Flatten, Softmax.

ReLU runs an engine with the interface of layers/engine.py: ``ReluReference`` (the
definition) or ``FastRelu`` (the same with a 0-d constant and one fused kernel back).
Flatten and Softmax are single array expressions, with nothing faster to choose.
"""
from __future__ import annotations

from .base import Layer
from .engine import Engines


def relu_grad(xp, y, dy, zero):
    """ReLU's backward: dy where the output was positive, else 0 (one fused kernel on a GPU).

    Written as dy times a 0/1 mask, which NumPy runs much faster than ``xp.where``
    (docs/benchmarks.md, "Measurements behind choices in layers/").
    """
    return dy * xp.astype(y > zero, dy.dtype)


class ReluReference:
    """The definition of ReLU (the engine ``engine="reference"`` runs); saved: y."""

    @staticmethod
    def forward(xp, x, params=None, work=None):
        """y = x where x > 0, else 0."""
        y = xp.where(x > 0, x, xp.zeros_like(x))
        return y, y

    @staticmethod
    def backward(xp, dy, y, params=None, work=None, need_dx=True, out=None):
        """dx = dy where y > 0, else 0."""
        return xp.where(y > 0, dy, xp.zeros_like(dy)), {}


class FastRelu:
    """ReLU in one operation each way: ``maximum`` against a cached 0-d zero, and ``relu_grad`` fused."""

    @staticmethod
    def forward(xp, x, params, work):
        y = xp.maximum(x, work.backend.constant(0, x.dtype))
        return y, y

    @staticmethod
    def backward(xp, dy, y, params, work, need_dx=True, out=None):
        return work.backend.fuse(relu_grad)(y, dy, work.backend.constant(0, dy.dtype)), {}


RELU_ENGINES = Engines(reference=ReluReference, cpu=FastRelu, launch_bound=FastRelu)


def softmax(xp, x, axis: int = -1):
    """``exp(x_i - max x) / Σ_j exp(x_j - max x)`` along ``axis``: probabilities, stable for any x."""
    exps = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return exps / xp.sum(exps, axis=axis, keepdims=True)


class ReLU(Layer):
    """``y = max(x, 0)``, any shape. Backward: ``dx = dy`` where ``y > 0``, else 0."""

    def forward(self, x):
        self._check_input(x)
        y, saved = RELU_ENGINES.pick(self.backend).forward(self.xp, x, None, self.work)
        self._cache = saved if self.training else None
        return y

    def backward(self, dy):
        dx, _ = RELU_ENGINES.pick(self.backend).backward(self.xp, dy, self._saved(), None, self.work)
        return dx


class Flatten(Layer):
    """(N, d1, d2, ...) → (N, d1·d2·...). Backward reshapes dy back."""

    def forward(self, x):
        self._check_input(x)
        if x.ndim < 2:
            raise ValueError(f"{self!r} expects input (N, ...) with at least 2 dimensions, got {tuple(x.shape)}")
        self._cache = tuple(x.shape) if self.training else None
        return self.xp.reshape(x, (x.shape[0], -1))

    def backward(self, dy):
        return self.xp.reshape(dy, self._saved())

    def output_shape(self, input_shape):
        size = 1
        for dim in input_shape[1:]:
            size *= dim
        return (input_shape[0], size)


class Softmax(Layer):
    """Probabilities along ``axis``: ``y_i = exp(x_i - max x) / Σ_j exp(x_j - max x)``.

    For inference (use CrossEntropyLoss, which takes logits, to train). Backward is the
    Jacobian-vector product ``dx = y ⊙ (dy - Σ_j dy_j y_j)``.
    """

    def __init__(self, axis: int = -1):
        super().__init__()
        self.axis = axis

    def forward(self, x):
        self._check_input(x)
        y = softmax(self.xp, x, self.axis)
        self._cache = y if self.training else None
        return y

    def backward(self, dy):
        y = self._saved()
        return y * (dy - self.xp.sum(dy * y, axis=self.axis, keepdims=True))

    def extra_repr(self) -> str:
        return f"axis={self.axis}"
