"""Linear: a fully connected layer."""
from __future__ import annotations

from .base import Layer, check_positive
from .init import uniform_fan_in
from .parameter import Parameter


class Linear(Layer):
    """``y = x @ W.T + b``.

    Shapes: x (N, in_features) → y (N, out_features); weight (out_features, in_features)
    and bias (out_features,), as in torch.nn.Linear.

    Backward: dW = dy.T @ x, db = Σ_n dy, dx = dy @ W.

    Each matmul writes its result in place (the gradients straight into their flat
    buffers). On the cpu backend a large one is split over the cores (``map_slices``): by
    output features in forward and for dW, so each thread owns whole rows of the result,
    and by examples for dx; elsewhere it is one call.
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
        backend, weight = self.backend, self.weight.data
        y = self.xp.empty((x.shape[0], self.out_features), dtype=x.dtype)

        def multiply(features):  # y[:, features] = x @ W[features].T
            backend.matmul(x, weight[features, ...].mT, out=y[:, features])

        backend.map_slices(multiply, self.out_features, work=self._matmul_flops(x.shape[0]))
        if self.bias is not None:
            y += self.bias.data
        self._cache = x if self.training else None
        return y

    def backward(self, dy):
        self.backward_params(dy)
        backend, weight = self.backend, self.weight.data
        dx = self.xp.empty((dy.shape[0], self.in_features), dtype=dy.dtype)

        def multiply(examples):  # dx[examples] = dy[examples] @ W
            backend.matmul(dy[examples, ...], weight, out=dx[examples, ...])

        backend.map_slices(multiply, dy.shape[0], work=self._matmul_flops(dy.shape[0]))
        return dx

    def backward_params(self, dy) -> None:
        backend, x = self.backend, self._saved()
        grad = self.weight.grad_buffer()

        def multiply(features):  # dW[features] = dy[:, features].T @ x
            backend.matmul(dy[:, features].mT, x, out=grad[features, ...])

        backend.map_slices(multiply, self.out_features, work=self._matmul_flops(dy.shape[0]))
        if self.bias is not None:
            backend.sum(dy, axis=0, out=self.bias.grad_buffer())

    def _matmul_flops(self, batch_size: int) -> int:
        """Floating-point operations of one of the layer's matmuls (forward, dW or dx)."""
        return 2 * batch_size * self.in_features * self.out_features

    def output_shape(self, input_shape):
        return (input_shape[0], self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}→{self.out_features}" + ("" if self.bias is not None else ", bias=False")
