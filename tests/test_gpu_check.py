"""benchmarks/gpu_check.sh and its smoke stage, dry-run without a GPU: the script parses, its
steps fit one command on a lent device, its package list covers what the project imports,
and the smoke stage runs (with the strict backend in the GPU's place)."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.sh"
ONE_COMMAND_SECONDS = 540  # what a lent device gives one command (600 s), less a margin
SET_UP_SECONDS = 20  # installing carried wheels, listing packages


def test_the_script_parses():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_its_steps_fit_one_device_command():
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "GPU_CHECK_PLAN": "1"})
    assert done.returncode == 0, done.stderr
    limits = dict(line.split(":") for line in done.stdout.split())
    total = int(limits.pop("total"))
    assert total == sum(int(seconds) for seconds in limits.values())
    assert total + SET_UP_SECONDS <= ONE_COMMAND_SECONDS, limits
    steps = set(re.findall(r"^step ([\w-]+) ", SCRIPT.read_text(), flags=re.MULTILINE))
    assert steps == set(limits), "every step has a limit, every limit a step"


def test_its_package_list_covers_what_the_project_imports():
    """The lent device cannot download: a package missing there fails a step half-way."""
    listed = set(re.search(r'^DEPENDENCIES="([^"]*)"', SCRIPT.read_text(), flags=re.MULTILINE).group(1).split())
    files = [p for d in ("backends", "layers", "models", "training", "tests") for p in (REPO_ROOT / d).rglob("*.py")]
    files += [REPO_ROOT / "cli.py"] + [REPO_ROOT / "benchmarks" / f"{name}.py" for name in
                                       ("bench", "ops", "gpu_smoke", "workloads", "worker", "loop", "report",
                                        "torch_models", "cuda_profile")]
    local = {"backends", "layers", "models", "training", "tests", "benchmarks", "cli"} | {p.stem for p in files}
    imported = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = {name for name in imported if name not in sys.stdlib_module_names and name not in local}
    assert third_party <= listed, sorted(third_party - listed)


def test_the_smoke_stage_runs_without_a_gpu(tmp_path):
    pytest.importorskip("array_api_strict")
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_smoke.py"), "--dry-run"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS one LNet step: strict vs cpu" in done.stdout
    assert "gpu_smoke: every check passed" in done.stdout
