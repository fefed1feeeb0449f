"""The benchmark's results: the comparison table, the machine they were measured on, the JSON file."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
RECORDED_ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# A configuration during whose runs other processes took at least this share of the
# machine's CPUs is marked in the table. On a 2-core machine, a job running beside the
# workers once turned a ratio around: the cnn at batch 64 read 1.77x (xpnet faster) on a
# shared machine and 0.57x alone (2026-11-28).
BUSY_SHARE = 0.10


def cpu_seconds() -> tuple[float, float, float] | None:
    """(busy, total) CPU seconds of all the machine's CPUs since boot, and the CPU seconds of this
    process's finished children; None where there is no /proc/stat.

    Busy is every state but idle and iowait, so it includes time the hypervisor gave to
    other virtual machines (steal), which a benchmark in a VM loses just the same.
    """
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    import resource  # Unix only, like /proc/stat

    ticks = [int(value) for value in fields[1:9]]  # user nice system idle iowait irq softirq steal
    per_second = os.sysconf("SC_CLK_TCK")
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (sum(ticks) - ticks[3] - ticks[4]) / per_second, sum(ticks) / per_second, children.ru_utime + children.ru_stime


def other_cpu_share(before: tuple[float, float, float] | None, after: tuple[float, float, float] | None) -> float | None:
    """The share of the machine's CPU time that went to anything but the children that finished
    between two ``cpu_seconds()`` readings: (busy - children's CPU time) / total, in [0, 1]."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    busy, total, children = (b - a for a, b in zip(before, after))
    return min(1.0, max(0.0, (busy - children) / total))


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pair xpnet's rows with torch's (if any): throughputs, ratio xpnet/torch, memories.

    With several rounds, each figure is the median over the rounds that did not fail, and
    the ratio is the median of the per-round ratios (each from two runs back to back).
    """
    by_key: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        by_key.setdefault((row["model"], row["batch_size"], row["mode"]), {}).setdefault(row["framework"], []).append(row)
    table = []
    for (model, batch_size, mode), runs in by_key.items():
        ours, theirs = runs.get("xpnet", []), runs.get("torch", [])
        by_round = {row.get("round", 0): row for row in theirs}
        ratios = [row["examples_per_second"] / by_round[row.get("round", 0)]["examples_per_second"]
                  for row in ours if row.get("examples_per_second")
                  and by_round.get(row.get("round", 0), {}).get("examples_per_second")]
        table.append({
            "model": model, "batch_size": batch_size, "mode": mode,
            "xpnet_examples_per_second": _median_of(ours, "examples_per_second"),
            "torch_examples_per_second": _median_of(theirs, "examples_per_second"),
            "ratio_xpnet_over_torch": statistics.median(ratios) if ratios else None,
            "xpnet_peak_memory_mb": _median_of(ours, "peak_memory_mb"),
            "torch_peak_memory_mb": _median_of(theirs, "peak_memory_mb"),
            "xpnet_kernels_per_step": _median_of(ours, "kernels_per_step"),
            "torch_kernels_per_step": _median_of(theirs, "kernels_per_step"),
            "xpnet_dtoh_per_step": _median_of(ours, "memcpy_dtoh_per_step"),
            "rounds": len(ours),
            "other_cpu_share": max((row["other_cpu_share"] for row in ours + theirs if row.get("other_cpu_share") is not None),
                                   default=None),
        })
    return table


def _median_of(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [row[key] for row in rows if row.get(key) is not None]
    return statistics.median(values) if values else None


def format_table(comparison: list[dict[str, Any]], with_torch: bool) -> str:
    """The comparison as an aligned text table."""
    header = ["model", "batch", "mode", "xpnet ex/s"]
    if with_torch:
        header += ["torch ex/s", "xpnet/torch"]
    header += ["xpnet MB"] + (["torch MB"] if with_torch else [])
    kernels = any(entry.get("xpnet_kernels_per_step") is not None for entry in comparison)
    if kernels:
        header += ["xpnet kernels"] + (["torch kernels"] if with_torch else []) + ["xpnet D2H"]
    lines = [header]
    for entry in comparison:
        busy = "*" if (entry.get("other_cpu_share") or 0.0) >= BUSY_SHARE else ""  # on the figure that compares
        line = [entry["model"], str(entry["batch_size"]), entry["mode"],
                _number(entry["xpnet_examples_per_second"]) + ("" if with_torch else busy)]
        if with_torch:
            ratio = entry["ratio_xpnet_over_torch"]
            line += [_number(entry["torch_examples_per_second"]), "-" if ratio is None else f"{ratio:.2f}x{busy}"]
        line += [_number(entry["xpnet_peak_memory_mb"])] + ([_number(entry["torch_peak_memory_mb"])] if with_torch else [])
        if kernels:
            line += [_number(entry.get("xpnet_kernels_per_step"))]
            line += [_number(entry.get("torch_kernels_per_step"))] if with_torch else []
            line += [_number(entry.get("xpnet_dtoh_per_step"))]
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    aligned = [
        "  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
        for line in lines
    ]
    rule = "-" * len(aligned[0])
    return "\n".join([aligned[0], rule, *aligned[1:]])


def table_notes(rows: list[dict[str, Any]], device: str, with_torch: bool) -> str:
    """What the table's ratio and memory columns mean, and which figures the machine's load may have bent."""
    notes = []
    shares = [row["other_cpu_share"] for row in rows if row.get("other_cpu_share") is not None]
    if shares and max(shares) >= BUSY_SHARE:
        effect = "slows the two frameworks unequally" if with_torch else "slows the runs"
        notes.append(f"*: other processes took up to {max(shares):.0%} of the CPUs while these ran (more than "
                     f"{BUSY_SHARE:.0%}), which {effect}; rerun on an idle machine before trusting these figures")
    if with_torch:
        notes.append("xpnet/torch: throughput ratio; above 1 means xpnet is faster")
    if device == "cuda":
        notes.append("MB: GPU memory (xpnet: CuPy memory pool total; torch: torch.cuda.max_memory_allocated())")
    else:
        imports = {}
        for row in rows:
            if "host_rss_after_import_mb" in row:
                imports.setdefault(row["framework"], row["host_rss_after_import_mb"])
        baseline = ", ".join(f"{name} {mb:,.0f} MB" for name, mb in imports.items())
        notes.append("MB: peak resident memory of the worker process, framework included "
                     f"(right after its imports: {baseline or 'unknown'})")
    return "\n".join(notes)


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Write the report, creating the folder; via a .tmp file so a crash leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)


def _number(value: float | None) -> str:
    return "error" if value is None else f"{value:,.1f}"


def cpu_info() -> dict[str, Any]:
    """CPU model and core counts, from /proc/cpuinfo where there is one."""
    model, cores = None, set()
    physical_id = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = (part.strip() for part in line.partition(":"))
                if key in ("model name", "Hardware", "Processor", "cpu model") and model is None:
                    model = value
                elif key == "physical id":
                    physical_id = value
                elif key == "core id":
                    cores.add((physical_id, value))
    except OSError:
        pass
    return {
        "cpu_model": model or platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "available_cpus": default_threads(),
        "physical_cores": len(cores) or None,
    }


def machine_info(probes: dict[str, dict[str, Any]], env: dict[str, str]) -> dict[str, Any]:
    """Everything about the machine and libraries that a reader of the numbers needs."""
    info: dict[str, Any] = {
        **cpu_info(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "hostname": platform.node(),
        **probes.get("xpnet", {}),
        "torch_version": probes.get("torch", {}).get("torch_version") or _installed_version("torch"),
        **{key: value for key, value in probes.get("torch", {}).items() if key != "torch_version"},
        "environment": {name: os.environ.get(name) for name in RECORDED_ENV_VARS},
        "worker_environment": {name: env.get(name) for name in RECORDED_ENV_VARS},
    }
    return info


def _installed_version(distribution: str) -> str | None:
    """The installed version of a distribution, without importing it (None if absent)."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def default_json_path(device: str, now: _dt.datetime) -> Path:
    """benchmarks/results/<device>-<date>-<hhmm>.json: a second run the same day keeps the first."""
    return REPO_ROOT / "benchmarks" / "results" / f"{device}-{now:%Y-%m-%d-%H%M}.json"


def default_threads() -> int:
    """The CPUs this process may run on (its affinity mask), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
