"""Count the array operations a piece of code runs on the strict backend.

On a GPU every array operation that writes memory is one kernel launch, and at the sizes
xpnet trains, the ~10 µs of host time each launch costs, not the arithmetic, sets the
speed. The strict backend runs the same layer code on the CPU (it formulates each layer
as a GPU does: one tile, no threads), so counting its operations measures the launches
anywhere, without a GPU:

>>> from backends import get_backend
>>> from backends.counting import count_operations
>>> with count_operations() as counts:
...     model.forward(x)                  # model on get_backend("strict")
>>> counts.operations, counts.by_name     # total, and per operation name

What counts as one operation (what a GPU would launch a kernel for):

* every function of the namespace whose result is new memory: element-wise functions,
  reductions, matmul, ``take``, ``where``, ``astype`` to another dtype, ``concat``...;
* every operator (``a + b``, ``a > 0``, ``-a``), in-place operator (``a += b``) and
  ``a[...] = b``; indexing with an integer array (a gather);
* array creation that fills memory: ``zeros``, ``ones``, ``full``, ``arange``, the
  ``*_like`` versions.

What does not count: views (basic slicing, ``reshape`` of a contiguous array,
``permute_dims``, ``.mT``: the result shares the input's memory), ``empty``/``empty_like``
(an allocation, no kernel), ``astype`` to the same dtype without a copy, and questions
about dtypes and shapes. A function that the backend fuses into one kernel on a GPU
(``Backend.fuse``) counts once, whatever it does inside.

Device→host transfers are counted separately in ``transfers``: inside a training step there
should be none. Each of these is one: ``float(x)``, ``int(x)``, ``bool(x)`` (an ``if`` on an
array), ``complex(x)``, ``operator.index(x)`` (an array used as a Python index or
``range`` bound), ``np.asarray(x)`` (``__array__``), ``np.from_dlpack(x)`` (``__dlpack__``),
iterating over an array, and ``Backend.to_numpy``. tests/test_counting.py holds each.

Measured against CUPTI's kernel counts on an H200 (issue 9), this count of xpnet's
models before the GPU rewrite was within about 5 %.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

# Functions that describe dtypes or shapes, or configure the library: no array work.
_NOT_OPERATIONS = frozenset({
    "isdtype", "finfo", "iinfo", "result_type", "can_cast", "broadcast_shapes",
    "set_array_api_strict_flags", "get_array_api_strict_flags", "reset_array_api_strict_flags",
    "ArrayAPIStrictFlags", "Device", "ModuleType", "from_dlpack",
})
_ALLOCATIONS = frozenset({"empty", "empty_like"})  # memory without a kernel
_IN_PLACE = frozenset({"__setitem__"} | {f"__i{name}__" for name in (
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift", "rshift")})
_TO_HOST = frozenset({"__float__", "__int__", "__bool__", "__index__", "__complex__", "__array__", "__dlpack__", "__iter__"})
_NOT_COUNTED_METHODS = frozenset({
    "__new__", "__init__", "__repr__", "__str__", "__reduce__", "__array_namespace__", "__dlpack_device__",
    "__hash__", "__buffer__", "__getattribute__", "__setattr__", "__class__",
})


@dataclass
class OperationCounts:
    """What ran inside ``count_operations()``: launches and device→host transfers."""

    operations: int = 0
    transfers: int = 0
    by_name: Counter = field(default_factory=Counter)

    def add(self, name: str, operations: int = 1) -> None:
        self.operations += operations
        self.by_name[name] += operations

    def __str__(self) -> str:
        top = ", ".join(f"{name} {count}" for name, count in self.by_name.most_common())
        return f"{self.operations} operations, {self.transfers} device→host transfers ({top})"


class _State(threading.local):
    counts: OperationCounts | None = None
    depth: int = 0  # > 0 while inside a counted operation or a fused function
    unfused: bool = False  # count the operations inside fused functions one by one


_STATE = _State()


def active_counts() -> OperationCounts | None:
    """The counts being collected in this thread, or None outside ``count_operations``."""
    return _STATE.counts


@contextlib.contextmanager
def as_one_operation(name: str, operations: int = 1, fused: bool = False):
    """Count what runs inside as ``operations`` (one, normally) named ``name``.

    ``fused``: the block is a function the backend fuses into one kernel; when counting
    ``unfused``, its operations are counted one by one instead.
    """
    counts = _STATE.counts
    if counts is None or _STATE.depth or (fused and _STATE.unfused):
        yield
        return
    counts.add(name, operations)
    _STATE.depth += 1
    try:
        yield
    finally:
        _STATE.depth -= 1


@contextlib.contextmanager
def one_transfer():
    """Count the block as one device→host transfer (Backend.to_numpy runs its copy inside).

    What the block does to bring the array over (``__dlpack__`` on the strict backend) is
    that same transfer, not a second one.
    """
    counts = _STATE.counts
    if counts is None or _STATE.depth:
        yield
        return
    counts.transfers += 1
    _STATE.depth += 1
    try:
        yield
    finally:
        _STATE.depth -= 1


def _arrays_in(values) -> list[np.ndarray]:
    found = []
    for value in values:
        inner = getattr(value, "_array", None)
        if isinstance(inner, np.ndarray):
            found.append(inner)
        elif isinstance(value, (tuple, list)):
            found.extend(_arrays_in(value))
    return found


def _is_view(result, inputs: list[np.ndarray]) -> bool:
    inner = getattr(result, "_array", None)
    if not isinstance(inner, np.ndarray):
        return False
    return any(np.may_share_memory(inner, source) for source in inputs)


def matmul_launches(a, b) -> int:
    """Kernels CuPy launches for ``a @ b`` (its matmul, read in cupy/_core/_routines_linalg.pyx).

    One GEMM; plus, for a batched product (3 or more dimensions), a copy of each operand
    that is not C-contiguous and three small kernels that build pointer arrays when one
    operand is broadcast over the batch (a 2-D weight times a 3-D stack, say); for a 2-D
    product, a copy of an operand that is neither C- nor F-contiguous (a transpose is free).
    """
    x, y = getattr(a, "_array", a), getattr(b, "_array", b)
    if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
        return 1
    if max(x.ndim, y.ndim) <= 2:
        return 1 + sum(not (m.flags.c_contiguous or m.flags.f_contiguous) for m in (x, y) if m.ndim == 2)
    batch_x, batch_y = x.shape[:-2], y.shape[:-2]
    copies = sum(not m.flags.c_contiguous for m in (x, y))
    broadcast = batch_x != batch_y
    return 1 + copies + (3 if broadcast else 0)


_MATMULS = frozenset({"matmul", "__matmul__", "__rmatmul__"})


def _counting(name: str, function, kind: str):
    """``function`` wrapped so that each outermost call adds to the active counts."""

    @functools.wraps(function)
    def counted(*args, **kwargs):
        counts = _STATE.counts
        if counts is None or _STATE.depth:
            return function(*args, **kwargs)
        _STATE.depth += 1
        try:
            result = function(*args, **kwargs)
        finally:
            _STATE.depth -= 1
        if kind == "transfer":
            counts.transfers += 1
        elif kind == "in-place":
            counts.add(name)
        elif kind == "allocation":
            pass
        elif name in _MATMULS:
            counts.add("matmul", matmul_launches(*args[:2]))
        elif not _is_view(result, _arrays_in(args) + _arrays_in(kwargs.values())):
            counts.add(name)
        return result

    counted.__wrapped_for_counting__ = function
    return counted


def _method_kind(name: str) -> str:
    if name in _IN_PLACE:
        return "in-place"
    if name in _TO_HOST:
        return "transfer"
    return "result"


_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def count_operations(unfused: bool = False):
    """Count the operations run on the strict backend (array-api-strict) inside the block.

    Yields an OperationCounts that fills as the block runs. Only this thread's operations
    are counted; the strict backend runs everything in the calling thread. ``unfused``:
    count the operations inside fused functions one by one (what runs where nothing is
    fused) instead of one per fused function.
    """
    import array_api_strict as xp

    array_type = type(xp.asarray(0))
    patched: list[tuple[object, str, object]] = []
    with _PATCH_LOCK:
        for name, value in list(vars(array_type).items()):
            if (name.startswith("__") and callable(value) and name not in _NOT_COUNTED_METHODS
                    and not hasattr(value, "__wrapped_for_counting__")):
                patched.append((array_type, name, value))
                setattr(array_type, name, _counting(name, value, _method_kind(name)))
        for name in dir(xp):
            value = getattr(xp, name)
            if (name.startswith("_") or name in _NOT_OPERATIONS or not callable(value) or isinstance(value, type)
                    or hasattr(value, "__wrapped_for_counting__")):
                continue
            patched.append((xp, name, value))
            setattr(xp, name, _counting(name, value, "allocation" if name in _ALLOCATIONS else "result"))
    previous = _STATE.counts, _STATE.depth, _STATE.unfused
    counts = _STATE.counts = OperationCounts()
    _STATE.depth, _STATE.unfused = 0, unfused
    try:
        yield counts
    finally:
        _STATE.counts, _STATE.depth, _STATE.unfused = previous
        with _PATCH_LOCK:
            for owner, name, original in reversed(patched):
                setattr(owner, name, original)


# -- the training steps whose operations are counted (benchmarks/ops.py, the tests) -------------
def step_function(model_name: str, mode: str, batch_size: int, backend_name: str = "strict"):
    """A function that runs one step of ``mode`` (train, train-adam, infer, trainer), already
    warmed up (its first steps done). benchmarks/ops.py counts these steps; the tests trace
    their fused functions. (Imports inside: models and training import backends.)"""
    import numpy as np

    from backends import get_backend
    from layers import CrossEntropyLoss
    from models import build_model
    from training.optim import SGD, Adam

    backend = get_backend(backend_name)
    model = build_model(model_name, seed=0, backend=backend)
    rng = np.random.default_rng(0)
    if mode == "trainer":
        return _trainer_step(model, backend, batch_size, rng)
    x = backend.asarray(rng.standard_normal((batch_size, *model.input_shape), dtype=np.float32))
    labels = backend.asarray(rng.integers(0, model.num_classes, size=batch_size))
    loss_fn = CrossEntropyLoss(check_labels=False)
    optimizer = Adam(model.parameters()) if mode == "train-adam" else SGD(model.parameters(), lr=0.01, momentum=0.9)
    if mode == "infer":
        model.eval()

    def step():
        if mode == "infer":
            model.forward(x)
            return
        loss_fn.forward(model.forward(x), labels)
        model.backward(loss_fn.backward(), input_grad=False)
        optimizer.step()

    for _ in range(2):  # first steps make state, indices and buffers once
        step()
    return step


def _trainer_step(model, backend, batch_size: int, rng):
    """One batch of Trainer._train_epoch, with a device-resident loader, as on cuda."""
    import numpy as np

    from training.data.augment import RandomShift
    from training.data.loader import DataLoader
    from training.loop.trainer import Trainer
    from training.optim import Adam
    from training.schedules import make_schedule

    images = rng.integers(0, 256, size=(3 * batch_size, *model.input_shape), dtype=np.uint8)
    labels = rng.integers(0, model.num_classes, size=3 * batch_size)
    recipe = model.name == "cnn"  # --augment --schedule onecycle
    loader = DataLoader(images, labels, batch_size, backend, mean=[0.5] * 3, std=[0.25] * 3, device_resident=True,
                        augment=RandomShift(3) if recipe else None)
    trainer = Trainer(model, Adam(model.parameters()), backend, progress=False, log=lambda _: None,
                      refresh_every=10**9, schedule=make_schedule("onecycle", 3e-3, 100) if recipe else None)
    batches = iter(loader)

    def step():
        trainer.train_step(*next(batches))

    step()
    return step
