"""The public gradient check, layers.gradcheck: a wrong backward is caught and named, misuse is a clear error,
and the checked layer is left as it was (backend, dtype, mode, buffers, random state)."""
from __future__ import annotations

import numpy as np
import pytest

from backends import BackendUnavailableError, available_backends
from layers import BatchNorm1D, Dropout, Layer, Linear, Parameter, Sequential, gradcheck


class Scale(Layer):
    """y = x · gain per feature, with one of three mistakes a learner makes (``bug``)."""

    def __init__(self, features: int, bug: str = ""):
        super().__init__()
        self.gain = Parameter(self.xp.asarray([1.5, -0.5, 2.0][:features], dtype=self.dtype))
        self.bug = bug

    def forward(self, x):
        self._cache = x
        return x * self.gain.data

    def backward(self, dy):
        x = self._saved()
        xp = self.xp
        if self.bug != "forgot gain.grad":
            # the classic slip: the gradient of the gain without its input factor
            self.gain.grad = xp.sum(dy if self.bug == "wrong gain.grad" else dy * x, axis=0)
        if self.bug == "dx shape":
            return xp.sum(dy, axis=0)
        return dy if self.bug == "wrong dx" else dy * self.gain.data


def test_a_correct_layer_passes_and_the_report_is_a_table(backend):
    report = gradcheck(Scale(3), np.random.default_rng(0).standard_normal((4, 3)), backend)
    assert report.ok and report.failed == []
    assert [row.name for row in report.rows] == ["input", "gain"]
    assert report["gain"].shape == (3,) and report["gain"].error < 1e-7
    lines = str(report).splitlines()
    assert lines[0].startswith(f"gradcheck Scale() on {backend.name}, float64, training mode: ok")
    assert lines[1].split() == ["tensor", "shape", "max", "rel.", "error", "worst", "at", "result"]
    assert lines[3].split()[0] == "gain" and lines[3].split()[-1] == "pass"


@pytest.mark.parametrize("bug, failed, problem", [
    ("wrong gain.grad", ["gain"], ""), ("wrong dx", ["input"], ""),
    ("forgot gain.grad", ["gain"], "grad not set"), ("dx shape", ["input"], "shape (3,)"),
])
def test_a_wrong_backward_fails_and_the_report_names_the_tensor(bug, failed, problem):
    report = gradcheck(Scale(3, bug=bug), np.random.default_rng(1).standard_normal((4, 3)))  # never raises
    assert not report.ok and report.failed == failed
    row = report[failed[0]]
    assert not row.ok and row.problem == problem
    if not problem:
        assert row.error > 1e-2 and len(row.where) == len(row.shape)
    text = str(report)
    assert f"FAILED: {failed[0]}" in text.splitlines()[0]
    assert any(line.split()[0] == failed[0] and line.endswith("FAIL") for line in text.splitlines()[2:])


def test_sampling_checks_some_entries_and_still_finds_a_wrong_gradient():
    x = np.random.default_rng(2).standard_normal((3, 30))
    report = gradcheck(Linear(30, 20, rng=np.random.default_rng(0)), x, samples=7)
    assert report.ok and report["weight"].where is not None
    assert gradcheck(Scale(3, bug="wrong gain.grad"), x[:, :3], samples=2).failed == ["gain"]


def test_dropout_is_checked_with_one_mask_and_its_state_kept(backend):
    layer = Dropout(0.5, seed=4)
    layer.step = 3
    x = np.random.default_rng(3).standard_normal((5, 6))
    assert gradcheck(layer, x, backend).ok
    assert layer.step == 3
    assert gradcheck(layer.eval(), x, backend, training=False).ok  # the identity in eval mode
    assert not layer.training


def test_the_layer_is_left_on_its_backend_dtype_and_mode_with_its_buffers():
    layer = BatchNorm1D(3)
    layer.eval()
    before = np.array(layer.running_mean), np.array(layer.running_var), np.array(layer.weight.data)
    assert gradcheck(layer, np.random.default_rng(4).standard_normal((6, 3)) * 2 + 1).ok  # in training mode
    assert layer.backend.name == "cpu" and layer.dtype == layer.xp.float32 and not layer.training
    for array, saved in zip((layer.running_mean, layer.running_var, layer.weight.data), before):
        np.testing.assert_array_equal(np.asarray(array), saved)


