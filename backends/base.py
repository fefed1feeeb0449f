"""The Backend object: an ``xp`` namespace plus the few operations that touch a device."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

FLOAT_DTYPES = ("float32", "float64")


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

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"
