"""ImageSet: a labelled set of 32x32 colour images on the host, whatever its source.

Both datasets produce ImageSets: the SVHN files (``training.data.svhn``) and the synthetic
digits (``training.data.synthetic``). Images are (N, 3, 32, 32) uint8 (NCHW, like PyTorch)
and labels int64 0..9; the DataLoader (``training.data.loader``) turns batches of them into
normalised float32 on the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import DataError

IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10


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
                f"got {describe(images)}"
            )
        if not isinstance(labels, np.ndarray) or labels.ndim != 1 or labels.dtype != np.int64:
            raise DataError(f"{self.name}: labels must be an int64 NumPy array of shape (N,), got {describe(labels)}")
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


def describe(value) -> str:
    """What ``value`` is, for an error message: an array's dtype and shape, else its type."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__
