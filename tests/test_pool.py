"""MaxPool2D: the definition, ties to the first maximum, every engine under every policy against
the reference, gradients against finite differences (every backend and engine), launches per pass."""
from __future__ import annotations

import numpy as np
import pytest
from engine_check import check_engines, host
from helpers import assert_close, backend_or_skip, check_layer, reference_maxpool, tie_free

from backends import get_backend
from backends.counting import count_operations
from layers import MaxPool2D
from layers.pool import ENGINES, PoolParams, maxpool_backward_reference, maxpool_reference


@pytest.mark.parametrize("kernel, stride, shape", [(2, None, (2, 3, 8, 8)), (3, 2, (1, 2, 9, 7)), ((2, 3), (2, 1), (2, 1, 6, 7))])
def test_maxpool_forward_matches_definition(backend, dtype, rng, kernel, stride, shape):
    layer = MaxPool2D(kernel, stride).to(backend)
    x = rng.standard_normal(shape)
    y = layer.forward(backend.asarray(x, dtype=dtype))
    assert_close(backend.to_numpy(y), reference_maxpool(x, layer.kernel_size, layer.stride), dtype, "maxpool forward")


def test_maxpool_each_window_is_its_own(backend):
    """The seed's bug sliced x[i:(i+1)*size]: windows must be [i*size:(i+1)*size]."""
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    y = MaxPool2D(2).to(backend).forward(backend.asarray(x))
    np.testing.assert_array_equal(backend.to_numpy(y), [[[[5.0, 7.0], [13.0, 15.0]]]])


