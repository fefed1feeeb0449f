"""Conv2D: its reference against the definition, every engine under every policy against the
reference, gradients against finite differences (every backend and engine), launches per pass."""
from __future__ import annotations

import numpy as np
import pytest
from engine_check import check_engines, host, policy_backend
from helpers import assert_close, backend_or_skip, check_layer, reference_conv2d

from backends import get_backend
from backends.counting import count_operations
from layers import Conv2D
from layers.conv import ENGINES, ConvParams, conv2d_backward_reference, conv2d_reference
from layers.conv_rows import RowGeometry, _padded_rows, _tile_size


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


# -- the CPU engine's geometry, tiles and buffers (layers/conv_rows.py) -----------------------------
def test_row_geometry_known_answers():
    """Worked by hand from RowGeometry's docstring: rows are the padded width rounded up to a
    multiple of sw, and the flat input holds exactly the rows the last read reaches."""
    # 12x12, k5, s1, p2: row 16, 12 wide outputs per row, span 12·16 + 4·16 = 256; the last read,
    # 4 + 255 = 259, is in row 16 (0-based), one zero row below the 16 padded rows
    assert RowGeometry.of(12, 12, (5, 5), (1, 1), (2, 2)) == RowGeometry(12, 12, 16, 16, 16, 17, 5)
    # 9x8, k3, s2, p1: padded width 10 (a multiple of 2), shift 5, pitch 10, out 5x4,
    # span 5·10 + 2·5 = 60, last read 2 + 2·59 = 120: row 12, so 13 rows
    assert RowGeometry.of(9, 8, (3, 3), (2, 2), (1, 1)) == RowGeometry(5, 4, 10, 10, 5, 13, 3)
    # LNet's first layer: 32x32, k5, no padding: out 28, span 28·32 + 4·32 = 1024, last read 1027
    assert RowGeometry.of(32, 32, (5, 5), (1, 1), (0, 0)) == RowGeometry(28, 28, 32, 32, 32, 33, 5)


def test_row_geometry_holds_every_read_and_no_more():
    """Over many shapes: every flat element the engine reads is inside the buffer, the buffer
    holds the whole padded image, and one row fewer would not hold the last read."""
    rng = np.random.default_rng(0)
    for _ in range(400):
        kh, kw, sh, sw, ph, pw = (int(v) for v in rng.integers(1, 6, 6))
        ph, pw = ph - 1, pw - 1
        h, w = int(rng.integers(max(1, kh - 2 * ph), 20)), int(rng.integers(max(1, kw - 2 * pw), 20))
        g = RowGeometry.of(h, w, (kh, kw), (sh, sw), (ph, pw))
        assert g.row % sw == 0 and w + 2 * pw <= g.row < w + 2 * pw + sw
        assert g.shift * sw == g.row and g.pitch == sh * g.shift and g.out_h == (h + 2 * ph - kh) // sh + 1
        last_read = (kw - 1) + sw * ((g.length - 1) + (kh - 1) * g.shift)  # last kernel row and column, last output
        assert g.span == g.length + (kh - 1) * g.shift
        assert g.rows >= h + 2 * ph and g.rows * g.row > last_read >= (g.rows - 1) * g.row, (h, w, kh, kw, sh, sw, ph, pw)


@pytest.mark.parametrize("channels, kernel_w, rows", [
    (3, 5, 16),   # LNet's first layer: 15 rows made 16 (1 ≤ 15/8)
    (1, 3, 3),    # 5 zero rows would more than double it
    (2, 4, 8),    # already a multiple of 8
    (19, 3, 64),  # 57 rows + 7 (7 ≤ 57/8)
    (3, 3, 9),    # 9 + 7 is too many
])
def test_column_buffer_rows(channels, kernel_w, rows):
    assert _padded_rows(channels, kernel_w) == rows


