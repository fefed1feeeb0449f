"""Backend.fuse: compiled kernels are checked against their plain function and fall back.

There is no GPU here, so a stand-in compiler plays cupy.fuse: one that compiles
correctly, one that fails to compile, one that computes a wrong result. The plain
function must always decide the result.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import warnings

import numpy as np
import pytest

from backends import FusionFallbackWarning, get_backend
from layers.parameter import Parameter
from training.optim import adam_update, sgd_update


def axpy(xp, y, a, x):
    """y ← y + a·x, in place, and returns 2·y (an in-place function with a result)."""
    y += a * x
    return y * 2


def backend_with(compile_):
    cpu = get_backend("cpu")
    return dataclasses.replace(cpu, _compile=compile_, fusion_namespace=cpu.xp, _fused={})


def test_a_correct_kernel_is_used_after_one_check():
    calls = []

    def compile_(function, name):
        def kernel(*args):
            calls.append(name)
            return function(*args)
        return kernel

    backend = backend_with(compile_)
    y = np.ones(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = backend.fuse(axpy)(y, 2.0, np.arange(3.0))
        np.testing.assert_array_equal(y, [1.0, 3.0, 5.0])  # updated once, not twice
        np.testing.assert_array_equal(result, [2.0, 6.0, 10.0])
        backend.fuse(axpy)(y, 1.0, np.ones(3))
    assert calls == ["axpy", "axpy"]
    np.testing.assert_array_equal(y, [2.0, 4.0, 6.0])


def compile_failing(function, name):
    """A compiler whose kernels fail as CuPy's do on what fusion cannot hold."""
    def kernel(*args):
        raise NotImplementedError("keepdims is not supported in fusion")
    return kernel


