"""Data augmentation on the device: random shifts of whole images, with edge padding.

>>> shift = RandomShift(max_shift=3, seed=0)
>>> x = shift(x, key_words=(epoch, batch))   # x (N, C, H, W) on the device, shifted per image

Each image n gets its own shift (a_n, b_n), both uniform in {-s, ..., s}, and

    out[n, c, i, j] = x[n, c, clamp(i + a_n, 0, H - 1), clamp(j + b_n, 0, W - 1)]

that is, the image moved by (-a_n, -b_n) pixels with its border rows and columns repeated
into the space it leaves (replicate padding, as torchvision's
RandomCrop(padding=s, padding_mode="edge") after padding by s). The shifts come from the
counter-based generator of backends/random.py, keyed by (seed, epoch, batch), so they are
reproducible and a resumed run sees exactly the shifts of the uninterrupted one.

On the device it is a handful of operations whatever the batch: one draw of 2N integers,
one fused kernel that turns them into an index of every output pixel, and one gather
(``xp.take``) from the batch viewed flat.
"""
from __future__ import annotations

from backends.random import derive_key, device_random

from ..errors import DataError, setting

AUGMENT_STREAM = 0x5A1F7  # tells the shift draws apart from other draws made with the same seed


def shift_index(xp, rows, columns, row_draw, column_draw, image_offset, channel_offset, max_shift, last_row,
                last_column, width, zero):
    """Flat index of the source pixel of every output pixel (one fused kernel on a GPU).

    rows (1, 1, H, 1) and columns (1, 1, 1, W): the output pixel; row_draw and column_draw
    (N, 1, 1, 1): each image's draw in [0, 2s], its shift minus s; image_offset (N, 1, 1, 1)
    = n·C·H·W and channel_offset (1, C, 1, 1) = c·H·W. Returns (N, C, H, W) int64.
    """
    source_row = xp.minimum(xp.maximum(rows + (row_draw - max_shift), zero), last_row)
    source_column = xp.minimum(xp.maximum(columns + (column_draw - max_shift), zero), last_column)
    return image_offset + channel_offset + source_row * width + source_column


class RandomShift:
    """Shift every image of a batch by its own random whole number of pixels, up to ``max_shift``
    in each direction, with edge (replicate) padding. See the module docstring."""

    def __init__(self, max_shift: int = 3, seed: int = 0):
        if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 1:
            raise ValueError(f"max_shift must be a whole number >= 1, got {max_shift!r}")
        self.max_shift, self.seed = max_shift, int(seed)
        self._tables: dict = {}

    def check(self, image_shape: tuple[int, ...]) -> None:
        """Refuse images that cannot be shifted: not (C, H, W), or not larger than twice the shift
        on each side (a shift of s on an image of 2s pixels or fewer would leave mostly padding)."""
        smallest = 2 * self.max_shift + 1
        if len(image_shape) != 3 or image_shape[1] < smallest or image_shape[2] < smallest:
            raise DataError(
                f"{setting('augment')} shifts images by up to {self.max_shift} pixels, which needs images (C, H, W) of at "
                f"least {smallest}x{smallest} pixels; these are {tuple(image_shape)}: train without {setting('augment')}"
            )

    def _table(self, backend, shape):
        """The index pieces of one batch shape, made once: rows, columns, offsets and bounds."""
        key = (id(backend), shape)
        if key not in self._tables:
            xp = backend.xp
            n, c, h, w = shape
            i64 = xp.int64
            self._tables[key] = (
                xp.reshape(xp.arange(h, dtype=i64), (1, 1, h, 1)),
                xp.reshape(xp.arange(w, dtype=i64), (1, 1, 1, w)),
                xp.reshape(xp.arange(n, dtype=i64) * (c * h * w), (n, 1, 1, 1)),
                xp.reshape(xp.arange(c, dtype=i64) * (h * w), (1, c, 1, 1)),
                backend.constant(h - 1, i64), backend.constant(w - 1, i64), backend.constant(w, i64),
                backend.constant(0, i64),
            )
        return self._tables[key]

    def _draw(self, backend, n: int, key_words: tuple[int, ...]):
        """(2, N) int64 in [0, 2s]: row and column shifts plus s, for ``key_words``."""
        key = derive_key(self.seed, AUGMENT_STREAM, *key_words)
        return device_random(backend).integers(key, (2, n), 2 * self.max_shift + 1)

    def shifts(self, backend, n: int, key_words: tuple[int, ...]):
        """(row shifts, column shifts), each (N,) int64 in [-s, s]: what ``__call__`` uses for ``key_words``."""
        drawn = backend.to_numpy(self._draw(backend, n, key_words)) - self.max_shift
        return drawn[0], drawn[1]

    def __call__(self, backend, x, key_words: tuple[int, ...]):
        """x (N, C, H, W) on ``backend``'s device, shifted; ``key_words`` name the draw ((epoch, batch))."""
        self.check(tuple(x.shape[1:]))
        xp = backend.xp
        n = x.shape[0]
        rows, columns, image_offset, channel_offset, last_row, last_column, width, zero = self._table(backend, tuple(x.shape))
        drawn = self._draw(backend, n, key_words)
        index = backend.fuse(shift_index)(rows, columns, xp.reshape(drawn[0, ...], (n, 1, 1, 1)),
                                          xp.reshape(drawn[1, ...], (n, 1, 1, 1)), image_offset, channel_offset,
                                          backend.constant(self.max_shift, xp.int64), last_row, last_column, width, zero)
        return xp.reshape(xp.take(xp.reshape(x, (-1,)), xp.reshape(index, (-1,))), tuple(x.shape))

    def __repr__(self) -> str:
        return f"RandomShift(max_shift={self.max_shift}, seed={self.seed})"


def shift_reference(images, row_shifts, column_shifts):
    """The definition with NumPy on the host, for tests: each image padded by its edge, then cropped."""
    import numpy as np

    out = np.empty_like(images)
    h, w = images.shape[2], images.shape[3]
    for n, (a, b) in enumerate(zip(row_shifts, column_shifts)):
        rows = np.clip(np.arange(h) + a, 0, h - 1)
        columns = np.clip(np.arange(w) + b, 0, w - 1)
        out[n] = images[n][:, rows][:, :, columns]
    return out
