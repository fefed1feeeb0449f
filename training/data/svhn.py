"""The SVHN cropped-digit files: reading, writing and loading them as ImageSets.

SVHN ("Street View House Numbers", format 2) comes as MATLAB files ``train_32x32.mat``,
``test_32x32.mat`` and optionally ``extra_32x32.mat``. Each holds

    X  (32, 32, 3, N) uint8   images as (row, column, channel, index), MATLAB's layout
    y  (N, 1)                 labels 1..10, where 10 stands for the digit 0

xpnet keeps images as (N, 3, 32, 32) uint8 (NCHW, like PyTorch) and labels as int64
0..9 on the host (an ImageSet); the DataLoader turns batches into normalised float32 on
the device.

>>> train, test = load_svhn("data/svhn")
>>> train.images.shape, train.labels.dtype
((73257, 3, 32, 32), dtype('int64'))

Before scipy reads a file, ``training.data.matlab`` checks its structure, so that a corrupt
download is refused with a message instead of crashing the interpreter.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError, setting
from .imageset import ImageSet, describe
from .matlab import check_mat_v5, is_hdf5, is_plain_hdf5

SVHN_SPLIT_FILES = {
    "train": "train_32x32.mat",
    "test": "test_32x32.mat",
    "extra": "extra_32x32.mat",
}

# What to do, in the words of the reader (setting(): 'download' from Python, --download from the command line).
def _fix_hint() -> str:
    return (f"run with {setting('download')} to fetch the official files, or use {setting('dataset')} synthetic to "
            f"train on the built-in set")


def _official_hint() -> str:
    return (f"point {setting('data_dir')} at a folder with the official train_32x32.mat and test_32x32.mat, "
            f"or {setting('download')} them into a folder of their own")


def _refetch() -> str:
    return f"if it is a downloaded SVHN file, delete it and run with {setting('download')} to fetch it again"


def _expected() -> str:
    return f"SVHN cropped-digit files hold X (32, 32, 3, N) uint8 and y (N, 1) labels 1..10: {_official_hint()}"


# ---------------------------------------------------------------------------- reading


def read_svhn_mat(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one SVHN format-2 ``*_32x32.mat`` file.

    Returns ``(images, labels)``: images (N, 3, 32, 32) uint8 C-contiguous, labels (N,)
    int64 in 0..9 (the file's label 10 becomes 0). Only the variables X and y are read;
    others (a note, a date) are allowed and skipped. Raises DataError, saying what is wrong
    with the file and what to do, when the file is missing, unreadable, corrupt or not in
    this format.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder, not an SVHN .mat file")
    if not path.is_file():
        raise DataError(f"SVHN file {path} not found; {_fix_hint()}")
    try:
        stream = open(path, "rb")
    except OSError as exc:  # no read permission, an I/O error: the file itself may be fine
        raise DataError(f"cannot read {path}: {exc.strerror or exc}; make it readable, or point {setting('data_dir')} elsewhere") from exc
    with stream:
        contents = _load_x_and_y(path, stream)
    images = _images_from_mat(path, contents["X"])
    labels = _labels_from_mat(path, contents["y"])
    if len(images) != len(labels):
        raise DataError(
            f"{path} holds {len(images)} images but {len(labels)} labels, so it is not an SVHN file (the official "
            f"files hold one label per image): {_official_hint()}"
        )
    return images, labels


def _load_x_and_y(path: Path, stream) -> dict:
    """The variables X and y of the .mat file open as ``stream``."""
    import scipy.io

    try:
        if is_plain_hdf5(stream):
            raise DataError(f"{path} is an HDF5 file, not a MATLAB .mat file; xpnet needs SVHN's format-2 cropped-digit "
                            f"files train_32x32.mat and test_32x32.mat (*_32x32.mat): {_fix_hint()}")
        if is_hdf5(stream):
            raise DataError(_hdf5_message(path))
        # scipy's reader can crash the interpreter on a corrupt file
        names = check_mat_v5(path, stream, read=("X", "y"), if_corrupt=_refetch(), if_not_numbers=_expected())
        stream.seek(0)
        contents = scipy.io.loadmat(stream, variable_names=["X", "y"])
    except NotImplementedError:  # scipy's answer to MATLAB v7.3 (HDF5) files
        raise DataError(_hdf5_message(path)) from None
    except DataError:
        raise
    except OSError as exc:
        if exc.errno is not None:  # the system could not read it (an I/O error)
            raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
        raise _unparsable(path, exc) from exc
    except Exception as exc:  # truncated or corrupt: loadmat raises many kinds of error
        raise _unparsable(path, exc) from exc
    missing = [key for key in ("X", "y") if key not in contents]
    if missing:
        if names is None:
            stream.seek(0)
            names = [entry[0] for entry in scipy.io.whosmat(stream)]
        raise DataError(
            f"{path} has no variable {' or '.join(missing)} (found: {', '.join(names) or 'none'}); {_expected()}"
        )
    return contents


def _unparsable(path: Path, exc: Exception) -> DataError:
    return DataError(
        f"{path} could not be read as a MATLAB .mat file ({type(exc).__name__}: {exc}); "
        f"it is probably truncated or corrupt: {_refetch()}"
    )


def _hdf5_message(path: Path) -> str:
    return (
        f"{path} is a MATLAB v7.3 (HDF5) file, such as SVHN's format-1 digitStruct.mat; "
        f"xpnet needs the format-2 cropped-digit files train_32x32.mat and test_32x32.mat "
        f"(*_32x32.mat): {_fix_hint()}"
    )


def _images_from_mat(path: Path, x: np.ndarray) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise DataError(
            f"{path}: X must be a uint8 array of shape (32, 32, 3, N), got {describe(x)}; "
            f"is this an SVHN cropped-digit (*_32x32.mat) file?"
        )
    # (row, column, channel, index) -> (index, channel, row, column)
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1))


def _labels_from_mat(path: Path, y: np.ndarray) -> np.ndarray:
    if not isinstance(y, np.ndarray) or y.ndim != 2 or 1 not in y.shape or y.dtype.kind not in "uif":
        raise DataError(f"{path}: y must be a numeric array of shape (N, 1), got {describe(y)}")
    y = y.reshape(-1)
    bad = (y != np.round(y)) | (y < 1) | (y > 10)  # NaN counts as bad too
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: labels must be whole numbers 1..10 (10 meaning the digit 0), "
            f"but {int(bad.sum())} are not, the first at index {first} is {y[first]!r}; the file is not a valid SVHN file"
        )
    return y.astype(np.int64) % 10  # 10 -> 0, the others unchanged


def write_svhn_mat(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray, compress: bool = False) -> None:
    """Write images and labels as a genuine SVHN format-2 .mat file.

    images: (N, 3, 32, 32) uint8; labels: (N,) integers 0..9. The file holds
    X (32, 32, 3, N) uint8 and y (N, 1) uint8 with 10 for the digit 0, exactly like the
    official files, so ``read_svhn_mat`` gives back the same arrays.
    """
    import scipy.io

    data = ImageSet(np.asarray(images), np.asarray(labels).astype(np.int64, copy=False), name=str(path))
    x = data.images.transpose(2, 3, 1, 0)  # (N, C, H, W) -> (H, W, C, N)
    y = np.where(data.labels == 0, 10, data.labels).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(str(path), {"X": x, "y": y}, do_compression=compress)


def load_svhn(data_dir: str | os.PathLike, extra: bool = False) -> tuple[ImageSet, ImageSet]:
    """Load SVHN's train and test splits from ``data_dir``.

    With ``extra=True`` the 531,131 images of ``extra_32x32.mat`` are appended to the
    training set. Returns ``(train, test)`` ImageSets; raises DataError naming the missing
    file (or folder) and how to get it.
    """
    data_dir = check_svhn_folder(data_dir, ["train", "test"] + (["extra"] if extra else []))
    train = load_svhn_split(data_dir, "train")
    test = load_svhn_split(data_dir, "test")
    if extra:
        more = load_svhn_split(data_dir, "extra")
        train = ImageSet(np.concatenate([train.images, more.images]), np.concatenate([train.labels, more.labels]),
                         "svhn-train+extra")
    return train, test


def load_svhn_split(data_dir: str | os.PathLike, split: str) -> ImageSet:
    """One split ("train", "test" or "extra") of SVHN from ``data_dir``, e.g. for evaluation."""
    data_dir = check_svhn_folder(data_dir, [split])
    path = data_dir / SVHN_SPLIT_FILES[split]
    images, labels = read_svhn_mat(path)
    if len(images) == 0 and split != "extra":
        raise DataError(f"{path} holds no images (X has shape (32, 32, 3, 0)); xpnet needs at least one: {_official_hint()}")
    return ImageSet(images, labels, f"svhn-{split}")


def check_svhn_folder(data_dir: str | os.PathLike, splits) -> Path:
    """``data_dir`` as a Path, if it is a folder holding the files of ``splits``; else DataError."""
    data_dir = Path(data_dir).expanduser()
    files = [SVHN_SPLIT_FILES[split] for split in splits]
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"{data_dir} is a file, not a folder; {setting('data_dir')} names the folder that holds {' and '.join(files)}")
    if not data_dir.is_dir():
        raise DataError(f"SVHN folder {data_dir} does not exist; it should hold {' and '.join(files)}: {_fix_hint()}")
    missing = [name for name in files if not (data_dir / name).is_file()]
    if missing:
        raise DataError(f"SVHN file(s) {', '.join(missing)} not found in {data_dir}; {_fix_hint()}")
    return data_dir
