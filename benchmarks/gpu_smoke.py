"""The first stage of benchmarks/gpu_check.sh: is this GPU usable by xpnet at all? (under a minute)

    python benchmarks/gpu_smoke.py             # on a GPU machine
    python benchmarks/gpu_smoke.py --dry-run   # without a GPU: the strict backend stands in for cuda

Prints one PASS / FAIL / INFO line per check and exits 1 if any failed:

1. versions: Python, NumPy, CuPy, the CUDA runtime and driver, NVRTC, the GPU;
2. the cuda backend's probe: an element-wise kernel (NVRTC), a 2-D and a batched matrix
   product (cuBLAS), a cupy.fuse kernel;
3. the float16 repro: ``cupy.fuse(lambda x, b: x * (1 - b))(x, 0.999)`` (CuPy 14 computes
   1 - b in float16, which is why xpnet computes such numbers on the host), traced with
   CuPy's own tracer, and run where there is a GPU;
4. one LNet training step at lr 1e-3 (Adam) on the GPU against the CPU from the same
   weights and gradients, and no fused kernel falling back.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

RESULTS: list[str] = []


def report(status: str, check: str, message: str) -> None:
    RESULTS.append(status)
    print(f"{status:4s} {check}: {message}", flush=True)


def versions(dry_run: bool):
    report("INFO", "versions", f"python {platform.python_version()}, numpy {np.__version__}")
    try:
        import cupy
    except Exception as exc:  # a machine without CuPy: only the dry run goes on
        report("INFO" if dry_run else "FAIL", "versions", f"CuPy cannot be imported ({type(exc).__name__}: {exc})")
        return None
    report("INFO", "versions", f"cupy {cupy.__version__}")
    if not dry_run:
        runtime = cupy.cuda.runtime
        for what, read in (("CUDA runtime", runtime.runtimeGetVersion), ("driver", runtime.driverGetVersion),
                           ("NVRTC", cupy.cuda.nvrtc.getVersion),
                           ("GPU", lambda: runtime.getDeviceProperties(0)["name"].decode())):
            try:
                report("INFO", "versions", f"{what} {read()}")
            except Exception as exc:  # the probe below says what this means for xpnet
                report("FAIL", "versions", f"{what}: {type(exc).__name__}: {exc}")
    return cupy


def probe(dry_run: bool) -> None:
    from backends import BackendUnavailableError, get_backend

    if dry_run:
        report("INFO", "probe", "skipped in the dry run (tests/test_backends.py fakes each failure)")
        return
    try:
        get_backend("cuda")  # its probe: element-wise (NVRTC), 2-D and batched matmul (cuBLAS), cupy.fuse
        report("PASS", "probe", "NVRTC, cuBLAS (2-D and batched) and cupy.fuse compile and run")
    except BackendUnavailableError as exc:
        report("FAIL", "probe", str(exc))


def float16_repro(cupy, dry_run: bool) -> None:
    if cupy is None:
        report("INFO", "float16 repro", "no CuPy")
        return
    from backends.cupy_trace import cupy_trace, placeholder

    def numbers_inside(x, b):
        return x * (1 - b)

    _, op_dtypes = cupy_trace(numbers_inside, (placeholder((4,), np.float32), 0.999))
    traced = "; ".join(f"{op.split(',')[1].split()[0]} in {dtypes[-1]}" for op, dtypes in op_dtypes.items())
    report("INFO", "float16 repro", f"CuPy's tracer builds {traced}")
    if not dry_run:
        value = float(cupy.fuse(kernel_name="float16_repro")(numbers_inside)(cupy.ones(1, cupy.float32), 0.999)[0])
        report("INFO", "float16 repro", f"x·(1 - 0.999) with x = 1 gives {value:.8g} (0.001 in float32, "
               "0.00097656 in float16): xpnet passes such numbers in computed")


def one_lnet_step(dry_run: bool) -> None:
    from backends import get_backend
    from layers import CrossEntropyLoss
    from models import build_model
    from training.optim import Adam

    device = get_backend("strict" if dry_run else "cuda")
    cpu = get_backend("cpu")
    models = [build_model("lnet", seed=0, backend=b) for b in (device, cpu)]
    optimizers = [Adam(m.parameters(), lr=1e-3) for m in models]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, *models[0].input_shape)).astype(np.float32)
    y = rng.integers(0, 10, size=16)
    for backend, model in zip((device, cpu), models):
        loss = CrossEntropyLoss()
        loss.forward(model.forward(backend.asarray(x)), backend.asarray(y))
        model.backward(loss.backward())
    worst_grad = worst_update = 0.0
    pairs = list(zip(models[0].parameters(), models[1].parameters()))
    for p_dev, p_cpu in pairs:
        grad = device.to_numpy(p_dev.grad)
        worst_grad = max(worst_grad, float(np.max(np.abs(grad - p_cpu.grad)) / max(np.max(np.abs(p_cpu.grad)), 1e-30)))
        p_cpu.grad[...] = grad  # the same gradients for both optimizers
    before = [device.to_numpy(p.data).copy() for p, _ in pairs]
    for optimizer in optimizers:
        optimizer.step()
    for (p_dev, p_cpu), start in zip(pairs, before):
        update_dev, update_cpu = device.to_numpy(p_dev.data) - start, p_cpu.data - start
        worst_update = max(worst_update, float(np.max(np.abs(update_dev - update_cpu)) / np.max(np.abs(update_cpu))))
    fallbacks = device.fallbacks()
    ok = worst_grad <= 1e-4 and worst_update <= 1e-5 and not fallbacks
    report("PASS" if ok else "FAIL", "one LNet step", f"{device.name} vs cpu at lr 1e-3: gradients within {worst_grad:.2g}, "
           f"Adam updates within {worst_update:.2g} of their size (limits 1e-4, 1e-5); fallbacks: {fallbacks or 'none'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="no GPU: the strict backend stands in for cuda")
    args = parser.parse_args(argv)
    cupy = None
    for check in ("versions", "probe", "float16 repro", "one LNet step"):
        try:
            if check == "versions":
                cupy = versions(args.dry_run)
            elif check == "probe":
                probe(args.dry_run)
            elif check == "float16 repro":
                float16_repro(cupy, args.dry_run)
            else:
                one_lnet_step(args.dry_run)
        except Exception as exc:  # one broken check must not hide the others
            report("FAIL", check, f"{type(exc).__name__}: {exc}")
    failed = RESULTS.count("FAIL")
    print(f"gpu_smoke: {failed} check(s) failed" if failed else "gpu_smoke: every check passed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
