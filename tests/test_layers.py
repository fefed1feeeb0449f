"""Layer outputs against independent references, on every backend and dtype, and misuse errors."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, reference_conv2d, reference_maxpool

import backends.base as backend_base
from backends import get_backend
from layers import Conv2D, Flatten, Linear, MaxPool2D, ReLU, Sequential, Softmax
from models import build_model

# -- independent references: the definitions, written with plain loops --------------------


def as_host(backend, parameter):
    return backend.to_numpy(parameter.data).astype(np.float64)


def test_linear_relu_softmax_flatten_forward(backend, dtype, rng):
    x = rng.standard_normal((4, 2, 3))
    linear = Linear(6, 5, rng=rng).to(backend, dtype)
    flat = Flatten().to(backend).forward(backend.asarray(x, dtype=dtype))
    y = linear.forward(flat)
    expected = x.reshape(4, 6) @ as_host(backend, linear.weight).T + as_host(backend, linear.bias)
    assert_close(backend.to_numpy(y), expected, dtype, "linear")
    relu = backend.to_numpy(ReLU().to(backend).forward(y))
    assert_close(relu, np.maximum(expected, 0), dtype, "relu")
    probabilities = backend.to_numpy(Softmax().to(backend).forward(y))
    exps = np.exp(expected - expected.max(axis=1, keepdims=True))
    assert_close(probabilities, exps / exps.sum(axis=1, keepdims=True), dtype, "softmax")


# -- initialisation ------------------------------------------------------------------------------


def test_initialisation_follows_pytorch_bounds(rng):
    conv = Conv2D(3, 64, 5, rng=rng)
    bound = 1 / np.sqrt(3 * 5 * 5)  # kaiming_uniform(a=sqrt(5)) = U(±1/sqrt(fan_in))
    weights = conv.weight.data
    assert weights.dtype == np.float32 and np.abs(weights).max() <= bound
    assert np.abs(weights).max() > 0.95 * bound  # uniform over the whole range, not std 1
    assert np.std(weights) == pytest.approx(bound / np.sqrt(3), rel=0.05)
    assert np.abs(conv.bias.data).max() <= bound and np.any(conv.bias.data != 0)


# -- inputs that are views ---------------------------------------------------------------------------
def test_non_contiguous_inputs_give_correct_results(rng):
    cpu = get_backend("cpu")
    layer = Conv2D(3, 2, 3, padding=1, rng=rng).to(cpu, "float64")
    base = rng.standard_normal((2, 8, 8, 3))
    transposed = np.transpose(base, (0, 3, 1, 2))  # NHWC memory seen as NCHW
    sliced = rng.standard_normal((4, 3, 16, 16))[::2, :, ::2, ::2]
    for x in (transposed, sliced):
        assert not x.flags.c_contiguous
        expected = reference_conv2d(x, layer.weight.data, layer.bias.data, (1, 1), (1, 1))
        np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-12, atol=1e-12)
        pool = MaxPool2D(2).forward(x)
        np.testing.assert_array_equal(pool, reference_maxpool(np.ascontiguousarray(x), (2, 2), (2, 2)))


# -- misuse -------------------------------------------------------------------------------------------
def test_wrong_channel_count_names_the_layer():
    with pytest.raises(ValueError, match=r"Conv2D\(3→6.*expects input \(N, 3, H, W\), got \(8, 1, 32, 32\)"):
        Conv2D(3, 6, 5).forward(np.zeros((8, 1, 32, 32), dtype=np.float32))


@pytest.mark.parametrize(
    "layer, shape, message",
    [
        (Conv2D(3, 6, 5), (3, 32, 32), r"expects input \(N, 3, H, W\), got \(3, 32, 32\)"),
        (Linear(1024, 10), (4, 1000), r"Linear\(1024→10\) expects input \(N, 1024\), got \(4, 1000\)"),
        (MaxPool2D(2), (4, 6), r"MaxPool2D.*expects input \(N, C, H, W\), got \(4, 6\)"),
        (Conv2D(1, 1, 5), (1, 1, 3, 3), r"smaller than the kernel"),
        (MaxPool2D(4), (1, 1, 3, 3), r"smaller than the 4x4 window"),
    ],
)
def test_wrong_shapes_are_clear_errors(layer, shape, message):
    with pytest.raises(ValueError, match=message):
        layer.forward(np.zeros(shape, dtype=np.float32))


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float16])
def test_integer_and_half_inputs_are_refused(dtype):
    for layer in (Conv2D(3, 2, 3), Linear(4, 2), MaxPool2D(2), ReLU()):
        shape = (1, 4) if isinstance(layer, Linear) else (1, 3, 4, 4)
        with pytest.raises(TypeError, match="expects a float32 or float64 input"):
            layer.forward(np.ones(shape, dtype=dtype))


def test_dtype_mismatch_with_weights_is_clear():
    with pytest.raises(TypeError, match="float32 weights but got a float64 input"):
        Linear(3, 2).forward(np.zeros((1, 3)))


def test_array_of_another_backend_is_clear():
    strict = get_backend("strict")
    with pytest.raises(TypeError, match="on backend 'cpu' but got array_api_strict"):
        Linear(3, 2).forward(strict.asarray(np.zeros((1, 3)), dtype="float32"))


@pytest.mark.parametrize("layer", [Conv2D(1, 1, 1), Linear(2, 2), MaxPool2D(2), ReLU(), Flatten(), Softmax()])
def test_backward_before_forward_is_clear(layer):
    with pytest.raises(RuntimeError, match="backward called before forward"):
        layer.backward(np.zeros((1, 1, 2, 2), dtype=np.float32))


def test_eval_mode_keeps_nothing_for_backward():
    model = build_model("mlp").eval()
    model.forward(np.zeros((2, 3, 32, 32), dtype=np.float32))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        model.backward(np.zeros((2, 10), dtype=np.float32))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Conv2D(3, 0, 3), "out_channels must be a positive integer"),
        (lambda: Conv2D(3, 6, 0), "kernel_size must be an int or a pair"),
        (lambda: Conv2D(3, 6, 3, padding=-1), "padding must be"),
        (lambda: MaxPool2D((2, 2, 2)), "kernel_size must be"),
        (lambda: Linear(3.5, 2), "in_features must be a positive integer"),
        (lambda: Sequential(ReLU(), "relu"), "Sequential takes Layer objects"),
    ],
)
def test_bad_constructor_arguments(make, message):
    with pytest.raises(ValueError if "Sequential" not in message else TypeError, match=message):
        make()


def test_backward_without_input_grad_skips_leading_layers(rng):
    """MLP starts with Flatten: with input_grad=False the first Linear computes no dx."""
    model = build_model("mlp", seed=0).to(get_backend("cpu"), "float64")
    x = rng.standard_normal((2, 3, 32, 32))
    dy = rng.standard_normal((2, 10))
    model.forward(x)
    dx = model.backward(dy)
    full = [p.grad.copy() for p in model.parameters()]
    calls = []
    model.layers[1].backward = lambda d: calls.append("dx") or None
    model.forward(x)
    assert model.backward(dy, input_grad=False) is None
    assert calls == [] and dx.shape == x.shape
    for expected, parameter in zip(full, model.parameters()):
        np.testing.assert_array_equal(parameter.grad, expected)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda rng: Conv2D(3, 4, 3, stride=2, padding=1, rng=rng), (40, 3, 9, 9)),
        (lambda rng: Conv2D(2, 3, 5, padding=2, rng=rng), (33, 2, 8, 8)),
        (lambda rng: Conv2D(2, 3, (2, 3), stride=(3, 2), rng=rng), (34, 2, 10, 7)),
        (lambda rng: MaxPool2D(2), (40, 3, 8, 8)),
        (lambda rng: MaxPool2D(3, 2), (35, 2, 9, 9)),
        (lambda rng: Linear(20, 48, rng=rng), (50, 20)),
    ],
    ids=["conv-s2", "conv-k5", "conv-s32", "pool", "pool-overlapping", "linear"],
)
def test_batch_split_over_threads_and_tiles_gives_the_serial_result(monkeypatch, rng, make, shape):
    """The cpu backend splits large batches over threads (map_slices) and Conv2D goes
    through each part in cache-sized tiles (batch_tile): same forward, same dx, and the
    same parameter gradients up to the order of a sum, for any split."""
    cpu = get_backend("cpu")
    monkeypatch.setattr(backend_base, "MIN_WORK_PER_THREAD", 1)  # split even these small layers
    x = rng.standard_normal(shape)
    dy = None
    results = {}
    for threads, tile_bytes in ((1, None), (3, None), (1, 1), (3, 3000)):
        monkeypatch.setattr(cpu, "threads", threads)
        monkeypatch.setattr(cpu, "tile_bytes", tile_bytes)
        layer = make(np.random.default_rng(7)).to(cpu, "float64")
        y = layer.forward(x)
        if dy is None:
            dy = np.random.default_rng(8).standard_normal(y.shape)
        dx = layer.backward(dy)
        results[threads, tile_bytes] = (y, dx, [p.grad for p in layer.parameters()])
    y1, dx1, g1 = results.pop((1, None))
    for y, dx, grads in results.values():
        np.testing.assert_array_equal(y, y1)
        np.testing.assert_allclose(dx, dx1, rtol=1e-12, atol=1e-12)
        for a, b in zip(grads, g1):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
