"""CNN: a small VGG-style network with batch normalisation and dropout."""
from __future__ import annotations

from backends import host_rng
from layers import BatchNorm2D, Conv2D, Dropout, Flatten, Linear, MaxPool2D, ReLU

from .base import Model

WIDTHS = ((3, 32), (32, 64), (64, 128))


class CNN(Model):
    """Three blocks of two 3×3 convolutions, then a two-layer classifier.

    For (i, o) in (3, 32), (32, 64), (64, 128):
    Conv(i→o, 3×3, pad 1, no bias) → BatchNorm2D(o) → ReLU → Conv(o→o, 3×3, pad 1, no bias)
    → BatchNorm2D(o) → ReLU → MaxPool 2; then Flatten → Dropout(p) → Linear(2048, 256) →
    ReLU → Dropout(p) → Linear(256, 10).

    Shapes: (N, 3, 32, 32) → (N, 32, 16, 16) → (N, 64, 8, 8) → (N, 128, 4, 4) → (N, 2048)
    → (N, 256) → (N, 10) logits. The convolutions have no bias: the BatchNorm after each
    subtracts the channel's mean, which would cancel it, and adds its own β.
    Parameters are listed in that order (conv weight, then γ and β of its BatchNorm, ...).
    Weights follow PyTorch's default initialisation; the dropout masks are seeded from
    ``seed`` too (one stream per Dropout layer).
    """

    name = "cnn"

    def __init__(self, num_classes: int = 10, seed: int | None = 0, dropout: float = 0.3):
        rng = host_rng(seed)
        self.num_classes, self.dropout = num_classes, dropout
        layers = []
        for i, o in WIDTHS:
            layers += [Conv2D(i, o, 3, padding=1, bias=False, rng=rng), BatchNorm2D(o), ReLU(),
                       Conv2D(o, o, 3, padding=1, bias=False, rng=rng), BatchNorm2D(o), ReLU(), MaxPool2D(2)]
        layers += [Flatten(), Dropout(dropout, seed=seed, stream=1),
                   Linear(128 * 4 * 4, 256, rng=rng), ReLU(), Dropout(dropout, seed=seed, stream=2),
                   Linear(256, num_classes, rng=rng)]
        super().__init__(*layers)
