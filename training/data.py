"""Datasets on the host: the ImageSet container and the SVHN cropped-digit files.

SVHN ("Street View House Numbers", format 2) comes as MATLAB files ``train_32x32.mat``,
``test_32x32.mat`` and optionally ``extra_32x32.mat``. Each holds

    X  (32, 32, 3, N) uint8   images as (row, column, channel, index), MATLAB's layout
    y  (N, 1)                 labels 1..10, where 10 stands for the digit 0

xpnet keeps images as (N, 3, 32, 32) uint8 (NCHW, like PyTorch) and labels as int64
0..9 on the host; the DataLoader turns batches into normalised float32 on the device.

>>> train, test = load_svhn("data/svhn")
>>> train.images.shape, train.labels.dtype
((73257, 3, 32, 32), dtype('int64'))

The loader and the normalisation statistics live in ``training.data_loader`` and are
re-exported here, so ``from training.data import DataLoader, channel_stats`` works.
"""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

SVHN_SPLIT_FILES = {
    "train": "train_32x32.mat",
    "test": "test_32x32.mat",
    "extra": "extra_32x32.mat",
}
IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10

# MATLAB v7.3 files are HDF5 files with a 512-byte MATLAB header in front.
_HDF5_SIGNATURE = b"\x89HDF"
_HDF5_OFFSET = 512

_FIX_HINT = "run with --download to fetch the official files, or use --dataset synthetic to train on the built-in set"
_OFFICIAL_HINT = ("point --data-dir at a folder with the official train_32x32.mat and test_32x32.mat, "
                  "or --download them into a folder of their own")


@dataclass
class ImageSet:
    """A labelled image set on the host.

    images: (N, 3, 32, 32) uint8 NumPy array, C-contiguous (NCHW).
    labels: (N,) int64 NumPy array with class indices 0..9.
    name:   a short description, e.g. ``"svhn-train"``.
    """

    images: np.ndarray
    labels: np.ndarray
    name: str = "images"

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE:
            raise DataError(
                f"{self.name}: images must be a uint8 NumPy array of shape (N, 3, 32, 32), "
                f"got {_describe(images)}"
            )
        if not isinstance(labels, np.ndarray) or labels.ndim != 1 or labels.dtype != np.int64:
            raise DataError(f"{self.name}: labels must be an int64 NumPy array of shape (N,), got {_describe(labels)}")
        if len(images) != len(labels):
            raise DataError(f"{self.name}: {len(images)} images but {len(labels)} labels; they must match one to one")
        if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise DataError(
                f"{self.name}: labels must lie in 0..{NUM_CLASSES - 1}, found {labels.min()}..{labels.max()}"
            )
        self.images = np.ascontiguousarray(images)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"ImageSet({self.name!r}, {len(self)} images)"


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__


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
        raise DataError(f"SVHN file {path} not found; {_FIX_HINT}")
    try:
        stream = open(path, "rb")
    except OSError as exc:  # no read permission, an I/O error: the file itself may be fine
        raise DataError(f"cannot read {path}: {exc.strerror or exc}; make it readable, or point --data-dir elsewhere") from exc
    with stream:
        contents = _load_x_and_y(path, stream)
    images = _images_from_mat(path, contents["X"])
    labels = _labels_from_mat(path, contents["y"])
    if len(images) != len(labels):
        raise DataError(
            f"{path} holds {len(images)} images but {len(labels)} labels, so it is not an SVHN file (the official "
            f"files hold one label per image): {_OFFICIAL_HINT}"
        )
    return images, labels


def _load_x_and_y(path: Path, stream) -> dict:
    """The variables X and y of the .mat file open as ``stream``."""
    import scipy.io

    try:
        if _is_hdf5(stream):
            raise DataError(_hdf5_message(path))
        names = _check_mat_v5(path, stream)  # scipy's reader can crash the interpreter on a corrupt file
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
            f"{path} has no variable {' or '.join(missing)} (found: {', '.join(names) or 'none'}); "
            f"SVHN cropped-digit files hold X (32, 32, 3, N) uint8 and y (N, 1) labels 1..10: {_OFFICIAL_HINT}"
        )
    return contents


