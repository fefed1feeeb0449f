"""BatchNorm2D, BatchNorm1D, Dropout and the cnn: gradients against finite differences, every backend
against the plain references, and PyTorch in float64 (train and eval, running statistics included)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_close
from gradcheck import numerical_gradient, relative_error
from layers import BatchNorm1D, BatchNorm2D, CrossEntropyLoss, Dropout, Sequential
from layers.batchnorm import batchnorm_backward_reference, batchnorm_reference
from models import build_model
from test_gradcheck import MAX_RELATIVE_ERROR, check_layer

BN_CASES = [(BatchNorm2D, (3, 4, 5, 6)), (BatchNorm1D, (7, 4)), (BatchNorm1D, (3, 4, 5))]
BN_IDS = ["2d", "1d", "1d-length"]


def dropout_steps(model):
    return [layer for layer in getattr(model, "layers", [model]) if isinstance(layer, Dropout)]


# -- gradients ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make, shape", BN_CASES, ids=BN_IDS)
def test_batchnorm_gradients(backend, rng, make, shape):
    layer = make(shape[1])
    layer.to(backend, "float64")
    layer.weight.data = backend.asarray(rng.uniform(0.5, 1.5, shape[1]))  # γ, β away from their 1, 0
    layer.bias.data = backend.asarray(rng.standard_normal(shape[1]))
    check_layer(layer, rng.standard_normal(shape) * 2 + 1, backend, rng)


def test_dropout_gradient_with_its_mask(backend, rng):
    """dx of Dropout is the mask's scale where kept, 0 elsewhere (the mask held fixed: same step)."""
    layer = Dropout(0.4, seed=3).to(backend, "float64")
    x = rng.standard_normal((6, 5))

    def objective():
        layer.step = 0
        return float(np.sum(backend.to_numpy(layer.forward(backend.asarray(x))) * weights))

    weights = rng.standard_normal(x.shape)
    objective()
    dx = backend.to_numpy(layer.backward(backend.asarray(weights)))
    assert relative_error(dx, numerical_gradient(objective, x)) < MAX_RELATIVE_ERROR


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


# -- the fused forms against the references, on every backend ---------------------------------
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


# -- dropout -----------------------------------------------------------------------------------
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


# -- PyTorch, float64 --------------------------------------------------------------------------
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


def test_cnn_agrees_with_torch_in_train_and_eval(rng):
    """The cnn and its torch twin (benchmarks/torch_models.py) in float64: loss, every gradient and
    the running statistics after two training steps, then eval-mode logits. torch's Dropout layers
    are given our masks, so both networks drop the same units."""
    torch = pytest.importorskip("torch")
    from backends import get_backend
    from benchmarks.torch_models import build_torch_model, copy_xpnet_weights

    cpu = get_backend("cpu")
    ours = build_model("cnn", seed=0, backend=cpu, dtype="float64")
    theirs = build_torch_model("cnn").double()
    copy_xpnet_weights(ours, theirs, cpu.to_numpy)

    class OurMask(torch.nn.Module):
        def __init__(self, index):
            super().__init__()
            self.index = index

        def forward(self, t):
            return t * torch.from_numpy(ours.layers[self.index]._cache) if self.training else t

    for index, layer in enumerate(ours.layers):
        if isinstance(layer, Dropout):
            theirs[index] = OurMask(index)
    assert [name for name, _ in ours.named_parameters()] == [name for name, _ in theirs.named_parameters()]
    loss = CrossEntropyLoss()
    for _ in range(2):
        x, labels = rng.standard_normal((4, 3, 32, 32)), rng.integers(0, 10, 4)
        value = loss.forward(ours.forward(x), labels)
        ours.backward(loss.backward(), input_grad=False)
        theirs.zero_grad()
        expected = torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)), torch.from_numpy(labels))
        expected.backward()
        assert float(value) == pytest.approx(float(expected.detach()), rel=1e-10)
        for mine, (name, other) in zip(ours.parameters(), theirs.named_parameters()):
            np.testing.assert_allclose(mine.grad, other.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
    buffers = dict(theirs.named_buffers())
    for name, array in ours.named_buffers():
        np.testing.assert_allclose(array, buffers[name].numpy(), rtol=1e-10, atol=1e-13, err_msg=name)
    ours.eval(), theirs.eval()
    x = rng.standard_normal((3, 3, 32, 32))
    np.testing.assert_allclose(ours.forward(x), theirs(torch.from_numpy(x)).detach().numpy(), rtol=1e-10, atol=1e-12)
