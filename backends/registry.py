"""Building backends by name, with one clear error when one cannot be had."""
from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from .base import (
    CPU_TILE_BYTES,
    DEVICE_WORK_BYTES,
    ENGINES,
    Backend,
    BackendUnavailableError,
    cpu_threads,
    single_threaded_blas,
)

BACKEND_NAMES = ("cpu", "cuda", "auto", "strict")

CUDA_INSTALL_HINT = 'install CuPy for your CUDA version with pip install ".[cuda12]" or ".[cuda13]" (see README)'


@functools.lru_cache(maxsize=None)
def _cpu() -> Backend:
    import array_api_compat.numpy as xp

    threads = cpu_threads()
    backend = Backend("cpu", xp, np.ndarray, _to_device=lambda a: a, _to_host=lambda a: a, threads=threads,
                      tile_bytes=CPU_TILE_BYTES, native=np)
    if threads > 1:
        backend.blas_limit = single_threaded_blas()
    return backend


@functools.lru_cache(maxsize=None)
def _strict() -> Backend:
    try:
        import array_api_strict as xp
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BackendUnavailableError(
            "backend 'strict' needs array-api-strict: pip install array-api-strict "
            '(it comes with pip install ".[test]")'
        ) from exc
    # The oldest standard that every supported library implements: code that runs here
    # uses nothing newer, so it runs on CuPy 13 too.
    xp.set_array_api_strict_flags(api_version="2023.12")
    # Formulated as on a GPU (launch-bound, one tile), so that the operations counted here
    # are the kernels cuda launches (backends/counting.py).
    return Backend(
        "strict",
        xp,
        xp.Array if hasattr(xp, "Array") else type(xp.asarray(0)),
        _to_device=lambda a: xp.asarray(a),
        _to_host=lambda a: np.from_dlpack(a).copy(),
        launch_bound=True,
        work_bytes=DEVICE_WORK_BYTES,
    )


@functools.lru_cache(maxsize=None)
def _cuda() -> Backend:
    try:
        import cupy
    except ModuleNotFoundError as exc:
        if exc.name != "cupy":  # CuPy is there but one of its own dependencies is not
            raise BackendUnavailableError(
                f"device 'cuda': CuPy is installed but failed to import ({_one_line(exc)}); "
                f"reinstall it: {CUDA_INSTALL_HINT}", cpu_instead=True
            ) from exc
        raise BackendUnavailableError(f"device 'cuda' needs CuPy, which is not installed: {CUDA_INSTALL_HINT}",
                                      cpu_instead=True) from exc
    except Exception as exc:  # CuPy installed but broken (wrong CUDA wheel, missing CUDA libraries)
        raise BackendUnavailableError(
            f"device 'cuda': CuPy is installed but failed to import ({_one_line(exc)}); "
            f"reinstall the CuPy wheel that matches your CUDA driver", cpu_instead=True
        ) from exc
    version = getattr(cupy, "__version__", None)
    if version is not None and _major_version(version) < MIN_CUPY_MAJOR:
        raise BackendUnavailableError(
            f"device 'cuda': CuPy {cupy.__version__} is too old; xpnet needs CuPy {MIN_CUPY_MAJOR} or newer: "
            + CUDA_INSTALL_HINT, cpu_instead=True
        )
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise BackendUnavailableError(
            f"device 'cuda': the CUDA driver could not be used ({_one_line(exc)}); "
            "check that the NVIDIA driver is installed and `nvidia-smi` works", cpu_instead=True
        ) from exc
    if count == 0:
        raise BackendUnavailableError("device 'cuda': CuPy is installed but no NVIDIA GPU was found", cpu_instead=True)
    _probe(cupy)
    import array_api_compat.cupy as xp

    return Backend(
        "cuda",
        xp,
        cupy.ndarray,
        _to_device=cupy.asarray,
        _to_host=cupy.asnumpy,
        _synchronize=lambda: cupy.cuda.get_current_stream().synchronize(),
        launch_bound=True,
        work_bytes=DEVICE_WORK_BYTES,
        native=cupy,
        _compile=lambda function, name: cupy.fuse(kernel_name=name)(function),
        fusion_namespace=_FusionNamespace(cupy),
    )


MIN_CUPY_MAJOR = 14  # ndarray.mT, and the array API functions the layers call


def _major_version(version: str) -> int:
    """14 for "14.2.0"; a development version's leading number too ("15.0.0rc1" → 15)."""
    digits = str(version).split(".")[0]
    return int(digits) if digits.isdigit() else MIN_CUPY_MAJOR


