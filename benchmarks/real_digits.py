"""A small real handwritten-digit set in SVHN's format, to measure accuracy without a download.

    pip install scikit-learn                     # ships the 1,797 digits of the UCI set with it
    python benchmarks/real_digits.py data/digits
    python cli.py --dataset svhn --data-dir data/digits --model cnn --augment --schedule onecycle --lr 3e-3 --epochs 30

scikit-learn's ``load_digits`` holds 1,797 handwritten digits (8×8 pixels, 17 grey levels,
from the UCI "Optical Recognition of Handwritten Digits" set) and needs no network. This
script scales each to 32×32 (each pixel a 4×4 block), turns it into white-on-black RGB
uint8, splits it 80/20 with a fixed seed and writes train_32x32.mat and test_32x32.mat
exactly as SVHN ships them, so ``--dataset svhn --data-dir`` reads it like the real thing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def digits_as_svhn(seed: int = 0, test_share: float = 0.2):
    """((train images, labels), (test images, labels)): (N, 3, 32, 32) uint8 and (N,) int64."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.kron(digits.images, np.ones((4, 4)))  # (N, 32, 32), values 0..16
    images = np.round(images * (255 / 16)).astype(np.uint8)
    images = np.repeat(images[:, None, :, :], 3, axis=1)  # grey as RGB
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = int(round(len(labels) * (1 - test_share)))
    train, test = order[:cut], order[cut:]
    return (images[train], labels[train]), (images[test], labels[test])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write scikit-learn's handwritten digits as SVHN-format .mat files.")
    parser.add_argument("folder", type=Path, help="where train_32x32.mat and test_32x32.mat go")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split (default 0)")
    args = parser.parse_args(argv)
    from training.data import write_svhn_mat

    args.folder.mkdir(parents=True, exist_ok=True)
    (train_x, train_y), (test_x, test_y) = digits_as_svhn(args.seed)
    write_svhn_mat(args.folder / "train_32x32.mat", train_x, train_y)
    write_svhn_mat(args.folder / "test_32x32.mat", test_x, test_y)
    print(f"wrote {len(train_y)} training and {len(test_y)} test digits to {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
