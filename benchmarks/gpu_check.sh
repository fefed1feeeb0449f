#!/usr/bin/env bash
# Everything that needs a GPU, in ONE command of under 540 s (a lent device allows 600 s per
# command), every log and JSON written under $OUT:
#   1. smoke (benchmarks/gpu_smoke.py): versions, the probe (NVRTC, cuBLAS, cupy.fuse), the
#      float16 repro, one LNet step on the GPU against the CPU. If it fails, nothing else runs.
#   2. the test suite's cuda cases, every fused-kernel fallback an error
#      (tests/test_cuda_training.py: LNet and cnn at lr 1e-3 with Adam, AdamW+onecycle+augment,
#      the chunked convolution, each update against the CPU's)
#   3. kernel launches per step (CUPTI, via torch.profiler) and the GPU benchmark against
#      PyTorch eager, LNet and MLP at batch 250, the cnn at 64
#   4. the CPU-side launch count (benchmarks/ops.py), to compare with step 3
#   5. `python cli.py --device cuda` runs: LNet 2 epochs, the cnn recipe 1 epoch
# Any fused kernel that falls back (a warning in a log, "compiled": false in a JSON) fails
# the check.
#
#   OUT=/some/folder bash benchmarks/gpu_check.sh   (default OUT: benchmarks/results/gpu-check-<date>-<hhmm>)
#   GPU_CHECK_PLAN=1 bash benchmarks/gpu_check.sh   prints the steps and their time limits, runs nothing
#
# Python packages it needs (DEPENDENCIES below; tests/test_bench.py checks the list against
# the project's imports). The lent H200's image has all but array-api-compat and
# array-api-strict: carry their wheels in .whl/ (pip download array-api-compat
# array-api-strict --no-deps -d .whl), which are installed into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
DEPENDENCIES="numpy cupy array_api_compat array_api_strict threadpoolctl scipy matplotlib PIL tqdm pytest hypothesis torch"
# name:seconds of each step, in order; their sum plus about 20 s of set-up stays under 540 s
LIMITS="smoke:60 cuda-tests:170 bench:110 ops:30 cli-lnet:70 cli-cnn:70"

if [ -n "${GPU_CHECK_PLAN:-}" ]; then
    total=0
    for entry in $LIMITS; do echo "$entry"; total=$((total + ${entry#*:})); done
    echo "total:$total"
    exit 0
fi

stamp=$(date +%Y-%m-%d-%H%M)
OUT=${OUT:-benchmarks/results/gpu-check-$stamp}
mkdir -p "$OUT"
log="$OUT/gpu-check.log"
exec > >(tee "$log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
work=$(mktemp -d "${TMPDIR:-/tmp}/xpnet-gpu-check.XXXXXX")
export XPNET_CACHE="$work/cache"
PY=${PYTHON:-python3}
failed=()

limit() {  # limit NAME: the seconds LIMITS gives the step NAME
    local entry
    for entry in $LIMITS; do [ "${entry%%:*}" = "$1" ] && echo "${entry#*:}"; done
}

step() {  # step NAME COMMAND...: run it under its limit, its output in the log and $OUT/NAME.log
    local name=$1 seconds
    seconds=$(limit "$name")
    shift
    echo
    echo "=== $name (limit ${seconds} s) ==="
    local start=$SECONDS
    timeout "$seconds" "$@" 2>&1 | tee "$OUT/$name.log"
    local code=${PIPESTATUS[0]}
    echo "=== $name: exit $code after $((SECONDS - start)) s ==="
    [ "$code" -eq 0 ] || failed+=("$name (exit $code)")
}

if compgen -G ".whl/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

echo "=== machine and packages ==="
date
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY - $DEPENDENCIES <<'EOF' || failed+=("packages")
import importlib, platform, sys
print("python", platform.python_version())
missing = []
for name in sys.argv[1:]:
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as exc:
        print(f"{name}: NOT AVAILABLE ({type(exc).__name__}: {exc})")
        missing.append(name)
sys.exit(1 if missing else 0)
EOF

step smoke $PY benchmarks/gpu_smoke.py
if [ ${#failed[@]} -ne 0 ]; then
    echo "gpu_check: stopped after the smoke stage: ${failed[*]}; logs in $OUT"
    exit 1
fi
step cuda-tests $PY -m pytest -q -p no:cacheprovider -k cuda -W error::backends.fusion.FusionFallbackWarning \
    --junitxml "$OUT/cuda-tests.xml" tests
step bench $PY benchmarks/bench.py --device cuda --compare-torch --models mlp lnet cnn --modes train \
    --profile-kernels --batch-sizes 250 --repeats 2 --target-seconds 0.3 --warmup 3 --json "$OUT/bench-cuda.json"
step ops $PY benchmarks/ops.py --batch-size 250 --json "$OUT/ops.json"
step cli-lnet $PY cli.py --device cuda --model lnet --epochs 2 --train-size 20000 --out "$work/lnet"
step cli-cnn $PY cli.py --device cuda --model cnn --augment --schedule onecycle --lr 3e-3 --epochs 1 \
    --train-size 20000 --out "$work/cnn"
cp "$work"/*/metrics.json "$OUT"/ 2>/dev/null || true

echo
# A fallback costs speed, not correctness, so the steps above pass with one; this check does not.
fallbacks=$(grep -h -E "fell back to their plain version|fused kernel '.*' was not used" "$OUT"/*.log 2>/dev/null | sort -u)
if grep -l '"compiled": false' "$OUT"/*.json > /dev/null 2>&1 || [ -n "$fallbacks" ]; then
    echo "fused kernels that fell back:"
    echo "$fallbacks"
    grep -l '"compiled": false' "$OUT"/*.json 2>/dev/null
    failed+=("fallbacks")
fi
rm -rf "$work"
if [ ${#failed[@]} -eq 0 ]; then
    echo "gpu_check: every step passed; logs and JSON in $OUT"
else
    echo "gpu_check: ${#failed[@]} step(s) failed: ${failed[*]}; logs and JSON in $OUT"
    exit 1
fi
