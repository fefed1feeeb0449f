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
off by 20 %. Rounds do not help when another job slows one framework more than the
other, so each run also records how much of the machine's CPU time other processes took
meanwhile (``other_cpu_share``, from /proc/stat, hypervisor steal included), and the
table marks with ``*`` the configurations where that reached 10 %.

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
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.report import (  # noqa: E402  (after the path set-up, so the script runs from anywhere)
    BUSY_SHARE,
    _installed_version,
    compare,
    cpu_seconds,
    default_json_path,
    default_threads,
    format_table,
    machine_info,
    other_cpu_share,
    table_notes,
    write_json,
)
from benchmarks.worker import RESULT_MARKER, worker_main  # noqa: E402
from benchmarks.workloads import DATA_NOTE, DTYPE, LEARNING_RATE, MOMENTUM, OPTIMIZER  # noqa: E402

SCHEMA_VERSION = 1
MODELS = ("mlp", "lnet", "cnn")
MODES = ("train", "infer")
DEFAULT_BATCH_SIZES = (64, 250, 1024)

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
TORCH_INSTALL_HINT = (
    "--compare-torch needs PyTorch, which is not importable here{reason}.\n"
    "Install it with:\n"
    "    pip install torch==2.13.0\n"
    '(or pip install ".[bench]" for the optional benchmark extra), then run this command again.'
)

# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------
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
# Parent side: run the workers (benchmarks/worker.py), collect, print, save (benchmarks/report.py)
# ----------------------------------------------------------------------------------------
def worker_environment(threads: int) -> dict[str, str]:
    """The parent's environment with every thread-count variable set to ``threads``."""
    env = dict(os.environ)
    env.update({name: str(threads) for name in THREAD_ENV_VARS})
    return env


def run_worker(spec: dict[str, Any], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run this script with ``--worker spec`` in a fresh process; its result, or {"error": ...}.

    The result also says how much of the machine other processes took meanwhile
    (``other_cpu_share``, see report.other_cpu_share): a figure measured beside another
    job is not the framework's.
    """
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    before = cpu_seconds()
    try:
        done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {timeout:g} s (raise --timeout)"}
    share = other_cpu_share(before, cpu_seconds())
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):]) | ({} if share is None else {"other_cpu_share": share})
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
            busy = "" if row.get("other_cpu_share", 0.0) < BUSY_SHARE else (
                f" (other processes took {row['other_cpu_share']:.0%} of the CPUs meanwhile)")
            print(f" {row['examples_per_second']:,.1f} ex/s, peak {row['peak_memory_mb']:,.1f} MB{kernels}{busy}",
                  file=sys.stderr)
        row["round"] = spec.get("round", 0)
        rows.append(row)
    return rows


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
