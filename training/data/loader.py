"""Batching: uint8 images on the host (or GPU) -> normalised float32 batches on the device.

Images stay uint8 until the last moment: a batch is moved to the device as uint8 (a
quarter of the bytes of float32) and converted and normalised there, with array-API
functions only, so the same code runs on NumPy, CuPy and array-api-strict.

>>> mean, std = channel_stats(train.images)
>>> loader = DataLoader(train.images, train.labels, 128, get_backend("cuda"), mean, std)
>>> for epoch in range(10):
...     loader.set_epoch(epoch)            # the shuffle order depends on (seed, epoch) only
...     for x, y in loader:                # x (B, 3, 32, 32) float32, y (B,) int64, on the device
...         ...
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import DataError

_STATS_CHUNK = 1024  # images per chunk in channel_stats, to bound the memory it needs
# A device-resident loader gathers and normalises the shuffled images a chunk at a time
# (this many bytes of float32 output: ~85 batches of 64 SVHN images), then hands out each
# batch as a slice of the chunk: three launches per chunk instead of three per batch, at a
# bounded cost in device memory.
GATHER_CHUNK_BYTES = 64 * 2**20


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of uint8 images, in units of pixel/255.

    images: (N, C, H, W) uint8, normally the training split (never the test split, or the
    test set leaks into the model). Returns ``(mean, std)``, each a (C,) float64 array.
    Sums are accumulated exactly in int64 chunk by chunk, so even SVHN's 600k images
    need little memory.
    """
    images = _check_images(images)
    n, channels = images.shape[0], images.shape[1]
    if n == 0:
        raise DataError("channel_stats needs at least one image, got an empty array")
    total = np.zeros(channels, np.int64)
    total_sq = np.zeros(channels, np.int64)
    for start in range(0, n, _STATS_CHUNK):
        chunk = images[start : start + _STATS_CHUNK].astype(np.int64)
        total += chunk.sum(axis=(0, 2, 3))
        total_sq += (chunk * chunk).sum(axis=(0, 2, 3))
    count = n * images.shape[2] * images.shape[3]
    mean = total / count
    var = np.maximum(total_sq / count - mean * mean, 0.0)
    return mean / 255.0, np.sqrt(var) / 255.0


