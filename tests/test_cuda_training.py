"""What users run, on a GPU, step by step against the CPU (skipped where there is no GPU).

Each step starts the GPU model and a CPU twin from the same weights: the gradients must
agree as two float32 matrix libraries agree, and, given the same gradients, each
optimizer update must equal the CPU's within 1e-5 of its size, at the learning rates
users run (1e-3), where a kernel computing a number in float16 would be off by 0.1-2 %.
No fused kernel may fall back. Each test starts with empty fused-kernel caches, so that
what it checks does not depend on which test ran before it.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import backend_or_skip

from backends import get_backend
from layers import CrossEntropyLoss
from models import build_model
from training.data.augment import RandomShift
from training.data.loader import DataLoader
from training.optim import Adam, AdamW
from training.schedules import make_schedule

STEPS = 4
BATCH = 16


@pytest.fixture
def cuda():
    backend = backend_or_skip("cuda")
    backend._fused.clear()  # fresh kernels: checked here, whatever ran before
    yield backend
    backend._fused.clear()


def batches(backend, model, augment: bool):
    """The loader users train from (device-resident, normalised, optionally shifted)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(STEPS * BATCH, *model.input_shape), dtype=np.uint8)
    labels = rng.integers(0, model.num_classes, size=STEPS * BATCH)
    return DataLoader(images, labels, BATCH, backend, mean=[0.5] * 3, std=[0.25] * 3, device_resident=True,
                      augment=RandomShift(3) if augment else None)


def train_side_by_side(cuda, model_name: str, make_optimizer, schedule=None, augment=False) -> None:
    cpu = get_backend("cpu")
    models = {b.name: build_model(model_name, seed=0, backend=b) for b in (cuda, cpu)}
    optimizers = {name: make_optimizer(m.parameters()) for name, m in models.items()}
    losses = {name: CrossEntropyLoss() for name in models}
    loaders = {b.name: iter(batches(b, models[b.name], augment)) for b in (cuda, cpu)}
    gpu, host = models[cuda.name].parameters(), models["cpu"].parameters()
    for step in range(STEPS):
        (x_gpu, y_gpu), (x_cpu, y_cpu) = next(loaders[cuda.name]), next(loaders["cpu"])
        np.testing.assert_allclose(cuda.to_numpy(x_gpu), x_cpu, rtol=1e-6, atol=1e-6, err_msg=f"batch {step}")
        for p_gpu, p_cpu in zip(gpu, host):  # the same weights at the start of every step
            p_cpu.data[...] = cuda.to_numpy(p_gpu.data)
        for backend, x, y in ((cuda, x_gpu, y_gpu), (cpu, x_cpu, y_cpu)):
            name = backend.name
            losses[name].forward(models[name].forward(x), y)
            models[name].backward(losses[name].backward())
            if schedule is not None:
                schedule.apply(optimizers[name], step)
        before = [cuda.to_numpy(p.data).copy() for p in gpu]
        for k, (p_gpu, p_cpu) in enumerate(zip(gpu, host)):
            grad = cuda.to_numpy(p_gpu.grad)
            np.testing.assert_allclose(grad, p_cpu.grad, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(p_cpu.grad))),
                                       err_msg=f"step {step}: gradient of parameter {k} ({p_cpu.name})")
            p_cpu.grad[...] = grad  # the optimizers get the same gradients
        for optimizer in optimizers.values():
            optimizer.step()
        for k, (p_gpu, p_cpu, start) in enumerate(zip(gpu, host, before)):
            update_gpu, update_cpu = cuda.to_numpy(p_gpu.data) - start, p_cpu.data - start
            size = float(np.max(np.abs(update_cpu)))
            np.testing.assert_allclose(update_gpu, update_cpu, rtol=1e-5, atol=1e-5 * size,
                                       err_msg=f"step {step}: update of parameter {k} ({p_cpu.name})")
    assert cuda.fallbacks() == [], cuda.fallbacks()


@pytest.mark.parametrize("model_name", ["lnet", "cnn"])
def test_adam_at_the_default_rate_steps_as_on_the_cpu(cuda, model_name):
    train_side_by_side(cuda, model_name, lambda p: Adam(p, lr=1e-3))


@pytest.mark.parametrize("model_name", ["lnet", "cnn"])
def test_adamw_with_onecycle_and_augment_steps_as_on_the_cpu(cuda, model_name):
    train_side_by_side(cuda, model_name, lambda p: AdamW(p, lr=1e-3), schedule=make_schedule("onecycle", 1e-3, STEPS),
                       augment=True)


def chunked(backend):
    """``backend`` with a work limit (64 KiB) far below one example's im2col columns (LNet's
    first convolution: 235 KB), so that training goes through the chunked convolution."""
    return dataclasses.replace(backend, work_bytes=64 * 1024, _fused={})


def test_the_chunked_convolution_trains_as_on_the_cpu(cuda):
    train_side_by_side(chunked(cuda), "lnet", lambda p: Adam(p, lr=1e-3))


@pytest.mark.parametrize("model_name, chunks", [("lnet", False), ("cnn", False), ("lnet", True)])
def test_the_side_by_side_check_runs_here_on_the_strict_backend(model_name, chunks):
    """The harness above, with array-api-strict in the GPU's place: it runs without a GPU."""
    pytest.importorskip("array_api_strict")
    strict = get_backend("strict")
    train_side_by_side(chunked(strict) if chunks else strict, model_name, lambda p: AdamW(p, lr=1e-3),
                       schedule=make_schedule("onecycle", 1e-3, STEPS), augment=True)
