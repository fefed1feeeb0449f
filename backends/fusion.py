"""Fusing a chain of element-wise operations into one kernel, on the devices that can.

A layer writes a short chain of element-wise operations (and at most one reduction at
the end) as a plain function of ``xp`` and arrays::

    def relu_grad(xp, y, dy, zero):
        return xp.where(y > 0, dy, zero)

and calls it through its backend: ``backend.fuse(relu_grad)(y, dy, zero)``. On the cpu
and strict backends that is the plain call, one operation after another. On cuda the
same function is compiled by ``cupy.fuse`` into one kernel: one launch instead of two.
The plain function is the reference: the first time a compiled kernel runs with a new
signature (dtypes and ranks of its arguments), it runs the plain function too, on copies,
and compares. If compiling fails or the results differ, xpnet warns once and keeps using
the plain function for that signature, so a fusion problem costs speed, never
correctness.

Rules for a fusable function (what ``cupy.fuse`` accepts): element-wise functions and
operators of ``xp``, ``xp.where``, in-place operators and ``a[...] = b`` on its array
arguments, and at most one reduction (``xp.sum``/``xp.max`` with ``axis``, no
``keepdims``) after which only element-wise work on its result and literal numbers
follows (an argument, even a number, cannot be used after the reduction: scale before
summing). No indexing, no reshapes, no branches on array values: pass views shaped for
broadcasting as arguments instead. tests/test_fusion.py traces every fused function of
the code base with these rules, so a GPU is not needed to find one that would fall back.
Python numbers passed as arguments (a learning rate) become kernel parameters, so a new
value does not recompile; numbers the function closes over would be baked in.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

from .counting import active_counts, as_one_operation

# Largest difference allowed between the compiled kernel and the plain function, relative
# to the size of the values: a compiled kernel may contract a*b+c into one rounding.
_CHECK_TOLERANCE = {"float32": 1e-4, "float64": 1e-10, "float16": 1e-2}


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
        copies = tuple(self.xp.asarray(a, copy=True) if _is_array(a) else a for a in args)
        expected = self.plain(*copies)
        try:
            result = self._compiled(*args)
            problem = _difference(self.xp, (result, *args), (expected, *copies))
        except Exception as exc:  # the kernel could not be built or run for these arguments
            result, problem = None, f"{type(exc).__name__}: {exc}"
        self._checked[key] = problem is None
        if problem is None:
            return result
        warnings.warn(f"xpnet: the fused kernel '{self.name}' was not used ({problem}); "
                      f"running its plain version, which is slower but gives the same result", RuntimeWarning,
                      stacklevel=3)
        for original, copy in zip(args, copies):  # undo what the kernel may have written
            if _is_array(original):
                original[...] = copy
        return expected


def _is_array(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, (int, float, bool))


def _signature(args: tuple) -> tuple:
    """What a compiled kernel depends on (as in cupy.fuse's own cache): dtypes, ranks, number types."""
    return tuple((a.dtype, a.ndim) if _is_array(a) else type(a) for a in args)


def _difference(xp, actual: tuple, expected: tuple) -> str | None:
    """None when every array of ``actual`` matches ``expected``; otherwise what differs."""
    for index, (a, b) in enumerate(zip(actual, expected)):
        if (a is None) != (b is None):
            return f"output {index}: one version returned nothing"
        if not _is_array(b):
            continue
        if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
            return f"output {index}: {tuple(a.shape)} {a.dtype} instead of {tuple(b.shape)} {b.dtype}"
        if b.dtype in (xp.float32, xp.float64) or str(b.dtype) == "float16":
            tolerance = _CHECK_TOLERANCE.get(str(b.dtype), 1e-4)
            scale = max(1.0, float(xp.max(xp.abs(b)))) if b.size else 1.0
            error = float(xp.max(xp.abs(a - b))) if b.size else 0.0
            if not error <= tolerance * scale:  # also catches NaN
                return f"output {index} differs by {error:.3g}"
        elif b.size and not bool(xp.all(a == b)):
            return f"output {index} differs"
    return None
