"""Dropout (layers/dropout.py): its gradient with its mask, masks that are fresh each step,
reproducible and the same on every backend, the identity in eval mode, a resumed run's masks, and
PyTorch in float64."""
from __future__ import annotations

import numpy as np
import pytest
from engine_check import check_engines
from helpers import MAX_RELATIVE_ERROR, numerical_gradient, relative_error

from backends.random import derive_key
from layers import Dropout
from layers.dropout import ENGINES, DropoutParams


def test_dropout_gradient_with_its_mask(any_engine, rng):
    """dx of Dropout is the mask's scale where kept, 0 elsewhere (the mask held fixed: same step)."""
    backend = any_engine
    layer = Dropout(0.4, seed=3).to(backend, "float64")
    x = rng.standard_normal((6, 5))

    def objective():
        layer.step = 0
        return float(np.sum(backend.to_numpy(layer.forward(backend.asarray(x))) * weights))

    weights = rng.standard_normal(x.shape)
    objective()
    dx = backend.to_numpy(layer.backward(backend.asarray(weights)))
    assert relative_error(dx, numerical_gradient(objective, x)) < MAX_RELATIVE_ERROR


def test_dropout_masks_are_fresh_reproducible_and_identical_across_backends(backend):
    from backends import get_backend

    x = np.ones((8, 50))
    layer, twin = Dropout(0.3, seed=5).to(backend, "float64"), Dropout(0.3, seed=5).to("cpu", "float64")
    first = backend.to_numpy(layer.forward(backend.asarray(x)))
    second = backend.to_numpy(layer.forward(backend.asarray(x)))
    assert not np.array_equal(first, second)  # a fresh mask at each forward
    np.testing.assert_array_equal(first, twin.forward(get_backend("cpu").asarray(x)))
    np.testing.assert_array_equal(second, twin.forward(get_backend("cpu").asarray(x)))
    assert set(np.unique(first)) == {0.0, 1 / 0.7}
    other_stream = Dropout(0.3, seed=5, stream=1).to(backend, "float64")
    assert not np.array_equal(first, backend.to_numpy(other_stream.forward(backend.asarray(x))))


def test_dropout_backward_applies_the_forward_mask(backend, rng):
    layer = Dropout(0.5, seed=0).to(backend, "float64")
    x, dy = rng.standard_normal((4, 30)) + 5, rng.standard_normal((4, 30))
    y = backend.to_numpy(layer.forward(backend.asarray(x)))
    dx = backend.to_numpy(layer.backward(backend.asarray(dy)))
    np.testing.assert_allclose(dx, dy * (y / x), rtol=1e-14)


def test_dropout_in_eval_is_the_identity_both_ways(backend, rng):
    layer = Dropout(0.5, seed=0).to(backend, "float64").eval()
    x = backend.asarray(rng.standard_normal((3, 4)))
    assert layer.forward(x) is x and layer.backward(x) is x  # backward without a forward, as in torch
    assert layer.step == 0


def test_dropout_resumes_its_masks_from_its_state(backend):
    x = backend.asarray(np.ones((4, 20)))
    layer = Dropout(0.5, seed=1).to(backend, "float64")
    layer.forward(x)
    state = layer.layer_state()
    expected = backend.to_numpy(layer.forward(x))
    resumed = Dropout(0.5, seed=1).to(backend, "float64")
    resumed.load_layer_state(state)
    np.testing.assert_array_equal(backend.to_numpy(resumed.forward(x)), expected)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan"), "0.3", True])
def test_dropout_probability_outside_zero_one_is_refused(p):
    with pytest.raises(ValueError, match=r"dropout probability p must be a number in \[0, 1\)"):
        Dropout(p)


def test_dropout_agrees_with_torch(rng):
    """torch's formula x·m/(1 - p), given our mask m; and the identity in eval."""
    torch = pytest.importorskip("torch")
    from backends import get_backend

    cpu = get_backend("cpu")
    ours = Dropout(0.3, seed=2).to(cpu, "float64")
    x, dy = rng.standard_normal((5, 40)), rng.standard_normal((5, 40))
    y, dx = ours.forward(x), ours.backward(dy)
    kept = torch.from_numpy((ours._cache != 0).astype(np.float64))
    xt = torch.from_numpy(x).requires_grad_()
    yt = xt * kept / (1 - 0.3)  # what torch.nn.functional.dropout computes with that mask
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=0)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=0)
    theirs = torch.nn.Dropout(0.3).eval()
    np.testing.assert_array_equal(ours.eval().forward(x), theirs(torch.from_numpy(x)).numpy())


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_the_dropout_engine_matches_the_reference_through_the_interface(policy, p):
    """The same mask (from the same key) and the same scale on every backend and policy."""
    rng = np.random.default_rng(18)
    x, dy = rng.standard_normal((6, 3, 5)), rng.standard_normal((6, 3, 5))
    check_engines(ENGINES, policy, lambda backend: DropoutParams(p, derive_key(3, 0, 7)), x, dy, rtol=1e-15, atol=0)
