"""Backend.fuse: compiled kernels are checked against their plain function and fall back.

There is no GPU here, so a stand-in compiler plays cupy.fuse: one that compiles
correctly, one that fails to compile, one that computes a wrong result. The plain
function must always decide the result.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

from backends import get_backend
from layers.parameter import Parameter
from training.optim import sgd_update


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


def test_a_kernel_that_fails_to_compile_falls_back_with_one_warning():
    def compile_(function, name):
        def kernel(*args):
            raise NotImplementedError("keepdims is not supported in fusion")
        return kernel

    backend = backend_with(compile_)
    y = np.ones(2)
    with pytest.warns(RuntimeWarning, match="fused kernel 'axpy' was not used .*keepdims"):
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
    with pytest.warns(RuntimeWarning, match="differs"):
        result = backend.fuse(axpy)(y, 1.0, np.ones(3))
    np.testing.assert_array_equal(y, [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(result, [2.0, 2.0, 2.0])
    backend.fuse(axpy)(y, 1.0, np.ones(3))
    np.testing.assert_array_equal(y, [2.0, 2.0, 2.0])


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

    def _with(self, *others):
        traced = [self] + [o for o in others if isinstance(o, _Traced)]
        for o in others:
            if not isinstance(o, (_Traced, int, float, bool)):
                raise NotFusable(f"an operand of type {type(o).__name__}")
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
        self._with(value)

    def __bool__(self):
        raise NotFusable("a branch on an array value")

    def astype(self, dtype, copy=True):
        return self._with()


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
        return x._with()

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


def _fused_calls():
    """Every fused function the models, losses, optimizers, loaders and random draws call, with
    the kinds of arguments it was called with, gathered by running them on the strict backend."""
    import functools

    from backends import fusion
    from backends.random import device_random
    from benchmarks import ops
    from layers import BatchNorm1D
    from training.optim import SGD, Adam, AdamW

    calls = {}
    original = fusion.FusedFunction.__call__

    def record(self, *args):
        plain = self.plain
        kinds = tuple("array" if fusion._is_array(a) else type(a).__name__ for a in args)
        calls[(plain.func, tuple(sorted(plain.keywords.items())), kinds)] = None
        return original(self, *args)

    strict = get_backend("strict")
    fusion.FusedFunction.__call__ = record
    try:
        for model in ("lnet", "mlp", "cnn"):
            for mode in ("train", "train-adam", "infer", "trainer"):
                ops.step_function(model, mode, batch_size=4)()
        for make in (lambda p: SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
                     lambda p: SGD(p, lr=0.1, momentum=0.9, dampening=0.5), lambda p: SGD(p, lr=0.1),
                     lambda p: Adam(p, amsgrad=True, weight_decay=0.1), lambda p: AdamW(p)):
            params = [Parameter(strict.asarray(np.ones(3), dtype="float32"))]
            optimizer = make(params)
            for _ in range(2):
                params[0].grad = strict.asarray(np.ones(3), dtype="float32")
                optimizer.step()
        norm = BatchNorm1D(3).to(strict)
        norm.forward(strict.asarray(np.arange(12.0).reshape(4, 3), dtype="float32"))
        norm.backward(strict.asarray(np.ones((4, 3)), dtype="float32"))
        norm.eval().forward(strict.asarray(np.ones((4, 3)), dtype="float32"))
        draws = device_random(strict)
        draws.uniform(5, (3,), strict.xp.float32), draws.bits(5, (3,))
    finally:
        fusion.FusedFunction.__call__ = original
    return [functools.partial(function, **dict(static)) for function, static, _ in calls], list(calls)


def test_every_fused_function_follows_cupy_fuse_rules():
    """A function that cupy.fuse's tracer refuses still runs (as plain operations, with a
    warning), but costs its launches: the GPU budgets assume each one compiles."""
    pytest.importorskip("array_api_strict")
    functions, calls = _fused_calls()
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
