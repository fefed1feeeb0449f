"""Every fast path against the plain reference beside it, on every backend, in float64.

The layers keep one plain reference implementation each (the math in its simplest form)
and run a faster one chosen by the backend: the CPU's row-wise tiled convolution and
threaded pooling, or the launch-bound (GPU) forms with index gathers and fused kernels.
Each engine runs here on each backend it can run on, the other backend's policy imposed
with ``dataclasses.replace``, so the GPU's formulation is checked on the CPU too.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from backends import get_backend
from helpers import backend_or_skip, reference_conv2d, reference_maxpool
from layers import Conv2D, CrossEntropyLoss, MaxPool2D, ReLU
from layers.conv import conv2d_backward_reference, conv2d_reference
from layers.loss import cross_entropy_reference
from layers.pool import maxpool_backward_reference, maxpool_reference

# (backend name, the policy imposed): each engine on each backend that can run it
POLICIES = {
    "cpu-tiles": ("cpu", dict(launch_bound=False, threads=2, tile_bytes=3000)),
    "cpu-launch-bound": ("cpu", dict(launch_bound=True, threads=1, tile_bytes=None, work_bytes=None)),
    "strict-launch-bound": ("strict", dict(launch_bound=True, work_bytes=None)),
    "strict-chunked": ("strict", dict(launch_bound=True, work_bytes=4000)),  # im2col in chunks of a few images
    "strict-tiles": ("strict", dict(launch_bound=False, tile_bytes=3000)),
    "cuda": ("cuda", {}),
}


@pytest.fixture(params=list(POLICIES))
def policy(request):
    name, changes = POLICIES[request.param]
    backend = backend_or_skip(name)
    return dataclasses.replace(backend, **changes) if changes else backend


def host(backend, array):
    return np.asarray(backend.to_numpy(array), dtype=np.float64)


CONV_CASES = [
    # (in, out, kernel, stride, padding, input shape)
    (3, 4, 5, 1, 2, (5, 3, 12, 12)),
    (2, 3, 3, 2, 1, (4, 2, 9, 8)),
    (3, 2, (2, 4), (1, 3), (1, 0), (3, 3, 7, 11)),
    (2, 2, 1, 3, 0, (3, 2, 7, 7)),  # stride larger than the kernel: pixels nobody reads
    (1, 3, 3, 1, 0, (2, 1, 5, 6)),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda case: f"k{case[2]}-s{case[3]}-p{case[4]}")
def test_conv_engines_match_the_reference(policy, case):
    c, f, kernel, stride, padding, shape = case
    rng = np.random.default_rng(5)
    layer = Conv2D(c, f, kernel, stride=stride, padding=padding, rng=rng).to(policy, "float64")
    x = rng.standard_normal(shape)
    y = layer.forward(policy.asarray(x))
    dy = rng.standard_normal(tuple(y.shape))
    dx = layer.backward(policy.asarray(dy))

    cpu = get_backend("cpu")
    weight, bias = host(policy, layer.weight.data), host(policy, layer.bias.data)
    expected = conv2d_reference(cpu.xp, x, weight, bias, layer.stride, layer.padding)
    dx_ref, dw_ref, db_ref = conv2d_backward_reference(cpu.xp, x, weight, dy, layer.stride, layer.padding)
    np.testing.assert_allclose(host(policy, y), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(host(policy, dx), dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(host(policy, layer.weight.grad), dw_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(host(policy, layer.bias.grad), db_ref, rtol=1e-12, atol=1e-12)

    layer.forward(policy.asarray(x))  # the first layer of a network: parameter gradients only
    layer.weight.grad, layer.bias.grad = None, None
    layer.backward_params(policy.asarray(dy))
    np.testing.assert_allclose(host(policy, layer.weight.grad), dw_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CONV_CASES[:3], ids=lambda case: f"k{case[2]}-s{case[3]}-p{case[4]}")
def test_conv_reference_is_the_definition(case):
    """The reference itself against the definition written as a loop over output pixels."""
    c, f, kernel, stride, padding, shape = case
    rng = np.random.default_rng(6)
    layer = Conv2D(c, f, kernel, stride=stride, padding=padding, rng=rng).to("cpu", "float64")
    x = rng.standard_normal(shape)
    xp = get_backend("cpu").xp
    y = conv2d_reference(xp, x, layer.weight.data, layer.bias.data, layer.stride, layer.padding)
    np.testing.assert_allclose(y, reference_conv2d(x, layer.weight.data, layer.bias.data, layer.stride, layer.padding),
                               rtol=1e-12, atol=1e-12)


POOL_CASES = [((2, 2), None, (3, 4, 8, 8)), ((3, 3), (2, 2), (2, 3, 9, 7)), ((2, 3), (2, 1), (2, 2, 6, 7)),
              ((2, 2), None, (2, 3, 9, 8))]  # the last: an odd row no window covers


def ties(shape, rng):
    """Values with many exact ties inside windows (as after a ReLU): rounded, half of them 0."""
    return np.maximum(np.round(rng.standard_normal(shape)), 0.0)


@pytest.mark.parametrize("kernel, stride, shape", POOL_CASES)
def test_maxpool_paths_match_the_reference(policy, kernel, stride, shape):
    rng = np.random.default_rng(7)
    layer = MaxPool2D(kernel, stride).to(policy, "float64")
    for x in (rng.standard_normal(shape), ties(shape, rng)):
        y = layer.forward(policy.asarray(x))
        dy = rng.standard_normal(tuple(y.shape))
        dx = layer.backward(policy.asarray(dy))
        xp = get_backend("cpu").xp
        expected = maxpool_reference(xp, x, layer.kernel_size, layer.stride)
        np.testing.assert_array_equal(host(policy, y), expected)
        np.testing.assert_array_equal(host(policy, y), reference_maxpool(x, layer.kernel_size, layer.stride))
        np.testing.assert_allclose(host(policy, dx),
                                   maxpool_backward_reference(xp, x, expected, dy, layer.kernel_size, layer.stride),
                                   rtol=1e-15, atol=0)


def test_maxpool_ties_go_to_the_first_maximum_on_every_path(policy):
    x = np.array([[[[1.0, 3.0, 2.0, 2.0], [3.0, 0.0, 2.0, 2.0]]]])
    layer = MaxPool2D(2).to(policy, "float64")
    layer.forward(policy.asarray(x))
    dx = host(policy, layer.backward(policy.asarray(np.array([[[[1.0, 10.0]]]]))))
    np.testing.assert_array_equal(dx, [[[[0.0, 1.0, 10.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]])


def test_cross_entropy_matches_the_reference(policy):
    rng = np.random.default_rng(8)
    logits = rng.standard_normal((7, 5)) * 4
    logits[0] = [1000.0, 0.0, -1000.0, 3.0, 2.0]  # the stable form must not overflow
    labels = np.array([0, 4, 1, 1, 3, 2, 0])
    loss = CrossEntropyLoss()
    value = host(policy, loss.forward(policy.asarray(logits), policy.asarray(labels)))
    grad = host(policy, loss.backward(2.5))
    xp = get_backend("cpu").xp
    expected_value, expected_grad = cross_entropy_reference(xp, logits, labels)
    np.testing.assert_allclose(value, expected_value, rtol=1e-13)
    np.testing.assert_allclose(grad, 2.5 * expected_grad, rtol=1e-13, atol=1e-15)


def test_cross_entropy_reference_is_the_definition():
    rng = np.random.default_rng(9)
    logits, labels = rng.standard_normal((6, 4)), np.array([3, 0, 1, 2, 2, 1])
    value, grad = cross_entropy_reference(get_backend("cpu").xp, logits, labels)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert value == pytest.approx(-np.mean(np.log(probabilities[np.arange(6), labels])), rel=1e-13)
    onehot = np.eye(4)[labels]
    np.testing.assert_allclose(grad, (probabilities - onehot) / 6, rtol=1e-12)


def test_relu_backward_passes_gradient_only_where_positive(policy):
    x = np.array([[-1.0, 0.0, 2.0, 3.5]])
    relu = ReLU().to(policy, "float64")
    relu.forward(policy.asarray(x))
    np.testing.assert_array_equal(host(policy, relu.backward(policy.asarray(np.array([[5.0, 6.0, 7.0, 8.0]])))),
                                  [[0.0, 0.0, 7.0, 8.0]])


@pytest.mark.parametrize("shape", [(9, 3, 5, 4), (7, 4), (5, 3, 6)], ids=["2d", "1d", "1d-length"])
def test_batchnorm_paths_match_the_reference(policy, shape):
    """The fused whole-batch form and the CPU's tiles over threads (tile_bytes 3000: a few examples
    per tile, statistics merged across tiles and threads) against the plain reference."""
    from layers import BatchNorm1D, BatchNorm2D
    from layers.batchnorm import batchnorm_backward_reference, batchnorm_reference

    rng = np.random.default_rng(11)
    c = shape[1]
    layer = (BatchNorm2D if len(shape) == 4 else BatchNorm1D)(c).to(policy, "float64")
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    layer.weight.data, layer.bias.data = policy.asarray(gamma), policy.asarray(beta)
    x, dy = rng.standard_normal(shape) * 4 + 30, rng.standard_normal(shape)  # a large mean: no cancellation allowed
    y = layer.forward(policy.asarray(x))
    dx = layer.backward(policy.asarray(dy))
    xp, axes = get_backend("cpu").xp, (0,) + tuple(range(2, len(shape)))
    y_ref, mean, var = batchnorm_reference(xp, x, gamma, beta, axes, 1e-5)
    dx_ref, dgamma_ref, dbeta_ref = batchnorm_backward_reference(xp, x, gamma, dy, axes, 1e-5)
    count = x.size // c
    for actual, expected in ((y, y_ref), (dx, dx_ref), (layer.weight.grad, dgamma_ref), (layer.bias.grad, dbeta_ref),
                             (layer.running_mean, 0.1 * mean), (layer.running_var, 0.9 + 0.1 * var * count / (count - 1))):
        np.testing.assert_allclose(host(policy, actual), expected, rtol=1e-11, atol=1e-12)
    layer.forward(policy.asarray(x))
    layer.weight.grad = layer.bias.grad = None
    assert layer.backward_params(policy.asarray(dy)) is None
    np.testing.assert_allclose(host(policy, layer.weight.grad), dgamma_ref, rtol=1e-11, atol=1e-12)
