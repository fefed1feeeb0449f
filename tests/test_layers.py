"""Layer outputs against independent references, on every backend and dtype, and misuse errors."""
from __future__ import annotations

import numpy as np
import pytest

from backends import get_backend
import backends.base as backend_base
from helpers import assert_close, reference_conv2d, reference_cross_entropy, reference_maxpool
from layers import Conv2D, CrossEntropyLoss, Flatten, Linear, MaxPool2D, ReLU, Sequential, Softmax
from models import build_model


# -- independent references: the definitions, written with plain loops --------------------


def as_host(backend, parameter):
    return backend.to_numpy(parameter.data).astype(np.float64)


@pytest.mark.parametrize(
    "kernel, stride, padding, shape",
    [(5, 1, 2, (2, 3, 12, 12)), (3, 2, 1, (3, 2, 9, 8)), ((2, 4), (1, 3), (1, 0), (1, 3, 7, 11))],
)
def test_conv2d_forward_matches_definition(backend, dtype, rng, kernel, stride, padding, shape):
    layer = Conv2D(shape[1], 4, kernel, stride=stride, padding=padding, rng=rng).to(backend, dtype)
    x = rng.standard_normal(shape)
    y = layer.forward(backend.asarray(x, dtype=dtype))
    assert y.dtype == backend.dtype(dtype)
    expected = reference_conv2d(x, as_host(backend, layer.weight), as_host(backend, layer.bias), layer.stride, layer.padding)
    assert_close(backend.to_numpy(y), expected, dtype, "conv2d forward")


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


def test_cross_entropy_value_and_stability(backend, dtype):
    logits = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    labels = backend.asarray(np.array([0, 1]))
    loss = CrossEntropyLoss()
    value = float(backend.to_numpy(loss.forward(backend.asarray(logits, dtype=dtype), labels)))
    expected = (0.0 + (np.log(np.exp([1.0, 2.0, 3.0]).sum()) - 2.0)) / 2
    assert np.isfinite(value)
    assert abs(value - expected) < (1e-12 if dtype == "float64" else 1e-5)
    grad = backend.to_numpy(loss.backward())
    assert np.all(np.isfinite(grad)) and grad.shape == (2, 3)


# -- initialisation ------------------------------------------------------------------------------


def test_initialisation_follows_pytorch_bounds(rng):
    conv = Conv2D(3, 64, 5, rng=rng)
    bound = 1 / np.sqrt(3 * 5 * 5)  # kaiming_uniform(a=sqrt(5)) = U(±1/sqrt(fan_in))
    weights = conv.weight.data
    assert weights.dtype == np.float32 and np.abs(weights).max() <= bound
    assert np.abs(weights).max() > 0.95 * bound  # uniform over the whole range, not std 1
    assert np.std(weights) == pytest.approx(bound / np.sqrt(3), rel=0.05)
    assert np.abs(conv.bias.data).max() <= bound and np.any(conv.bias.data != 0)


def test_conv_bias_is_added(backend):
    """The seed's bug created the bias and never added it."""
    conv = Conv2D(1, 1, 1, bias=True).to(backend, "float64")
    conv.weight.data = backend.asarray(np.zeros((1, 1, 1, 1)))
    conv.bias.data = backend.asarray(np.array([2.5]))
    y = conv.forward(backend.asarray(np.zeros((1, 1, 2, 2))))
    np.testing.assert_array_equal(backend.to_numpy(y), np.full((1, 1, 2, 2), 2.5))


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


def test_cross_entropy_bad_labels(backend):
    loss = CrossEntropyLoss()
    logits = backend.asarray(np.zeros((2, 10)), dtype="float32")
    with pytest.raises(ValueError, match=r"labels must be in \[0, 9\], found values from 3 to 10"):
        loss.forward(logits, backend.asarray(np.array([3, 10])))
    with pytest.raises(TypeError, match="integer class labels"):
        loss.forward(logits, backend.asarray(np.array([1.0, 2.0])))
    with pytest.raises(ValueError, match=r"labels \(N,\) = \(2,\)"):
        loss.forward(logits, backend.asarray(np.array([1, 2, 3])))
    with pytest.raises(RuntimeError, match="before forward"):
        CrossEntropyLoss().backward()


def test_cross_entropy_refuses_malformed_logits(backend):
    loss = CrossEntropyLoss()
    labels = backend.asarray(np.array([1, 2]))
    with pytest.raises(ValueError, match=r"expects logits \(N, C\), got \(2, 3, 4\)"):
        loss.forward(backend.asarray(np.zeros((2, 3, 4)), dtype="float32"), labels)
    with pytest.raises(ValueError, match=r"expects logits \(N, C\), got \(10,\)"):
        loss.forward(backend.asarray(np.zeros(10), dtype="float32"), labels)
    with pytest.raises(TypeError, match="expects float logits, got .*int64"):
        loss.forward(backend.asarray(np.zeros((2, 10), dtype=np.int64)), labels)
    assert loss._cache is None  # nothing half-done was kept for backward


def test_cross_entropy_refuses_labels_of_another_kind_or_device(backend):
    loss = CrossEntropyLoss()
    logits = backend.asarray(np.zeros((2, 10)), dtype="float32")
    with pytest.raises(TypeError, match=r"labels must be an array on the same device as the logits .* got list"):
        loss.forward(logits, [1, 2])
    if backend.name != "cpu":  # a NumPy array is another device's (or another library's) array there
        with pytest.raises(TypeError, match="same device as the logits.*got ndarray"):
            loss.forward(logits, np.array([1, 2]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 9\], found values from -1 to 2"):
        loss.forward(logits, backend.asarray(np.array([-1, 2])))
    with pytest.raises(ValueError, match=r"labels \(N,\) = \(2,\) for logits \(2, 10\), got \(2, 1\)"):
        loss.forward(logits, backend.asarray(np.array([[1], [2]])))


def test_cross_entropy_call_and_unchecked_labels_give_the_forward_value(backend):
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0], [1.0, 1.0, 1.0]])
    labels = np.array([0, 2, 1])
    expected = reference_cross_entropy(logits, labels)
    for loss in (CrossEntropyLoss(), CrossEntropyLoss(check_labels=False)):
        value = loss(backend.asarray(logits, dtype="float64"), backend.asarray(labels))
        assert float(backend.to_numpy(value)) == pytest.approx(expected, rel=1e-12)
    assert repr(CrossEntropyLoss()) == "CrossEntropyLoss()"


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
