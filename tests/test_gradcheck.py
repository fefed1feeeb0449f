"""Every backward pass against central finite differences, in float64, on every backend: each layer,
a small network of all of them, and the models with the loss (BatchNorm and Dropout: in test_batchnorm.py
and test_dropout.py)."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import MAX_RELATIVE_ERROR, check_layer, numerical_gradient, relative_error
from layers import Conv2D, CrossEntropyLoss, Dropout, Flatten, Linear, MaxPool2D, ReLU, Sequential, Softmax
from models import build_model


def tie_free(rng, shape, gap=0.01):
    """Distinct values at least ``gap`` apart and away from 0: no max-pool ties, no ReLU kinks."""
    count = int(np.prod(shape))
    values = (np.arange(count) - count / 2 + 0.5) * gap
    return rng.permutation(values).reshape(shape)


CONV_CASES = [
    # in, out, kernel, stride, padding, (H, W), batch, bias
    (3, 4, 3, 1, 0, (7, 7), 2, True),
    (2, 3, 3, 2, 1, (8, 9), 1, True),
    (1, 2, (2, 3), 1, 2, (5, 6), 2, True),
    (3, 2, (3, 1), (2, 1), (0, 1), (7, 5), 1, True),
    (2, 2, 5, 1, 2, (6, 6), 1, False),
    (2, 3, 4, 3, 2, (9, 10), 2, True),
    (2, 2, 2, 3, 1, (8, 7), 2, True),  # stride larger than the kernel
    (3, 2, 1, 2, 0, (5, 6), 1, True),  # 1x1 kernel
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"k{c[2]}-s{c[3]}-p{c[4]}-{c[5][0]}x{c[5][1]}-n{c[6]}")
def test_conv2d_gradients(backend, rng, case):
    cin, cout, kernel, stride, padding, (h, w), batch, bias = case
    layer = Conv2D(cin, cout, kernel, stride=stride, padding=padding, bias=bias, rng=rng)
    check_layer(layer, rng.standard_normal((batch, cin, h, w)), backend, rng)


def test_conv2d_backward_params_matches_backward(backend, rng):
    layer = Conv2D(2, 3, 3, padding=1, rng=rng).to(backend, "float64")
    x = backend.asarray(rng.standard_normal((2, 2, 5, 5)))
    dy = backend.asarray(rng.standard_normal((2, 3, 5, 5)))
    layer.forward(x)
    layer.backward(dy)
    full = [backend.to_numpy(p.grad) for p in layer.parameters()]
    layer.forward(x)
    assert layer.backward_params(dy) is None
    for expected, parameter in zip(full, layer.parameters()):
        np.testing.assert_array_equal(backend.to_numpy(parameter.grad), expected)


POOL_CASES = [
    # kernel, stride, (H, W), batch
    (2, None, (6, 6), 2),
    (3, 2, (7, 7), 1),  # overlapping windows
    ((2, 3), (1, 2), (5, 7), 2),  # non-square, overlapping
    (3, 1, (5, 5), 1),
    (2, None, (5, 7), 1),  # odd sizes: the last row/column is dropped
]


@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: f"k{c[0]}-s{c[1]}-{c[2][0]}x{c[2][1]}")
def test_maxpool_gradients(backend, rng, case):
    kernel, stride, (h, w), batch = case
    check_layer(MaxPool2D(kernel, stride), tie_free(rng, (batch, 3, h, w)), backend, rng)


@pytest.mark.parametrize("batch, bias", [(1, True), (4, True), (3, False)])
def test_linear_gradients(backend, rng, batch, bias):
    check_layer(Linear(5, 3, bias=bias, rng=rng), rng.standard_normal((batch, 5)), backend, rng)


@pytest.mark.parametrize(
    "layer, shape",
    [(ReLU(), (3, 4, 5)), (Flatten(), (2, 3, 4, 5)), (Softmax(), (4, 6)), (Softmax(axis=1), (2, 5, 3))],
    ids=["relu", "flatten", "softmax", "softmax-axis1"],
)
def test_parameter_free_gradients(backend, rng, layer, shape):
    check_layer(layer, tie_free(rng, shape, gap=0.05), backend, rng)


@pytest.mark.parametrize("batch, classes", [(1, 3), (5, 10)])
def test_cross_entropy_gradient(backend, rng, batch, classes):
    logits_host = rng.standard_normal((batch, classes)) * 3
    labels = backend.asarray(rng.integers(0, classes, size=batch))
    loss = CrossEntropyLoss()

    def objective() -> float:
        return float(backend.to_numpy(loss.forward(backend.asarray(logits_host), labels)))

    objective()
    analytic = backend.to_numpy(loss.backward())
    numeric = numerical_gradient(objective, logits_host)
    assert relative_error(analytic, numeric) < MAX_RELATIVE_ERROR


def test_small_cnn_gradients_end_to_end(backend, rng):
    """A stack of every layer, checked as one function: the chain rule is wired correctly."""
    network = Sequential(
        Conv2D(2, 3, 3, padding=1, rng=rng), MaxPool2D(2), ReLU(),
        Conv2D(3, 4, 2, stride=2, rng=rng), ReLU(), Flatten(), Linear(4 * 2 * 2, 5, rng=rng),
    )
    check_layer(network, rng.standard_normal((2, 2, 8, 8)), backend, rng)


@pytest.mark.parametrize("name", ["mlp", "lnet"])
def test_model_gradients_with_loss(backend, rng, name):
    """The whole model plus the loss, on sampled parameter entries (there are too many for all)."""
    model = build_model(name, seed=3).to(backend, "float64")
    images = rng.standard_normal((2, 3, 32, 32))
    labels = backend.asarray(np.array([1, 7]))
    loss = CrossEntropyLoss()
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


def test_cnn_gradients_with_loss(backend, rng):
    """The whole cnn and the loss, sampled entries of every parameter, dropout masks held fixed."""
    model = build_model("cnn", seed=3).to(backend, "float64")
    images, labels = rng.standard_normal((2, 3, 32, 32)), backend.asarray(np.array([1, 7]))
    loss = CrossEntropyLoss()
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
