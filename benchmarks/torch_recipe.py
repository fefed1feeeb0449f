"""The cnn recipe in PyTorch, on the same data, to compare accuracies with ``python cli.py``.

    python benchmarks/torch_recipe.py --data-dir data/digits --epochs 30 --seed 0

Trains the torch twin of ``build_model("cnn")`` (benchmarks/torch_models.py) as
``python cli.py --dataset svhn --model cnn --augment --schedule onecycle --lr 3e-3
--batch-size 64`` does: the same normalisation (channel_stats of the training set), the
same shuffling and random shifts (the run API's loaders, training/run/prepare.py, on the
cpu backend make the batches), Adam, torch's OneCycleLR stepped per batch, torch's default init drawn
by torch.manual_seed(seed). Prints the test accuracy after every epoch. Needs torch.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder of train_32x32.mat and test_32x32.mat")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args(argv)

    import torch

    from backends import get_backend
    from benchmarks.torch_models import build_torch_model
    from training.run import RunConfig
    from training.run.prepare import load_training_data, make_loaders, normalisation_of

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    # The data exactly as `python cli.py` makes it: the run API's own steps (training/run/prepare.py).
    config = RunConfig(model="cnn", dataset="svhn", data_dir=args.data_dir, batch_size=args.batch_size, seed=args.seed,
                       augment=True, schedule="onecycle", lr=args.lr, epochs=args.epochs, device="cpu").resolved()
    train, test = load_training_data(config, config, print)
    mean, std = normalisation_of(train, None)
    train_loader, test_loader = make_loaders(config, train, test, get_backend("cpu"), mean, std)
    model = build_torch_model("cnn")
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.epochs * len(train_loader))
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        model.train()
        train_loader.set_epoch(epoch)
        for x, y in train_loader:
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(np.asarray(x))), torch.from_numpy(y))
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test_loader:
                correct += int((model(torch.from_numpy(np.asarray(x))).argmax(1).numpy() == y).sum())
        print(f"epoch {epoch}/{args.epochs}  test acc {100 * correct / len(test.labels):.2f}%  "
              f"{time.perf_counter() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