def _unparsable(path: Path, exc: Exception) -> DataError:
    return DataError(
        f"{path} could not be read as a MATLAB .mat file ({type(exc).__name__}: {exc}); "
        f"it is probably truncated or corrupt: {_REFETCH}"
    )


_MI_INT8, _MI_INT32, _MI_UINT32, _MI_MATRIX, _MI_COMPRESSED, _MI_UTF8 = 1, 5, 6, 14, 15, 16
# element type codes of numeric data -> bytes per value (miINT8 .. miUINT64)
_MI_ITEMSIZE = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8}
_MX_NUMERIC = range(6, 16)  # mxDOUBLE_CLASS .. mxUINT64_CLASS
_MX_CLASS_NAMES = {1: "cell array", 2: "struct", 3: "object", 4: "text (char array)", 5: "sparse matrix"}
_HEAD_BYTES = 1024  # enough for the flags, dims, name and data tag of any sane variable
_REFETCH = "if it is a downloaded SVHN file, delete it and run with --download to fetch it again"
_READ_VARIABLES = (b"X", b"y")


def _check_mat_v5(path: Path, f) -> list[str] | None:
    """Refuse a MATLAB v5 file that scipy.io.loadmat could crash on, before it reads it.

    scipy's v5 reader is not hardened against corrupt files: a data element whose type code
    is out of range makes it index past its type table and crash the interpreter (a
    segmentation fault, which no ``except`` catches; see scipy gh-25349). So the header of
    every variable (flags, dimensions, name) is checked here, and for X and y, the only
    variables read (scipy skips the others unread), also their class and data element:
    numeric, not complex, of a numeric type whose size matches the dimensions. Only the
    first bytes of each variable are read (and decompressed).

    Returns the names of the variables, or None for a file that is not v5 (v4 files have no
    header, and scipy reads them in plain Python; v7.3 files it refuses itself).
    """
    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    header = f.read(128)
    if len(header) < 128 or 0 in header[:4] or header[126:128] not in (b"IM", b"MI"):
        return None
    endian = "<" if header[126:128] == b"IM" else ">"
    if struct.unpack(endian + "H", header[124:126])[0] != 0x0100:
        return None
    names = []
    position = 128
    while position + 8 <= size:
        f.seek(position)
        mdtype, nbytes = struct.unpack(endian + "II", f.read(8))
        if mdtype == _MI_COMPRESSED:
            try:
                head = zlib.decompressobj().decompress(f.read(min(nbytes, 64 * 1024)), _HEAD_BYTES)
            except zlib.error as exc:
                raise DataError(f"{path} is corrupt (compressed variable at byte {position}: {exc}); {_REFETCH}") from None
        elif mdtype == _MI_MATRIX:
            head = struct.pack(endian + "II", mdtype, nbytes) + f.read(min(nbytes, _HEAD_BYTES))
        else:
            raise DataError(f"{path} is corrupt: unexpected element type {mdtype} at byte {position}; {_REFETCH}")
        name = _check_matrix_head(path, head, endian, position)
        if name is not None:
            names.append(name)
        position += 8 + nbytes
    return names


