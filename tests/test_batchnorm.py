"""BatchNorm2D and BatchNorm1D (layers/batchnorm.py): gradients against finite differences, every
backend against the plain references, and PyTorch in float64 (train and eval, running statistics
included)."""
from __future__ import annotations

import numpy as np
import pytest
from engine_check import check_engines, host
from helpers import MAX_RELATIVE_ERROR, assert_close, check_layer, numerical_gradient, relative_error

from backends import get_backend
from layers import BatchNorm1D, BatchNorm2D, Sequential
from layers.batchnorm import ENGINES, BatchNormParams, batchnorm_backward_reference, batchnorm_reference

BN_CASES = [(BatchNorm2D, (3, 4, 5, 6)), (BatchNorm1D, (7, 4)), (BatchNorm1D, (3, 4, 5))]
BN_IDS = ["2d", "1d", "1d-length"]


@pytest.mark.parametrize("make, shape", BN_CASES, ids=BN_IDS)
def test_batchnorm_gradients(any_engine, rng, make, shape):
    backend = any_engine
    layer = make(shape[1])
    layer.to(backend, "float64")
    layer.weight.data = backend.asarray(rng.uniform(0.5, 1.5, shape[1]))  # γ, β away from their 1, 0
    layer.bias.data = backend.asarray(rng.standard_normal(shape[1]))
    check_layer(layer, rng.standard_normal(shape) * 2 + 1, backend, rng)


@pytest.mark.parametrize("make, shape", BN_CASES, ids=BN_IDS)
def test_batchnorm_matches_the_reference(backend, dtype, rng, make, shape):
    from backends import get_backend

    c = shape[1]
    layer = make(c, momentum=0.2).to(backend, dtype)
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    layer.weight.data, layer.bias.data = backend.asarray(gamma), backend.asarray(beta)
    x, dy = rng.standard_normal(shape) * 3 + 2, rng.standard_normal(shape)
    y = layer.forward(backend.asarray(x, dtype=dtype))
    dx = layer.backward(backend.asarray(dy, dtype=dtype))
    xp, axes = get_backend("cpu").xp, (0,) + tuple(range(2, len(shape)))
    y_ref, mean, var = batchnorm_reference(xp, x, gamma, beta, axes, 1e-5)
    dx_ref, dgamma_ref, dbeta_ref = batchnorm_backward_reference(xp, x, gamma, dy, axes, 1e-5)
    count = x.size // c
    for actual, expected, what in ((y, y_ref, "y"), (dx, dx_ref, "dx"), (layer.weight.grad, dgamma_ref, "dgamma"),
                                   (layer.bias.grad, dbeta_ref, "dbeta"),
                                   (layer.running_mean, 0.2 * mean, "running_mean"),
                                   (layer.running_var, 0.8 + 0.2 * var * count / (count - 1), "running_var")):
        assert_close(backend.to_numpy(actual), expected, dtype, what)
    layer.eval()  # the running statistics now normalise
    expected = (x - layer_host(backend, layer.running_mean, c, len(shape))) / np.sqrt(
        layer_host(backend, layer.running_var, c, len(shape)) + 1e-5) * gamma.reshape((1, c) + (1,) * (len(shape) - 2)) \
        + beta.reshape((1, c) + (1,) * (len(shape) - 2))
    assert_close(backend.to_numpy(layer.forward(backend.asarray(x, dtype=dtype))), expected, dtype, "eval y")


def layer_host(backend, array, c, ndim):
    return np.asarray(backend.to_numpy(array), dtype=np.float64).reshape((1, c) + (1,) * (ndim - 2))


def test_batchnorm_reference_backward_is_the_derivative(rng):
    """The reference backward itself against finite differences of the reference forward."""
    from backends import get_backend

    xp = get_backend("cpu").xp
    x, gamma, beta, r = rng.standard_normal((4, 3, 2, 2)), rng.uniform(0.5, 1.5, 3), rng.standard_normal(3), \
        rng.standard_normal((4, 3, 2, 2))
    dx, dgamma, dbeta = batchnorm_backward_reference(xp, x, gamma, r, (0, 2, 3), 1e-5)
    for analytic, array in ((dx, x), (dgamma, gamma), (dbeta, beta)):
        numeric = numerical_gradient(lambda: float(np.sum(batchnorm_reference(xp, x, gamma, beta, (0, 2, 3), 1e-5)[0] * r)),
                                     array)
        assert relative_error(analytic, numeric) < MAX_RELATIVE_ERROR