def test_maxpool_gradient_goes_to_first_maximum_only(backend):
    """Ties: PyTorch sends the whole gradient to the first maximum in the window."""
    x = np.array([[[[1.0, 3.0, 2.0, 2.0], [3.0, 0.0, 2.0, 2.0]]]])
    layer = MaxPool2D(2).to(backend, "float64")
    layer.forward(backend.asarray(x))
    dx = backend.to_numpy(layer.backward(backend.asarray(np.array([[[[1.0, 10.0]]]]))))
    np.testing.assert_array_equal(dx, [[[[0.0, 1.0, 10.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]])


def test_overlapping_pool_gradients_add_up(backend):
    x = np.array([[[[0.0, 1.0, 9.0, 2.0, 3.0]]]])  # 9 is the maximum of both windows
    layer = MaxPool2D((1, 3), (1, 2)).to(backend, "float64")
    layer.forward(backend.asarray(x))
    dx = backend.to_numpy(layer.backward(backend.asarray(np.array([[[[2.0, 5.0]]]]))))
    np.testing.assert_array_equal(dx, [[[[0.0, 0.0, 7.0, 0.0, 0.0]]]])


PATH_CASES = [((2, 2), None, (3, 4, 8, 8)), ((3, 3), (2, 2), (2, 3, 9, 7)), ((2, 3), (2, 1), (2, 2, 6, 7)),
              ((2, 2), None, (2, 3, 9, 8))]  # the last: an odd row no window covers


def ties(shape, rng):
    """Values with many exact ties inside windows (as after a ReLU): rounded, half of them 0."""
    return np.maximum(np.round(rng.standard_normal(shape)), 0.0)


@pytest.mark.parametrize("kernel, stride, shape", PATH_CASES)
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


POOL_GRAD_CASES = [
    # kernel, stride, (H, W), batch
    (2, None, (6, 6), 2),
    (3, 2, (7, 7), 1),  # overlapping windows
    ((2, 3), (1, 2), (5, 7), 2),  # non-square, overlapping
    (3, 1, (5, 5), 1),
    (2, None, (5, 7), 1),  # odd sizes: the last row/column is dropped
]


@pytest.mark.parametrize("case", POOL_GRAD_CASES, ids=lambda c: f"k{c[0]}-s{c[1]}-{c[2][0]}x{c[2][1]}")
def test_maxpool_gradients(any_engine, rng, case):
    backend = any_engine
    kernel, stride, (h, w), batch = case
    check_layer(MaxPool2D(kernel, stride), tie_free(rng, (batch, 3, h, w)), backend, rng)


@pytest.mark.parametrize("kernel, stride, shape", PATH_CASES)
def test_every_pool_engine_matches_the_reference_through_the_interface(policy, kernel, stride, shape):
    """PoolReference, ThreadedPool and WindowPool under this policy, inputs with and without ties."""
    rng = np.random.default_rng(14)
    layer = MaxPool2D(kernel, stride)
    for x in (rng.standard_normal(shape), ties(shape, rng)):
        dy = rng.standard_normal(layer.output_shape(shape))
        check_engines(ENGINES, policy, lambda backend: PoolParams(layer.kernel_size, layer.stride), x, dy,
                      rtol=1e-15, atol=0)


def test_pool_launches_per_pass():
    """Windows that tile the input: one reduction forward, two fused kernels back (docs/math.md)."""
    strict = backend_or_skip("strict")
    layer = MaxPool2D(2).to(strict)
    x = strict.asarray(np.random.default_rng(1).standard_normal((8, 6, 28, 28)), dtype="float32")
    layer.forward(x)
    layer.backward(strict.xp.ones((8, 6, 14, 14), dtype=x.dtype))  # the ranks are made once, not counted below
    with count_operations() as forward:
        y = layer.forward(x)
    dy = strict.xp.ones(y.shape, dtype=y.dtype)
    with count_operations() as backward:
        layer.backward(dy)
    assert (forward.operations, backward.operations) == (1, 2)


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_maxpool_keeps_float32_and_routes_overlapping_rows(engine, rng):
    """float32 in, float32 out both ways; windows that overlap in rows only (kernel 2, stride 1 on
    a 3×2 input: one window across) add their gradients where both peak, never overwrite."""
    for name in ("cpu", "strict"):
        backend = get_backend(name, engine=engine)
        pool = MaxPool2D(2, stride=2).to(backend, "float32")
        y = pool.forward(backend.asarray(tie_free(rng, (2, 3, 4, 4)), dtype="float32"))
        dx = pool.backward(backend.asarray(np.ones((2, 3, 2, 2)), dtype="float32"))
        assert y.dtype == dx.dtype == backend.dtype("float32"), name
        both_windows_peak_in_the_middle_row = np.array([[[[0.0, 0.1], [5.0, 5.1], [1.0, 1.1]]]])
        check_layer(MaxPool2D(2, stride=1), both_windows_peak_in_the_middle_row, backend, rng)


def test_maxpool_output_is_not_a_view_of_its_input():
    """A 1×1 window is the identity, but y is a copy: writing into x afterwards leaves y alone."""
    backend = get_backend("cpu", engine="reference")
    x = np.arange(8.0).reshape(1, 2, 2, 2)
    y = MaxPool2D(1).to(backend, "float64").forward(x)
    x[...] = -1.0
    np.testing.assert_array_equal(y, np.arange(8.0).reshape(1, 2, 2, 2))


def test_maxpool_misuse_and_repr(backend):
    assert repr(MaxPool2D(2)) == "MaxPool2D(kernel_size=(2, 2))"
    assert repr(MaxPool2D(2, stride=1)) == "MaxPool2D(kernel_size=(2, 2), stride=(1, 1))"
    with pytest.raises(ValueError, match="^stride must be an int or a pair of ints ≥ 1, got 0$"):
        MaxPool2D(2, stride=0)
    pool = MaxPool2D(3).to(backend, "float64")
    for shape in ((1, 1, 5, 2), (1, 1, 2, 5)):  # too small in one dimension only
        with pytest.raises(ValueError, match=r"input \(1, 1, \d, \d\) is smaller than the 3x3 window"):
            pool.forward(backend.asarray(np.zeros(shape)))
    pool.eval().forward(backend.asarray(np.zeros((1, 1, 3, 3))))  # keeps nothing for backward
    with pytest.raises(RuntimeError, match="backward called before forward"):
        pool.train().backward(backend.asarray(np.zeros((1, 1, 1, 1))))
