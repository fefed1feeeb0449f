"""The benchmark tool: a quick smoke run end to end, and its pieces (no torch needed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench, worker, workloads

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH = REPO_ROOT / "benchmarks" / "bench.py"


def test_quick_run_writes_positive_throughput_and_memory(tmp_path):
    out = tmp_path / "results" / "quick.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--models", "lnet", "mlp", "--batch-sizes", "8", "--json", str(out)],
        cwd=tmp_path,  # the script must find the repository by itself
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())

    assert report["schema_version"] == bench.SCHEMA_VERSION
    assert "--quick" in report["command"]
    assert report["settings"]["optimizer"] == {"name": "SGD", "lr": 0.01, "momentum": 0.9}
    machine = report["machine"]
    for key in ("cpu_model", "logical_cpus", "numpy_version", "blas", "torch_version", "environment", "worker_environment"):
        assert key in machine
    assert machine["worker_environment"]["OMP_NUM_THREADS"] == str(report["settings"]["threads"])

    rows = report["results"]
    assert {(r["model"], r["mode"]) for r in rows} == {(m, mode) for m in ("lnet", "mlp") for mode in ("train", "infer")}
    for row in rows:
        assert "error" not in row, row
        assert row["framework"] == "xpnet" and row["batch_size"] == 8 and row["dtype"] == "float32"
        assert row["examples_per_second"] > 0
        assert row["peak_memory_mb"] > 0 and row["host_peak_rss_mb"] >= row["host_rss_after_import_mb"] > 0
        assert len(row["run_seconds"]) == 1 and row["steps"] == 2
        if Path("/proc/stat").exists():  # how much of the machine others took while it ran
            assert 0.0 <= row["other_cpu_share"] <= 1.0
        if row["mode"] == "train":
            assert np.isfinite(row["final_loss"])
    assert len(report["comparison"]) == 4
    assert "xpnet ex/s" in done.stdout and "lnet" in done.stdout


class _CountingWorkload(workloads.Workload):
    def __init__(self, seconds_per_step: float):
        self.calls = 0
        super().__init__(step=self._step, sync=lambda: None)
        self.seconds_per_step = seconds_per_step

    def _step(self):
        self.calls += 1


def test_calibration_scales_steps_to_the_target(monkeypatch):
    workload = _CountingWorkload(0.01)
    # A fake clock on which every step takes 10 ms, so 1 s is 100 steps.
    monkeypatch.setattr(worker.time, "perf_counter", lambda: workload.calls * workload.seconds_per_step)
    assert worker.calibrate_steps(workload, target_seconds=1.0) == 100
    steps, runs = worker.measure(workload, warmup=3, repeats=4, steps=None, target_seconds=0.5)
    assert steps == 50 and runs == pytest.approx([0.5] * 4)


def test_cycling_labels_change_every_step_and_repeat():
    labels = workloads.cycling_labels(np.array([0, 3, 9]), 10, np.asarray)
    first = [next(labels) for _ in range(11)]
    assert [list(a) for a in first[:2]] == [[0, 3, 9], [1, 4, 0]]
    assert list(first[10]) == list(first[0])


def test_comparison_and_table():
    rows = [
        {"framework": "xpnet", "model": "mlp", "batch_size": 64, "mode": "train", "examples_per_second": 500.0, "peak_memory_mb": 100.0},
        {"framework": "torch", "model": "mlp", "batch_size": 64, "mode": "train", "examples_per_second": 1000.0, "peak_memory_mb": 300.0},
        {"framework": "xpnet", "model": "lnet", "batch_size": 64, "mode": "infer", "error": "boom"},
    ]
    comparison = bench.compare(rows)
    assert comparison[0]["ratio_xpnet_over_torch"] == pytest.approx(0.5)
    assert comparison[1]["ratio_xpnet_over_torch"] is None
    table = bench.format_table(comparison, with_torch=True)
    assert "0.50x" in table and "error" in table and "torch MB" in table


def test_rounds_report_medians_and_paired_ratios():
    def row(framework, speed, round_index):
        return {"framework": framework, "model": "lnet", "batch_size": 250, "mode": "train",
                "examples_per_second": speed, "peak_memory_mb": 100.0 + round_index, "round": round_index}

    # the machine is twice as slow in round 1: the paired ratios stay 0.5, 0.5, 0.8
    rows = [row("xpnet", 500.0, 0), row("torch", 1000.0, 0), row("xpnet", 250.0, 1), row("torch", 500.0, 1),
            row("xpnet", 800.0, 2), row("torch", 1000.0, 2)]
    (entry,) = bench.compare(rows)
    assert entry["ratio_xpnet_over_torch"] == pytest.approx(0.5)
    assert entry["xpnet_examples_per_second"] == 500.0 and entry["torch_examples_per_second"] == 1000.0
    assert entry["xpnet_peak_memory_mb"] == 101.0 and entry["rounds"] == 3
    specs = bench.measurement_specs(bench.parse_args(["--rounds", "2", "--models", "mlp", "--batch-sizes", "8",
                                                      "--modes", "infer"]), ["xpnet", "torch"])
    assert [(s["round"], s["framework"]) for s in specs] == [(0, "xpnet"), (0, "torch"), (1, "xpnet"), (1, "torch")]


def test_other_cpu_share_is_what_the_children_did_not_use():
    from benchmarks.report import other_cpu_share

    # 4 CPU-seconds of capacity went by; 3 were busy, 1 of them the worker's own
    assert other_cpu_share((10.0, 100.0, 1.0), (13.0, 104.0, 2.0)) == pytest.approx(0.5)
    assert other_cpu_share((10.0, 100.0, 1.0), (11.0, 104.0, 2.0)) == 0.0  # clock ticks are coarse: never below 0
    assert other_cpu_share(None, (1.0, 2.0, 0.0)) is None and other_cpu_share((1.0, 2.0, 0.0), (1.0, 2.0, 0.0)) is None


def test_a_busy_machine_is_measured_around_a_worker():
    """A process spinning beside a worker shows up as about one CPU's share of the machine."""
    from benchmarks.report import cpu_seconds, other_cpu_share

    if cpu_seconds() is None:
        pytest.skip("no /proc/stat here")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        before = cpu_seconds()
        subprocess.run([sys.executable, "-c", "import time; time.sleep(1.0)"], check=True)
        share = other_cpu_share(before, cpu_seconds())
    finally:
        spinner.kill()
        spinner.wait()
    assert share >= 0.5 / os.cpu_count(), share


