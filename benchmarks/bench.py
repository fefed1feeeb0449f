"""Throughput and peak memory of xpnet's models, optionally against PyTorch eager.

    python benchmarks/bench.py                          # MLP, LNet and CNN, batch 64/250/1024, CPU
    python benchmarks/bench.py --device cuda --compare-torch
    python benchmarks/bench.py --models lnet --batch-sizes 64 --repeats 3 --threads 1
    python benchmarks/bench.py --quick                  # a few-second smoke run
    python benchmarks/bench.py --compare-torch --rounds 3   # medians of 3 interleaved rounds

What is measured, for each (model, batch size, mode), in float32:

* ``train``: one step is model.forward → CrossEntropyLoss forward and backward →
  model.backward(dy, input_grad=False) → optimizer.step(), with SGD (lr 0.01,
  momentum 0.9). PyTorch does the same with torch.optim.SGD, an input that does not
  require grad, and zero_grad(set_to_none=True) each step.
* ``infer``: model.eval(), then forward only (PyTorch: under torch.inference_mode()).

Inputs and labels are random arrays created on the device before timing: data loading
and host→device copies are excluded. The labels cycle through 10 shifted copies, so the
network cannot memorise its one batch and the loss stays near log(10), as in real training. Each measurement does ``--warmup`` untimed steps,
then ``--repeats`` timed runs of ``--steps`` steps each (by default the number of steps
is calibrated so one run takes about ``--target-seconds``); the reported throughput is
examples/second of the median run. On a GPU the device is synchronised before every
clock read. ``--rounds N`` repeats the whole set N times, the two frameworks of a
configuration always back to back, and reports the median of each figure and of the
per-round ratios: on a shared machine whose load drifts, a single pair of runs can be
off by 20 %.

Every (framework, model, batch size, mode) runs in a fresh subprocess (this same script
with ``--worker``), so its peak memory is its own: on the CPU the peak resident set size
of the worker process (Linux VmHWM; ``resource.getrusage(...).ru_maxrss`` is recorded
too), on CUDA the bytes held by CuPy's default memory pool after the run (the pool keeps
what it has allocated, so this is its high-water mark) and, for PyTorch,
torch.cuda.max_memory_allocated(). Peak memory includes the framework itself: the JSON
also records each worker's resident size right after its imports.

Workers get ``--threads`` N through OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and
MKL_NUM_THREADS (and torch.set_num_threads(N)), so both frameworks use the same number of
threads. Results go to a table on stdout and to a JSON file (``--json``; by default
benchmarks/results/<device>-<date>-<hhmm>.json).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SCHEMA_VERSION = 1
MODELS = ("mlp", "lnet", "cnn")
MODES = ("train", "infer")
DEFAULT_BATCH_SIZES = (64, 250, 1024)
DTYPE = "float32"
LEARNING_RATE, MOMENTUM = 0.01, 0.9
OPTIMIZER = {"name": "SGD", "lr": LEARNING_RATE, "momentum": MOMENTUM}
SEED = 0
MIB = 2**20  # the "MB" of every memory figure

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
RECORDED_ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
RESULT_MARKER = "BENCH_RESULT "  # prefixes the worker's JSON line on stdout
TORCH_INSTALL_HINT = (
    "--compare-torch needs PyTorch, which is not importable here{reason}.\n"
    "Install it with:\n"
    "    pip install torch==2.13.0\n"
    '(or pip install ".[bench]" for the optional benchmark extra), then run this command again.'
)
DATA_NOTE = ("random float32 inputs and int64 labels created on the device before timing (labels cycle through "
             "10 shifted copies so the batch cannot be memorised); data loading excluded")


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------
def default_threads() -> int:
    """The CPUs this process may run on (its affinity mask), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train-step and inference throughput (examples/s) and peak memory of xpnet's "
        "models, optionally against the same networks in PyTorch eager.",
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="models to measure (default: %(default)s)")
    parser.add_argument("--batch-sizes", nargs="+", type=_positive_int, default=None,
                        help=f"batch sizes (default {' '.join(map(str, DEFAULT_BATCH_SIZES))}; 8 with --quick)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="train step and/or inference (default: both)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where both frameworks run (default: %(default)s)")
    parser.add_argument("--warmup", type=_non_negative_int, default=None, help="untimed steps first (default 3; 1 with --quick)")
    parser.add_argument("--repeats", type=_positive_int, default=None, help="timed runs; the median is reported (default 5; 1 with --quick)")
    parser.add_argument("--steps", type=_positive_int, default=None,
                        help="steps per timed run (default: calibrated to --target-seconds; 2 with --quick)")
    parser.add_argument("--target-seconds", type=float, default=1.0, help="length of one timed run when --steps is not given (default: %(default)s)")
    parser.add_argument("--threads", type=_positive_int, default=default_threads(),
                        help="CPU threads for both frameworks: OMP/OPENBLAS/MKL_NUM_THREADS and torch.set_num_threads "
                             "(default: the CPUs available, here %(default)s)")
    parser.add_argument("--compare-torch", action="store_true", help="also run the same networks in PyTorch (pip install torch)")
    parser.add_argument("--rounds", type=_positive_int, default=1,
                        help="measure everything this many times, round after round, and report medians; on a machine "
                             "whose load changes, 3 or more make the ratios steadier (default: %(default)s)")
    parser.add_argument("--profile-kernels", action="store_true",
                        help="on cuda: also count kernel launches and device<->host copies per step through "
                             "torch.profiler (CUPTI; needs torch)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results (default benchmarks/results/<device>-<date>-<hhmm>.json)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: batch 8, 1 warm-up, 1 repeat of 2 steps")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed for one worker subprocess (default: %(default)s)")
    parser.add_argument("--worker", metavar="SPEC", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _apply_defaults(args)
    return args


def _apply_defaults(args: argparse.Namespace) -> None:
    """Fill the options whose defaults depend on --quick."""
    quick = args.quick
    if args.batch_sizes is None:
        args.batch_sizes = [8] if quick else list(DEFAULT_BATCH_SIZES)
    if args.warmup is None:
        args.warmup = 1 if quick else 3
    if args.repeats is None:
        args.repeats = 1 if quick else 5
    if args.steps is None and quick:
        args.steps = 2
    if not args.target_seconds > 0:
        raise SystemExit("--target-seconds must be > 0")
    for name in ("models", "batch_sizes", "modes"):  # each configuration once, in the order given
        setattr(args, name, list(dict.fromkeys(getattr(args, name))))


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


# ----------------------------------------------------------------------------------------
# Worker side: one measurement in a fresh process
# ----------------------------------------------------------------------------------------
@dataclass
class Workload:
    """What a worker times: ``step()`` does one train or inference step.

    ``sync()`` waits for queued device work; ``final_loss()`` reads the last training loss
    (None for inference); ``device_memory()`` returns the device-memory figures of the run.
    """

    step: Callable[[], None]
    sync: Callable[[], None]
    final_loss: Callable[[], float | None] = lambda: None
    device_memory: Callable[[], dict[str, Any]] = dict
    info: dict[str, Any] = field(default_factory=dict)


def cycling_labels(host_labels, num_classes: int, to_device: Callable[[Any], Any]) -> Iterator[Any]:
    """An endless cycle of ``num_classes`` label arrays, all on the device before timing.

    Array k is ``(labels + k) % num_classes``: the step does the same work as with one
    fixed batch, but the network cannot memorise it, so the loss stays near log(C) as in
    real training instead of collapsing to 0 (whose vanishing gradients would time
    underflow and denormal arithmetic rather than a normal step).
    """
    import numpy as np

    host_labels = np.asarray(host_labels, dtype=np.int64)
    return itertools.cycle([to_device((host_labels + k) % num_classes) for k in range(num_classes)])


def xpnet_workload(model_name: str, batch_size: int, mode: str, device: str) -> Workload:
    """xpnet's model, loss and SGD on ``device``, with a random batch already there."""
    import numpy as np

    from backends import get_backend
    from layers import CrossEntropyLoss
    from models import build_model
    from training.optim import SGD

    backend = get_backend(device)
    model = build_model(model_name, seed=SEED, backend=backend, dtype=DTYPE)
    rng = np.random.default_rng(SEED)
    x = backend.asarray(rng.standard_normal((batch_size, *model.input_shape), dtype=np.float32))
    last = {"loss": None}

    if mode == "train":
        labels = cycling_labels(rng.integers(0, model.num_classes, size=batch_size), model.num_classes,
                                lambda host: backend.asarray(host, dtype="int64"))
        loss_fn = CrossEntropyLoss(check_labels=False)  # the check would read labels back to the host
        optimizer = SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
        model.train()

        def step() -> None:
            last["loss"] = loss_fn.forward(model.forward(x), next(labels))
            model.backward(loss_fn.backward(), input_grad=False)
            optimizer.step()
    else:
        model.eval()

        def step() -> None:
            model.forward(x)

    return Workload(
        step=step,
        sync=backend.synchronize,
        final_loss=lambda: None if last["loss"] is None else float(backend.to_numpy(last["loss"])),
        device_memory=(lambda: {**_cupy_memory(), "fused_kernels": backend.fusion_report()}) if device == "cuda" else dict,
    )


def _cupy_memory() -> dict[str, Any]:
    import cupy

    pool = cupy.get_default_memory_pool()
    return {
        "device_peak_mb": pool.total_bytes() / MIB,
        "device_memory_kind": "cupy default memory pool total_bytes() after the run "
        "(memory the pool holds; it keeps every block it allocated, so ~ its high-water mark)",
    }


def torch_workload(model_name: str, batch_size: int, mode: str, device: str, threads: int) -> Workload:
    """The PyTorch twin of :func:`xpnet_workload` (eager mode, same shapes and optimizer)."""
    import torch

    from benchmarks.torch_models import build_torch_model

    torch.set_num_threads(threads)
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("torch.cuda.is_available() is False: this PyTorch has no CUDA support or sees no GPU")
        # Plain float32 like CuPy: no TF32 tensor-core shortcuts in convolutions or matmuls.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(device)
    torch.manual_seed(SEED)
    model = build_torch_model(model_name).to(device=dev, dtype=torch.float32)
    x = torch.randn(batch_size, 3, 32, 32, device=dev, dtype=torch.float32)  # requires_grad=False
    last = {"loss": None}

    if mode == "train":
        host_labels = torch.randint(0, 10, (batch_size,), generator=torch.Generator().manual_seed(SEED)).numpy()
        labels = cycling_labels(host_labels, 10, lambda host: torch.from_numpy(host).to(dev))
        loss_fn = torch.nn.CrossEntropyLoss()
        optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
        model.train()

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), next(labels))
            loss.backward()
            optimizer.step()
            last["loss"] = loss.detach()
    else:
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                model(x)

    def device_memory() -> dict[str, Any]:
        if device != "cuda":
            return {}
        return {
            "device_peak_mb": torch.cuda.max_memory_allocated() / MIB,
            "device_memory_kind": "torch.cuda.max_memory_allocated()",
            "torch_max_memory_reserved_mb": torch.cuda.max_memory_reserved() / MIB,
        }

    return Workload(
        step=step,
        sync=torch.cuda.synchronize if device == "cuda" else (lambda: None),
        final_loss=lambda: None if last["loss"] is None else float(last["loss"]),
        device_memory=device_memory,
        info={"torch_num_threads": torch.get_num_threads()},
    )


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


