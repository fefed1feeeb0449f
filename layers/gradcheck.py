"""gradcheck: is a layer's backward the derivative of its forward? Central differences say.

    from layers import Linear, gradcheck
    report = gradcheck(Linear(5, 3), x)      # x: a NumPy array, e.g. (4, 5)
    print(report)                            # one row per tensor: name, shape, error, where, pass/fail
    assert report.ok

The check turns the layer's output ``y`` into one number, ``L = sum(y · R)`` with ``R`` a
fixed random array (a random projection: every output element gets a weight, so no part
of ``y`` can hide). Then ``dL/dy = R``, so ``backward(R)`` gives the layer's own dL/dx and
parameter gradients. Each entry is compared with the central difference

    dL/dθ_i ≈ (L(θ_i + h) - L(θ_i - h)) / 2h,   h = 1e-6,

computed in float64, where it is accurate to about 1e-10 (its error is O(h²) from the
Taylor series plus O(ε/h) from rounding). A correct backward agrees to better than 1e-7;
a wrong one is off by something like 1. This is the check of CS231n's assignments,
Chainer's ``gradient_check.check_backward`` and ``torch.autograd.gradcheck``.

The test suite checks every layer of the library with this same function.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from backends import get_backend, host_rng

from .base import Layer, _dtype_name

STEP = 1e-6  # h of the central differences: small for the O(h²) error, large for rounding
TOLERANCE = 1e-7  # what a correct float64 backward reaches; a wrong one is off by ~1


@dataclass
class TensorCheck:
    """One row of a report: a tensor's analytic gradient against its central differences.

    ``error`` is max_i |analytic_i - numeric_i| / scale, the scale being the largest
    magnitude of either gradient (relative to the tensor's size, so entries near zero do
    not blow up); ``where`` is the index of that worst entry. ``problem`` says why a
    gradient could not be compared at all (not set, wrong shape), and then ``ok`` is False.
    """

    name: str
    shape: tuple[int, ...]
    error: float
    where: tuple[int, ...] | None
    ok: bool
    problem: str = ""


class GradcheckReport:
    """What ``gradcheck`` found: ``ok`` (every tensor passed), ``rows`` (one ``TensorCheck``
    per tensor: ``input`` first, then each parameter by name), and ``str(report)``, a table."""

    def __init__(self, title: str, rows: list[TensorCheck], tolerance: float):
        self.title, self.rows, self.tolerance = title, rows, tolerance

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    @property
    def failed(self) -> list[str]:
        """Names of the tensors whose gradients are wrong."""
        return [row.name for row in self.rows if not row.ok]

    def __getitem__(self, name: str) -> TensorCheck:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no tensor {name!r} in this report; it has {', '.join(row.name for row in self.rows)}")

    def __str__(self) -> str:
        table = [("tensor", "shape", "max rel. error", "worst at", "result")]
        for row in self.rows:
            error = row.problem or f"{row.error:.1e}"
            where = "" if row.where is None else str(row.where)
            table.append((row.name, str(row.shape), error, where, "pass" if row.ok else "FAIL"))
        widths = [max(len(line[column]) for line in table) for column in range(5)]
        verdict = "ok" if self.ok else "FAILED: " + ", ".join(self.failed)
        lines = [f"{self.title}: {verdict} (tolerance {self.tolerance:.0e})"]
        lines += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"GradcheckReport(ok={self.ok}, failed={self.failed})"


def gradcheck(layer: Layer, x, backend="cpu", seed: int = 0, *, training: bool = True, input_grad: bool = True,
              samples: int | None = None, step: float = STEP, tolerance: float = TOLERANCE) -> GradcheckReport:
    """Check ``layer``'s backward against central differences, in float64, on ``backend``.

    ``x`` is the input, a NumPy array (any float dtype; it is used in float64). ``backend``
    is "cpu", "strict" (array-api-strict: proves the layer would run on CuPy) or "cuda".
    ``seed`` draws the projection ``R``. The layer runs in training mode unless
    ``training=False`` (for layers whose backward works in eval mode). ``input_grad=False``
    skips dL/dx; ``samples`` checks at most that many random entries of each tensor (big
    layers). Randomness is held fixed: the layer's state (Dropout's step, hence its mask)
    is restored before every forward, so each evaluation draws the same numbers.

    The layer is moved to ``backend`` in float64 for the check and then back, with its
    parameters, buffers (BatchNorm's running statistics), state and mode as they were.
    (Moving re-makes the parameters' storage: check a layer before giving its parameters to
    an optimizer, as you would call ``to`` first.)
    A wrong gradient never raises: it makes ``report.ok`` False and its row say FAIL.
    Only misuse raises (a non-layer, a non-NumPy input, ...), with a message.
    """
    host = get_backend("cpu")
    _check_arguments(layer, x, host, samples, step, tolerance)
    target = get_backend(backend)
    x = host.xp.astype(host.xp.asarray(x), host.xp.float64, copy=True)  # our own copy: we perturb it
    home, home_dtype, home_training = layer.backend, _dtype_name(layer.dtype), layer.training
    moved = layer.backend is not target or home_dtype != "float64"
    if moved:
        _check_movable(layer)
        layer.to(target, "float64")
    state = layer.layer_state()
    buffers = {name: target.to_numpy(array).copy() for name, array in layer.named_buffers()}
    if training:
        layer.train()
    else:
        layer.eval()
    try:
        return _check(layer, x, target, seed, state, training, input_grad, samples, step, tolerance)
    finally:
        for name, array in layer.named_buffers():
            array[...] = target.asarray(buffers[name], dtype=array.dtype)
        layer.load_layer_state(state)
        if home_training:
            layer.train()
        else:
            layer.eval()
        if moved:
            layer.to(home, home_dtype)


def _check(layer, x, target, seed, state, training, input_grad, samples, step, tolerance) -> GradcheckReport:
    def output():
        layer.load_layer_state(state)  # the same random draws (Dropout's mask) at every evaluation
        return target.to_numpy(layer.forward(target.asarray(x)))

    projection = host_rng(seed).standard_normal(tuple(output().shape))

    def loss() -> float:
        return float((output() * projection).sum())

    loss()  # the forward that backward belongs to
    try:
        dx = layer.backward(target.asarray(projection))
    except RuntimeError as exc:
        if training:
            raise
        raise ValueError(f"{layer!r} keeps nothing for backward in eval mode ({exc}); "
                         f"check it with training=True") from exc
    parameters = layer.named_parameters()
    analytic = [None if p.grad is None else target.to_numpy(p.grad).copy() for _, p in parameters]
    pick = host_rng(seed + 1)
    rows = []
    if input_grad:
        given = None if dx is None else target.to_numpy(dx)
        rows.append(_compare("input", given, x, loss, step, tolerance, _indices(pick, x.size, samples), "not returned"))
    for (name, parameter), grad in zip(parameters, analytic, strict=True):
        values = target.to_numpy(parameter.data).copy()

        def loss_at(parameter=parameter, values=values) -> float:
            parameter.data = target.asarray(values)
            return loss()

        try:
            rows.append(_compare(name, grad, values, loss_at, step, tolerance, _indices(pick, values.size, samples),
                                 "grad not set"))
        finally:
            parameter.data = target.asarray(values)  # back to the unperturbed values
    name = repr(layer) if "\n" not in repr(layer) else type(layer).__name__  # a Sequential's repr is a list
    title = f"gradcheck {name} on {target.name}, float64, {'training' if training else 'eval'} mode"
    return GradcheckReport(title, rows, tolerance)


def _compare(name, analytic, array, loss, step, tolerance, indices, missing: str) -> TensorCheck:
    shape = tuple(array.shape)
    if analytic is None:
        return TensorCheck(name, shape, math.inf, None, False, missing)
    if tuple(analytic.shape) != shape:
        return TensorCheck(name, shape, math.inf, None, False, f"shape {tuple(analytic.shape)}")
    numeric = central_differences(loss, array, step, indices)
    flat_analytic = analytic.reshape(-1)
    chosen = range(array.size) if indices is None else indices
    worst, worst_index, scale = -1.0, 0, 1e-12
    for index in chosen:
        a, n = float(flat_analytic[index]), float(numeric[index])
        scale = max(scale, abs(a), abs(n))
        difference = abs(a - n) if math.isfinite(a) and math.isfinite(n) else math.inf
        if difference > worst:
            worst, worst_index = difference, index
    error = worst / scale if math.isfinite(worst) else math.inf
    return TensorCheck(name, shape, error, _unravel(worst_index, shape), error <= tolerance)


def central_differences(f, array, step: float = STEP, indices=None):
    """dF/d(array) by central differences, as a flat NumPy float64 array (NaN where not computed).

    ``f()`` reads ``array`` (a NumPy float64 array, changed in place and restored) and
    returns a float. ``indices`` (flat) limits the entries computed; None means all.
    """
    flat = array.reshape(-1)  # a view: writing to it moves the input f reads
    grad = flat * math.nan
    for index in range(flat.size) if indices is None else indices:
        original = float(flat[index])
        flat[index] = original + step
        plus = f()
        flat[index] = original - step
        minus = f()
        flat[index] = original
        grad[index] = (plus - minus) / (2 * step)
    return grad


def _indices(pick, size: int, samples: int | None):
    if samples is None or samples >= size:
        return None
    return [int(i) for i in pick.choice(size, samples, replace=False)]


def _unravel(index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The position of flat ``index`` in an array of ``shape`` (row-major)."""
    position = []
    for size in reversed(shape):
        index, rest = divmod(index, size)
        position.append(rest)
    return tuple(reversed(position))


def _check_arguments(layer, x, host, samples, step, tolerance) -> None:
    if not isinstance(layer, Layer):
        raise TypeError(f"gradcheck checks a Layer (forward and backward), got {type(layer).__name__}")
    if not host.is_array(x):
        raise TypeError(f"gradcheck takes the input x as a NumPy array, got {type(x).__module__}.{type(x).__name__}; "
                        f"the check moves it to the backend itself")
    if "float" not in str(x.dtype):
        raise TypeError(f"gradcheck needs a floating-point input x (it is used in float64), got {x.dtype}; "
                        f"a layer that takes integers (labels) has no gradient with respect to them")
    if x.size == 0:
        raise ValueError("gradcheck needs a non-empty input x")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise ValueError(f"samples must be a positive whole number or None, got {samples!r}")
    for name, value in (("step", step), ("tolerance", tolerance)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError(f"{name} must be a number between 0 and 1, got {value!r}")


def _check_movable(layer) -> None:
    """Refuse to move a layer out of a model's flat parameter buffer (it would stop being trained)."""
    own = getattr(layer, "flat", [])
    for name, parameter in layer.named_parameters():
        if parameter.flat is not None and parameter.flat not in own:
            raise ValueError(
                f"{layer!r} is part of a model ({name} lives in the model's parameter buffer), and checking it in "
                f"float64 would move it out; check the layer before building the model, or move the whole model "
                f"first with model.to(backend, 'float64')"
            )