def test_batchnorm_buffers_move_with_the_layer_and_are_not_parameters(backend):
    layer = BatchNorm2D(3)
    layer.running_mean[...] = 0.5
    layer.to(backend, "float64")
    assert backend.is_array(layer.running_mean) and layer.running_mean.dtype == backend.xp.float64
    np.testing.assert_array_equal(backend.to_numpy(layer.running_mean), [0.5] * 3)
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    assert [name for name, _ in Sequential(BatchNorm2D(2), BatchNorm1D(2)).named_buffers()] == \
        ["0.running_mean", "0.running_var", "1.running_mean", "1.running_var"]


@pytest.mark.parametrize("make, message", [
    (lambda: BatchNorm2D(0), "num_features must be a positive integer"),
    (lambda: BatchNorm2D(3, eps=0), "eps must be a positive number"),
    (lambda: BatchNorm1D(3, momentum=1.5), r"momentum must be a number in \[0, 1\]"),
])
def test_bad_batchnorm_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_batchnorm_input_errors():
    from backends import get_backend

    cpu = get_backend("cpu")
    with pytest.raises(ValueError, match=r"BatchNorm2D\(3\) expects input \(N, C, H, W\) with C = num_features, got \(2, 4, 5, 5\)"):
        BatchNorm2D(3).forward(cpu.asarray(np.zeros((2, 4, 5, 5)), dtype="float32"))
    with pytest.raises(ValueError, match=r"BatchNorm1D\(3\) expects input \(N, C\) or \(N, C, L\)"):
        BatchNorm1D(3).forward(cpu.asarray(np.zeros((2, 3, 5, 5)), dtype="float32"))
    with pytest.raises(ValueError, match="more than one value per channel"):
        BatchNorm1D(3).forward(cpu.asarray(np.zeros((1, 3)), dtype="float32"))
    layer = BatchNorm1D(3).eval()  # one example is fine in eval
    assert layer.forward(cpu.asarray(np.zeros((1, 3)), dtype="float32")).shape == (1, 3)


@pytest.mark.parametrize("make, shape", BN_CASES, ids=BN_IDS)
def test_batchnorm_agrees_with_torch(rng, make, shape):
    torch = pytest.importorskip("torch")
    from backends import get_backend

    cpu = get_backend("cpu")
    c = shape[1]
    ours = make(c, momentum=0.3).to(cpu, "float64")
    theirs = (torch.nn.BatchNorm2d if make is BatchNorm2D else torch.nn.BatchNorm1d)(c, momentum=0.3).double()
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    ours.weight.data, ours.bias.data = gamma, beta
    with torch.no_grad():
        theirs.weight.copy_(torch.from_numpy(gamma))
        theirs.bias.copy_(torch.from_numpy(beta))
    for step in range(3):  # three training steps move the running statistics
        x, dy = rng.standard_normal(shape) * 2 + step, rng.standard_normal(shape)
        xt = torch.from_numpy(x).requires_grad_()
        yt = theirs(xt)
        yt.backward(torch.from_numpy(dy))
        y = ours.forward(x)
        dx = ours.backward(dy)
        for actual, expected in ((y, yt.detach()), (dx, xt.grad), (ours.weight.grad, theirs.weight.grad),
                                 (ours.bias.grad, theirs.bias.grad), (ours.running_mean, theirs.running_mean),
                                 (ours.running_var, theirs.running_var)):
            np.testing.assert_allclose(actual, expected.numpy(), rtol=1e-10, atol=1e-12)
        theirs.weight.grad = theirs.bias.grad = None
    ours.eval(), theirs.eval()
    x = rng.standard_normal(shape)
    np.testing.assert_allclose(ours.forward(x), theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-10, atol=1e-12)


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


