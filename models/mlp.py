"""MLP: the two-layer perceptron baseline."""
from __future__ import annotations

from backends import host_rng
from layers import Flatten, Linear, ReLU

from .base import Model


class MLP(Model):
    """Flatten → Linear(3072, 1024) → ReLU → Linear(1024, 10).

    Input (N, 3, 32, 32) float images, output (N, 10) logits.
    """

    name = "mlp"

    def __init__(self, hidden: int = 1024, num_classes: int = 10, input_shape=(3, 32, 32), seed: int | None = 0):
        rng = host_rng(seed)
        features = input_shape[0] * input_shape[1] * input_shape[2]
        super().__init__(
            Flatten(),
            Linear(features, hidden, rng=rng),
            ReLU(),
            Linear(hidden, num_classes, rng=rng),
        )
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
