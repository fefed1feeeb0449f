"""Shared fixtures: every test that computes runs on each backend this machine has."""
from __future__ import annotations

import numpy as np
import pytest

from backends import BackendUnavailableError, get_backend

ALL_BACKENDS = ("cpu", "strict", "cuda")

# Tolerances against the cpu float64 result, per dtype (relative to the result's scale).
TOLERANCE = {"float64": 1e-10, "float32": 2e-5}


def backend_or_skip(name: str):
    try:
        return get_backend(name)
    except BackendUnavailableError as exc:
        pytest.skip(f"{name} backend unavailable: {exc}")


@pytest.fixture(params=ALL_BACKENDS)
def backend(request):
    """Each backend in turn; cuda is skipped, with the reason, where there is no GPU."""
    return backend_or_skip(request.param)


@pytest.fixture(params=("float32", "float64"))
def dtype(request) -> str:
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def assert_close(actual, expected, dtype: str, what: str = "") -> None:
    """``actual`` (NumPy) matches ``expected`` (NumPy float64) within the dtype's tolerance."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-3)
    error = float(np.max(np.abs(actual - expected), initial=0.0)) / scale
    assert error <= TOLERANCE[dtype], f"{what}: relative error {error:.3g} > {TOLERANCE[dtype]} ({dtype})"


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """Synthetic data cached in this test's own folder, never in ~/.cache."""
    monkeypatch.setenv("XPNET_CACHE", str(tmp_path / "cache"))