def _check_matrix_head(path: Path, head: bytes, endian: str, position: int) -> str | None:
    """Check one variable's header (see _check_mat_v5); returns its name (None: an empty element)."""
    def fail(what: str):
        return DataError(f"{path} is corrupt: the variable at byte {position} {what}; {_REFETCH}")

    def element(offset: int):  # -> (type code, byte count, data offset, next offset)
        if offset + 8 > len(head):
            raise fail("is truncated")
        word, count = struct.unpack_from(endian + "II", head, offset)
        if word >> 16:  # small data element: type and count share the first 4 bytes
            return word & 0xFFFF, word >> 16, offset + 4, offset + 8
        return word, count, offset + 8, offset + 8 + count + (-count % 8)

    mdtype, nbytes, offset, _ = element(0)
    if mdtype != _MI_MATRIX:
        raise fail(f"has element type {mdtype}, not a matrix")
    if nbytes == 0:
        return None  # an empty variable
    mdtype, count, data, offset = element(offset)
    if mdtype != _MI_UINT32 or count != 8 or data + 8 > len(head):
        raise fail("has malformed array flags")
    flags = struct.unpack_from(endian + "I", head, data)[0]
    mdtype, count, data, offset = element(offset)
    if mdtype not in (_MI_INT32, _MI_UINT32) or count % 4 or not 8 <= count <= 4 * 32 or data + count > len(head):
        raise fail("has malformed dimensions")
    dims = struct.unpack_from(f"{endian}{count // 4}i", head, data)
    if min(dims) < 0:
        raise fail(f"has negative dimensions {dims}")
    mdtype, count, data, offset = element(offset)
    if mdtype not in (_MI_INT8, _MI_UTF8) or data + count > len(head):
        raise fail("has a malformed name")
    name = head[data:data + count]
    if name not in _READ_VARIABLES:
        return name.decode("latin-1")  # not read: scipy skips it by its size
    matlab_class = flags & 0xFF
    if matlab_class not in _MX_NUMERIC or flags & 0x800:
        kind = "complex numbers" if flags & 0x800 else _MX_CLASS_NAMES.get(matlab_class, f"MATLAB class {matlab_class}")
        raise DataError(f"{path}: its variable {name.decode()} holds {kind}, not numbers; SVHN cropped-digit files hold "
                        f"X (32, 32, 3, N) uint8 and y (N, 1) labels 1..10: {_OFFICIAL_HINT}")
    mdtype, count, data, offset = element(offset)
    if mdtype not in _MI_ITEMSIZE or count != int(np.prod(dims, dtype=object)) * _MI_ITEMSIZE[mdtype]:
        raise fail(f"has data of element type {mdtype} and {count} bytes, which does not fit its shape {dims}")
    return name.decode()


def _is_hdf5(stream) -> bool:
    stream.seek(_HDF5_OFFSET)
    return stream.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE


def _hdf5_message(path: Path) -> str:
    return (
        f"{path} is a MATLAB v7.3 (HDF5) file, such as SVHN's format-1 digitStruct.mat; "
        f"xpnet needs the format-2 cropped-digit files train_32x32.mat and test_32x32.mat "
        f"(*_32x32.mat): {_FIX_HINT}"
    )


def _images_from_mat(path: Path, x: np.ndarray) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise DataError(
            f"{path}: X must be a uint8 array of shape (32, 32, 3, N), got {_describe(x)}; "
            f"is this an SVHN cropped-digit (*_32x32.mat) file?"
        )
    # (row, column, channel, index) -> (index, channel, row, column)
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1))


def _labels_from_mat(path: Path, y: np.ndarray) -> np.ndarray:
    if not isinstance(y, np.ndarray) or y.ndim != 2 or 1 not in y.shape or y.dtype.kind not in "uif":
        raise DataError(f"{path}: y must be a numeric array of shape (N, 1), got {_describe(y)}")
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
        raise DataError(f"{path} holds no images (X has shape (32, 32, 3, 0)); xpnet needs at least one: {_OFFICIAL_HINT}")
    return ImageSet(images, labels, f"svhn-{split}")


def check_svhn_folder(data_dir: str | os.PathLike, splits) -> Path:
    """``data_dir`` as a Path, if it is a folder holding the files of ``splits``; else DataError."""
    data_dir = Path(data_dir).expanduser()
    files = [SVHN_SPLIT_FILES[split] for split in splits]
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"{data_dir} is a file, not a folder; --data-dir names the folder that holds {' and '.join(files)}")
    if not data_dir.is_dir():
        raise DataError(f"SVHN folder {data_dir} does not exist; it should hold {' and '.join(files)}: {_FIX_HINT}")
    missing = [name for name in files if not (data_dir / name).is_file()]
    if missing:
        raise DataError(f"SVHN file(s) {', '.join(missing)} not found in {data_dir}; {_FIX_HINT}")
    return data_dir


# Re-exported so that ``from training.data import DataLoader`` works.
from .data_loader import DataLoader, channel_stats  # noqa: E402

__all__ = [
    "DataLoader",
    "ImageSet",
    "NUM_CLASSES",
    "SVHN_SPLIT_FILES",
    "channel_stats",
    "check_svhn_folder",
    "load_svhn",
    "load_svhn_split",
    "read_svhn_mat",
    "write_svhn_mat",
]
