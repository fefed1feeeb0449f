"""LNet: a LeNet-style convolutional network for 32×32 RGB digits."""
from __future__ import annotations

from backends import host_rng
from layers import Conv2D, Flatten, Linear, MaxPool2D, ReLU

from .base import Model


class LNet(Model):
    """Conv(3→6, 5×5, pad 2) → MaxPool 2 → ReLU → Conv(6→16, 3×3, pad 1) → MaxPool 2 →
    ReLU → Flatten → Linear(1024, 256) → ReLU → Linear(256, 10).

    Shapes: (N, 3, 32, 32) → (N, 6, 32, 32) → (N, 6, 16, 16) → (N, 16, 16, 16) →
    (N, 16, 8, 8) → (N, 1024) → (N, 256) → (N, 10) logits. Pooling before ReLU gives the
    same result as after (max and ReLU commute) on a quarter of the elements.
    """

    name = "lnet"

    def __init__(self, num_classes: int = 10, seed: int | None = 0):
        rng = host_rng(seed)
        super().__init__(
            Conv2D(3, 6, 5, padding=2, rng=rng),
            MaxPool2D(2),
            ReLU(),
            Conv2D(6, 16, 3, padding=1, rng=rng),
            MaxPool2D(2),
            ReLU(),
            Flatten(),
            Linear(16 * 8 * 8, 256, rng=rng),
            ReLU(),
            Linear(256, num_classes, rng=rng),
        )
        self.num_classes = num_classes
