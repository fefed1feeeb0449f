"""Dropout: inverted dropout, with its random numbers made on the device.

``InvertedDropout`` is its engine (layers/engine.py's interface): the definition is
already the fast form, so it is the reference and the fast engine at once.
"""
from __future__ import annotations

from dataclasses import dataclass

from backends import host_rng
from backends.random import derive_key, device_random

from .base import Layer
from .engine import Engines


@dataclass(frozen=True)
class DropoutParams:
    """What the dropout engine reads: the drop probability p and this forward's random key."""

    p: float
    key: int


class InvertedDropout:
    """``y = x · m / (1 - p)``, m a 0/1 mask with P(m = 0) = p drawn from ``key``; saved: m / (1 - p)."""

    @staticmethod
    def forward(xp, x, params: DropoutParams, work):
        if params.p == 0.0:
            return x, ()  # the identity, but still a training forward
        mask = device_random(work.backend).keep_mask(params.key, tuple(x.shape), params.p, x.dtype)
        return x * mask, mask

    @staticmethod
    def backward(xp, dy, mask, params=None, work=None, need_dx=True, out=None):
        """dx = dy · m / (1 - p): the same mask and scale."""
        return (dy if isinstance(mask, tuple) else dy * mask), {}


ENGINES = Engines(reference=InvertedDropout, cpu=InvertedDropout, launch_bound=InvertedDropout)


class Dropout(Layer):
    """``y = x · m / (1 - p)`` in training, with m a fresh 0/1 mask (P(m = 0) = p) at each forward.

    Any shape. Backward applies the same mask and scale: ``dx = dy · m / (1 - p)``. In
    eval mode the layer is the identity in both passes (backward passes dy through), as
    torch.nn.Dropout. Scaling in training ("inverted" dropout) keeps the expected
    activation equal to x, so eval needs no rescaling.

    The mask comes from the counter-based generator of backends/random.py, keyed by
    ``(seed, stream, step)``: ``step`` counts this layer's training forwards, so the masks
    are reproducible for a seed, the same on every backend, and a resumed run (which
    restores ``step`` from the checkpoint, see ``layer_state``) draws exactly what the
    uninterrupted run would have. ``stream`` tells apart layers that share a seed.
    ``seed=None`` draws one from the operating system.
    """

    def __init__(self, p: float = 0.5, seed: int | None = None, stream: int = 0):
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability p must be a number in [0, 1), got {p!r}")
        self.p = float(p)
        self.seed = int(host_rng(None).integers(2**62)) if seed is None else int(seed)
        self.stream = int(stream)
        self.step = 0

    def forward(self, x):
        self._check_input(x)
        if not self.training:
            self._cache = None
            return x
        params = DropoutParams(self.p, derive_key(self.seed, self.stream, self.step))
        self.step += 1
        y, self._cache = ENGINES.pick(self.backend).forward(self.xp, x, params, self.work)
        return y

    def backward(self, dy):
        if not self.training:
            return dy
        dx, _ = ENGINES.pick(self.backend).backward(self.xp, dy, self._saved(), None, self.work)
        return dx

    def layer_state(self) -> dict:
        return {"step": self.step}

    def load_layer_state(self, state: dict) -> None:
        step = state.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"{self!r}: saved step must be a whole number >= 0, got {step!r}")
        self.step = step

    def extra_repr(self) -> str:
        return f"p={self.p}"