def test_tiles_ask_the_backend_for_one_images_columns_and_products():
    """The backend is asked for the bytes of one image's R (C·kw, span) and Z (kh·F, span);
    no tile is larger than the part of the batch it covers."""
    asked = []

    class Budget:
        def __init__(self, tile):
            self.tile = tile

        def batch_tile(self, nbytes):
            asked.append(nbytes)
            return self.tile

    class Work:
        xp = get_backend("cpu").xp

    geometry = RowGeometry.of(12, 12, (5, 5), (1, 1), (2, 2))
    weight = np.zeros((4, 3, 5, 5))
    work = Work()
    work.backend = Budget(3)
    assert _tile_size(weight, geometry, slice(0, 10), work, np.float32) == 3
    assert asked == [(3 * 5 + 5 * 4) * geometry.span * 4]
    work.backend = Budget(None)  # no tiling: the whole part, never more
    assert _tile_size(weight, geometry, slice(6, 10), work, np.float64) == 4
    assert asked[1] == (3 * 5 + 5 * 4) * geometry.span * 8


def cpu_engine_backend(threads=1, tile_bytes=None):
    import dataclasses
    return dataclasses.replace(get_backend("cpu"), launch_bound=False, threads=threads, tile_bytes=tile_bytes)


def test_cpu_engine_keeps_float32_work_arrays_one_set_per_thread():
    """float32 in: every work array is float32 (no float64 copies); with two threads, each
    part of the batch has its own buffers (shared ones would race) and the result is exact."""
    backend = cpu_engine_backend(threads=2)
    rng = np.random.default_rng(3)
    layer = Conv2D(3, 4, 3, padding=1, rng=rng).to(backend, "float32")
    x = rng.standard_normal((32, 3, 6, 6))
    y = layer.forward(backend.asarray(x, dtype="float32"))
    dy = rng.standard_normal(tuple(y.shape))
    dx = layer.backward(backend.asarray(dy, dtype="float32"))
    assert y.dtype == dx.dtype == layer.weight.grad.dtype == np.float32
    arrays = layer.work._arrays  # the workspace's buffers (a test may look inside)
    assert all(array.dtype == np.float32 for array in arrays.values()), {k: a.dtype for k, a in arrays.items()}
    # padded input; per thread: columns, products, widened dy, stacked dy, column gradients
    assert len(arrays) == 1 + 2 * 5 and len({id(a) for a in arrays.values()}) == 11, sorted(map(str, arrays))
    cpu = get_backend("cpu")
    weight = as_host(backend, layer.weight)
    expected = conv2d_reference(cpu.xp, x, weight, as_host(backend, layer.bias), (1, 1), (1, 1))
    dx_ref, dw_ref, _ = conv2d_backward_reference(cpu.xp, x, weight, dy, (1, 1), (1, 1))
    np.testing.assert_allclose(host(backend, y), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(host(backend, dx), dx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(host(backend, layer.weight.grad), dw_ref, rtol=1e-4, atol=1e-3)


def test_backward_reuses_the_forwards_columns_when_the_batch_is_one_tile():
    """On strict with the CPU engine's policy and no tiling, backward right after forward
    finds R still in its buffer: it skips the im2col copies that a fresh backward makes."""
    import dataclasses
    strict = dataclasses.replace(get_backend("strict"), launch_bound=False, tile_bytes=None)
    rng = np.random.default_rng(4)
    layer = Conv2D(2, 3, (3, 4), rng=rng).to(strict, "float64")
    x = strict.asarray(rng.standard_normal((2, 2, 7, 8)))
    dy = strict.asarray(rng.standard_normal((2, 3, 5, 5)))

    def backward_operations(forget):
        layer.forward(x)
        if forget:
            layer.work.notes["columns held"].clear()
        with count_operations() as counts:
            layer.backward(dy)
        return counts.operations

    backward_operations(forget=True)  # the workspace's buffers are made here
    fresh, reused = backward_operations(forget=True), backward_operations(forget=False)
    assert reused < fresh, (fresh, reused)


def test_cpu_engine_forward_allocates_little_more_than_its_output_once_warm():
    """The second forward of a layer writes R and Z into the workspace's buffers: what it
    allocates (y, y + bias, small index arrays) stays below the size of one fresh Z."""
    import tracemalloc
    backend = cpu_engine_backend()
    rng = np.random.default_rng(5)
    layer = Conv2D(3, 8, 5, padding=2, rng=rng).to(backend, "float32")
    x = backend.asarray(rng.standard_normal((4, 3, 16, 16)), dtype="float32")
    layer.forward(x)
    tracemalloc.start()
    try:
        y = layer.forward(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    z_bytes = 4 * (5 * 8) * RowGeometry.of(16, 16, (5, 5), (1, 1), (2, 2)).span * 4  # N · kh·F · span · 4 bytes
    assert peak < z_bytes, (peak, z_bytes, y.nbytes)  # 150 kB here; 400 kB with a fresh Z


def test_cpu_engine_backward_params_makes_no_input_gradient():
    """The first layer's backward (parameters only) allocates nothing for dx once warm."""
    import dataclasses
    strict = dataclasses.replace(get_backend("strict"), launch_bound=False, tile_bytes=None)
    rng = np.random.default_rng(6)
    layer = Conv2D(2, 3, 3, rng=rng).to(strict, "float64")
    x = strict.asarray(rng.standard_normal((2, 2, 6, 6)))
    dy = strict.asarray(rng.standard_normal((2, 3, 4, 4)))
    layer.forward(x)
    layer.backward_params(dy)  # the workspace's buffers are made here
    layer.forward(x)
    with count_operations() as counts:
        layer.backward_params(dy)
    assert "zeros" not in counts.by_name, counts.by_name


def test_cpu_engine_backward_allocates_less_than_one_column_gradient_once_warm():
    """dR (N, C·kw, span) lives in the workspace: a warm backward allocates dx's padded
    buffer and small sums, less than one fresh dR."""
    import tracemalloc
    backend = cpu_engine_backend()
    rng = np.random.default_rng(5)
    layer = Conv2D(8, 2, 5, padding=2, rng=rng).to(backend, "float32")
    x = backend.asarray(rng.standard_normal((4, 8, 16, 16)), dtype="float32")
    dy = backend.asarray(rng.standard_normal((4, 2, 16, 16)), dtype="float32")
    layer.forward(x)
    layer.backward(dy)
    layer.forward(x)
    tracemalloc.start()
    try:
        layer.backward(dy)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    column_grad_bytes = 4 * (8 * 5) * RowGeometry.of(16, 16, (5, 5), (1, 1), (2, 2)).span * 4
    assert peak < column_grad_bytes, (peak, column_grad_bytes)  # 160 kB here; 410 kB with a fresh dR


@pytest.mark.parametrize("engine", ["cpu", "launch_bound"])
def test_fast_engines_write_gradients_into_the_buffers_they_are_handed(engine):
    """The bias gradient (and the gather engine's weight gradient) is summed straight into
    ``out``, the parameters' gradient buffers, so the layer copies nothing."""
    from layers.engine import Workspace

    cpu = get_backend("cpu")
    rng = np.random.default_rng(7)
    x, weight, bias = rng.standard_normal((3, 2, 6, 5)), rng.standard_normal((4, 2, 3, 3)), rng.standard_normal(4)
    dy = rng.standard_normal((3, 4, 4, 3))
    params = ConvParams(weight, bias, (1, 1), (0, 0))
    chosen = getattr(ENGINES, engine)
    _, saved = chosen.forward(cpu.xp, x, params, Workspace(cpu))
    out = {"weight": np.zeros_like(weight), "bias": np.zeros_like(bias)}
    _, grads = chosen.backward(cpu.xp, dy, saved, params, Workspace(cpu), False, out)
    assert grads["bias"] is out["bias"]
    if engine == "launch_bound":
        assert grads["weight"] is out["weight"]
    _, dw, db = conv2d_backward_reference(cpu.xp, x, weight, dy, (1, 1), (0, 0))
    np.testing.assert_allclose(out["bias"], db, rtol=1e-12)
    np.testing.assert_allclose(grads["weight"], dw, rtol=1e-12)


def test_conv_repr_and_eval_mode():
    assert repr(Conv2D(2, 3, 3)) == "Conv2D(2→3, kernel_size=(3, 3))"
    assert repr(Conv2D(2, 3, (3, 2), stride=2, padding=(0, 1))) == \
        "Conv2D(2→3, kernel_size=(3, 2), stride=(2, 2), padding=(0, 1))"
    layer = Conv2D(2, 3, 3).to(get_backend("cpu"), "float64")
    layer.eval()
    y = layer.forward(layer.backend.asarray(np.ones((1, 2, 4, 4))))
    with pytest.raises(RuntimeError):  # eval mode keeps nothing for backward
        layer.backward(layer.backend.asarray(np.ones(tuple(y.shape))))


# -- the launch-bound engine (layers/conv_gather.py) ----------------------------------------------
def test_gather_engine_chunks_the_batch_to_the_work_budget():
    """Chunks of as many examples as the budget holds (at least one); the whole batch without a budget."""
    from layers.conv_gather import _chunks

    class Work:
        xp = get_backend("cpu").xp

    def chunks(n, columns, budget, dtype=np.float32):
        work = Work()
        work.backend = type("Budget", (), {"work_bytes": budget})()
        return [(part.start, part.stop) for part in _chunks(n, columns, work, dtype)]

    assert chunks(5, 100, None) == [(0, 5)]
    assert chunks(5, 100, 1000) == [(0, 2), (2, 4), (4, 5)]          # 400 bytes an example: 2 fit
    assert chunks(5, 100, 1000, np.float64) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]  # 800 bytes: 1 fits
    assert chunks(3, 100, 10) == [(0, 1), (1, 2), (2, 3)]            # not even one fits: one at a time
    assert chunks(3, 100, 10**9) == [(0, 3)]
    assert chunks(7, 3, 36) == [(0, 3), (3, 6), (6, 7)]              # 12 bytes an example


def test_every_engine_follows_an_input_whose_size_changes():
    """One layer, inputs of three sizes in turn (the gather engine keeps an index per size)."""
    rng = np.random.default_rng(8)
    cpu = get_backend("cpu")
    for policy in ("cpu-launch-bound", "cpu-tiles", "cpu-reference"):
        backend = policy_backend(policy)
        layer = Conv2D(2, 3, 3, stride=(1, 2), padding=1, rng=np.random.default_rng(1)).to(backend, "float64")
        for shape in ((2, 2, 6, 6), (1, 2, 9, 5), (2, 2, 6, 6)):
            x = rng.standard_normal(shape)
            y = layer.forward(backend.asarray(x))
            dy = rng.standard_normal(tuple(y.shape))
            dx = layer.backward(backend.asarray(dy))
            weight, bias = host(backend, layer.weight.data), host(backend, layer.bias.data)
            np.testing.assert_allclose(host(backend, y), conv2d_reference(cpu.xp, x, weight, bias, (1, 2), (1, 1)),
                                       rtol=1e-12, atol=1e-12, err_msg=f"{policy} {shape}")
            dx_ref, _, _ = conv2d_backward_reference(cpu.xp, x, weight, dy, (1, 2), (1, 1))
            np.testing.assert_allclose(host(backend, dx), dx_ref, rtol=1e-12, atol=1e-12, err_msg=f"{policy} {shape}")


def test_gather_engine_chunks_by_the_columns_of_one_example():
    """A work budget of exactly two examples' columns (C·kh·kw·L numbers each): a batch of 5
    goes through in 3 chunks, one im2col gather (take) each, and float32 stays float32."""
    import dataclasses
    rng = np.random.default_rng(9)
    for dtype, itemsize in (("float64", 8), ("float32", 4)):
        columns = 2 * 3 * 2 * (4 * 5)  # C·kh·kw·L for a (3, 2) kernel on 6x6: L = 4·5
        strict = dataclasses.replace(get_backend("strict"), launch_bound=True, work_bytes=2 * columns * itemsize)
        layer = Conv2D(2, 3, (3, 2), rng=rng).to(strict, dtype)
        x = strict.asarray(rng.standard_normal((5, 2, 6, 6)), dtype=dtype)
        layer.forward(x)  # the gather index is made here
        with count_operations() as counts:
            y = layer.forward(x)
        assert counts.by_name.get("take") == 3, counts.by_name
        dx = layer.backward(strict.asarray(rng.standard_normal(tuple(y.shape)), dtype=dtype))
        assert y.dtype == dx.dtype == layer.weight.grad.dtype == strict.dtype(dtype)
    for n in (4, 5):  # two chunks and three: dx assembled chunk by chunk, as the reference has it
        x = rng.standard_normal((n, 2, 6, 6))
        y = layer.forward(strict.asarray(x, dtype="float32"))
        dy = rng.standard_normal(tuple(y.shape))
        dx = layer.backward(strict.asarray(dy, dtype="float32"))
        expected, _, _ = conv2d_backward_reference(get_backend("cpu").xp, x, host(strict, layer.weight.data), dy, (1, 1), (0, 0))
        np.testing.assert_allclose(host(strict, dx), expected, rtol=1e-4, atol=1e-4)
