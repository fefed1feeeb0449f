"""Hand-written layers: every forward and backward pass, written once against ``xp``.

No module here imports NumPy or CuPy: each layer uses the ``xp`` namespace of the
backend it was moved to with ``layer.to(backend)``.
"""
from .activations import Flatten, ReLU, Softmax
from .base import Layer, Sequential
from .batchnorm import BatchNorm1D, BatchNorm2D
from .conv import Conv2D
from .dropout import Dropout
from .gradcheck import gradcheck
from .linear import Linear
from .loss import CrossEntropyLoss
from .parameter import Parameter
from .pool import MaxPool2D

__all__ = [
    "BatchNorm1D",
    "BatchNorm2D",
    "Conv2D",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "Layer",
    "Linear",
    "MaxPool2D",
    "Parameter",
    "ReLU",
    "Sequential",
    "Softmax",
    "gradcheck",
]
