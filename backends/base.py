"""The Backend object: an ``xp`` namespace plus the few operations that touch a device."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

FLOAT_DTYPES = ("float32", "float64")
MIN_ROWS_PER_THREAD = 16  # below this, splitting a batch across threads costs more than it saves
# Below this much work per thread (floating-point operations, for callers that say), handing
# work to a thread costs more than it saves. Measured on a 2-core EPYC, Linear forward +
# backward: 34 MFLOP per matmul (LNet's 1024→256 at batch 64) 1.9 ms serial, 2.3 ms split;
# 131 MFLOP (batch 250) 5.6 ms serial, 4.3 ms split.
MIN_WORK_PER_THREAD = 32e6
CPU_TILE_BYTES = 4 * 2**20  # per-thread working set of a batch tile (see Backend.batch_tile)


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


_POOLS: dict[int, ThreadPoolExecutor] = {}


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


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="xpnet")
    return _POOLS[workers]


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that this machine cannot provide (no CuPy, no GPU, ...)."""


def host_rng(seed: int | None = 0) -> np.random.Generator:
    """The seeded host random generator every initialiser draws from.

    Weights are drawn on the host and then moved, so one seed gives the same network on
    every backend.
    """
    return np.random.default_rng(seed)


@dataclass(eq=False)
class Backend:
    """A named array namespace and its device.

    ``xp`` is an array-API namespace (array-api-compat's NumPy or CuPy wrapper, or
    array-api-strict). ``array_type`` is the class of the arrays it makes, so layers can
    tell at once when they are handed an array from another backend.
    """

    name: str
    xp: Any
    array_type: type
    _to_device: Callable[[np.ndarray], Any] = field(repr=False)
    _to_host: Callable[[Any], np.ndarray] = field(repr=False)
    _synchronize: Callable[[], None] = field(repr=False, default=lambda: None)
    threads: int = 1  # CPU threads map_slices may use; 1 on devices that queue their own work
    tile_bytes: int | None = None  # batch_tile's budget; None: no tiling
    blas_limit: Any = field(default=None, repr=False)  # keeps BLAS single-threaded while threads > 1

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
        return self._to_host(array)

    def synchronize(self) -> None:
        """Wait for all queued device work (a no-op on the CPU); use it around timings."""
        self._synchronize()

    def is_array(self, value) -> bool:
        return isinstance(value, self.array_type)

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
        return list(_thread_pool(parts).map(function, [slice(a, b) for a, b in zip(bounds, bounds[1:])]))

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
        return f"Backend({self.name!r})"
