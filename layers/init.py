"""PyTorch's default initialisation, drawn on the host so every backend gets the same numbers."""
from __future__ import annotations

import math

from backends import host_rng


def uniform_fan_in(rng, shape: tuple[int, ...], fan_in: int):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as float32 on the host.

    This is what torch.nn.Linear and torch.nn.Conv2d do by default: kaiming_uniform_ with
    a=sqrt(5) for the weight gives exactly this bound, and the bias uses the same one.
    """
    bound = 1.0 / math.sqrt(fan_in)
    rng = host_rng(None) if rng is None else rng
    return rng.uniform(-bound, bound, size=shape).astype("float32")
