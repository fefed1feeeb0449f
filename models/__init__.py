"""The models xpnet trains, and a registry to build them by name."""
from __future__ import annotations

from .base import Model
from .cnn import CNN
from .lnet import LNet
from .mlp import MLP

MODELS = {"lnet": LNet, "mlp": MLP, "cnn": CNN}


def build_model(name: str, seed: int | None = 0, backend="cpu", dtype="float32", **options) -> Model:
    """The model called ``name`` ("lnet", "mlp" or "cnn"), initialised from ``seed`` and moved to ``backend``.

    ``options`` go to the model's constructor (``dropout=0.5`` for the cnn).
    """
    try:
        model_class = MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(sorted(MODELS))}") from None
    return model_class(seed=seed, **options).to(backend, dtype)


__all__ = ["CNN", "LNet", "MLP", "MODELS", "Model", "build_model"]
