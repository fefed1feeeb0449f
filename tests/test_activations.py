"""ReLU, Flatten, Softmax: ReLU's engines under every policy against its reference, and every
parameter-free layer's gradient against finite differences (every backend and engine)."""
from __future__ import annotations

import numpy as np
import pytest
from engine_check import check_engines, host
from helpers import backend_or_skip, check_layer, tie_free

from backends.counting import count_operations
from layers import Flatten, ReLU, Softmax
from layers.activations import RELU_ENGINES


def test_relu_backward_passes_gradient_only_where_positive(policy):
    x = np.array([[-1.0, 0.0, 2.0, 3.5]])
    relu = ReLU().to(policy, "float64")
    relu.forward(policy.asarray(x))
    np.testing.assert_array_equal(host(policy, relu.backward(policy.asarray(np.array([[5.0, 6.0, 7.0, 8.0]])))),
                                  [[0.0, 0.0, 7.0, 8.0]])


@pytest.mark.parametrize(
    "layer, shape",
    [(ReLU(), (3, 4, 5)), (Flatten(), (2, 3, 4, 5)), (Softmax(), (4, 6)), (Softmax(axis=1), (2, 5, 3))],
    ids=["relu", "flatten", "softmax", "softmax-axis1"],
)
def test_parameter_free_gradients(any_engine, rng, layer, shape):
    backend = any_engine
    check_layer(layer, tie_free(rng, shape, gap=0.05), backend, rng)


def test_every_relu_engine_matches_the_reference_through_the_interface(policy):
    rng = np.random.default_rng(16)
    x = np.round(rng.standard_normal((4, 3, 5)) * 2) / 2  # zeros included: the kink goes to 0 on every path
    check_engines(RELU_ENGINES, policy, lambda backend: None, x, rng.standard_normal(x.shape), rtol=0, atol=0)


def test_relu_launches_per_pass():
    strict = backend_or_skip("strict")
    relu = ReLU().to(strict)
    x = strict.asarray(np.random.default_rng(0).standard_normal((8, 20)), dtype="float32")
    relu.forward(x)
    relu.backward(x)  # the 0-d zero is made once, not counted below
    with count_operations() as forward:
        relu.forward(x)
    with count_operations() as backward:
        relu.backward(x)
    assert (forward.operations, backward.operations) == (1, 1)


def test_softmax_is_exact_for_rows_of_any_scale(backend):
    """Each row is shifted by its own maximum: no overflow at 1000, no underflow of a row far below another."""
    x = np.array([[1000.0, 999.0, 998.0], [0.0, -1.0, -2.0], [-1000.0, -1001.0, -1002.0]])
    expected = np.exp([0.0, -1.0, -2.0]) / np.exp([0.0, -1.0, -2.0]).sum()
    for layer, data in ((Softmax(), x), (Softmax(axis=0), x.T)):
        y = backend.to_numpy(layer.to(backend, "float64").forward(backend.asarray(data)))
        np.testing.assert_allclose(y if layer.axis == -1 else y.T, np.tile(expected, (3, 1)), rtol=1e-12)


@pytest.mark.parametrize("layer", [ReLU(), Flatten(), Softmax()], ids=["relu", "flatten", "softmax"])
def test_an_eval_forward_keeps_nothing_for_backward(backend, layer):
    layer = layer.to(backend, "float64").eval()
    x = backend.asarray(np.ones((2, 3)))
    layer.forward(x)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        layer.train().backward(x)


def test_flatten_takes_two_or_more_dimensions_and_says_its_output_shape(backend):
    flatten = Flatten().to(backend)
    assert tuple(flatten.forward(backend.asarray(np.ones((3, 4)))).shape) == (3, 4)  # already flat
    with pytest.raises(ValueError, match=r"^Flatten\(\) expects input \(N, \.\.\.\) with at least 2 dimensions, got \(5,\)$"):
        flatten.forward(backend.asarray(np.ones(5)))
    assert flatten.output_shape((7, 3, 4, 5)) == (7, 60)
    assert flatten.output_shape((7, 6)) == (7, 6)
