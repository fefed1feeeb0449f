"""A benchmark worker: one measurement in a fresh process (``bench.py --worker SPEC``).

It warms up, calibrates the number of steps, times the runs, reads the process's (or the
GPU's) peak memory and, on request, the kernels per step (benchmarks/cuda_profile.py),
and prints one JSON line that the parent (bench.py) collects.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
import traceback
from typing import Any

from benchmarks.workloads import DTYPE, MIB, Workload, torch_workload, xpnet_workload

RESULT_MARKER = "BENCH_RESULT "  # prefixes the worker's JSON line on stdout


def time_steps(workload: Workload, steps: int) -> float:
    """Seconds taken by ``steps`` steps, with the device synchronised at both ends."""
    workload.sync()
    start = time.perf_counter()
    for _ in range(steps):
        workload.step()
    workload.sync()
    return time.perf_counter() - start


def calibrate_steps(workload: Workload, target_seconds: float, max_steps: int = 1_000_000) -> int:
    """The number of steps that takes about ``target_seconds``.

    Doubles a trial run until it lasts at least a fifth of the target (so the estimate is
    not dominated by clock resolution), then scales it up to the target.
    """
    steps = 1
    while True:
        elapsed = time_steps(workload, steps)
        if elapsed >= target_seconds / 5 or steps >= max_steps:
            break
        steps *= 2
    return max(1, min(max_steps, round(steps * target_seconds / max(elapsed, 1e-9))))


def measure(workload: Workload, warmup: int, repeats: int, steps: int | None, target_seconds: float) -> tuple[int, list[float]]:
    """Warm up, choose the step count if not given, and time ``repeats`` runs: (steps, seconds per run)."""
    for _ in range(warmup):
        workload.step()
    workload.sync()
    if steps is None:
        steps = calibrate_steps(workload, target_seconds)
    return steps, [time_steps(workload, steps) for _ in range(repeats)]


def host_memory() -> dict[str, Any]:
    """This process's resident memory now and at its peak, in MB (2**20 bytes).

    The peak is Linux's VmHWM when /proc is there. ``ru_maxrss`` is recorded too, but on
    Linux it also counts the parent's peak at the time of the fork (it survives exec), so
    it overstates a child's peak when the parent was bigger.
    """
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    maxrss_bytes = maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB elsewhere
    status = _proc_status()
    peak = status.get("VmHWM", maxrss_bytes)
    return {
        "host_peak_rss_mb": peak / MIB,
        "host_peak_rss_source": "VmHWM" if "VmHWM" in status else "ru_maxrss",
        "ru_maxrss_mb": maxrss_bytes / MIB,
        "host_rss_now_mb": status.get("VmRSS", maxrss_bytes) / MIB,
    }


def _proc_status() -> dict[str, int]:
    """VmRSS/VmHWM of /proc/self/status in bytes ({} where there is no /proc)."""
    values = {}
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    return values


def import_framework(framework: str) -> None:
    """Import everything a workload needs, so the after-import memory is the framework's cost."""
    if framework == "torch":
        import torch  # noqa: F401
    else:
        import numpy  # noqa: F401

        import layers  # noqa: F401
        import models  # noqa: F401
        import training.optim  # noqa: F401


def run_measurement(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one (framework, model, batch size, mode) as ``spec`` says; the JSON result row."""
    import_framework(spec["framework"])
    after_import = host_memory()["host_rss_now_mb"]
    args = (spec["model"], spec["batch_size"], spec["mode"], spec["device"])
    if spec["framework"] == "torch":
        workload = torch_workload(*args, threads=spec["threads"])
    else:
        workload = xpnet_workload(*args)
    steps, seconds = measure(workload, spec["warmup"], spec["repeats"], spec["steps"], spec["target_seconds"])
    median = statistics.median(seconds)
    memory = host_memory()
    device_memory = workload.device_memory()
    row = {
        **{key: spec[key] for key in ("framework", "model", "batch_size", "mode", "device", "threads")},
        "dtype": DTYPE,
        "warmup": spec["warmup"],
        "repeats": spec["repeats"],
        "steps": steps,
        "run_seconds": seconds,
        "examples_per_second": spec["batch_size"] * steps / median,
        "examples_per_second_runs": [spec["batch_size"] * steps / s for s in seconds],
        "peak_memory_mb": device_memory.get("device_peak_mb", memory["host_peak_rss_mb"]),
        "memory_kind": "device" if device_memory else "host_rss",
        "host_rss_after_import_mb": after_import,
        **{key: value for key, value in memory.items() if key != "host_rss_now_mb"},
        **device_memory,
        **workload.info,
    }
    loss = workload.final_loss()
    if loss is not None:
        row["final_loss"] = loss  # a sanity check: NaN/inf would mean the timings ran on garbage
    if spec.get("profile_kernels") and spec["device"] == "cuda":
        from benchmarks.cuda_profile import kernel_counts

        row.update(kernel_counts(workload.step, workload.sync))
    return row


def run_probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Library and device facts of one framework, seen with the workers' environment."""
    if spec["framework"] == "torch":
        return _probe_torch(spec["device"], spec["threads"])
    return _probe_xpnet(spec["device"])


def _probe_xpnet(device: str) -> dict[str, Any]:
    import numpy

    from backends import get_backend

    get_backend(device)  # raises the backend's own clear error if the device cannot be used
    info: dict[str, Any] = {"numpy_version": numpy.__version__, "blas": _blas_info()}
    if device == "cuda":
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        info.update(
            cupy_version=cupy.__version__,
            gpu_name=name.decode() if isinstance(name, bytes) else str(name),
            gpu_memory_mb=props.get("totalGlobalMem", 0) / MIB,
            cuda_runtime_version=cupy.cuda.runtime.runtimeGetVersion(),
            cuda_driver_version=cupy.cuda.runtime.driverGetVersion(),
        )
    return info


def _blas_info() -> dict[str, Any]:
    """NumPy's BLAS: threadpoolctl's view (library, version, threads, core type) if installed,
    otherwise the name and version from numpy.show_config()."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        pass
    else:
        import numpy  # noqa: F401  (loads the BLAS so threadpoolctl can see it)

        pools = [
            {key: pool.get(key) for key in ("internal_api", "version", "num_threads", "threading_layer", "architecture", "filepath")}
            for pool in threadpool_info()
        ]
        return {"source": "threadpoolctl", "libraries": pools}
    import numpy

    try:
        blas = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except Exception as exc:  # the layout of show_config has changed between NumPy versions
        return {"source": "numpy.show_config", "error": f"{type(exc).__name__}: {exc}"}
    return {
        "source": "numpy.show_config",
        "name": blas.get("name"),
        "version": blas.get("version"),
        "configuration": blas.get("openblas configuration"),
    }


def _probe_torch(device: str, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    info: dict[str, Any] = {"torch_version": torch.__version__, "torch_num_threads": torch.get_num_threads()}
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"torch {torch.__version__} cannot use CUDA here (torch.cuda.is_available() is False)")
        info.update(torch_cuda_version=torch.version.cuda, torch_gpu_name=torch.cuda.get_device_name())
    return info


def worker_main(spec_json: str) -> int:
    """``--worker SPEC``: run one probe or measurement and print its JSON on one stdout line."""
    try:
        spec = json.loads(spec_json)
        result = run_probe(spec) if spec.get("probe") else run_measurement(spec)
        status = 0
    except Exception as exc:  # reported to the parent, which carries on with the other rows
        traceback.print_exc(file=sys.stderr)
        result, status = {"error": f"{type(exc).__name__}: {exc}"}, 1
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return status