def _probe(cupy) -> None:
    """Compile and run, once, one of each kind of kernel training needs, so that a GPU that
    cannot (no NVRTC or cuBLAS: a machine with only the driver) is refused here with the
    reason, not by a traceback at the first step. Each result is checked against NumPy."""
    x = np.arange(6, dtype=np.float32)
    a, b = x.reshape(2, 3), x.reshape(3, 2)
    kinds = {
        "an element-wise kernel (compiled by NVRTC)": (lambda d: d * 2 + 1, x * 2 + 1, x),
        "a matrix product (cuBLAS)": (lambda d: cupy.matmul(d.reshape(2, 3), d.reshape(3, 2)), a @ b, x),
        "a batched matrix product (cuBLAS)": (
            lambda d: cupy.matmul(d.reshape(2, 2, 3), d.reshape(2, 3, 2)),
            np.matmul(np.arange(12, dtype=np.float32).reshape(2, 2, 3), np.arange(12, dtype=np.float32).reshape(2, 3, 2)),
            np.arange(12, dtype=np.float32)),
        "a fused kernel (cupy.fuse)": (lambda d: cupy.fuse(kernel_name="xpnet_probe")(lambda u, v: u * v + 1)(d, d),
                                       x * x + 1, x),
    }
    for what, (run, expected, host) in kinds.items():
        try:
            result = cupy.asnumpy(run(cupy.asarray(host)))
            works = np.allclose(result, expected)
        except Exception as exc:
            raise BackendUnavailableError(
                f"device 'cuda': a GPU was found but CuPy could not compile and run {what} ({_one_line(exc)}); "
                'the CUDA toolkit libraries (NVRTC, cuBLAS) are missing or do not match the driver: '
                'pip install ".[cuda12]" or ".[cuda13]" installs them with CuPy', cpu_instead=True
            ) from exc
        if not works:
            raise BackendUnavailableError(f"device 'cuda': {what} gave a wrong result on this GPU", cpu_instead=True)


class _FusionNamespace:
    """CuPy as a fused function sees it: ``cupy.astype`` refuses the placeholders ``cupy.fuse``
    traces with (it checks for a real ndarray), their own ``.astype`` method works."""

    def __init__(self, cupy):
        self._cupy = cupy

    def __getattr__(self, name):
        return getattr(self._cupy, name)

    @staticmethod
    def astype(x, dtype, /, *, copy=True):
        return x.astype(dtype, copy=copy)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line; of CuPy's long import banner only the original error."""
    text = str(exc)
    if "Original error:" in text:
        text = text.split("Original error:", 1)[1]
    else:
        text = f"{type(exc).__name__}: {text}"
    text = " ".join(word for word in text.split() if word.strip("="))  # no line breaks, no ==== rules
    return text if len(text) <= limit else text[: limit - 1] + "…"


_FACTORIES = {"cpu": _cpu, "cuda": _cuda, "strict": _strict}


def get_backend(name: str | Backend = "cpu", engine: str | None = None) -> Backend:
    """The backend called ``name``: ``cpu``, ``cuda``, ``auto`` or ``strict``.

    ``auto`` is cuda when CuPy and a working GPU are present, otherwise cpu. A backend
    that cannot be had raises BackendUnavailableError saying what is missing.

    ``engine``: ``"fast"`` (the engines that suit the device) or ``"reference"`` (every
    layer runs the plain definition of its math, layers/engine.py); by default
    $XPNET_ENGINE, else ``"fast"``.
    """
    engine = default_engine() if engine is None else engine
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if isinstance(name, Backend):
        return name
    if name == "auto":
        try:
            backend = _cuda()
        except BackendUnavailableError:
            backend = _cpu()
    else:
        try:
            factory = _FACTORIES[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKEND_NAMES)}") from None
        backend = factory()
    return backend if engine == "fast" else _with_engine(backend.name, engine)


def default_engine() -> str:
    """$XPNET_ENGINE (``fast`` or ``reference``), else ``fast``; another value is one clear error."""
    engine = os.environ.get("XPNET_ENGINE", "").strip() or "fast"
    if engine not in ENGINES:
        raise BackendUnavailableError(f"XPNET_ENGINE must be one of {', '.join(ENGINES)}, got {engine!r}: "
                                      f"set it to reference to run the plain math, or unset it")
    return engine


@functools.lru_cache(maxsize=None)
def _with_engine(name: str, engine: str) -> Backend:
    """The backend ``name`` with its layers told to run ``engine`` (the same device and arrays)."""
    return dataclasses.replace(_FACTORIES[name](), engine=engine)


def backend_of(array) -> Backend | None:
    """The backend, among those already created, whose arrays ``array`` belongs to; else None.

    With $XPNET_ENGINE set, the variant of it that runs that engine.
    """
    for name, factory in (("cpu", _cpu), ("cuda", _cuda), ("strict", _strict)):
        if factory.cache_info().currsize and factory().is_array(array):
            return get_backend(name)
    return None


def available_backends() -> list[str]:
    """Names of the concrete backends that work on this machine (cpu always)."""
    names = []
    for name in ("cpu", "strict", "cuda"):
        try:
            get_backend(name)
        except BackendUnavailableError:
            continue
        names.append(name)
    return names
