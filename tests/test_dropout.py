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


def test_dropout_defaults_and_the_ends_of_p():
    """p = 0.5 by default, as in torch; p = 0 is accepted: the identity, at no cost (no mask drawn)."""
    from backends import get_backend
    from backends.counting import count_operations

    assert Dropout().p == 0.5
    strict = get_backend("strict")
    layer = Dropout(0.0, seed=1).to(strict, "float32")
    x = strict.asarray(np.ones((4, 5)), dtype="float32")
    with count_operations() as counts:
        y = layer.forward(x)
        dx = layer.backward(x)
    assert y is x and dx is x and counts.operations == 0 and layer.step == 1


def test_dropout_without_a_seed_draws_one_per_layer():
    seeds = {Dropout(0.5).seed for _ in range(50)}
    assert len(seeds) == 50  # 50 different seeds from [0, 2**62): a collision would be a broken draw


def test_dropout_masks_depend_on_the_seed_and_count_the_forwards(backend):
    x = backend.asarray(np.ones((4, 50)))
    layer = Dropout(0.5, seed=5).to(backend, "float64")
    masks = [backend.to_numpy(layer.forward(x)) for _ in range(3)]
    assert layer.step == 3  # the key of the next mask, and what a checkpoint saves
    assert not np.array_equal(masks[1], masks[2]) and not np.array_equal(masks[0], masks[2])
    other_seed = Dropout(0.5, seed=6).to(backend, "float64")
    assert not np.array_equal(backend.to_numpy(other_seed.forward(x)), masks[0])


def test_dropout_keeps_float32_and_draws_the_float64_mask(backend):
    x = np.ones((4, 30))
    y32 = Dropout(0.4, seed=2).to(backend, "float32").forward(backend.asarray(x, dtype="float32"))
    y64 = Dropout(0.4, seed=2).to(backend, "float64").forward(backend.asarray(x, dtype="float64"))
    assert y32.dtype == backend.dtype("float32")
    np.testing.assert_allclose(backend.to_numpy(y32), backend.to_numpy(y64), rtol=1e-7)


def test_dropout_backward_after_an_eval_forward_is_a_clear_error(backend):
    layer = Dropout(0.5, seed=0).to(backend, "float64").eval()
    x = backend.asarray(np.ones((2, 3)))
    layer.forward(x)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        layer.train().backward(x)


def test_dropout_load_layer_state_accepts_whole_numbers_from_zero():
    layer = Dropout(0.5, seed=0)
    layer.load_layer_state({"step": 0})
    assert layer.step == 0
    for bad in (-1, 2.5, True, None, "3"):
        with pytest.raises(ValueError, match=rf"^Dropout\(p=0.5\): saved step must be a whole number >= 0, got {bad!r}$"):
            layer.load_layer_state({"step": bad})
