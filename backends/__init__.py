"""Array backends: which array library (``xp``) and which device the layers run on.

>>> from backends import get_backend
>>> be = get_backend("cpu")          # NumPy through array-api-compat
>>> x = be.asarray(host_images, dtype="float32")
>>> be.to_numpy(x)                   # back to a NumPy array on the host

Names: ``cpu`` (NumPy), ``cuda`` (CuPy on an NVIDIA GPU), ``auto`` (cuda when it works,
otherwise cpu) and ``strict`` (array-api-strict: NumPy underneath, but every function
outside the Python array API standard is refused; the tests use it to prove that the
layer code would run unchanged on CuPy).
"""
from .base import Backend, BackendUnavailableError, host_rng
from .fusion import FusionFallbackWarning
from .registry import BACKEND_NAMES, available_backends, backend_of, get_backend

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "FusionFallbackWarning",
    "BACKEND_NAMES",
    "available_backends",
    "backend_of",
    "get_backend",
    "host_rng",
]
