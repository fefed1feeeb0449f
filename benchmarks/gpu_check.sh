#!/usr/bin/env bash
# Everything that needs a GPU, in one run of under 8 minutes, into one log:
#   1. the test suite's cuda cases (every layer, model, optimizer against cpu; fused kernels checked)
#   2. kernel launches and device->host copies per step (CUPTI, via torch.profiler) with the
#      GPU benchmark against PyTorch eager at batch 250 and 1024
#   3. the CPU-side launch count (benchmarks/ops.py), to compare with step 2
#   4. the training loop against the bare step and against the same loop in PyTorch
#   5. a 3-epoch `python cli.py --device cuda --model lnet` run
#   6. the cnn (issue 10): its GPU benchmark against PyTorch, and 2 epochs of its recipe
#   7. if data/digits holds real digits (benchmarks/real_digits.py, carried to the GPU machine,
#      which has no network): the cnn recipe's 30 epochs on them, for the README's GPU wall time
#
#   bash benchmarks/gpu_check.sh [LOG]      (default: benchmarks/results/gpu-check-<date>-<hhmm>.log)
#
# On a machine where CuPy and torch are installed but array-api-compat, array-api-strict,
# tqdm or threadpoolctl are not, put their wheels in .whl/ (see docs/benchmarks.md); they
# are installed into /tmp/site first. Each step has its own time limit, so one that hangs
# cannot take the others' time; the log says which steps failed.
set -uo pipefail
cd "$(dirname "$0")/.."
stamp=$(date +%Y-%m-%d-%H%M)
log=${1:-benchmarks/results/gpu-check-$stamp.log}
mkdir -p "$(dirname "$log")"
exec > >(tee "$log") 2>&1
export PYTHONUNBUFFERED=1
failed=()

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo
    echo "=== $name (limit ${limit} s) ==="
    local start=$SECONDS
    timeout "$limit" "$@"
    local code=$?
    echo "=== $name: exit $code after $((SECONDS - start)) s ==="
    [ $code -eq 0 ] || failed+=("$name (exit $code)")
}

if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
PY=${PYTHON:-python3}

echo "=== machine ==="
date
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("numpy", "cupy", "torch", "array_api_compat", "array_api_strict", "scipy", "matplotlib", "tqdm", "threadpoolctl", "pytest"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as exc:
        print(f"{name}: NOT AVAILABLE ({type(exc).__name__}: {exc})")
EOF

step "cuda test cases" 210 $PY -m pytest -q -p no:cacheprovider -k cuda -W always::RuntimeWarning tests
step "kernels per step and GPU benchmark vs torch" 200 $PY benchmarks/bench.py --device cuda --compare-torch \
    --models mlp lnet --profile-kernels --batch-sizes 250 1024 --repeats 3 --target-seconds 0.4 --warmup 5 \
    --json "benchmarks/results/cuda-$stamp.json"
step "launches counted on the CPU (strict backend)" 60 $PY benchmarks/ops.py --models lnet mlp --batch-size 250
step "cnn: kernels per step and GPU benchmark vs torch" 120 $PY benchmarks/bench.py --device cuda --compare-torch \
    --models cnn --modes train --profile-kernels --batch-sizes 64 250 --repeats 3 --target-seconds 0.4 --warmup 5 \
    --json "benchmarks/results/cuda-cnn-$stamp.json"
step "cnn: launches counted on the CPU" 60 $PY benchmarks/ops.py --models cnn --batch-size 64
step "training loop vs bare step vs torch loop" 90 $PY benchmarks/loop.py --device cuda --examples 20000 --epochs 2 \
    --json "benchmarks/results/loop-cuda-$stamp.json"
run_dir=$(mktemp -d)
step "python cli.py --device cuda --model lnet --epochs 3" 150 env XPNET_CACHE="$run_dir/cache" \
    $PY cli.py --device cuda --model lnet --epochs 3 --out "$run_dir/run"
step "python cli.py --device cuda --model cnn --augment --schedule onecycle --epochs 2" 120 env XPNET_CACHE="$run_dir/cache" \
    $PY cli.py --device cuda --model cnn --augment --schedule onecycle --lr 3e-3 --epochs 2 --out "$run_dir/cnn"
if [ -f data/digits/train_32x32.mat ]; then
    step "cnn recipe, 30 epochs, on the real digits in data/digits" 180 env XPNET_CACHE="$run_dir/cache" \
        $PY cli.py --device cuda --dataset svhn --data-dir data/digits --model cnn --augment --schedule onecycle \
        --lr 3e-3 --epochs 30 --batch-size 64 --quiet --out "$run_dir/cnn-digits"
fi

echo
if [ ${#failed[@]} -eq 0 ]; then
    echo "gpu_check: every step passed; log in $log"
else
    echo "gpu_check: ${#failed[@]} step(s) failed: ${failed[*]}; log in $log"
    exit 1
fi
