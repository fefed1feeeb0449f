"""The whole training loop against the bare step, and against the same loop in PyTorch.

    python benchmarks/loop.py --device cuda              # LNet, batch 64, Adam, as `python cli.py` trains
    python benchmarks/loop.py --model mlp --batch-size 250 --no-torch

bench.py times one step on a fixed batch. A real epoch also gathers and normalises each
batch and keeps the running loss and accuracy; on a GPU those cost launches, and reading
the metrics back makes the host wait. This measures, in one process and on the same
random uint8 images:

* ``bare``: the step of bench.py with Adam (forward, loss, backward, optimizer) on a fixed batch;
* ``xpnet``: an epoch of Trainer (the loop of ``python cli.py``), examples/s from its history;
* ``torch``: the same recipe in PyTorch eager: images resident on the device as uint8, a
  device permutation per epoch, per-batch normalisation, Adam, running loss and accuracy
  summed on the device and read every 20 steps (as xpnet's progress bar does).

Each loop runs ``--epochs`` epochs and the last one is reported, so compiling kernels and
filling caches stay out of the figure. The goal on a GPU (issue 9): the xpnet loop within
10 % of the bare step, and at least as fast as the torch loop.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

REFRESH_EVERY = 20  # steps between reads of the running metrics, as Trainer's default


def random_set(n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, size=n)


def xpnet_loop(model_name: str, device: str, batch_size: int, images, labels, epochs: int) -> float:
    """Examples/s of Trainer's last epoch."""
    from backends import get_backend
    from models import build_model
    from training.data.loader import DataLoader, channel_stats
    from training.loop.trainer import Trainer
    from training.optim import Adam

    backend = get_backend(device)
    model = build_model(model_name, seed=0, backend=backend)
    mean, std = channel_stats(images)
    train = DataLoader(images, labels, batch_size, backend, mean, std, seed=0)
    test = DataLoader(images[:batch_size], labels[:batch_size], batch_size, backend, mean, std, shuffle=False)
    trainer = Trainer(model, Adam(model.parameters(), lr=1e-3), backend, progress=False, log=lambda _: None)
    history = trainer.fit(train, test, epochs=epochs)
    return history[-1]["examples_per_sec"]


def xpnet_bare_step(model_name: str, device: str, batch_size: int, seconds: float) -> float:
    """Examples/s of the bare Adam step on one fixed batch (bench.py's step, with Adam)."""
    import numpy as np

    from backends import get_backend
    from layers import CrossEntropyLoss
    from models import build_model
    from training.optim import Adam

    backend = get_backend(device)
    model = build_model(model_name, seed=0, backend=backend)
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((batch_size, 3, 32, 32), dtype=np.float32))
    y = backend.asarray(rng.integers(0, 10, size=batch_size))
    loss_fn, optimizer = CrossEntropyLoss(check_labels=False), Adam(model.parameters(), lr=1e-3)

    def step():
        loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward(), input_grad=False)
        optimizer.step()

    return _throughput(step, backend.synchronize, batch_size, seconds)


def torch_loop(model_name: str, device: str, batch_size: int, images, labels, epochs: int) -> float:
    """Examples/s of the last epoch of the same recipe in PyTorch eager."""
    import numpy as np
    import torch

    from benchmarks.torch_models import build_torch_model

    dev = torch.device(device)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    model = build_torch_model(model_name).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    data = torch.from_numpy(images).to(dev)
    targets = torch.from_numpy(labels.astype(np.int64)).to(dev)
    as_float = images.astype(np.float64) / 255
    mean = torch.tensor(as_float.mean(axis=(0, 2, 3)), dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(as_float.std(axis=(0, 2, 3)), dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    generator = torch.Generator(device=dev).manual_seed(0)
    rate = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(data), device=dev, generator=generator)
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        _sync(device)
        start = time.perf_counter()
        for step, first in enumerate(range(0, len(data), batch_size), start=1):
            index = order[first:first + batch_size]
            x = (data[index].float() / 255 - mean) / std
            y = targets[index]
            optimizer.zero_grad(set_to_none=True)
            logits = model(x)
            loss = loss_fn(logits, y)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(index)
            correct += (logits.argmax(dim=1) == y).sum()
            if step % REFRESH_EVERY == 0:
                loss_sum.item(), correct.item()  # what a progress bar reads
        _sync(device)
        rate = len(data) / (time.perf_counter() - start)
    return rate


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _throughput(step, sync, batch_size: int, seconds: float) -> float:
    for _ in range(5):
        step()
    sync()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            step()
        count += 10
        sync()
    return batch_size * count / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Trainer's loop against the bare step and against PyTorch's loop.")
    parser.add_argument("--model", choices=("lnet", "mlp", "cnn"), default="lnet")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--examples", type=int, default=20_000, help="images per epoch (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per loop; the last is reported (default: %(default)s)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch loop")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)

    from backends import BackendUnavailableError, get_backend

    try:
        get_backend(args.device)
    except BackendUnavailableError as exc:
        print(f"error: {exc.advice('run with --device cpu')}", file=sys.stderr)
        return 2
    images, labels = random_set(args.examples)
    result = {"model": args.model, "device": args.device, "batch_size": args.batch_size, "examples": args.examples}
    result["bare_step_ex_s"] = xpnet_bare_step(args.model, args.device, args.batch_size, seconds=3.0)
    result["xpnet_loop_ex_s"] = xpnet_loop(args.model, args.device, args.batch_size, images, labels, args.epochs)
    result["loop_over_bare"] = result["xpnet_loop_ex_s"] / result["bare_step_ex_s"]
    if not args.no_torch:
        result["torch_loop_ex_s"] = torch_loop(args.model, args.device, args.batch_size, images, labels, args.epochs)
        result["xpnet_over_torch_loop"] = result["xpnet_loop_ex_s"] / result["torch_loop_ex_s"]
    print(f"{args.model} batch {args.batch_size} on {args.device}: bare step {result['bare_step_ex_s']:,.0f} ex/s, "
          f"xpnet loop {result['xpnet_loop_ex_s']:,.0f} ex/s ({result['loop_over_bare']:.2f}x the bare step)"
          + ("" if args.no_torch else f", torch loop {result['torch_loop_ex_s']:,.0f} ex/s "
                                       f"(xpnet/torch {result['xpnet_over_torch_loop']:.2f}x)"))
    if args.device == "cuda":
        result["fused_kernels"] = get_backend("cuda").fusion_report()
        fallen_back = [entry for entry in result["fused_kernels"] if not entry["compiled"]]
        print(f"fused kernels: {len(result['fused_kernels']) - len(fallen_back)} compiled and used, "
              f"{len(fallen_back)} running as plain operations" + "".join(f"\n  plain: {e}" for e in fallen_back))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
