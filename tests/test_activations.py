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
