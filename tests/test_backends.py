"""Backends: names, host/device round trips, and the batch-splitting hook."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from backends import available_backends, get_backend
from backends.base import cpu_threads


def test_names_and_round_trip(backend):
    host = np.arange(12, dtype=np.float64).reshape(3, 4)
    device = backend.asarray(host, dtype="float32")
    assert backend.is_array(device) and device.dtype == backend.xp.float32
    back = backend.to_numpy(device)
    assert isinstance(back, np.ndarray) and back.dtype == np.float32
    np.testing.assert_array_equal(back, host)
    backend.synchronize()


def test_available_and_unknown_backends():
    assert {"cpu", "strict"} <= set(available_backends())
    expected = "cuda" if "cuda" in available_backends() else "cpu"  # auto: cuda exactly when it works
    assert get_backend("auto") is get_backend(expected)
    with pytest.raises(ValueError, match="unknown backend 'tpu'; expected one of cpu, cuda, auto, strict"):
        get_backend("tpu")


@pytest.mark.parametrize("length", [1, 15, 16, 33, 250, 1001])
def test_map_slices_covers_the_range_in_order(backend, length):
    seen = backend.map_slices(lambda part: list(range(length))[part], length)
    assert [i for chunk in seen for i in chunk] == list(range(length))


def test_map_slices_runs_parts_in_threads_on_cpu(monkeypatch):
    cpu = get_backend("cpu")
    monkeypatch.setattr(cpu, "threads", 2)
    names = cpu.map_slices(lambda part: threading.current_thread().name, 64)
    assert len(names) == 2 and all(name.startswith("xpnet") for name in names)
    assert len(cpu.map_slices(lambda part: part, 20)) == 1  # too few rows to be worth splitting
    assert len(get_backend("strict").map_slices(lambda part: part, 1000)) == 1


def test_thread_count_from_the_environment(monkeypatch):
    monkeypatch.setenv("XPNET_NUM_THREADS", "3")
    assert cpu_threads() == 3
    monkeypatch.setenv("XPNET_NUM_THREADS", "many")
    with pytest.raises(ValueError, match="XPNET_NUM_THREADS must be a whole number, got 'many'"):
        cpu_threads()


def test_map_slices_splits_only_work_worth_a_thread(monkeypatch):
    cpu = get_backend("cpu")
    monkeypatch.setattr(cpu, "threads", 2)
    parts = lambda **kwargs: cpu.map_slices(lambda part: part, 100, **kwargs)
    assert parts() == [slice(0, 50), slice(50, 100)]
    assert parts(work=1e6) == [slice(0, 100)]  # far below MIN_WORK_PER_THREAD
    assert parts(work=1e12) == [slice(0, 50), slice(50, 100)]
    assert cpu.map_slices(lambda part: part, 20) == [slice(0, 20)]  # fewer than 2 x 16 rows