def test_a_kernel_that_fails_to_compile_falls_back_with_one_warning():
    backend = backend_with(compile_failing)
    y = np.ones(2)
    with pytest.warns(FusionFallbackWarning, match="fused kernel 'axpy' was not used .*keepdims"):
        np.testing.assert_array_equal(backend.fuse(axpy)(y, 1.0, np.ones(2)), [4.0, 4.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning for the same signature
        backend.fuse(axpy)(y, 1.0, np.ones(2))
    np.testing.assert_array_equal(y, [3.0, 3.0])


def test_a_kernel_with_a_wrong_result_is_undone_and_replaced():
    def compile_(function, name):
        def kernel(y, a, x):  # writes garbage into its argument and returns garbage
            y[...] = 99.0
            return y
        return kernel

    backend = backend_with(compile_)
    y = np.zeros(3)
    with pytest.warns(FusionFallbackWarning, match="differs"):
        result = backend.fuse(axpy)(y, 1.0, np.ones(3))
    np.testing.assert_array_equal(y, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(result, [2.0, 2.0, 2.0])
    backend.fuse(axpy)(y, 1.0, np.ones(3))
    np.testing.assert_array_equal(y, [2.0, 2.0, 2.0])


def shift_in_place(xp, y, x):
    """y ← y + x, in place (nothing returned)."""
    y += x


def kernel_writing(values):
    """A stand-in compiler whose kernel writes ``values(plain result)`` into y."""
    def compile_(function, name):
        def kernel(y, x):
            expected = np.array(y, copy=True)
            function(expected, x)
            y[...] = values(expected)
        return kernel
    return compile_


@pytest.mark.parametrize("x, kernel_result, accepted", [
    (np.float32([1.0, 2.0]), lambda e: np.nextafter(e, np.float32(np.inf)), True),   # one ulp off: rounding
    (np.float32([np.nan, 2.0]), lambda e: e, True),                                   # NaN where the plain has NaN
    (np.float32([np.inf, -np.inf]), lambda e: e, True),                               # the same infinities
    (np.float32([1.0, 2.0]), lambda e: np.where([True, False], np.nan, e), False),     # NaN the plain has not
    (np.float32([np.inf, 2.0]), lambda e: np.where([True, False], 3e38, e), False),    # finite for an infinity
    (np.float32([1e-3, 2e-3]), lambda e: e * np.float32(1 + 1e-3), False),             # 0.1 % of the value
], ids=["one-ulp", "nan", "inf", "new-nan", "lost-inf", "relative-1e-3"])
def test_the_check_compares_each_change_within_a_few_ulps(x, kernel_result, accepted):
    backend = backend_with(kernel_writing(kernel_result))
    y = np.float32([3.0, -1.0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with np.errstate(invalid="ignore"):
            backend.fuse(shift_in_place)(y, x)
    assert (not caught) == accepted, [str(w.message) for w in caught]
    assert (not backend.fallbacks()) == accepted
    plain = np.float32([3.0, -1.0]) + x
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(y, kernel_result(plain) if accepted else plain)  # refused: undone, plain kept


def doubled(xp, x):
    """2·x, returned (the check compares the returned value)."""
    return x * 2


def kernel_returning(values):
    """A stand-in compiler whose kernel returns ``values(plain result)``."""
    def compile_(function, name):
        def kernel(x):
            return values(function(x))
        return kernel
    return compile_


def replace_first(value):
    return lambda e: np.concatenate([np.asarray([value], e.dtype), e[1:]])


# The returned value may differ from the plain one by _CHECK_TOLERANCE (1e-4 for float32) of
# max(1, its largest size): here the plain result is 0 and 0, so exactly 1e-4 (as a float32) is
# the last value accepted and the next float32 after it the first refused.
TOLERANCE32 = np.float32(1e-4)


NEW_SPECIAL = "NaN or infinity where the plain function has none (or the reverse)"


@pytest.mark.parametrize("x, kernel_result, problem", [
    (np.float32([0.0, 0.0]), replace_first(TOLERANCE32), None),                                   # at the tolerance
    (np.float32([0.0, 0.0]), replace_first(np.nextafter(TOLERANCE32, np.float32(1))), "output 0 differs by 0.0001"),
    (np.float32([0.0, 0.0]), replace_first(-np.nextafter(TOLERANCE32, np.float32(1))), "output 0 differs by 0.0001"),
    (np.float32([1.0, 2.0]), replace_first(np.nan), f"output 0: {NEW_SPECIAL}"),                 # a NaN of its own
    (np.float32([1.0, 2.0]), replace_first(np.inf), f"output 0: {NEW_SPECIAL}"),                 # an infinity
    (np.float32([1.0, 2.0]), replace_first(-np.inf), f"output 0: {NEW_SPECIAL}"),
    (np.float32([np.nan, 2.0]), lambda e: e, None),                                               # the plain's NaN
    (np.float32([np.inf, 2.0]), lambda e: e, None),                                               # the plain's inf
    (np.float32([np.inf, 2.0]), replace_first(-np.inf), f"output 0: {NEW_SPECIAL}"),             # the other inf
    (np.float32([np.nan, 2.0]), replace_first(1.0), f"output 0: {NEW_SPECIAL}"),                 # NaN lost
    (np.float32([1.0, 2.0]), lambda e: e.astype(np.float64), "output 0: (2,) float64 instead of (2,) float32"),
    (np.float32([1.0, 2.0]), lambda e: e[:1], "output 0: (1,) float32 instead of (2,) float32"),
    (np.float32([1.0, 2.0]), lambda e: (e, e), "2 results instead of 1"),
    (np.float32([1.0, 2.0]), lambda e: None, "output 0: one version returned nothing"),
], ids=["at-tolerance", "one-ulp-past", "one-ulp-past-below", "nan", "inf", "-inf", "same-nan", "same-inf",
        "other-inf", "lost-nan", "dtype", "shape", "two-results", "no-result"])
def test_the_check_of_returned_values(x, kernel_result, problem):
    backend = backend_with(kernel_returning(kernel_result))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with np.errstate(invalid="ignore"):
            result = backend.fuse(doubled)(x)
    accepted = problem is None
    assert [str(w.message) for w in caught] == ([] if accepted else [
        f"xpnet: the fused kernel 'doubled' was not used ({problem}); "
        f"running its plain version, which is slower but gives the same result"])
    assert backend.fallbacks() == ([] if accepted else [f"doubled: {problem}"])
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(result, kernel_result(x * 2) if accepted else x * 2)  # refused: the plain result


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-10), (np.float16, 1e-2)])
def test_the_returned_value_tolerance_of_each_dtype(dtype, tolerance):
    """The last value accepted and the first refused, relative to max(1, the largest value)."""
    for scale in (1.0, 8.0):
        edge = dtype(tolerance * scale)
        if float(edge) > tolerance * scale:  # rounded up: the largest value of the dtype within the tolerance
            edge = np.nextafter(edge, dtype(0))
        for value, accepted in ((edge, True), (np.nextafter(edge, dtype(1e3)), False)):
            backend = backend_with(kernel_returning(lambda e: e + np.asarray([0, value], dtype)))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                backend.fuse(doubled)(np.asarray([scale / 2, 0], dtype))
            assert (not caught) == accepted, (dtype, scale, value)


def test_integer_results_must_be_equal():
    backend = backend_with(kernel_returning(lambda e: e + np.asarray([0, 1])))
    with pytest.warns(FusionFallbackWarning, match="output 0 differs"):
        np.testing.assert_array_equal(backend.fuse(doubled)(np.arange(2)), [0, 2])


def test_empty_results_are_equal():
    backend = backend_with(kernel_returning(lambda e: e))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend.fuse(doubled)(np.zeros((0,), np.float32)).shape == (0,)


def ulps_up(values, k):
    for _ in range(k):
        values = np.nextafter(values, np.float32(np.inf))
    return values


@pytest.mark.parametrize("ulps, accepted", [(4, True), (5, False)])
def test_an_in_place_change_may_differ_by_four_ulps_of_the_largest_value_involved(ulps, accepted):
    """y = 3 plus x = 1: the values involved are 3, 1 and 4, so 4 ulps of 4.0 are allowed, 5 are not."""
    backend = backend_with(kernel_writing(lambda e: ulps_up(e, ulps)))
    y = np.float32([3.0, 3.0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend.fuse(shift_in_place)(y, np.float32([1.0, 1.0]))
    messages = [str(w.message) for w in caught]
    if accepted:
        assert not messages
        np.testing.assert_array_equal(y, ulps_up(np.float32([4.0, 4.0]), 4))
    else:
        assert messages == ["xpnet: the fused kernel 'shift_in_place' was not used (argument 0: changed differently, by "
                            "up to 5 ulps of the values); running its plain version, which is slower but gives the same "
                            "result"]
        np.testing.assert_array_equal(y, [4.0, 4.0])


def test_an_integer_argument_must_change_exactly():
    backend = backend_with(kernel_writing(lambda e: e + 1))
    y = np.array([3, 4])
    with pytest.warns(FusionFallbackWarning, match=r"\(argument 0: changed differently\);"):
        backend.fuse(shift_in_place)(y, np.array([1, 1]))
    np.testing.assert_array_equal(y, [4, 5])
    exact = backend_with(kernel_writing(lambda e: e))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exact.fuse(shift_in_place)(y, np.array([1, 1]))
    np.testing.assert_array_equal(y, [5, 6])


def add_to_first(xp, y, x, unused):
    """y ← y + x, in place; ``unused`` only sits beside them (its size still counts, if finite)."""
    y += x


# Each case: (y, x, unused, how far the kernel's change is off, accepted). float32, eps = 2^-23. The
# allowed difference is 4 (size·eps + smallest normal), size the largest finite value involved
# (before, after, and the other arguments of the same shape); each "past" case is within what a
# check that forgot that value would allow. All values here are exact in float32.
EPS32 = float(np.finfo(np.float32).eps)
TINY32 = float(np.finfo(np.float32).smallest_normal)
SUBNORMAL32 = 2.0**-149
# All zero but the kernel's own result a: a = 4 (a·eps + smallest normal) at a = 4·tiny + 16 subnormals.
ZERO_EDGE = 4 * TINY32 + 16 * SUBNORMAL32


@pytest.mark.parametrize("y, x, unused, off, accepted", [
    (-10.0, 5.0, 0.0, 32 * EPS32, True),      # the old value, 10, is the largest: 40 eps allowed
    (-10.0, 5.0, 0.0, 48 * EPS32, False),
    (5.0, 5.0, 0.0, 32 * EPS32, True),        # the new value, 10
    (5.0, -10.0, 0.0, 32 * EPS32, True),      # x, 10
    (5.0, -10.0, 0.0, 48 * EPS32, False),
    (2.5, 2.5, 10.0, 32 * EPS32, True),       # an argument the function does not use, 10
    (1.0, 1.0, np.inf, 0.01, False),          # an infinite one is left out: it must not allow everything
    (0.0, 0.0, 0.0, ZERO_EDGE, True),         # the edge itself is allowed
    (0.0, 0.0, 0.0, float(np.nextafter(np.float32(ZERO_EDGE), np.float32(1))), False),  # the next float32
], ids=["old-value", "old-value-past", "new-value", "x", "x-past", "unused", "unused-inf", "zero", "zero-past"])
def test_the_size_of_an_in_place_change_is_that_of_the_largest_value_involved(y, x, unused, off, accepted):
    def compile_(function, name):
        def kernel(y_, x_, unused_):
            function(y_, x_, unused_)
            y_ += np.float32(off)  # the kernel's change, off by ``off``
        return kernel

    backend = backend_with(compile_)
    y_array = np.float32([y])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with np.errstate(invalid="ignore"):
            backend.fuse(add_to_first)(y_array, np.float32([x]), np.float32([unused]))
    refusals = [str(w.message) for w in caught if issubclass(w.category, FusionFallbackWarning)]
    assert (not refusals) == accepted == (not backend.fallbacks()), refusals
    np.testing.assert_array_equal(y_array, np.float32(y) + np.float32(x) + (np.float32(off) if accepted else 0))


def four_results(xp, x, empty, n):
    """(n, 2·empty, x > 0, 2·x): a number, an empty array, a bool array and a float array."""
    return n, empty * 2, x > 0, x * 2


@pytest.mark.parametrize("wrong, problem", [
    (None, None),
    (2, "output 2 differs"),
    (3, "output 3 differs by 1"),
], ids=["right", "bool-wrong", "last-wrong"])
def test_every_output_of_a_function_with_several_is_compared(wrong, problem):
    """Past a number, an empty array and an equal bool output, the outputs after them are still checked."""
    def compile_(function, name):
        def kernel(*args):
            results = list(function(*args))
            if wrong == 2:
                results[2] = ~results[2]
            elif wrong == 3:
                results[3] = results[3] + 1
            return tuple(results)
        return kernel

    backend = backend_with(compile_)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        results = backend.fuse(four_results)(np.float32([1.0, -2.0]), np.float32([]), 3)
    assert backend.fallbacks() == ([] if problem is None else [f"four_results: {problem}"])
    assert results[3].tolist() == [2.0, -4.0] and results[2].tolist() == [True, False]  # refused: the plain results


def test_the_float_tolerance_of_a_dtype_outside_the_table():
    """np.longdouble has no entry: 1e-4 of the size, like float32."""
    for off, accepted in ((5e-5, True), (2e-4, False)):
        backend = backend_with(kernel_returning(lambda e: e + np.longdouble(off)))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            backend.fuse(doubled)(np.ones(2, np.longdouble))
        assert (not caught) == accepted, off


def strict_backend_with(compile_):
    from helpers import backend_or_skip

    strict = backend_or_skip("strict")
    return dataclasses.replace(strict, _compile=compile_, fusion_namespace=strict.xp, _fused={})


def adam_like(xp, param, grad, maximum, lr):
    """param ← param - lr·grad, returned doubled too; ``maximum`` may be None (as Adam's without amsgrad)."""
    param -= lr * grad
    return param * 2


def test_the_check_runs_on_array_api_arrays():
    """The check uses only the array API: on strict, a right kernel (with a None argument, as Adam passes)
    is used, and a float64 result off by 1e-9 (above float64's 1e-10) is not."""
    def right(function, name):
        return function

    backend = strict_backend_with(right)
    xp = backend.xp
    param = xp.asarray([1.0, 2.0], dtype=xp.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend.fuse(adam_like)(param, xp.asarray([1.0, 1.0], dtype=xp.float64), None, 0.5)
    assert backend.fallbacks() == [] and backend.to_numpy(param).tolist() == [0.5, 1.5]

    def off(function, name):
        return lambda *args: function(*args) + xp.asarray(1e-9, dtype=xp.float64)

    backend = strict_backend_with(off)
    with pytest.warns(FusionFallbackWarning, match=r"output 0 differs by 1e-09"):
        backend.fuse(doubled)(xp.asarray([1.0, 2.0], dtype=xp.float64))


def test_plain_backends_run_the_plain_function_without_a_check():
    """cpu and strict have no compiler: nothing is checked, nothing falls back."""
    from backends import get_backend

    cpu = get_backend("cpu")
    fused = cpu.fuse(doubled)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(fused(np.ones(2)), [2.0, 2.0])
    assert fused.checked() == {} and fused.problems == {} and cpu.fallbacks() == []


def test_a_numpy_scalar_is_a_number_not_an_array():
    """A float64 scalar (from host arithmetic) is passed as a number: its signature is its type."""
    backend = backend_with(lambda function, name: function)
    fused = backend.fuse(scaled)
    fused(np.ones(2), np.float64(2.0))
    assert list(fused.checked()) == [((np.dtype(np.float64), 1), np.float64)]


def test_the_warning_points_at_the_code_that_called_the_fused_function():
    if os.environ.get("MUTANT_UNDER_TEST"):
        pytest.skip("under mutmut every method call passes through its trampoline: the stack is deeper")
    backend = backend_with(kernel_returning(lambda e: e + 1))
    with pytest.warns(FusionFallbackWarning) as caught:
        backend.fuse(doubled)(np.ones(2))
    assert caught[0].filename == __file__


def test_a_compile_error_is_named_in_the_warning():
    backend = backend_with(compile_failing)
    with pytest.warns(FusionFallbackWarning) as caught:
        backend.fuse(doubled)(np.ones(2))
    assert str(caught[0].message).startswith(
        "xpnet: the fused kernel 'doubled' was not used (NotImplementedError: keepdims is not supported in fusion); ")
    assert backend.fallbacks() == ["doubled: NotImplementedError: keepdims is not supported in fusion"]


def scaled(xp, x, a):
    """a·x, returned."""
    return x * a


@pytest.mark.parametrize("first, second", [
    ((np.ones(2, np.float32), 2.0), (np.ones((2, 2), np.float32), 2.0)),   # another rank
    ((np.ones(2, np.float32), 2.0), (np.ones(2, np.float64), 2.0)),        # another dtype
    ((np.ones(2, np.float64), 2.0), (np.ones(2, np.float64), 2)),          # another kind of number
], ids=["rank", "dtype", "number"])
def test_each_new_signature_is_checked_again(first, second):
    """A kernel right for one signature may be wrong for another (CuPy compiles one per signature)."""
    seen = []

    def compile_(function, name):
        def kernel(*args):
            seen.append(args)
            right = function(*args)
            return right if len(seen) == 1 else right + 1  # wrong from its second signature on
        return kernel

    backend = backend_with(compile_)
    fused = backend.fuse(scaled)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused(*first)
        fused(*first)  # the same signature: not checked again, the kernel is trusted
    with pytest.warns(FusionFallbackWarning):
        np.testing.assert_array_equal(fused(*second), second[0] * second[1])
    assert list(fused.checked().values()) == [True, False]
    assert len(fused.problems) == 1


def adam_arguments(n=1000, lr=1e-3, weight_decay=1e-2, seed=0):
    """adam_update's arguments at step 1 (AdamW's defaults), float32, numbers as Adam._step_arguments gives them."""
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32),
              np.zeros(n, np.float32), np.zeros(n, np.float32), None]
    beta1, beta2 = 0.9, 0.999
    return arrays + [beta1, 1 - beta1, beta2, 1 - beta2, 1e-8, weight_decay, 1 - lr * weight_decay,
                     lr / (1 - beta1), (1 - beta2) ** 0.5]


def float16_numbers(*positions):
    """A stand-in for CuPy 14's fused kernel, which computed the numbers at ``positions`` in float16."""
    def compile_(function, name):
        def kernel(*args):
            args = [float(np.float16(a)) if i in positions else a for i, a in enumerate(args)]
            return function(*args)
        return kernel
    return compile_


@pytest.mark.parametrize("positions, what", [((11,), "AdamW's 1 - lr*wd rounded to 1.0"), ((8,), "1 - beta2"),
                                             ((6,), "1 - beta1"), ((12,), "lr / (1 - beta1^t)")])
def test_the_check_refuses_a_kernel_that_computes_numbers_in_float16(positions, what):
    """At lr 1e-3 these errors are below the old tolerance on the values (1e-4 of their size)
    but far above a few ulps of each element's change."""
    backend = backend_with(float16_numbers(*positions))
    arguments = adam_arguments()
    expected = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in arguments]
    adam_update(backend.xp, *expected, decay="decoupled", amsgrad=False)
    with pytest.warns(FusionFallbackWarning, match="changed differently"):
        backend.fuse(adam_update, decay="decoupled", amsgrad=False)(*arguments)
    np.testing.assert_array_equal(arguments[0], expected[0])  # undone, and the plain step taken
    assert len(backend.fallbacks()) == 1 and "adam_update" in backend.fallbacks()[0], what


def test_a_kernel_rounding_once_where_the_plain_rounds_twice_is_accepted():
    """A compiled kernel contracts a*b+c and keeps values in registers: here it computes in
    float64 and rounds once at the end; its changes are within an ulp or two."""
    def compile_(function, name):
        def kernel(*args):
            wide = [np.asarray(a, np.float64) if isinstance(a, np.ndarray) else a for a in args]
            function(*wide)
            for original, w in zip(args, wide):
                if isinstance(original, np.ndarray):
                    original[...] = w
        return kernel

    backend = backend_with(compile_)
    for step in range(3):
        arguments = adam_arguments(seed=step)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            backend.fuse(adam_update, decay="l2", amsgrad=False)(*arguments)
    assert backend.fallbacks() == []


def test_variants_are_separate_kernels_and_numbers_are_arguments():
    """Switches select a compiled variant; a new learning rate must not need a recompile."""
    compiled = []

    def compile_(function, name):
        compiled.append(name)
        return function

    backend = backend_with(compile_)
    param, grad, buf = np.ones(2), np.ones(2), np.zeros(2)
    flags = dict(decay=False, with_momentum=True, dampened=False, nesterov=False)
    for lr, first in ((0.1, True), (0.2, False), (0.3, False)):
        backend.fuse(sgd_update, first=first, **flags)(param, grad, buf, lr, 0.9, 0.0, 0.0)
    assert len(compiled) == 2  # first step and later steps; three learning rates
    np.testing.assert_allclose(param, 1 - 0.1 * 1 - 0.2 * 1.9 - 0.3 * 2.71)


def test_fused_names_are_kernel_identifiers():
    """cupy.fuse names the CUDA kernel after the function and its switches: it must be a C identifier."""
    from backends import get_backend
    from layers.batchnorm_fused import scaled_sum

    fused = get_backend("cpu").fuse(scaled_sum, axes=(0, 2, 3))
    assert fused.name == "scaled_sum_axes_0_2_3" and fused.name.isidentifier()


# -- every fused function of the code base follows cupy.fuse's rules ------------------------------
class NotFusable(Exception):
    """What cupy.fuse (its first, "old" tracer) would refuse, so that the kernel would fall back."""


class _Traced:
    """A value inside a traced function: an argument, or what an operation made from them.

    ``after_reduction`` marks values made from a reduction's result. cupy.fuse builds a
    premap (element-wise, before the one reduction) and a postmap (after it); a value of
    one cannot meet a value of the other ('Shape mismatch'), and arguments are premap values.
    """

    dtype = np.dtype(np.float32)

    def __init__(self, after_reduction=False, array=True):
        self.after_reduction, self.array = after_reduction, array

    def _with(self, *others, arithmetic=True):
        traced = [self] + [o for o in others if isinstance(o, _Traced)]
        for o in others:
            if not isinstance(o, (_Traced, int, float, bool)):
                raise NotFusable(f"an operand of type {type(o).__name__}")
        if arithmetic and not any(t.array for t in traced):
            # CuPy 14 makes each Python number a weak scalar and picks the smallest loop for
            # an operation on weak scalars only: 1 - 0.999 is computed in float16 (0.00098).
            raise NotFusable("arithmetic on numbers alone (compute it on the host and pass it in)")
        if len({t.after_reduction for t in traced}) > 1:
            raise NotFusable("a value from before the reduction (an argument, say) is used after it")
        return _Traced(traced[0].after_reduction, any(t.array for t in traced))

    def __getattr__(self, name):
        raise NotFusable(f"attribute .{name} of a traced value")

    def __getitem__(self, key):
        raise NotFusable("indexing inside a fused function")

    def __setitem__(self, key, value):
        if key is not Ellipsis and key != slice(None):
            raise NotFusable("assignment other than a[...] = b")
        self._with(value, arithmetic=False)

    def __bool__(self):
        raise NotFusable("a branch on an array value")

    def astype(self, dtype, copy=True):
        return self._with(arithmetic=False)


def _operator(name):
    def apply(self, *others):
        return self._with(*others)
    apply.__name__ = name
    return apply


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor", "lshift", "rshift"):
    for _form in (f"__{_name}__", f"__r{_name}__", f"__i{_name}__"):
        setattr(_Traced, _form, _operator(_form))
for _form in ("__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__", "__neg__", "__pos__", "__abs__", "__invert__"):
    setattr(_Traced, _form, _operator(_form))


class _TracingNamespace:
    """xp as cupy.fuse sees it: element-wise functions, where, astype, one reduction without keepdims."""

    ELEMENTWISE = {"exp", "log", "sqrt", "maximum", "minimum", "abs", "where", "negative", "square", "log1p", "expm1"}
    REDUCTIONS = {"sum", "max", "min", "prod"}
    int64, float32, float64, uint64, bool = np.int64, np.float32, np.float64, np.uint64, np.bool_

    def __init__(self):
        self.reductions = 0

    def astype(self, x, dtype, copy=True):
        return x._with(arithmetic=False)

    def __getattr__(self, name):
        if name in self.ELEMENTWISE:
            return lambda *args: args[0]._with(*args[1:]) if isinstance(args[0], _Traced) else args[1]._with(*args)
        if name in self.REDUCTIONS:
            return self._reduction
        raise NotFusable(f"xp.{name} inside a fused function")

    def _reduction(self, x, axis=None, keepdims=False):
        if keepdims:
            raise NotFusable("keepdims in a fused reduction")
        if x.after_reduction or self.reductions:
            raise NotFusable("a second reduction")
        self.reductions += 1
        return _Traced(after_reduction=True)


def _describe(value):
    """An argument as the tracers need it: ("array", dtype name, shape) or ("number", value)."""
    from backends import fusion

    if fusion._is_array(value):
        return ("array", str(value.dtype).split(".")[-1].strip("'>"), tuple(value.shape))
    return ("number", value)


@functools.cache
def _fused_calls():
    """Every fused function the models, losses, optimizers, loaders and random draws call, with
    the kinds of arguments it was called with, gathered by running them on the strict backend.

    Returns the functions (partials holding each variant's switches), their keys
    (function, switches, argument kinds) and, for each, one call's arguments as _describe
    gives them."""
    from backends import fusion
    from backends.counting import step_function
    from backends.random import device_random
    from layers import BatchNorm1D, Dropout
    from training.loop.trainer import max_probability
    from training.optim import SGD, Adam, AdamW

    calls = {}
    original = fusion.FusedFunction.__call__

    def record(self, *args):
        plain = self.plain
        kinds = tuple("array" if fusion._is_array(a) else type(a).__name__ for a in args)
        calls.setdefault((plain.func, tuple(sorted(plain.keywords.items())), kinds), [_describe(a) for a in args])
        return original(self, *args)

    strict = get_backend("strict")
    fusion.FusedFunction.__call__ = record
    try:
        for model in ("lnet", "mlp", "cnn"):
            for mode in ("train", "train-adam", "infer", "trainer"):
                step_function(model, mode, batch_size=4)()
        for make in (lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
                     lambda p: SGD(p, lr=0.1, momentum=0.9, dampening=0.5), lambda p: SGD(p, lr=0.1),
                     lambda p: Adam(p, amsgrad=True, weight_decay=0.1), lambda p: AdamW(p),
                     lambda p: AdamW(p, amsgrad=True)):
            params = [Parameter(strict.asarray(np.ones(3), dtype="float32"))]
            optimizer = make(params)
            for _ in range(2):
                params[0].grad = strict.asarray(np.ones(3), dtype="float32")
                optimizer.step()
        norm = BatchNorm1D(3).to(strict)
        norm.forward(strict.asarray(np.arange(12.0).reshape(4, 3), dtype="float32"))
        norm.backward(strict.asarray(np.ones((4, 3)), dtype="float32"))
        norm.eval().forward(strict.asarray(np.ones((4, 3)), dtype="float32"))
        dropout = Dropout(0.5, seed=0).to(strict)
        dropout.forward(strict.asarray(np.ones((4, 3)), dtype="float32"))
        dropout.backward(strict.asarray(np.ones((4, 3)), dtype="float32"))
        logits = strict.asarray(np.ones((4, 3)), dtype="float32")
        strict.fuse(max_probability)(logits, strict.xp.max(logits, axis=1, keepdims=True))
        draws = device_random(strict)
        draws.uniform(5, (3,), strict.xp.float32), draws.bits(5, (3,))
    finally:
        fusion.FusedFunction.__call__ = original
    return ([functools.partial(function, **dict(static)) for function, static, _ in calls], list(calls),
            list(calls.values()))


def test_every_fused_function_follows_cupy_fuse_rules():
    """A function that cupy.fuse's tracer refuses still runs (as plain operations, with a
    warning), but costs its launches: the GPU budgets assume each one compiles."""
    pytest.importorskip("array_api_strict")
    functions, calls, _ = _fused_calls()
    names = {getattr(f.func, "__name__", "?") for f in functions}
    assert {"relu_grad", "masked_sum", "first_max_rank", "route_to_first_max", "sum_exp", "mean_nll",
            "softmax_minus_onehot", "sgd_update", "adam_update", "normalise", "keep_mask"} <= names, names
    problems = []
    for function, (_, _, kinds) in zip(functions, calls):
        namespace = _TracingNamespace()
        arguments = [_Traced(array=kind == "array") for kind in kinds]
        try:
            function(namespace, *arguments)
        except NotFusable as exc:
            problems.append(f"{function.func.__name__}{dict(function.keywords)}: {exc}")
    assert not problems, problems


def test_the_tracer_refuses_what_cupy_fuse_refuses():
    def uses_an_argument_after_the_sum(xp, x, scale):
        return xp.sum(x) * scale

    def keeps_dims(xp, x):
        return xp.sum(x, axis=1, keepdims=True)

    def indexes(xp, x):
        return x[:, None] * 2

    def branches(xp, x):
        return x if x > 0 else -x

    for bad in (uses_an_argument_after_the_sum, keeps_dims, indexes, branches):
        with pytest.raises(NotFusable):
            bad(_TracingNamespace(), *[_Traced() for _ in range(bad.__code__.co_argcount - 1)])
    assert isinstance(_TracingNamespace().sum(_Traced() * 2.0) + 1, _Traced)  # numbers are welcome after it


def adam_update_with_numbers_inside(xp, param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2):
    """Adam's moment updates as they were once written: 1 - β2 computed inside the kernel."""
    exp_avg *= beta1
    exp_avg += (1 - beta1) * grad
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * (grad * grad)
    param -= lr * exp_avg / xp.sqrt(exp_avg_sq)


def test_the_tracer_refuses_arithmetic_on_numbers_alone():
    """CuPy computes 1 - 0.999 of two Python numbers in float16 inside a kernel (0.00098)."""
    with pytest.raises(NotFusable, match="numbers alone"):
        adam_update_with_numbers_inside(_TracingNamespace(), *[_Traced() for _ in range(4)],
                                        *[_Traced(array=False) for _ in range(3)])
    with pytest.raises(NotFusable, match="numbers alone"):
        _TracingNamespace().sqrt(_Traced(array=False))
    assert isinstance(_Traced() * (2 * 0.5), _Traced)  # a number folded by Python before the call is fine


# -- what CuPy itself would compile, traced without a GPU ----------------------------------------
def _cupy_or_skip():
    try:
        import cupy
        from cupy._core import _fusion_thread_local, fusion  # noqa: F401
    except Exception as exc:  # not installed, or a wheel that cannot load here
        pytest.skip(f"CuPy cannot be imported ({type(exc).__name__}: {exc}); install the extras' cupy-cuda12x")
    return cupy


def cupy_kernel_problems(function, described, float_dtype):
    """What is wrong with CuPy's kernel for ``function`` called with ``described`` arguments
    (float32 arrays made ``float_dtype``): a float16 operation, a float64 operation in a
    float32 kernel, or an output dtype other than the plain function's on NumPy."""
    cupy = _cupy_or_skip()
    from array_api_compat import numpy as np_xp

    from backends.cupy_trace import cupy_trace, placeholder
    from backends.registry import _FusionNamespace

    def dtype_of(name):
        return float_dtype if name == "float32" else np.dtype(name)

    traced_args, plain_args = [], []
    for kind, *rest in described:
        if kind == "array":
            dtype, shape = dtype_of(rest[0]), rest[1]
            traced_args.append(placeholder(shape, dtype))
            plain_args.append(np.ones(shape, dtype))
        else:
            traced_args.append(rest[0])
            plain_args.append(rest[0])
    kernel, op_dtypes = cupy_trace(functools.partial(function.func, _FusionNamespace(cupy), **function.keywords),
                                   tuple(traced_args))
    problems = []
    for op, dtypes in op_dtypes.items():
        if np.dtype(np.float16) in dtypes:
            problems.append(f"{op} computes in float16")
        if float_dtype == np.float32 and np.dtype(np.float64) in dtypes:
            problems.append(f"{op} computes in float64 in a float32 kernel")
    with np.errstate(all="ignore"):
        expected = functools.partial(function.func, np_xp, **function.keywords)(*plain_args)
    expected = [] if expected is None else list(expected) if isinstance(expected, tuple) else [expected]
    returned = [np.dtype(p.dtype) for p in kernel.out_params][-len(expected):] if expected else []
    if [np.dtype(e.dtype) for e in expected] != returned:
        problems.append(f"returns {returned}, the plain function {[np.dtype(e.dtype) for e in expected]}")
    return problems


@pytest.mark.parametrize("float_dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_cupy_compiles_every_fused_function_in_the_model_dtype(float_dtype):
    """CuPy's own tracer, on placeholder arrays (no GPU needed), for every fused function and
    variant the training steps call: no float16 operation, no float64 one in a float32
    kernel, and the plain function's output dtypes."""
    _cupy_or_skip()
    pytest.importorskip("array_api_strict")
    functions, _, described = _fused_calls()
    problems = {}
    for function, arguments in zip(functions, described):
        found = cupy_kernel_problems(function, arguments, np.dtype(float_dtype))
        if found:
            problems[f"{function.func.__name__}{dict(function.keywords)}"] = found
    assert not problems, problems


def test_the_cupy_check_refuses_numbers_computed_inside_a_kernel():
    """The check above fails for Adam's moments written with 1 - β2 inside the kernel."""
    _cupy_or_skip()
    bad = functools.partial(adam_update_with_numbers_inside)
    arguments = [("array", "float32", (5,))] * 4 + [("number", 1e-3), ("number", 0.9), ("number", 0.999)]
    problems = cupy_kernel_problems(bad, arguments, np.dtype(np.float32))
    assert any("float16" in p for p in problems), problems


# -- a fallback is visible in a CLI run ----------------------------------------------------------
def test_a_cli_run_lists_the_kernels_that_fell_back(monkeypatch, capsys, tmp_path):
    """cli.py silences NumPy's RuntimeWarnings during training; the Trainer's list of fallbacks
    still reaches stderr, once. The cpu backend is given a compiler whose kernels return
    results 1 % off."""
    from helpers import TINY, run

    from backends import registry

    def off_by_a_percent(function, name):
        def kernel(*args):
            result = function(*args)
            if isinstance(result, np.ndarray) and result.dtype.kind == "f":
                return result * np.asarray(1.01, result.dtype) + np.asarray(1, result.dtype)
            return result
        return kernel

    cpu = registry._FACTORIES["cpu"]()
    fake = dataclasses.replace(cpu, _compile=off_by_a_percent, fusion_namespace=cpu.xp, _fused={})
    monkeypatch.setitem(registry._FACTORIES, "cpu", lambda: fake)
    code, _, err = run(TINY + ["--epochs", "2", "--out", str(tmp_path / "run")], capsys)
    assert code == 0, err
    lines = [line for line in err.splitlines() if "fell back" in line]
    assert len(lines) == 1, err  # once, not once per epoch
    assert lines[0].startswith("warning: ") and "relu_grad" in lines[0] and "differs" in lines[0], lines[0]
