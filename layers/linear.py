"""Linear: a fully connected layer."""
from __future__ import annotations

from .base import Layer
from .init import uniform_fan_in
from .parameter import Parameter


class Linear(Layer):
    """``y = x @ W.T + b``.

    Shapes: x (N, in_features) → y (N, out_features); weight (out_features, in_features)
    and bias (out_features,), as in torch.nn.Linear.

    Backward: dW = dy.T @ x, db = Σ_n dy, dx = dy @ W.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rng=None):
        super().__init__()
        _check_positive(in_features=in_features, out_features=out_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(self.backend.asarray(uniform_fan_in(rng, (out_features, in_features), in_features)))
        self.bias = Parameter(self.backend.asarray(uniform_fan_in(rng, (out_features,), in_features))) if bias else None

    def forward(self, x):
        self._check_input(x, rank=2, expected=f"(N, {self.in_features})")
        if x.shape[1] != self.in_features:
            raise ValueError(f"{self!r} expects input (N, {self.in_features}), got {tuple(x.shape)}")
        self._check_param_dtype(x)
        xp, weight = self.xp, self.weight.data
        y = xp.empty((x.shape[0], self.out_features), dtype=x.dtype)

        def multiply(columns):  # split over output features: as fast as BLAS's own threads here
            y[:, columns] = xp.matmul(x, weight[columns, ...].mT)

        self.backend.map_slices(multiply, self.out_features, work=self._matmul_flops(x.shape[0]))
        if self.bias is not None:
            y += self.bias.data
        self._cache = x if self.training else None
        return y

    def backward(self, dy):
        self.backward_params(dy)
        xp, weight = self.xp, self.weight.data
        dx = xp.empty((dy.shape[0], self.in_features), dtype=dy.dtype)

        def multiply(part):
            dx[part, ...] = xp.matmul(dy[part, ...], weight)

        self.backend.map_slices(multiply, dy.shape[0], work=self._matmul_flops(dy.shape[0]))
        return dx

    def backward_params(self, dy) -> None:
        xp = self.xp
        x = self._saved()
        grad = xp.empty(self.weight.shape, dtype=dy.dtype)

        def multiply(rows):  # split over output features: each thread owns whole rows of dW
            grad[rows, ...] = xp.matmul(dy[:, rows].mT, x)

        self.backend.map_slices(multiply, self.out_features, work=self._matmul_flops(dy.shape[0]))
        self.weight.grad = grad
        if self.bias is not None:
            self.bias.grad = xp.sum(dy, axis=0)

    def _matmul_flops(self, batch_size: int) -> int:
        """Floating-point operations of one of the layer's matmuls (forward, dW or dx)."""
        return 2 * batch_size * self.in_features * self.out_features

    def output_shape(self, input_shape):
        return (input_shape[0], self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}→{self.out_features}" + ("" if self.bias is not None else ", bias=False")


def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
