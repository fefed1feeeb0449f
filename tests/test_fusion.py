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
    from layers.batchnorm import scaled_sum

    fused = get_backend("cpu").fuse(scaled_sum, axes=(0, 2, 3))
    assert fused.name == "scaled_sum_axes_0_2_3" and fused.name.isidentifier()
