"""Linear: both engines under every policy against the reference, gradients against finite
differences (every backend and engine), views as inputs, launches per pass."""
from __future__ import annotations

import numpy as np
import pytest
from engine_check import check_engines
from helpers import backend_or_skip, check_layer

from backends import get_backend
from backends.counting import count_operations
from layers import Linear
from layers.linear import ENGINES, LinearParams


def test_linear_with_a_transposed_input(rng):
    layer = Linear(5, 3, rng=rng).to(get_backend("cpu"), "float64")
    columns = rng.standard_normal((5, 7))  # (in_features, N), so columns.T is an F-ordered view
    x = columns.T
    assert not x.flags.c_contiguous
    expected = np.ascontiguousarray(x) @ layer.weight.data.T + layer.bias.data
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal((7, 3)).T.copy().T  # a transposed gradient too
    np.testing.assert_allclose(layer.backward(dy), dy @ layer.weight.data, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad, dy.T @ np.ascontiguousarray(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch, bias", [(1, True), (4, True), (3, False)])
def test_linear_gradients(any_engine, rng, batch, bias):
    backend = any_engine
    check_layer(Linear(5, 3, bias=bias, rng=rng), rng.standard_normal((batch, 5)), backend, rng)


@pytest.mark.parametrize("batch, bias", [(1, True), (40, True), (33, False)])
def test_every_linear_engine_matches_the_reference_through_the_interface(policy, monkeypatch, batch, bias):
    """LinearReference and SplitLinear under this policy (split over threads even at these sizes)."""
    import backends.base as backend_base

    monkeypatch.setattr(backend_base, "MIN_WORK_PER_THREAD", 1)
    rng = np.random.default_rng(13)
    weight, bias_host = rng.standard_normal((48, 20)), rng.standard_normal(48) if bias else None
    x, dy = rng.standard_normal((batch, 20)), rng.standard_normal((batch, 48))

    def make_params(backend):
        return LinearParams(backend.asarray(weight), None if bias_host is None else backend.asarray(bias_host))

    check_engines(ENGINES, policy, make_params, x, dy)


def test_linear_launches_per_pass():
    """One matmul and one bias add forward; dW, db and dx backward (dW and db only for a first layer)."""
    strict = backend_or_skip("strict")
    layer = Linear(64, 10, rng=np.random.default_rng(0)).to(strict)
    x = strict.asarray(np.random.default_rng(1).standard_normal((16, 64)), dtype="float32")
    with count_operations() as forward:
        y = layer.forward(x)
    dy = strict.xp.ones(y.shape, dtype=y.dtype)
    with count_operations() as backward:
        layer.backward(dy)
    layer.forward(x)
    with count_operations() as first_layer:
        layer.backward_params(dy)
    assert (forward.operations, backward.operations, first_layer.operations) == (2, 3, 2)


def test_linear_without_bias_shapes_and_misuse(backend):
    """bias=False: no bias parameter, and it says so; every size must be positive; input must be (N, in)."""
    layer = Linear(4, 2, bias=False).to(backend, "float64")
    assert layer.bias is None and [p.shape for p in layer.parameters()] == [(2, 4)]
    assert repr(layer) == "Linear(4→2, bias=False)" and repr(Linear(4, 2)) == "Linear(4→2)"
    assert layer.output_shape((7, 4)) == (7, 2)
    for sizes, name in (((0, 2), "in_features"), ((4, 0), "out_features")):
        with pytest.raises(ValueError, match=f"^{name} must be a positive integer, got 0$"):
            Linear(*sizes)
    with pytest.raises(ValueError, match=r"^Linear\(4→2, bias=False\) expects input \(N, 4\), got \(2, 4, 3\)$"):
        layer.forward(backend.asarray(np.ones((2, 4, 3))))
    layer.eval().forward(backend.asarray(np.ones((2, 4))))  # keeps nothing for backward
    with pytest.raises(RuntimeError, match="backward called before forward"):
        layer.train().backward(backend.asarray(np.ones((2, 2))))


def test_the_fast_engine_tells_the_cpu_each_matmuls_cost_and_keeps_float32(monkeypatch, rng):
    """map_slices splits a call over the cores only when its work (2·N·in·out flops) is large
    enough to pay for the threads; dx comes back in the layer's dtype."""
    cpu = get_backend("cpu")
    works = []
    real = type(cpu).map_slices

    def recording(self, function, length, work=None):
        works.append(work)
        return real(self, function, length, work=work)

    monkeypatch.setattr(type(cpu), "map_slices", recording)
    layer = Linear(3, 5, rng=rng).to(cpu, "float32")
    x = cpu.asarray(rng.standard_normal((7, 3)), dtype="float32")
    layer.forward(x)
    dx = layer.backward(cpu.asarray(rng.standard_normal((7, 5)), dtype="float32"))
    assert works == [2 * 7 * 3 * 5] * 3  # forward, dW, dx
    assert dx.dtype == np.float32
