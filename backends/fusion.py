"""Fusing a chain of element-wise operations into one kernel, on the devices that can.

A layer writes a short chain of element-wise operations (and at most one reduction at
the end) as a plain function of ``xp`` and arrays::

    def relu_grad(xp, y, dy, zero):                     # layers/activations.py
        return dy * xp.astype(y > zero, dy.dtype)

and calls it through its backend: ``backend.fuse(relu_grad)(y, dy, zero)``. On the cpu
and strict backends that is the plain call, one operation after another. On cuda the
same function is compiled by ``cupy.fuse`` into one kernel: one launch instead of three.
The plain function is the reference: the first time a compiled kernel runs with a new
signature (dtypes and ranks of its arguments), it runs the plain function too, on copies,
and compares. For an array updated in place (an optimizer's parameters and moments) it
compares the change each made, element by element, within a few ulps of the values
involved: an update is small next to the values it changes, so a tolerance on the values
alone would accept a wrong step. If compiling fails or the results differ, xpnet warns once
(FusionFallbackWarning), ``Backend.fallbacks()`` lists it, and the plain function is used
for that signature, so a fusion problem costs speed, never correctness.

Rules for a fusable function (what ``cupy.fuse`` accepts): element-wise functions and
operators of ``xp``, ``xp.where``, in-place operators and ``a[...] = b`` on its array
arguments, and at most one reduction (``xp.sum``/``xp.max`` with ``axis``, no
``keepdims``) after which only element-wise work on its result and literal numbers
follows (an argument, even a number, cannot be used after the reduction: scale before
summing). No indexing, no reshapes, no branches on array values: pass views shaped for
broadcasting as arguments instead. tests/test_fusion.py traces every fused function of
the code base with these rules, so a GPU is not needed to find one that would fall back.
Python numbers passed as arguments (a learning rate) become kernel parameters, so a new
value does not recompile; numbers the function closes over would be baked in. Arithmetic
on numbers alone (``1 - beta2`` of two numbers) must be done by the caller, on the host:
inside a CuPy kernel both are "weak" scalars and CuPy picks the smallest type that holds
them, float16 (1 - 0.999 becomes 0.00098).
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

from .counting import active_counts, as_one_operation

# Largest difference allowed between a compiled kernel's returned array and the plain
# function's, relative to the size of the values: a compiled kernel may contract a*b+c into
# one rounding, and a reduction may add in another order.
_CHECK_TOLERANCE = {"float32": 1e-4, "float64": 1e-10, "float16": 1e-2}
# For arrays updated in place: how many units in the last place (of the largest value an
# element's update involves) the kernel's change may differ from the plain function's.
_CHANGE_ULPS = 4


class FusionFallbackWarning(RuntimeWarning):
    """A fused kernel was not used (it failed to compile or disagreed with its plain function);
    the plain function runs instead: slower, same result. Backend.fallbacks() lists them."""


class FusedFunction:
    """``function(xp, *args, **static)`` run as one operation; compiled where the backend can.

    ``static`` are keyword arguments that select a variant of the function (``first=True``,
    ``nesterov=False``); each variant is its own kernel. ``compile`` (cuda only) turns a
    Python function of arrays into a compiled callable, given ``namespace`` as the xp the
    function calls while it is traced; without it the plain function runs.
    """

    def __init__(self, function: Callable, xp, name: str, static: dict[str, Any],
                 compile: Callable | None = None, namespace=None):
        self.name = name
        self.xp = xp
        self.plain = functools.partial(function, xp, **static)
        self._compiled = None
        if compile is not None:
            self._compiled = compile(functools.partial(function, namespace, **static), name)
        self._checked: dict[tuple, bool] = {}  # signature → the compiled kernel agrees with the plain function
        self.problems: dict[tuple, str] = {}  # signature → why its kernel is not used

    def __call__(self, *args):
        if active_counts() is not None:  # counting launches (backends/counting.py): this is one
            with as_one_operation(self.name, fused=True):
                return self._run(args)
        return self._run(args)

    def _run(self, args: tuple):
        if self._compiled is None:
            return self.plain(*args)
        key = _signature(args)
        agrees = self._checked.get(key)
        if agrees is None:
            return self._first_call(key, args)
        return self._compiled(*args) if agrees else self.plain(*args)

    def checked(self) -> dict[tuple, bool]:
        """Signature → whether the compiled kernel agreed with the plain function (and is used)."""
        return dict(self._checked)

    def _first_call(self, key: tuple, args: tuple):
        """Run the compiled kernel and, on copies, the plain function; keep the kernel if they agree."""
        xp = self.xp
        before = tuple(xp.asarray(a, copy=True) if _is_array(a) else a for a in args)
        copies = tuple(xp.asarray(a, copy=True) if _is_array(a) else a for a in args)
        expected = self.plain(*copies)
        try:
            result = self._compiled(*args)
            problem = _difference(xp, result, expected)
            for index, (original, copy, old) in enumerate(zip(args, copies, before)):
                if problem is None and _is_array(original):
                    problem = _changed_differently(xp, original, copy, old, args)
                    problem = problem and f"argument {index}: {problem}"
        except Exception as exc:  # the kernel could not be built or run for these arguments
            result, problem = None, f"{type(exc).__name__}: {exc}"
        self._checked[key] = problem is None
        if problem is None:
            return result
        self.problems[key] = problem
        warnings.warn(f"xpnet: the fused kernel '{self.name}' was not used ({problem}); "
                      f"running its plain version, which is slower but gives the same result", FusionFallbackWarning,
                      stacklevel=4)  # the code that called the fused function (past _first_call, _run, __call__)
        for original, copy in zip(args, copies):  # undo what the kernel may have written
            if _is_array(original):
                original[...] = copy
        return expected


def _is_array(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, (int, float, bool))


def _signature(args: tuple) -> tuple:
    """What a compiled kernel depends on (as in cupy.fuse's own cache): dtypes, ranks, number types."""
    return tuple((a.dtype, a.ndim) if _is_array(a) else type(a) for a in args)


def _difference(xp, actual, expected) -> str | None:
    """None when the kernel's returned value(s) match the plain function's; otherwise what differs."""
    actual = actual if isinstance(actual, tuple) else (actual,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    if len(actual) != len(expected):
        return f"{len(actual)} results instead of {len(expected)}"
    for index, (a, b) in enumerate(zip(actual, expected)):
        if (a is None) != (b is None):
            return f"output {index}: one version returned nothing"
        if not _is_array(b):
            continue
        if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
            return f"output {index}: {tuple(a.shape)} {a.dtype} instead of {tuple(b.shape)} {b.dtype}"
        if not b.size:
            continue
        if not _is_floating(xp, b):
            if not bool(xp.all(a == b)):
                return f"output {index} differs"
            continue
        special = _special_values_differ(xp, a, b)
        if special:
            return f"output {index}: {special}"
        finite = xp.isfinite(b)
        tolerance = _CHECK_TOLERANCE.get(str(b.dtype).split(".")[-1], 1e-4)
        zero = xp.zeros_like(b)  # an array: the array API's where takes no Python numbers
        scale = max(1.0, float(xp.max(xp.where(finite, xp.abs(b), zero))))
        error = float(xp.max(xp.where(finite, xp.abs(a - b), zero)))
        if not error <= tolerance * scale:
            return f"output {index} differs by {error:.3g}"
    return None


def _changed_differently(xp, after, expected_after, before, args) -> str | None:
    """None when the kernel changed an array argument (``before`` → ``after``) as the plain
    function did (``before`` → ``expected_after``), element by element: the two changes may
    differ by _CHANGE_ULPS units in the last place of the largest value involved (the
    element before and after, and the same element of the other arrays of its shape)."""
    if not after.size:  # (same shape and dtype: expected_after is a copy of the argument, changed in place)
        return None
    if not _is_floating(xp, after):
        return None if bool(xp.all(after == expected_after)) else "changed differently"
    special = _special_values_differ(xp, after, expected_after)
    if special:
        return special
    finite = xp.isfinite(expected_after) & xp.isfinite(before)
    zero = xp.zeros_like(after)
    size = xp.maximum(xp.abs(xp.where(finite, before, zero)), xp.abs(xp.where(finite, expected_after, zero)))
    for other in args:
        if _is_array(other) and tuple(other.shape) == tuple(after.shape) and _is_floating(xp, other):
            size = xp.maximum(size, xp.abs(xp.where(finite & xp.isfinite(other), xp.astype(other, after.dtype), zero)))
    info = xp.finfo(after.dtype)
    allowed = _CHANGE_ULPS * (size * info.eps + info.smallest_normal)
    change, expected_change = xp.where(finite, after - before, zero), xp.where(finite, expected_after - before, zero)
    off = xp.abs(change - expected_change)
    if bool(xp.all(off <= allowed)):
        return None
    worst = float(xp.max(off / allowed)) * _CHANGE_ULPS
    return f"changed differently, by up to {worst:.3g} ulps of the values"


def _special_values_differ(xp, a, b) -> str | None:
    """Where ``b`` is NaN or infinite, ``a`` must be the same; elsewhere ``a`` must be finite."""
    same = xp.where(xp.isfinite(b), xp.isfinite(a), (a == b) | (xp.isnan(a) & xp.isnan(b)))
    return None if bool(xp.all(same)) else "NaN or infinity where the plain function has none (or the reverse)"


def _is_floating(xp, array) -> bool:
    return xp.isdtype(array.dtype, "real floating")