class DataLoader:
    """Iterate over a labelled image set in (shuffled) batches on a backend's device.

    images: (N, C, H, W) uint8 NumPy array; labels: (N,) integer NumPy array.
    batch_size: examples per batch (the last batch may be smaller unless ``drop_last``).
    backend: a Backend (or its name); batches are created on its device.
    mean, std: (C,) per-channel statistics in pixel/255 units, from ``channel_stats``.
    shuffle, seed: the order of epoch ``e`` is ``default_rng([seed, e]).permutation(N)``,
        a pure function of (seed, epoch), so a resumed run sees exactly the same batches.
    augment: a RandomShift (training/data/augment.py) or None. Batch b of epoch e is then shifted,
        on the device, with the draw keyed (e, b): reproducible, and the same whichever
        way the batches are gathered.
    device_resident: upload the whole uint8 set once and gather batches on the device
        with ``xp.take`` (default: True on cuda, where it avoids a host->device copy per
        batch; False elsewhere, where batches are gathered on the host). Batches are
        gathered and normalised a chunk at a time (GATHER_CHUNK_BYTES), each a slice of it.
    dtype: the floating-point type of the batches, "float32" (default) or "float64"; the
        model's, since layers refuse inputs of another dtype.

    Iterating yields ``(x, y)``: x (B, C, H, W) of ``dtype``, equal to ``(pixel/255 - mean)/std``,
    y (B,) int64, both on the device. Each pass uses the current epoch and then advances
    it by one; ``set_epoch(e)`` chooses the epoch of the next pass explicitly.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        backend,
        mean,
        std,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        device_resident: bool | None = None,
        dtype: str = "float32",
        augment=None,
    ) -> None:
        from backends import get_backend

        self.images = _check_images(images)
        self.labels = _check_labels(labels, len(self.images))
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise DataError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)
        if len(self.images) == 0:
            raise DataError("DataLoader got an empty image set; it needs at least one image")
        if self.drop_last and len(self.images) < self.batch_size:
            raise DataError(
                f"drop_last=True with {len(self.images)} images and batch_size {self.batch_size} "
                f"would give no batches at all; use a smaller batch_size or drop_last=False"
            )
        self.backend = get_backend(backend)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.epoch = 0
        self.device_resident = self.backend.name == "cuda" if device_resident is None else bool(device_resident)
        if augment is not None:
            augment.check(tuple(self.images.shape[1:]))
        self.augment = augment

        mean, std = _check_stats(mean, std, self.images.shape[1])
        # (x/255 - mean)/std == x * scale - shift, two operations on the device instead of three.
        shape = (1, -1, 1, 1)
        self.dtype = self.backend.dtype(dtype)
        self._scale = self.backend.asarray((1.0 / (255.0 * std)).reshape(shape), dtype=self.dtype)
        self._shift = self.backend.asarray((mean / std).reshape(shape), dtype=self.dtype)
        self.mean, self.std = mean, std

        if self.device_resident:
            self._device_images = self.backend.asarray(self.images)
            self._device_labels = self.backend.asarray(self.labels)

    def __len__(self) -> int:
        """Number of batches in one pass."""
        n = len(self.images)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_examples(self) -> int:
        """Examples seen in one pass (fewer than N when drop_last drops a partial batch)."""
        return len(self) * self.batch_size if self.drop_last else len(self.images)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass use epoch ``epoch``'s order (call it before each epoch when resuming)."""
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The (N,) int64 host index order of ``epoch`` (default: the next pass's)."""
        epoch = self.epoch if epoch is None else int(epoch)
        n = len(self.images)
        if not self.shuffle:
            return np.arange(n, dtype=np.int64)
        return np.random.default_rng([self.seed, epoch]).permutation(n).astype(np.int64)

    def __iter__(self):
        epoch, batches = self.epoch, self._batches()
        if self.augment is None:
            yield from batches
            return
        for number, (x, y) in enumerate(batches):
            yield self.augment(self.backend, x, (epoch, number)), y

    def _batches(self):
        order = self.order()
        self.epoch += 1
        n_used = self.num_examples
        if self.device_resident:
            yield from self._device_batches(order, n_used)
            return
        for start in range(0, n_used, self.batch_size):
            stop = min(start + self.batch_size, n_used)
            if self.shuffle:
                index = order[start:stop]
                x, y = self.backend.asarray(self.images[index]), self.backend.asarray(self.labels[index])
            else:  # in order: plain slices, no gather needed
                x = self.backend.asarray(self.images[start:stop])
                y = self.backend.asarray(self.labels[start:stop])
            yield self._normalise(x), y

    def _device_batches(self, order: np.ndarray, n_used: int):
        """Batches gathered on the device from the resident set, a chunk of batches per gather."""
        xp = self.backend.xp
        order_on_device = self.backend.asarray(order)  # one small upload per epoch
        image_bytes = (xp.finfo(self.dtype).bits // 8) * int(np.prod(self.images.shape[1:]))  # as batches
        chunk = max(1, GATHER_CHUNK_BYTES // (image_bytes * self.batch_size)) * self.batch_size
        for chunk_start in range(0, n_used, chunk):
            chunk_stop = min(chunk_start + chunk, n_used)
            index = order_on_device[chunk_start:chunk_stop]
            images = self._normalise(xp.take(self._device_images, index, axis=0))
            labels = xp.take(self._device_labels, index, axis=0)
            for start in range(0, chunk_stop - chunk_start, self.batch_size):
                stop = min(start + self.batch_size, chunk_stop - chunk_start)
                yield images[start:stop, ...], labels[start:stop]

    def _normalise(self, x_uint8):
        return self.backend.fuse(normalise)(x_uint8, self._scale, self._shift)

    def __repr__(self) -> str:
        return (
            f"DataLoader({len(self.images)} images, batch_size={self.batch_size}, backend={self.backend.name!r}, "
            f"shuffle={self.shuffle}, device_resident={self.device_resident}"
            + ("" if self.augment is None else f", augment={self.augment!r}") + ")"
        )


def normalise(xp, x_uint8, scale, shift):
    """``(pixel/255 - mean)/std`` as ``pixel·scale - shift``: one fused kernel on a GPU."""
    return xp.astype(x_uint8, scale.dtype) * scale - shift


def _check_images(images) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        desc = f"{images.dtype} array of shape {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DataError(
            f"images must be a uint8 NumPy array of shape (N, C, H, W) on the host, got {desc}; "
            f"pass the ImageSet's .images (uint8), not an already normalised float array"
        )
    return images


def _check_labels(labels, n: int) -> np.ndarray:
    if not isinstance(labels, np.ndarray) or labels.ndim != 1 or labels.dtype.kind not in "iu":
        desc = f"{labels.dtype} array of shape {labels.shape}" if isinstance(labels, np.ndarray) else type(labels).__name__
        raise DataError(f"labels must be a 1-D integer NumPy array of shape (N,), got {desc}")
    if len(labels) != n:
        raise DataError(f"{n} images but {len(labels)} labels; they must match one to one")
    return labels.astype(np.int64, copy=False)


def _check_stats(mean, std, channels: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        std = np.asarray(std, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"mean and std must be sequences of numbers, one per channel ({exc})") from None
    if mean.shape != (channels,) or std.shape != (channels,):
        raise DataError(
            f"mean and std must have one value per channel ({channels}), got {mean.shape[0]} and {std.shape[0]}; "
            f"compute them with channel_stats(train_images)"
        )
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise DataError(
            f"mean must be finite and std finite and > 0 (in pixel/255 units), got mean={mean}, std={std}; "
            f"a std of 0 means a channel is constant"
        )
    return mean, std