def test_configurations_measured_on_a_busy_machine_are_marked():
    def row(framework, share):
        return {"framework": framework, "model": "cnn", "batch_size": 64, "mode": "train", "examples_per_second": 300.0,
                "peak_memory_mb": 100.0, "other_cpu_share": share}

    quiet = bench.compare([row("xpnet", 0.01), row("torch", 0.02)])
    assert "*" not in bench.format_table(quiet, with_torch=True)
    assert "idle machine" not in bench.table_notes([row("xpnet", 0.01)], "cpu", True)
    busy_rows = [row("xpnet", 0.01), row("torch", 0.45)]
    busy = bench.compare(busy_rows)
    assert busy[0]["other_cpu_share"] == 0.45
    assert "1.00x*" in bench.format_table(busy, with_torch=True)
    assert "300.0*" in bench.format_table(bench.compare([row("xpnet", 0.2)]), with_torch=False)
    assert "up to 45% of the CPUs" in bench.table_notes(busy_rows, "cpu", True)


def test_compare_torch_without_torch_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setattr(bench, "_installed_version", lambda name: None)
    monkeypatch.setattr(bench, "_importable", lambda name: False)
    assert bench.main(["--quick", "--compare-torch"]) == 2
    assert "pip install torch" in capsys.readouterr().err


def test_torch_twins_match_xpnet_models():
    torch = pytest.importorskip("torch")
    from backends import get_backend
    from benchmarks.torch_models import build_torch_model, copy_xpnet_weights
    from models import build_model

    backend = get_backend("cpu")
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32))
    for name in ("mlp", "lnet"):
        ours = build_model(name, seed=0, backend=backend, dtype="float64")
        theirs = build_torch_model(name).double()
        copy_xpnet_weights(ours, theirs, backend.to_numpy)
        with torch.no_grad():
            expected = theirs(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(backend.to_numpy(ours.forward(backend.asarray(x))), expected, rtol=1e-10, atol=1e-10)


def test_default_json_path_keeps_earlier_runs_of_the_same_day():
    import datetime as dt

    morning = bench.default_json_path("cpu", dt.datetime(2026, 11, 26, 9, 5))
    evening = bench.default_json_path("cpu", dt.datetime(2026, 11, 26, 21, 40))
    assert morning.name == "cpu-2026-11-26-0905.json" and evening.name == "cpu-2026-11-26-2140.json"
