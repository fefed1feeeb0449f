"""What a benchmark worker times: one train or inference step of xpnet or PyTorch.

Inputs and labels are random arrays created on the device before timing (data loading and
host→device copies excluded); the labels cycle through 10 shifted copies so the network
cannot memorise its one batch. Used by bench.py's workers (benchmarks/worker.py).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

DTYPE = "float32"
LEARNING_RATE, MOMENTUM = 0.01, 0.9
OPTIMIZER = {"name": "SGD", "lr": LEARNING_RATE, "momentum": MOMENTUM}
SEED = 0
MIB = 2**20  # the "MB" of every memory figure
DATA_NOTE = ("random float32 inputs and int64 labels created on the device before timing (labels cycle through "
             "10 shifted copies so the batch cannot be memorised); data loading excluded")


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