@pytest.mark.parametrize("shape", [(9, 3, 5, 4), (7, 4), (5, 3, 6)], ids=["2d", "1d", "1d-length"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_every_batchnorm_engine_matches_the_reference_through_the_interface(policy, shape, training):
    """BatchNormReference, TiledBatchNorm and FusedBatchNorm under this policy, the running
    statistics they update included (a large mean: no cancellation allowed)."""
    rng = np.random.default_rng(17)
    c = shape[1]
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    running_mean, running_var = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
    x, dy = rng.standard_normal(shape) * 4 + 30, rng.standard_normal(shape)

    def make_params(backend):
        return BatchNormParams(backend.asarray(gamma), backend.asarray(beta), backend.asarray(running_mean.copy()),
                               backend.asarray(running_var.copy()), 1e-5, 0.1, training)

    if training:
        check_engines(ENGINES, policy, make_params, x, dy, state=("running_mean", "running_var"), rtol=1e-11,
                      atol=1e-12)
    else:  # eval: a forward only (no backward in eval mode)
        from layers.engine import Workspace

        expected, _ = ENGINES.reference.forward(get_backend("cpu").xp, x, make_params(get_backend("cpu")))
        for kind in ("reference", "cpu", "launch_bound"):
            y, saved = getattr(ENGINES, kind).forward(policy.xp, policy.asarray(x), make_params(policy),
                                                      Workspace(policy))
            assert saved is None
            np.testing.assert_allclose(host(policy, y), expected, rtol=1e-12, atol=1e-12)


def test_batchnorm_momentum_ends_are_accepted():
    """momentum 0 keeps the running statistics, momentum 1 replaces them by the batch's (unbiased var)."""
    cpu = get_backend("cpu")
    x = cpu.asarray(np.array([[1.0, 2.0], [3.0, 6.0]]), dtype="float32")
    frozen, follows = BatchNorm1D(2, momentum=0.0), BatchNorm1D(2, momentum=1)
    frozen.forward(x)
    follows.forward(x)
    np.testing.assert_array_equal(cpu.to_numpy(frozen.running_mean), [0, 0])
    np.testing.assert_array_equal(cpu.to_numpy(frozen.running_var), [1, 1])
    np.testing.assert_allclose(cpu.to_numpy(follows.running_mean), [2, 4])
    np.testing.assert_allclose(cpu.to_numpy(follows.running_var), [2, 8])


def test_batchnorm_starts_in_float32():
    """Parameters and buffers in the layer's dtype (float32), not the library's default float64."""
    layer = BatchNorm2D(3)
    for array in (layer.weight.data, layer.bias.data, layer.running_mean, layer.running_var):
        assert array.dtype == layer.xp.float32


def test_batchnorm_two_values_per_channel_are_enough():
    """The smallest training batch: two values per channel; one is refused with the whole message."""
    cpu = get_backend("cpu")
    assert BatchNorm1D(3).forward(cpu.asarray(np.arange(6.0).reshape(2, 3), dtype="float32")).shape == (2, 3)
    with pytest.raises(ValueError) as error:
        BatchNorm2D(3).forward(cpu.asarray(np.zeros((1, 3, 1, 1)), dtype="float32"))
    assert str(error.value) == ("BatchNorm2D(3) needs more than one value per channel in training, got input "
                                "(1, 3, 1, 1); use a batch of 2 or more, or eval()")


def test_batchnorm_repr_names_what_is_not_the_default():
    assert repr(BatchNorm2D(3)) == "BatchNorm2D(3)"
    assert repr(BatchNorm2D(3, eps=1e-3)) == "BatchNorm2D(3, eps=0.001)"
    assert repr(BatchNorm1D(4, momentum=0.2)) == "BatchNorm1D(4, momentum=0.2)"
    assert repr(BatchNorm1D(4, eps=1e-3, momentum=0.2)) == "BatchNorm1D(4, eps=0.001, momentum=0.2)"


def test_batchnorm_as_a_first_layer_skips_dx():
    """``backward_params`` sets dγ and dβ without the dx kernel (counted on the strict backend)."""
    from helpers import backend_or_skip

    from backends.counting import count_operations

    strict = backend_or_skip("strict")
    layer = BatchNorm2D(3).to(strict)
    x = strict.asarray(np.random.default_rng(1).standard_normal((4, 3, 2, 2)), dtype="float32")
    dy = strict.xp.ones(x.shape, dtype=x.dtype)
    layer.forward(x)
    with count_operations() as backward:
        layer.backward(dy)
    layer.forward(x)
    with count_operations() as first_layer:
        layer.backward_params(dy)
    assert first_layer.operations == backward.operations - 1, (first_layer.operations, backward.operations)


def test_the_fused_engine_writes_dbeta_into_the_buffer_it_is_handed(policy):
    """dβ is summed straight into ``out["bias"]`` (the gradient buffer), so the layer needs no copy."""
    from layers.batchnorm_fused import FusedBatchNorm
    from layers.engine import Workspace

    rng = np.random.default_rng(3)
    x, dy = policy.asarray(rng.standard_normal((4, 3, 2, 2))), policy.asarray(rng.standard_normal((4, 3, 2, 2)))
    params = BatchNormParams(policy.xp.ones((3,), dtype=x.dtype), policy.xp.zeros((3,), dtype=x.dtype),
                             policy.xp.zeros((3,), dtype=x.dtype), policy.xp.ones((3,), dtype=x.dtype), 1e-5, 0.1, True)
    _, saved = FusedBatchNorm.forward(policy.xp, x, params, Workspace(policy))
    out = {"weight": policy.xp.zeros((3,), dtype=x.dtype), "bias": policy.xp.zeros((3,), dtype=x.dtype)}
    _, grads = FusedBatchNorm.backward(policy.xp, dy, saved, params, Workspace(policy), False, out)
    assert grads["bias"] is out["bias"]
    np.testing.assert_allclose(host(policy, out["bias"]), np.sum(host(policy, dy), axis=(0, 2, 3)), rtol=1e-12)


def test_merging_tile_statistics_has_no_cancellation():
    """Σ n·(m - mean)², not Σ n·(m² - mean²) (equal in exact arithmetic): float32 parts with a large
    mean and a small spread, against the exact 0.825 (0.5 + 0.25 + 3·0.125² + 5·0.075²)."""
    from layers.batchnorm_tiles import merge_statistics

    mean, square = merge_statistics((3, 5), (np.float32(1000.1), np.float32(1000.3)), (np.float32(0.5), np.float32(0.25)))
    assert abs(float(mean) - 1000.225) < 1e-3
    assert abs(float(square) - 0.825) < 1e-3


def test_batchnorm_tiles_fit_three_copies_in_the_budget():
    """The CPU engine's tile: a tile, its centred copy and their product in ``tile_bytes``; the whole
    batch where the backend does not tile."""
    from engine_check import policy_backend

    from layers.batchnorm_tiles import _tile
    from layers.engine import Workspace

    tiles, whole = policy_backend("cpu-tiles"), policy_backend("cpu-launch-bound")  # tile_bytes 3000, None
    x = tiles.xp.zeros((10, 3, 5, 4), dtype=tiles.xp.float32)  # 60 values an example
    assert _tile(tiles.xp, x, Workspace(tiles)) == 3000 // (3 * 60 * 4)
    assert _tile(tiles.xp, tiles.xp.astype(x, tiles.xp.float64), Workspace(tiles)) == 3000 // (3 * 60 * 8)
    assert _tile(whole.xp, x, Workspace(whole)) == 10


def test_batchnorm_keeps_float32_on_every_engine(policy):
    """y and dx in the input's float32 (the tiled engine fills arrays it allocates itself)."""
    layer = BatchNorm2D(3).to(policy)
    x = policy.asarray(np.random.default_rng(5).standard_normal((4, 3, 2, 2)), dtype="float32")
    y = layer.forward(x)
    dx = layer.backward(policy.xp.ones(y.shape, dtype=y.dtype))
    assert (y.dtype, dx.dtype, layer.weight.grad.dtype) == (policy.xp.float32,) * 3
