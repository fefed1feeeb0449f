"""The Backend object: an ``xp`` namespace plus the few operations that touch a device."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .counting import as_one_operation, matmul_launches, one_transfer
from .fusion import FusedFunction
from .workers import worker_threads

FLOAT_DTYPES = ("float32", "float64")
ENGINES = ("fast", "reference")
MIN_ROWS_PER_THREAD = 16  # below this, splitting a batch across threads costs more than it saves
# Below this much work per thread (floating-point operations, for callers that say), handing
# work to a thread costs more than it saves. Measured on a 2-core EPYC, Linear forward +
# backward: 34 MFLOP per matmul (LNet's 1024→256 at batch 64) 1.9 ms serial, 2.3 ms split;
# 131 MFLOP (batch 250) 5.6 ms serial, 4.3 ms split.
MIN_WORK_PER_THREAD = 32e6
CPU_TILE_BYTES = 4 * 2**20  # per-thread working set of a batch tile (see Backend.batch_tile)
# Below this many elements an element-wise update of flat arrays runs in one piece: handing
# blocks to threads costs tens of microseconds, more than updating a small array.
PARALLEL_MIN_ELEMENTS = 1 << 20
# On a device where every operation is a launch: the largest temporary work array (Conv2D's
# im2col columns) a layer builds for a whole batch; larger batches go through in chunks.
# 128 MiB keeps LNet's conv layers to one chunk up to batch 400 and bounds memory above.
DEVICE_WORK_BYTES = 128 * 2**20


def cpu_threads() -> int:
    """Threads for the cpu backend: $XPNET_NUM_THREADS, else the cores this process may use."""
    configured = os.environ.get("XPNET_NUM_THREADS", "").strip()
    if configured:
        try:
            return max(1, int(configured))
        except ValueError:
            raise ValueError(f"XPNET_NUM_THREADS must be a whole number, got {configured!r}") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def single_threaded_blas():
    """Make BLAS (OpenBLAS, MKL) run each call on one thread, for the whole process.

    The cpu backend parallelises over the batch itself (``Backend.map_slices``), matmuls
    included; BLAS threads of its own inside each of those threads would fight over the
    same cores. Measured on a 2-core machine, LNet train step, batch 250: batch threads
    with one BLAS thread each were 1.47x faster than one batch thread, while switching
    BLAS between 1 and 2 threads around each parallel section made it slower.
    Returns the threadpoolctl limiter (it holds the limit while it lives).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that this machine cannot provide (no CuPy, no GPU, ...).

    ``reason``: what is wrong and how to mend it. ``cpu_instead``: whether the cpu backend is
    the way round it (a GPU that cannot be used). The message then ends with how to choose the
    cpu in Python (``get_backend('cpu')``); a caller that knows how its user chooses a device
    words that its own way with :meth:`advice` (cli.py: ``run with --device cpu``).
    """

    def __init__(self, reason: str, *, cpu_instead: bool = False):
        self.reason, self.cpu_instead = reason, cpu_instead
        super().__init__(self.advice("use get_backend('cpu')"))

    def advice(self, cpu: str) -> str:
        """The message, with ``cpu`` (say "run with --device cpu") as the way round it, where there is one."""
        return f"{self.reason}, or {cpu}" if self.cpu_instead else self.reason


def host_rng(seed: int | None = 0) -> np.random.Generator:
    """The seeded host random generator every initialiser draws from.

    Weights are drawn on the host and then moved, so one seed gives the same network on
    every backend.
    """
    return np.random.default_rng(seed)


@dataclass(eq=False)
class Backend:
    """A named array namespace and its device, and how work is best run there.

    ``xp`` is an array-API namespace (array-api-compat's NumPy or CuPy wrapper, or
    array-api-strict). ``array_type`` is the class of the arrays it makes, so layers can
    tell at once when they are handed an array from another backend.

    Device policy, which layers read but never decide:

    * ``launch_bound``: every array operation is a kernel launch whose fixed host cost
      (about 10 µs with CuPy) outweighs the arithmetic at these sizes. Layers then take
      formulations with few, whole-batch operations (cuda; strict mirrors it, so that
      ``backends.counting`` counts on the CPU what a GPU would launch).
    * ``threads`` and ``tile_bytes``: the cpu backend splits work over cores
      (``map_slices``) and walks large buffers in cache-sized tiles (``batch_tile``).
    * ``work_bytes``: on launch-bound devices, the largest temporary a layer builds at once.
    * ``fuse``: a chain of element-wise operations as one kernel (cuda), see backends/fusion.py.
    * ``engine``: ``"fast"`` (the engine that suits the device, above) or ``"reference"``
      (every layer runs the plain definition of its math; see layers/engine.py).
    """

    name: str
    xp: Any
    array_type: type
    _to_device: Callable[[np.ndarray], Any] = field(repr=False)
    _to_host: Callable[[Any], np.ndarray] = field(repr=False)
    _synchronize: Callable[[], None] = field(repr=False, default=lambda: None)
    threads: int = 1  # CPU threads map_slices may use; 1 on devices that queue their own work
    tile_bytes: int | None = None  # batch_tile's budget; None: no tiling
    launch_bound: bool = False  # each operation is a device launch: prefer few, whole-batch operations
    work_bytes: int | None = None  # largest temporary work array on a launch-bound device
    native: Any = field(default=None, repr=False)  # NumPy or CuPy itself (for out=); None on strict
    _compile: Callable | None = field(default=None, repr=False)  # (function, name) -> one compiled kernel
    fusion_namespace: Any = field(default=None, repr=False)  # the xp a function being compiled calls
    blas_limit: Any = field(default=None, repr=False)  # keeps BLAS single-threaded while threads > 1
    engine: str = "fast"  # "fast" or "reference": which engine the layers run (ENGINES)
    _fused: dict = field(default_factory=dict, repr=False)
    _constants: dict = field(default_factory=dict, repr=False)

    def dtype(self, dtype: Any):
        """``"float32"``/``"float64"`` (or an xp dtype) as this namespace's dtype object."""
        if isinstance(dtype, str):
            if dtype not in FLOAT_DTYPES and dtype not in ("int64", "int32", "uint8", "bool"):
                raise ValueError(f"unknown dtype {dtype!r}; expected one of {FLOAT_DTYPES}")
            return getattr(self.xp, dtype)
        if isinstance(dtype, np.dtype) or (isinstance(dtype, type) and issubclass(dtype, np.generic)):
            return getattr(self.xp, np.dtype(dtype).name)
        return dtype

    def asarray(self, host_array, dtype: Any = None):
        """Copy a host (NumPy) array, or anything array-like, to this backend's device."""
        if isinstance(host_array, self.array_type):
            array = host_array
        else:
            if not isinstance(host_array, np.ndarray):
                host_array = np.asarray(host_array)
            array = self._to_device(np.ascontiguousarray(host_array))
        if dtype is not None:
            array = self.xp.astype(array, self.dtype(dtype), copy=False)
        return array

    def to_numpy(self, array) -> np.ndarray:
        """Bring an array of this backend back to the host as a NumPy array."""
        if isinstance(array, np.ndarray):
            return array
        with one_transfer():
            return self._to_host(array)

    def synchronize(self) -> None:
        """Wait for all queued device work (a no-op on the CPU); use it around timings."""
        self._synchronize()

    def is_array(self, value) -> bool:
        return isinstance(value, self.array_type)

    # -- operations whose best form depends on the device ---------------------------------
    def fuse(self, function: Callable, **static) -> FusedFunction:
        """``function(xp, *arrays)`` as one operation: one kernel on cuda, the plain calls elsewhere.

        ``static`` keyword arguments choose a variant (each is compiled separately). The
        fused function is made once per function and variant, and reused.
        """
        key = (function, tuple(sorted(static.items()))) if static else function
        fused = self._fused.get(key)
        if fused is None:
            name = function.__name__ + "".join(f"_{k}_{v}" for k, v in sorted(static.items()))
            name = re.sub(r"_*\W+_*", "_", name).strip("_")  # a kernel name is a C identifier: axes=(0, 2, 3) → axes_0_2_3
            fused = self._fused[key] = FusedFunction(function, self.xp, name, static, self._compile,
                                                     self.fusion_namespace)
        return fused

    def fusion_report(self) -> list[dict]:
        """For each fused function and argument signature met so far: whether its compiled
        kernel passed its check and is used (cuda), or runs as plain operations."""
        return [{"function": fused.name, "signature": str(signature), "compiled": used}
                for fused in self._fused.values() for signature, used in fused.checked().items()]

    def fallbacks(self) -> list[str]:
        """One line per fused kernel that was not used (so its plain version runs), with why:
        ``"adam_update_amsgrad_False_decay_none: output 0 differs by 0.1"``. Empty off cuda."""
        lines = (f"{fused.name}: {problem}" for fused in self._fused.values() for problem in fused.problems.values())
        return list(dict.fromkeys(lines))  # one line for signatures that failed alike

    def matmul(self, a, b, out=None):
        """``a @ b``, written into ``out`` when given (so a gradient lands in its buffer with no copy)."""
        if out is None:
            return self.xp.matmul(a, b)
        if self.native is not None:
            return self.native.matmul(a, b, out=out)
        with as_one_operation("matmul", matmul_launches(a, b)):
            out[...] = self.xp.matmul(a, b)
        return out

    def sum(self, x, axis=None, out=None):
        """``xp.sum(x, axis=axis)``, written into ``out`` when given."""
        if out is None:
            return self.xp.sum(x, axis=axis)
        if self.native is not None:
            return self.native.sum(x, axis=axis, out=out)
        with as_one_operation("sum"):
            out[...] = self.xp.sum(x, axis=axis)
        return out

    def constant(self, value: float, dtype):
        """A 0-d device array holding ``value``, made once (``xp.where``/``xp.maximum`` need arrays)."""
        key = (value, str(dtype))
        array = self._constants.get(key)
        if array is None:
            array = self._constants[key] = self.xp.asarray(value, dtype=dtype)
        return array

    def map_blocks(self, update: Callable, *arrays) -> None:
        """``update(*arrays)`` for equally long 1-D arrays, in place, by blocks where that helps.

        On the cpu backend, large arrays are split into cache-sized blocks over the
        threads, so an update rule's several passes read each block from the cache (the
        rule must be element-wise, so each block is the same arithmetic). Elsewhere, and
        for small arrays, one call with the whole arrays.
        """
        length = arrays[0].shape[0]
        if self.threads <= 1 and self.tile_bytes is None or length < PARALLEL_MIN_ELEMENTS:
            update(*arrays)
            return
        item_bytes = sum(self.xp.finfo(a.dtype).bits // 8 for a in arrays if a is not None)
        block = self.batch_tile(item_bytes) or length

        def update_blocks(part):
            for start in range(part.start, part.stop, block):
                piece = slice(start, min(start + block, part.stop))
                update(*(None if a is None else a[piece] for a in arrays))

        self.map_slices(update_blocks, length)

    def map_slices(self, function: Callable[[slice], Any], length: int, work: float | None = None) -> list:
        """``function(part)`` for contiguous slices ``part`` that together cover ``range(length)``.

        Layers put their heavy per-example work (im2col copies, matmuls, pooling) in
        ``function``, usually split over the batch. NumPy runs each operation on one core
        but releases the GIL while it runs, so on the cpu backend the parts run in
        ``threads`` threads (and BLAS is kept to one thread each, see
        single_threaded_blas); everywhere else (GPU, strict) there is one part, the whole
        range. ``function`` must write only its own part of any shared output. ``work``
        (optional): the call's floating-point operations; small calls are not split (see
        MIN_WORK_PER_THREAD). Returns the results in order.
        """
        parts = min(self.threads, length // MIN_ROWS_PER_THREAD)
        if work is not None:
            parts = min(parts, int(work // MIN_WORK_PER_THREAD))
        if parts <= 1:
            return [function(slice(0, length))]
        bounds = [length * k // parts for k in range(parts + 1)]
        return worker_threads(parts).map(function, [slice(a, b) for a, b in zip(bounds, bounds[1:])])

    def batch_tile(self, bytes_per_example: int) -> int | None:
        """Examples per tile for work that fills a buffer of ``bytes_per_example`` each.

        On the cpu backend, a work buffer (Conv2D's im2col columns) that fits in the
        cache is written and read back at cache speed instead of memory speed, so such
        layers go through the batch a few examples at a time. None (no tiling) elsewhere:
        a GPU does best with the whole batch in each kernel.
        """
        if self.tile_bytes is None:
            return None
        return max(1, self.tile_bytes // max(1, bytes_per_example))

    def __repr__(self) -> str:
        return f"Backend({self.name!r})" if self.engine == "fast" else f"Backend({self.name!r}, engine={self.engine!r})"
