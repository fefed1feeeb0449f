"""The models xpnet trains, and a registry to build them by name."""
from __future__ import annotations

from .base import Model
from .lnet import LNet
from .mlp import MLP

MODELS = {"lnet": LNet, "mlp": MLP}


def build_model(name: str, seed: int | None = 0, backend="cpu", dtype="float32") -> Model:
    """The model called ``name`` ("lnet" or "mlp"), initialised from ``seed`` and moved to ``backend``."""
    try:
        model_class = MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(sorted(MODELS))}") from None
    return model_class(seed=seed).to(backend, dtype)


__all__ = ["LNet", "MLP", "MODELS", "Model", "build_model"]
