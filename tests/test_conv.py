"""Conv2D: its reference against the definition, every engine under every policy against the
reference, gradients against finite differences (every backend and engine), launches per pass."""
from __future__ import annotations

import numpy as np
import pytest
from engine_check import check_engines, host
from helpers import assert_close, backend_or_skip, check_layer, reference_conv2d

from backends import get_backend
from backends.counting import count_operations
from layers import Conv2D
from layers.conv import ENGINES, ConvParams, conv2d_backward_reference, conv2d_reference


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


def test_conv_bias_is_added(backend):
    """The seed's bug created the bias and never added it."""
    conv = Conv2D(1, 1, 1, bias=True).to(backend, "float64")
    conv.weight.data = backend.asarray(np.zeros((1, 1, 1, 1)))
    conv.bias.data = backend.asarray(np.array([2.5]))
    y = conv.forward(backend.asarray(np.zeros((1, 1, 2, 2))))
    np.testing.assert_array_equal(backend.to_numpy(y), np.full((1, 1, 2, 2), 2.5))


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


GRAD_CASES = [
    # in, out, kernel, stride, padding, (H, W), batch, bias
    (3, 4, 3, 1, 0, (7, 7), 2, True),
    (2, 3, 3, 2, 1, (8, 9), 1, True),
    (1, 2, (2, 3), 1, 2, (5, 6), 2, True),
    (3, 2, (3, 1), (2, 1), (0, 1), (7, 5), 1, True),
    (2, 2, 5, 1, 2, (6, 6), 1, False),
    (2, 3, 4, 3, 2, (9, 10), 2, True),
    (2, 2, 2, 3, 1, (8, 7), 2, True),  # stride larger than the kernel
    (3, 2, 1, 2, 0, (5, 6), 1, True),  # 1x1 kernel
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: f"k{c[2]}-s{c[3]}-p{c[4]}-{c[5][0]}x{c[5][1]}-n{c[6]}")
def test_conv2d_gradients(any_engine, rng, case):
    backend = any_engine
    cin, cout, kernel, stride, padding, (h, w), batch, bias = case
    layer = Conv2D(cin, cout, kernel, stride=stride, padding=padding, bias=bias, rng=rng)
    check_layer(layer, rng.standard_normal((batch, cin, h, w)), backend, rng)


def test_conv2d_backward_params_matches_backward(any_engine, rng):
    backend = any_engine
    layer = Conv2D(2, 3, 3, padding=1, rng=rng).to(backend, "float64")
    x = backend.asarray(rng.standard_normal((2, 2, 5, 5)))
    dy = backend.asarray(rng.standard_normal((2, 3, 5, 5)))
    layer.forward(x)
    layer.backward(dy)
    full = [backend.to_numpy(p.grad) for p in layer.parameters()]
    layer.forward(x)
    assert layer.backward_params(dy) is None
    for expected, parameter in zip(full, layer.parameters()):
        np.testing.assert_array_equal(backend.to_numpy(parameter.grad), expected)


@pytest.mark.parametrize("case", CONV_CASES + [(2, 3, 3, 1, 1, (3, 2, 6, 6), False)],
                         ids=lambda case: f"k{case[2]}-s{case[3]}-p{case[4]}" + ("" if len(case) < 7 else "-nobias"))
def test_every_conv_engine_matches_the_reference_through_the_interface(policy, case):
    """ConvReference, RowwiseConv and GatherConv, each under this policy, against ConvReference on the cpu."""
    c, f, kernel, stride, padding, shape = case[:6]
    rng = np.random.default_rng(12)
    layer = Conv2D(c, f, kernel, stride=stride, padding=padding, bias=len(case) < 7, rng=rng)
    weight, bias = layer.weight.data.astype(np.float64), None if layer.bias is None else layer.bias.data.astype(np.float64)
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(layer.output_shape(shape))

    def make_params(backend):
        return ConvParams(backend.asarray(weight), None if bias is None else backend.asarray(bias), layer.stride,
                          layer.padding)

    check_engines(ENGINES, policy, make_params, x, dy)