def test_misuse_is_a_clear_error():
    x = np.ones((2, 3))
    with pytest.raises(TypeError, match="checks a Layer"):
        gradcheck(lambda v: v, x)
    with pytest.raises(TypeError, match="as a NumPy array"):
        gradcheck(Scale(3), [[1.0, 2.0, 3.0]])
    with pytest.raises(TypeError, match="floating-point input"):
        gradcheck(Scale(3), np.ones((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="samples must be"):
        gradcheck(Scale(3), x, samples=0)
    with pytest.raises(ValueError, match="unknown backend|backend"):
        gradcheck(Scale(3), x, backend="tpu")
    with pytest.raises(ValueError, match="keeps nothing for backward in eval mode"):
        gradcheck(Linear(3, 2), x, training=False)
    model = Sequential(Linear(3, 2), Scale(2))
    with pytest.raises(ValueError, match="part of a model"):
        gradcheck(model[1], np.ones((2, 2)))
    assert gradcheck(model.to("cpu", "float64")[1], np.ones((2, 2))).ok  # in place: nothing to move


def test_cuda_unavailable_is_the_backend_error():
    if "cuda" in available_backends():
        pytest.skip("a GPU is present: cuda is checked in the other tests")
    with pytest.raises(BackendUnavailableError):
        gradcheck(Scale(3), np.ones((2, 3)), backend="cuda")


def test_the_report_table_known_answer():
    """A report written by hand: columns left-aligned to their widest cell, an empty 'worst at'
    where there is none, the problem in place of the error, the failed tensors listed."""
    from layers.gradcheck import GradcheckReport, TensorCheck

    report = GradcheckReport("gradcheck Demo()", [
        TensorCheck("input", (4, 3), 2.5e-11, (1, 2), True),
        TensorCheck("weight", (3,), 0.5, (0,), False),
        TensorCheck("bias", (3,), float("inf"), None, False, "grad not set"),
    ], 1e-7)
    assert str(report) == "\n".join([
        "gradcheck Demo(): FAILED: weight, bias (tolerance 1e-07)",
        "tensor  shape   max rel. error  worst at  result",
        "input   (4, 3)  2.5e-11         (1, 2)    pass",
        "weight  (3,)    5.0e-01         (0,)      FAIL",
        "bias    (3,)    grad not set              FAIL",
    ])
    assert repr(report) == "GradcheckReport(ok=False, failed=['weight', 'bias'])"
    with pytest.raises(KeyError, match=r"no tensor 'gain' in this report; it has input, weight, bias"):
        report["gain"]


def test_a_backward_that_returns_no_input_gradient_is_a_failed_row(backend):
    class NoDx(Scale):
        def backward(self, dy):
            super().backward(dy)
            return None

    report = gradcheck(NoDx(3), np.ones((2, 3)), backend)
    assert report.failed == ["input"] and report["input"].problem == "not returned"
    row = report["input"]
    assert (row.shape, row.error, row.where, row.ok) == ((2, 3), float("inf"), None, False)
    assert "not returned" in str(report)


def test_the_title_names_the_layer_the_backend_and_the_mode():
    x = np.random.default_rng(0).standard_normal((2, 3))
    title = str(gradcheck(Sequential(Linear(3, 2), Scale(2)), x)).splitlines()[0]
    assert title == "gradcheck Sequential on cpu, float64, training mode: ok (tolerance 1e-07)"  # its repr has lines
    title = str(gradcheck(Scale(3).eval(), x, training=False)).splitlines()[0]
    assert title == "gradcheck Scale() on cpu, float64, eval mode: ok (tolerance 1e-07)"


def test_the_check_is_a_function_of_its_seed():
    """The same seed: the same projection and the same sampled entries, so the same report."""
    layer = Linear(6, 4, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((3, 6))
    first, again = (gradcheck(layer, x, seed=5, samples=3) for _ in range(2))
    default, zero = gradcheck(layer, x, samples=3), gradcheck(layer, x, seed=0, samples=3)
    assert [(row.error, row.where) for row in default.rows] == [(row.error, row.where) for row in zero.rows]
    assert [(row.error, row.where) for row in first.rows] == [(row.error, row.where) for row in again.rows]
    other = gradcheck(layer, x, seed=6, samples=3)
    assert [(row.error, row.where) for row in other.rows] != [(row.error, row.where) for row in first.rows]


def test_samples_limit_the_forwards_to_two_per_checked_entry():
    """Central differences: two forwards per checked entry, plus the first forward of each
    check; with ``samples`` only that many entries of each tensor (input and parameters)."""
    class Counted(Linear):
        forwards = 0

        def forward(self, x):
            Counted.forwards += 1
            return super().forward(x)

    layer = Counted(5, 3, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 5))
    gradcheck(layer, x, samples=2)
    assert Counted.forwards == 2 + 2 * 2 * 3  # projection's shape, backward's forward; 2 entries × 3 tensors
    Counted.forwards = 0
    gradcheck(layer, x)
    assert Counted.forwards == 2 + 2 * (x.size + 15 + 3)


# -- the comparison, the differences and the sampling, as known answers (issue 20's survivors) ----
def test_compare_known_answers():
    """error = max |a - n| / max(|a|, |n|, 1e-12) over the checked entries, at the first worst."""
    from layers.gradcheck import _compare

    def row(analytic, numeric, tolerance=1e-7):
        array = np.zeros(len(numeric))
        slope = np.asarray(numeric, dtype=np.float64)
        return _compare("t", np.asarray(analytic, dtype=np.float64), array, lambda: float(slope @ array),
                        0.5, tolerance, None, "missing")

    small = row([1e-3, 0.0], [2e-3, 0.0])  # tiny gradients: the scale is theirs, not 1
    assert (small.error, small.where, small.ok) == (pytest.approx(0.5), (0,), False)
    assert row([4e-3], [1e-3]).error == pytest.approx(0.75)  # the analytic value can be the larger
    assert row([1e-3], [4e-3]).error == pytest.approx(0.75)  # and so can the numeric one
    assert row([1.0, 1.0], [0.0, 0.0]).where == (0,)          # ties: the first
    assert row([0.0, 0.0], [0.0, 0.0]).error == 0.0 and row([0.0], [0.0]).ok
    for bad in (np.nan, np.inf):
        assert (row([0.5, bad], [0.5, 0.5]).error, row([0.5, bad], [0.5, 0.5]).ok) == (np.inf, False)
    assert row([1.0, 3.0], [1.0, 1.0], tolerance=2 / 3).ok    # the tolerance itself passes
    assert not row([1.0, 3.0], [1.0, 1.0], tolerance=0.66).ok
    shaped = _compare("w", np.zeros(3), np.zeros((2, 3)), lambda: 0.0, 0.5, 1e-7, None, "missing")
    assert (shaped.shape, shaped.error, shaped.where, shaped.ok, shaped.problem) == ((2, 3), np.inf, None, False,
                                                                                     "shape (3,)")


def test_central_differences_computes_only_the_entries_asked():
    from layers.gradcheck import _unravel, central_differences

    array = np.array([[1.0, 2.0], [3.0, 4.0]])
    grad = central_differences(lambda: float(np.sum(array ** 2)), array, 1e-3)
    np.testing.assert_allclose(grad, [2.0, 4.0, 6.0, 8.0], rtol=1e-9)
    grad = central_differences(lambda: float(np.sum(array ** 2)), array, 1e-3, indices=[2])
    assert np.isnan(grad[[0, 1, 3]]).all() and grad[2] == pytest.approx(6.0)
    np.testing.assert_array_equal(array, [[1.0, 2.0], [3.0, 4.0]])  # restored
    assert [_unravel(i, (2, 3)) for i in (0, 2, 3, 5)] == [(0, 0), (0, 2), (1, 0), (1, 2)]


def test_sampled_entries_are_distinct():
    from backends import host_rng
    from layers.gradcheck import _indices

    for seed in range(20):
        picked = _indices(host_rng(seed), 5, 4)
        assert len(set(picked)) == 4 and all(0 <= i < 5 for i in picked)
    assert _indices(host_rng(0), 5, 5) is None and _indices(host_rng(0), 5, None) is None


def test_argument_messages_and_their_ends():
    x = np.ones((2, 3))
    with pytest.raises(TypeError, match=r"^gradcheck checks a Layer \(forward and backward\), got function$"):
        gradcheck(lambda v: v, x)
    with pytest.raises(TypeError, match=r"^gradcheck takes the input x as a NumPy array, got builtins\.list; "):
        gradcheck(Scale(3), [[1.0, 2.0, 3.0]])
    from backends import get_backend
    with pytest.raises(TypeError, match=r"^gradcheck takes the input x as a NumPy array, got "
                                        r"array_api_strict\._array_object\.Array; the check moves it to the backend itself$"):
        gradcheck(Scale(3), get_backend("strict").asarray(x))
    with pytest.raises(ValueError, match="^gradcheck needs a non-empty input x$"):
        gradcheck(Scale(3), np.ones((0, 3)))
    assert gradcheck(Scale(1), np.ones((1, 1))).ok  # one number is enough
    for samples in (0, True, 1.5):
        with pytest.raises(ValueError, match=rf"^samples must be a positive whole number or None, got {samples!r}$"):
            gradcheck(Scale(3), x, samples=samples)
    assert gradcheck(Scale(3), x, samples=1).ok
    for name in ("step", "tolerance"):
        for value in (0, 1, 1.5, -0.1, True, "1e-6"):
            with pytest.raises(ValueError, match=rf"^{name} must be a number between 0 and 1, got {value!r}$"):
                gradcheck(Scale(3), x, **{name: value})
    assert gradcheck(Scale(3), x, step=1e-4, tolerance=0.999).ok


def test_a_whole_model_in_float32_is_checked_in_float64_and_moved_back():
    """A model owns its flat parameter buffer: checking the whole model moves it (not refused)."""
    model = Sequential(Linear(3, 2, rng=np.random.default_rng(0)), Scale(2)).to("cpu", "float32")
    assert gradcheck(model, np.random.default_rng(1).standard_normal((2, 3))).ok
    assert model.dtype == model.xp.float32
