"""Launches per step, counted on the strict backend, held to the GPU budgets (issue 9).

On a GPU the number of array operations per step, not the arithmetic, sets the speed of
networks this size. backends/counting.py counts them on the CPU, so a change that adds
launches fails here, in CI, without a GPU. The first tests check the counter itself.
"""
from __future__ import annotations

import numpy as np
import pytest

from backends import get_backend
from backends.counting import count_operations
from benchmarks import ops


@pytest.fixture
def strict():
    from helpers import backend_or_skip

    return backend_or_skip("strict")


# -- the counter counts what a GPU launches -------------------------------------------------
def test_counter_counts_writes_and_not_views(strict):
    xp = strict.xp
    a = xp.asarray(np.ones((4, 6)), dtype=xp.float32)
    b = xp.asarray(np.ones((4, 6)), dtype=xp.float32)
    with count_operations() as counts:
        c = a + b  # 1
        c += a  # 1
        xp.reshape(c, (6, 4))  # a view: 0
        xp.permute_dims(c, (1, 0)) + 0  # the permute is a view, the + writes: 1
        c[0:2, ...] = 0.0  # setitem: 1
        xp.empty((3,), dtype=xp.float32)  # allocation, no kernel: 0
        xp.zeros((3,), dtype=xp.float32)  # a fill: 1
        xp.astype(a, xp.float32, copy=False)  # no conversion: 0
        xp.sum(a, axis=0)  # 1
        xp.take(a, xp.asarray([0, 2]), axis=0)  # a gather (and the index upload): 2
    assert counts.operations == 8, counts
    assert counts.transfers == 0
    with count_operations() as counts:
        float(xp.sum(a))
    assert (counts.operations, counts.transfers) == (1, 1)


def test_counter_counts_cupy_batched_matmul_extras(strict):
    """CuPy copies non-contiguous batched operands and builds pointer arrays to broadcast."""
    xp = strict.xp
    w = xp.asarray(np.ones((3, 5)), dtype=xp.float32)
    stack = xp.asarray(np.ones((4, 5, 6)), dtype=xp.float32)
    with count_operations() as counts:
        xp.matmul(w, stack)  # broadcast: GEMM + 3 pointer-array kernels
    assert counts.operations == 4
    with count_operations() as counts:
        xp.matmul(xp.broadcast_to(w, (4, 3, 5)), stack)  # a copy of the broadcast weight + GEMM
    assert counts.operations == 2
    with count_operations() as counts:
        xp.matmul(w, w.mT)  # 2-D: a transposed operand is free
    assert counts.operations == 1


def test_fused_function_counts_once_or_each_operation_unfused(strict):
    from layers.activations import relu_grad

    y = strict.asarray(np.array([1.0, -1.0]), dtype="float32")
    zero = strict.constant(0, y.dtype)
    fused = strict.fuse(relu_grad)
    with count_operations() as counts:
        fused(y, y, zero)
    assert counts.operations == 1 and counts.by_name["relu_grad"] == 1
    with count_operations(unfused=True) as counts:
        fused(y, y, zero)
    assert counts.operations == 3  # compare, astype, multiply


# -- the budgets ---------------------------------------------------------------------------
@pytest.mark.parametrize("model, mode", sorted(ops.BUDGETS))
def test_launches_per_step_within_budget(strict, model, mode):
    counts = ops.count(model, mode, batch_size=ops.BUDGET_BATCH_SIZES[model])
    assert counts.operations <= ops.BUDGETS[model, mode], counts
    assert counts.transfers == 0, f"a device→host copy inside the step stalls the GPU: {counts}"


@pytest.mark.parametrize("model", ["lnet", "mlp", "cnn"])
def test_trainer_step_costs_at_most_a_tenth_more_than_the_bare_step(strict, model):
    """Loading a batch on the device and the running metrics (for the cnn also its random shifts and
    the schedule): within 10 % of the bare Adam step."""
    batch = 16 if model == "cnn" else 64  # the same counts, in a quarter of the time
    bare = ops.count(model, "train-adam", batch_size=batch).operations
    trainer = ops.count(model, "trainer", batch_size=batch)
    assert trainer.transfers == 0, trainer
    assert trainer.operations <= 1.1 * bare, (trainer, bare)


def test_launches_do_not_grow_with_the_batch(strict):
    """One launch per operation, whatever the batch size (until im2col needs chunks)."""
    assert ops.count("lnet", "train", batch_size=8).operations == ops.count("lnet", "train", batch_size=250).operations


def test_ops_tool_prints_a_table(strict, capsys, tmp_path):
    import json

    for batch, budget in ((250, 5), (4, None)):  # a budget is shown at the batch size it holds for
        assert ops.main(["--models", "mlp", "--modes", "infer", "--batch-size", str(batch), "--json", str(tmp_path / "c.json")]) == 0
        out = capsys.readouterr().out
        assert "mlp" in out and "infer" in out
        row = json.loads((tmp_path / "c.json").read_text())[0]
        assert row["operations"] == ops.count("mlp", "infer", batch_size=batch).operations and row["budget"] == budget


def test_cpu_backend_runs_its_own_path():
    """The counts describe the launch-bound formulation; the cpu backend keeps its tiles."""
    cpu = get_backend("cpu")
    assert not cpu.launch_bound and cpu.tile_bytes


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_cuda_profile_counts_no_kernels_for_host_work():
    """The CUPTI counter (benchmarks/cuda_profile.py) runs and sees no GPU kernels on the CPU."""
    pytest.importorskip("torch", reason="torch is not installed; the kernel profile needs torch.profiler")
    from benchmarks.cuda_profile import kernel_counts

    counts = kernel_counts(lambda: np.ones(8).sum(), lambda: None, steps=2)
    assert counts["kernels_per_step"] == 0 and counts["memcpy_dtoh_per_step"] == 0