def test_conv_launches_per_pass():
    """On a launch-bound backend a conv is a handful of operations, whatever its kernel size
    (docs/math.md, "Conv2D on a GPU"): forward at most 5 with padding, backward 8 with dx, 4 without."""
    strict = backend_or_skip("strict")
    layer = Conv2D(6, 16, 5, padding=2, rng=np.random.default_rng(0)).to(strict)
    x = strict.asarray(np.random.default_rng(1).standard_normal((8, 6, 14, 14)), dtype="float32")
    layer.forward(x)  # the gather indices are made once per input size, not counted below
    with count_operations() as forward:
        y = layer.forward(x)
    dy = strict.xp.ones(y.shape, dtype=y.dtype)
    with count_operations() as backward:
        layer.backward(dy)
    layer.forward(x)
    with count_operations() as first_layer:
        layer.backward_params(dy)
    assert forward.operations <= 5 and backward.operations <= 8 and first_layer.operations <= 4, \
        (forward.by_name, backward.by_name, first_layer.by_name)


def test_the_reference_engine_pads_in_the_input_dtype(rng):
    """float32 in, float32 through: the padded copy is not float64 (strict would refuse to mix them)."""
    strict = get_backend("strict", engine="reference")
    conv = Conv2D(2, 3, 3, padding=1, rng=rng).to(strict, "float32")
    y = conv.forward(strict.asarray(rng.standard_normal((2, 2, 5, 5)), dtype="float32"))
    dx = conv.backward(strict.asarray(rng.standard_normal((2, 3, 5, 5)), dtype="float32"))
    assert y.dtype == dx.dtype == conv.weight.grad.dtype == strict.dtype("float32")
    x, w, dy = (strict.asarray(rng.standard_normal(shape), dtype="float32") for shape in ((2, 2, 5, 5), (3, 2, 3, 3), (2, 3, 5, 5)))
    assert all(g.dtype == strict.dtype("float32") for g in conv2d_backward_reference(strict.xp, x, w, dy, (1, 1), (1, 1)))


def test_conv_misuse_and_the_smallest_input():
    """Sizes positive, stride ≥ 1, input (N, C, H, W); an input exactly the padded kernel's size
    is used (one output), one a row or a column smaller is refused, naming both sizes."""
    cpu = get_backend("cpu")
    for sizes, name in (((0, 2, 3), "in_channels"), ((2, 0, 3), "out_channels")):
        with pytest.raises(ValueError, match=f"^{name} must be a positive integer, got 0$"):
            Conv2D(*sizes)
    with pytest.raises(ValueError, match="^stride must be an int or a pair of ints ≥ 1, got 0$"):
        Conv2D(2, 3, 3, stride=0)
    layer = Conv2D(2, 3, 3, bias=False).to(cpu, "float64")
    assert layer.bias is None and [p.shape for p in layer.parameters()] == [(3, 2, 3, 3)]
    assert repr(layer) == "Conv2D(2→3, kernel_size=(3, 3), bias=False)"
    with pytest.raises(ValueError, match=r"^Conv2D\(2→3, kernel_size=\(3, 3\), bias=False\) expects input \(N, 2, H, W\), got \(2, 2, 5\)$"):
        layer.forward(cpu.asarray(np.ones((2, 2, 5))))
    assert layer.forward(cpu.asarray(np.ones((1, 2, 3, 3)))).shape == (1, 3, 1, 1)
    padded = Conv2D(2, 3, 4, padding=1).to(cpu, "float64")
    assert padded.forward(cpu.asarray(np.ones((1, 2, 2, 2)))).shape == (1, 3, 1, 1)
    for h, w in ((1, 6), (6, 1)):
        with pytest.raises(ValueError, match=rf": input {h}x{w} with padding \(1, 1\) is smaller than the kernel 4x4$"):
            padded.forward(cpu.asarray(np.ones((1, 2, h, w))))