# ----------------------------------------------------------------------------------------
# Parent side: run the workers, collect, print, save
# ----------------------------------------------------------------------------------------
def worker_environment(threads: int) -> dict[str, str]:
    """The parent's environment with every thread-count variable set to ``threads``."""
    env = dict(os.environ)
    env.update({name: str(threads) for name in THREAD_ENV_VARS})
    return env


def run_worker(spec: dict[str, Any], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run this script with ``--worker spec`` in a fresh process; its result, or {"error": ...}."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout:g} s (raise --timeout)"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
    return {"error": f"worker exited with code {done.returncode} without a result: " + " | ".join(tail)}


def measurement_specs(args: argparse.Namespace, frameworks: list[str]) -> list[dict[str, Any]]:
    """One worker spec per (round, model, batch size, mode, framework), in table order.

    The frameworks of one configuration run back to back, so each ratio compares runs
    minutes apart at most, and each round goes through every configuration once.
    """
    return [
        {
            "framework": framework, "model": model, "batch_size": batch_size, "mode": mode,
            "device": args.device, "threads": args.threads, "warmup": args.warmup,
            "repeats": args.repeats, "steps": args.steps, "target_seconds": args.target_seconds,
            "round": round_index, "profile_kernels": args.profile_kernels,
        }
        for round_index in range(args.rounds)
        for model in args.models
        for batch_size in args.batch_sizes
        for mode in args.modes
        for framework in frameworks
    ]


def run_all(specs: list[dict[str, Any]], env: dict[str, str], timeout: float) -> list[dict[str, Any]]:
    """Run every measurement, reporting progress on stderr; failed ones become error rows."""
    rows = []
    for index, spec in enumerate(specs, 1):
        label = f"[{index}/{len(specs)}] {spec['framework']:<5} {spec['model']:<4} batch {spec['batch_size']:<5} {spec['mode']:<5}"
        if spec.get("round"):
            label = f"round {spec['round'] + 1}: " + label
        print(label + " ...", end="", file=sys.stderr, flush=True)
        row = run_worker(spec, env, timeout)
        if "error" in row:
            row = {key: spec[key] for key in ("framework", "model", "batch_size", "mode", "device", "threads")} | row
            print(f" FAILED: {row['error']}", file=sys.stderr)
        else:
            kernels = "" if "kernels_per_step" not in row else (
                f", {row['kernels_per_step']:.0f} kernels and {row['memcpy_dtoh_per_step']:.1f} device→host copies per step")
            print(f" {row['examples_per_second']:,.1f} ex/s, peak {row['peak_memory_mb']:,.1f} MB{kernels}", file=sys.stderr)
        row["round"] = spec.get("round", 0)
        rows.append(row)
    return rows


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
        line = [entry["model"], str(entry["batch_size"]), entry["mode"], _number(entry["xpnet_examples_per_second"])]
        if with_torch:
            ratio = entry["ratio_xpnet_over_torch"]
            line += [_number(entry["torch_examples_per_second"]), "-" if ratio is None else f"{ratio:.2f}x"]
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
    """What the table's ratio and memory columns mean."""
    notes = []
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


def print_header(args: argparse.Namespace, env: dict[str, str], probes: dict[str, dict[str, Any]]) -> None:
    """Say what is being measured and with which settings, before the (slow) runs."""
    frameworks = "xpnet vs torch" if args.compare_torch else "xpnet"
    steps = f"{args.steps} steps" if args.steps else f"steps calibrated to ~{args.target_seconds:g} s"
    threads = " ".join(f"{name}={env[name]}" for name in THREAD_ENV_VARS)
    if args.compare_torch:
        threads += f"; torch.set_num_threads({args.threads})"
    print(f"{frameworks} on {args.device}, {DTYPE}; train step = forward + cross-entropy + backward "
          f"(no input grad) + SGD(lr={LEARNING_RATE}, momentum={MOMENTUM}); infer = eval forward")
    print(f"timing: {args.warmup} warm-up steps, median of {args.repeats} runs of {steps}; {DATA_NOTE}")
    print(f"threads: {args.threads} ({threads}); OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    xpnet = probes.get("xpnet", {})
    blas = xpnet.get("blas", {})
    blas_text = blas.get("name") or ", ".join(f"{lib.get('internal_api')} {lib.get('version')}" for lib in blas.get("libraries", []))
    line = f"numpy {xpnet.get('numpy_version')} ({blas_text or 'BLAS unknown'})"
    if "torch" in probes:
        line += f"; torch {probes['torch'].get('torch_version')}"
    if "gpu_name" in xpnet:
        line += f"; GPU {xpnet['gpu_name']}"
    print(line, flush=True)


def probe_frameworks(args: argparse.Namespace, env: dict[str, str]) -> dict[str, dict[str, Any]] | int:
    """Check that each framework can run on the device; its facts, or an exit code after a message."""
    if args.compare_torch and _installed_version("torch") is None and not _importable("torch"):
        print(TORCH_INSTALL_HINT.format(reason=""), file=sys.stderr)
        return 2
    probes = {}
    for framework in ["xpnet"] + (["torch"] if args.compare_torch else []):
        spec = {"probe": True, "framework": framework, "device": args.device, "threads": args.threads}
        result = run_worker(spec, env, timeout=min(args.timeout, 300))
        if "error" in result:
            if framework == "torch" and ("ModuleNotFoundError" in result["error"] or "ImportError" in result["error"]):
                print(TORCH_INSTALL_HINT.format(reason=f" ({result['error']})"), file=sys.stderr)
            else:
                print(f"cannot benchmark {framework} on {args.device}: {result['error']}", file=sys.stderr)
            return 2
        probes[framework] = result
    return probes


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(args.worker)

    started = _dt.datetime.now().astimezone()
    env = worker_environment(args.threads)
    probes = probe_frameworks(args, env)
    if isinstance(probes, int):
        return probes
    print_header(args, env, probes)

    frameworks = list(probes)
    rows = run_all(measurement_specs(args, frameworks), env, args.timeout)
    comparison = compare(rows)
    report = {
        "schema_version": SCHEMA_VERSION,
        "date": started.isoformat(timespec="seconds"),
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "settings": {
            "device": args.device, "dtype": DTYPE, "frameworks": frameworks, "models": args.models,
            "batch_sizes": args.batch_sizes, "modes": args.modes, "warmup": args.warmup,
            "repeats": args.repeats, "steps": args.steps, "target_seconds": args.target_seconds,
            "threads": args.threads, "rounds": args.rounds, "optimizer": OPTIMIZER, "data": DATA_NOTE,
            "throughput": "examples per second of the median timed run (comparison: median over rounds)",
            "memory_unit": "MB = 2**20 bytes",
        },
        "machine": machine_info(probes, env),
        "results": rows,
        "comparison": comparison,
    }
    path = args.json or default_json_path(args.device, started)
    write_json(path, report)

    print()
    print(format_table(comparison, with_torch=args.compare_torch))
    print(table_notes(rows, args.device, args.compare_torch))
    print(f"results written to {path}")
    warnings = [row for row in rows if "final_loss" in row and not _finite(row["final_loss"])]
    for row in warnings:
        print(f"warning: {row['framework']} {row['model']} batch {row['batch_size']}: the training loss ended "
              f"at {row['final_loss']}; its timing may include NaN/inf arithmetic", file=sys.stderr)
    failed = [row for row in rows if "error" in row]
    if failed:
        print(f"{len(failed)} of {len(rows)} measurements failed (see 'error' in the JSON)", file=sys.stderr)
        return 1
    return 0


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


if __name__ == "__main__":
    sys.exit(main())
