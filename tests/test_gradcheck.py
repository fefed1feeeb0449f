"""Every backward pass of a network against central finite differences, in float64, on every backend and
with the reference engines: a small network of every layer, and the models with the loss (each layer's own
check is in its test file: test_conv.py, test_pool.py, test_linear.py, ...)."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import MAX_RELATIVE_ERROR, check_layer, numerical_gradient, relative_error

from layers import Conv2D, CrossEntropyLoss, Dropout, Flatten, Linear, MaxPool2D, ReLU, Sequential
from models import build_model


def test_small_cnn_gradients_end_to_end(any_engine, rng):
    """A stack of every layer, checked as one function: the chain rule is wired correctly."""
    backend = any_engine
    network = Sequential(
        Conv2D(2, 3, 3, padding=1, rng=rng), MaxPool2D(2), ReLU(),
        Conv2D(3, 4, 2, stride=2, rng=rng), ReLU(), Flatten(), Linear(4 * 2 * 2, 5, rng=rng),
    )
    check_layer(network, rng.standard_normal((2, 2, 8, 8)), backend, rng)


@pytest.mark.parametrize("name", ["mlp", "lnet"])
def test_model_gradients_with_loss(any_engine, rng, name):
    """The whole model plus the loss, on sampled parameter entries (there are too many for all)."""
    backend = any_engine
    model = build_model(name, seed=3).to(backend, "float64")
    images = rng.standard_normal((2, 3, 32, 32))
    labels = backend.asarray(np.array([1, 7]))
    loss = CrossEntropyLoss().to(backend)
    host_params = [backend.to_numpy(p.data).copy() for p in model.parameters()]

    def objective() -> float:
        for parameter, host in zip(model.parameters(), host_params):
            parameter.data = backend.asarray(host)
        return float(backend.to_numpy(loss.forward(model.forward(backend.asarray(images)), labels)))

    objective()
    model.backward(loss.backward(), input_grad=False)
    for parameter, host in zip(model.parameters(), host_params):
        analytic = backend.to_numpy(parameter.grad)
        indices = rng.choice(host.size, min(host.size, 12), replace=False)
        numeric = numerical_gradient(objective, host, indices=indices)
        error = relative_error(analytic, numeric)
        assert error < MAX_RELATIVE_ERROR, f"{name} {parameter.name}: relative error {error:.2e}"


def dropout_steps(model):
    return [layer for layer in getattr(model, "layers", [model]) if isinstance(layer, Dropout)]


def test_cnn_gradients_with_loss(any_engine, rng):
    """The whole cnn and the loss, sampled entries of every parameter, dropout masks held fixed."""
    backend = any_engine
    model = build_model("cnn", seed=3).to(backend, "float64")
    images, labels = rng.standard_normal((2, 3, 32, 32)), backend.asarray(np.array([1, 7]))
    loss = CrossEntropyLoss().to(backend)
    host_params = [backend.to_numpy(p.data).copy() for p in model.parameters()]

    def objective() -> float:
        for parameter, host in zip(model.parameters(), host_params):
            parameter.data = backend.asarray(host)
        for layer in dropout_steps(model):
            layer.step = 0
        return float(backend.to_numpy(loss.forward(model.forward(backend.asarray(images)), labels)))

    objective()
    model.backward(loss.backward(), input_grad=False)
    for parameter, host in zip(model.parameters(), host_params):
        indices = rng.choice(host.size, min(host.size, 4), replace=False)
        error = relative_error(backend.to_numpy(parameter.grad), numerical_gradient(objective, host, indices=indices))
        assert error < MAX_RELATIVE_ERROR, f"cnn {parameter.name}: relative error {error:.2e}"
