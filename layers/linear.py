"""Linear: a fully connected layer, ``y = x @ W.T + b``.

The math is ``LinearReference`` below; the layer runs it with ``engine="reference"``, and
otherwise layers/linear_split.py, which computes the same with in-place matmuls split over
the CPU's cores (tests hold it to the reference).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import Layer, check_positive
from .engine import Engines
from .init import uniform_fan_in
from .linear_split import SplitLinear
from .parameter import Parameter


@dataclass(frozen=True)
class LinearParams:
    """What every Linear engine reads: weight (out_features, in_features), bias (out_features,) or None."""

    weight: Any
    bias: Any


class LinearReference:
    """The definition of Linear (the engine ``engine="reference"`` runs)."""

    @staticmethod
    def forward(xp, x, params: LinearParams, work=None):
        """y = x @ Wᵀ + b: x (N, in) → y (N, out); saved: x."""
        y = xp.matmul(x, params.weight.mT)
        return (y if params.bias is None else y + params.bias), x

    @staticmethod
    def backward(xp, dy, x, params: LinearParams, work=None, need_dx=True, out=None):
        """dW = dyᵀ @ x, db = Σ_n dy, dx = dy @ W."""
        grads = {"weight": xp.matmul(dy.mT, x)}
        if params.bias is not None:
            grads["bias"] = xp.sum(dy, axis=0)
        return (xp.matmul(dy, params.weight) if need_dx else None), grads


ENGINES = Engines(reference=LinearReference, cpu=SplitLinear, launch_bound=SplitLinear)


class Linear(Layer):
    """``y = x @ W.T + b``.

    Shapes: x (N, in_features) → y (N, out_features); weight (out_features, in_features)
    and bias (out_features,), as in torch.nn.Linear.

    Backward: dW = dy.T @ x, db = Σ_n dy, dx = dy @ W (``LinearReference``, or the
    engine that computes the same faster: see the module docstring).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rng=None):
        super().__init__()
        check_positive(in_features=in_features, out_features=out_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(self.backend.asarray(uniform_fan_in(rng, (out_features, in_features), in_features)))
        self.bias = Parameter(self.backend.asarray(uniform_fan_in(rng, (out_features,), in_features))) if bias else None

    def forward(self, x):
        self._check_input(x, rank=2, expected=f"(N, {self.in_features})")
        if x.shape[1] != self.in_features:
            raise ValueError(f"{self!r} expects input (N, {self.in_features}), got {tuple(x.shape)}")
        self._check_param_dtype(x)
        y, saved = ENGINES.pick(self.backend).forward(self.xp, x, self._params(), self.work)
        self._cache = saved if self.training else None
        return y

    def backward(self, dy):
        return self._engine_backward(ENGINES, dy, need_dx=True)

    def backward_params(self, dy) -> None:
        self._engine_backward(ENGINES, dy, need_dx=False)

    def _params(self) -> LinearParams:
        return LinearParams(self.weight.data, None if self.bias is None else self.bias.data)

    def output_shape(self, input_shape):
        return (input_shape[0], self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}→{self.out_features}" + ("" if self.bias is not None else ", bias=False")
