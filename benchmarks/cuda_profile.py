"""Kernel launches and memory copies per step on a GPU, as CUPTI sees them.

torch.profiler's CUDA activity is CUPTI's view of the whole process, so it sees CuPy's
kernels as well as torch's: one tool counts both frameworks the same way. torch stays
optional; without it (or without a GPU) ``kernel_counts`` says so instead of counting.

These are the counts benchmarks/ops.py predicts on the CPU (xpnet only): a fused
function is one kernel, and CuPy's batched matmul adds its own copies.
"""
from __future__ import annotations

from typing import Any, Callable


def kernel_counts(step: Callable[[], None], sync: Callable[[], None], steps: int = 10) -> dict[str, Any]:
    """Per step: kernels launched, and device→host / host→device / other copies and memsets."""
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError as exc:
        return {"kernel_profile_error": f"torch.profiler is needed to count kernels ({exc})"}
    sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        for _ in range(steps):
            step()
        sync()
    totals = {"kernels": 0, "memcpy_dtoh": 0, "memcpy_htod": 0, "memcpy_other": 0, "memset": 0}
    names: dict[str, int] = {}
    for event in profiler.events():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        name = event.name
        if name.startswith("Memcpy DtoH"):
            totals["memcpy_dtoh"] += 1
        elif name.startswith("Memcpy HtoD"):
            totals["memcpy_htod"] += 1
        elif name.startswith("Memcpy"):
            totals["memcpy_other"] += 1
        elif name.startswith("Memset"):
            totals["memset"] += 1
        else:
            totals["kernels"] += 1
            names[name] = names.get(name, 0) + 1
    result = {f"{key}_per_step": value / steps for key, value in totals.items()}
    result["kernel_names"] = dict(sorted(names.items(), key=lambda item: -item[1])[:40])
    return result
