"""A synthetic SVHN-like digit set, generated from a seed: the default, offline dataset.

Each 32x32 colour image shows one digit (its label) in the centre, drawn from a bank of
font glyphs (``training.data.glyphs``), with what makes real house-number crops hard:
random colours and contrast (dark-on-light and light-on-dark), size, position, rotation
and shear, parts of neighbouring digits at the left and right edges, lighting gradients,
a stray edge of the background, blur and noise.

>>> train, test = make_synthetic()         # 20,000 + 5,000 images, cached after the first call
>>> train.images.shape, train.labels.dtype
((20000, 3, 32, 32), dtype('int64'))

Difficulty, as calibrated (seed 0, 20,000 train / 5,000 test images): a NumPy LeNet
(conv 3->6 5x5, pool, conv 6->16 3x3, pool, fc 1024->256->10) trained with Adam, lr 1e-3,
batch 128 reaches 76% test accuracy after one epoch, 91% after five and about 92.5%
after 10-12; an MLP with one hidden layer of 256 gets about 73% after 8 epochs, and
logistic regression stays at chance, because digits come both dark-on-light and
light-on-dark.

Everything is vectorised: images are composed a chunk of CHUNK images at a time, each
chunk from its own seeded generator, so the same seed gives the same bytes. The
module-level constants below are the difficulty knobs; changing any of them changes the
cache key, so a stale cache is never used.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..saving.atomic import write_atomically
from ..saving.regular_files import check_regular, open_to_read
from . import glyphs
from .imageset import ImageSet

GENERATOR_VERSION = 1  # bump when the generator's code changes what it produces
CHUNK = 2048  # images composed at once (a constant: the output depends on it)
SIZE = 32

# --- difficulty knobs (easier: narrow CONTRAST, NOISE_STD, BLUR_SIGMAS; lower NEIGHBOUR_PROB) ---
DIGIT_HEIGHT_PX = (13.0, 28.0)  # ink height of the central digit in the 32x32 crop
ASPECT_RANGE = (0.8, 1.25)  # horizontal stretch of the glyphs
ROTATION_DEG = 10.0  # standard deviation of the rotation (clipped at 2.5 sd)
SHEAR = 0.3  # horizontal shear, uniform in +-SHEAR
SHIFT_PX = 2.5  # offset of the central digit from the crop centre, uniform in +-SHIFT_PX
NEIGHBOUR_PROB = 0.8  # chance of a neighbouring digit on each side
NEIGHBOUR_GAP = (0.0, 0.4)  # gap to a neighbour, in units of the digit height
CONTRAST = (0.1, 0.8)  # |foreground - background| brightness
SATURATION = 0.35  # largest colour tint of foreground and background
GRADIENT = 0.35  # largest brightness change across the crop (uneven lighting)
CLUTTER_PROB = 0.6  # chance of a stray edge of the background near the border
BLUR_SIGMAS = (0.0, 0.6, 1.0, 1.4)  # gaussian blur levels, one drawn per image
NOISE_STD = (0.0, 0.08)  # pixel noise, uniform in this range per image

_KNOBS = (
    "DIGIT_HEIGHT_PX ASPECT_RANGE ROTATION_DEG SHEAR SHIFT_PX NEIGHBOUR_PROB NEIGHBOUR_GAP "
    "CONTRAST SATURATION GRADIENT CLUTTER_PROB BLUR_SIGMAS NOISE_STD CHUNK"
).split()
_TRAIN, _TEST = 0, 1  # stream ids: train and test never share random numbers


def make_synthetic(
    n_train: int = 20_000,
    n_test: int = 5_000,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    cache: bool = True,
) -> tuple[ImageSet, ImageSet]:
    """The synthetic train and test sets: ``(train, test)`` ImageSets.

    images are (N, 3, 32, 32) uint8, labels (N,) int64 in 0..9, about equally frequent.
    The result is a pure function of (n_train, n_test, seed) and the generator's version
    and knobs. It is cached as an .npz in ``cache_dir`` (default: $XPNET_CACHE, else
    ~/.cache/xpnet); a missing or corrupt cache file is (re)generated, and a cache folder
    that cannot be written only costs a warning. ``cache=False`` never touches the disk.
    Something else than a regular file at the cache file's name (a link, a FIFO) raises DataError.
    """
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    path = cache_path(n_train, n_test, seed, cache_dir) if cache else None
    if path is not None:
        _check_cache_file(path)
        cached = _read_cache(path, n_train, n_test)
        if cached is not None:
            return cached
    train = ImageSet(*generate(n_train, seed, _TRAIN), name="synthetic-train")
    test = ImageSet(*generate(n_test, seed, _TEST), name="synthetic-test")
    if path is not None:
        _write_cache(path, train, test)
    return train, test


def make_synthetic_test(n_test: int = 5_000, seed: int = 0, n_train: int | None = None,
                        cache_dir: str | os.PathLike | None = None) -> ImageSet:
    """Only the test split of ``make_synthetic(n_train, n_test, seed)`` (it does not depend on n_train).

    For evaluation, which needs no training images: the test split is read alone from the
    cache of that call when it exists, else from (or, the first time, into) a cache of the
    test split only.
    """
    if n_train:
        path = cache_path(n_train, n_test, seed, cache_dir)
        _check_cache_file(path)
        if path.exists():
            try:
                f = _cached_arrays(path, {"test_images": n_test * IMAGE_BYTES, "test_labels": n_test * 8})  # only these two
                test = ImageSet(f["test_images"], f["test_labels"], "synthetic-test")
                if len(test) == n_test:
                    return test
            except Exception:  # truncated, corrupt or foreign file: make the test split below
                pass
    return make_synthetic(0, n_test, seed, cache_dir)[1]


def default_cache_dir() -> Path:
    """$XPNET_CACHE if set, else ~/.cache/xpnet; DataError if ``~user`` in it names no user."""
    try:
        return Path(os.environ.get("XPNET_CACHE") or Path.home() / ".cache" / "xpnet").expanduser()
    except RuntimeError:  # Path.expanduser or Path.home: no such user, or no home folder
        raise DataError(f"cannot expand XPNET_CACHE = {os.environ.get('XPNET_CACHE', '')!r} (no such user or no home "
                        "folder): set XPNET_CACHE to a folder, or unset it") from None


def cache_path(n_train: int, n_test: int, seed: int, cache_dir=None) -> Path:
    """Where the cached set for these arguments (and this generator) lives."""
    return Path(cache_dir or default_cache_dir()) / f"synthetic-v{GENERATOR_VERSION}-{_fingerprint()}-{n_train}-{n_test}-{seed}.npz"


def _fingerprint() -> str:
    """A short hash of everything besides the arguments that shapes the output."""
    import matplotlib

    parts = [f"{k}={globals()[k]!r}" for k in _KNOBS]
    parts += [repr(glyphs.FONT_FILES), repr((glyphs.GLYPH_HEIGHT, glyphs.BANK_SIZE, glyphs.RENDER_POINTS, glyphs.PREBLUR_SIGMA))]
    parts += [f"matplotlib={matplotlib.__version__}"]  # its FreeType renders the glyphs
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:10]


# ---------------------------------------------------------------------------- cache


def _check_cache_file(path: Path) -> None:
    """Read and replace only a regular file: never a link (out of the cache), a FIFO (blocks) or a device."""
    check_regular(path, "remove it (xpnet makes its cache files itself), or set XPNET_CACHE to another folder", DataError)


IMAGE_BYTES = 3 * 32 * 32


def _cached_arrays(path: Path, most: dict[str, int]) -> dict[str, np.ndarray]:
    """The arrays ``most`` names from the cache file at ``path``, each read only if the zip directory
    says it unpacks to at most its bytes (plus a .npy header); the file must be a regular file (no
    FIFO, no device). ValueError or OSError otherwise: the caller regenerates the cache."""
    with open_to_read(path) as stream, np.load(stream, allow_pickle=False) as archive:
        sizes = {info.filename: info.file_size for info in archive.zip.infolist()}
        for name, limit in most.items():
            if sizes.get(name + ".npy", 0) > limit + 2**16:
                raise ValueError(f"{name} in {path} is larger than this cache's")
        return {name: archive[name] for name in most}


def _read_cache(path: Path, n_train: int, n_test: int) -> tuple[ImageSet, ImageSet] | None:
    if not path.exists():
        return None
    try:
        f = _cached_arrays(path, {"train_images": n_train * IMAGE_BYTES, "train_labels": n_train * 8,
                                  "test_images": n_test * IMAGE_BYTES, "test_labels": n_test * 8})
        train = ImageSet(f["train_images"], f["train_labels"], "synthetic-train")
        test = ImageSet(f["test_images"], f["test_labels"], "synthetic-test")
        if len(train) == n_train and len(test) == n_test:
            return train, test
    except Exception:  # truncated, corrupt or foreign file: regenerate below
        pass
    warnings.warn(f"synthetic-data cache {path} is unreadable or does not match; regenerating it", stacklevel=3)
    return None


def _write_cache(path: Path, train: ImageSet, test: ImageSet) -> None:
    """Write the cache atomically (training/atomic.py); a failure only costs the cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, lambda stream: np.savez(stream, train_images=train.images, train_labels=train.labels,
                                                       test_images=test.images, test_labels=test.labels))
    except OSError as exc:
        warnings.warn(f"could not cache the synthetic data in {path.parent} ({exc}); continuing without a cache", stacklevel=3)


# ---------------------------------------------------------------------------- generation


def generate(n: int, seed: int = 0, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` images: ``(images (n, 3, 32, 32) uint8, labels (n,) int64)``.

    Chunk ``k`` (images ``k*CHUNK`` onwards) draws from ``default_rng([seed, stream, k])``,
    so the output is a pure function of (n, seed, stream) and the glyph bank.
    """
    bank = glyphs.glyph_bank()
    images = np.empty((n, 3, SIZE, SIZE), np.uint8)
    labels = np.empty(n, np.int64)
    for k, start in enumerate(range(0, n, CHUNK)):
        stop = min(start + CHUNK, n)
        rng = np.random.default_rng([seed, stream, k])
        images[start:stop], labels[start:stop] = _compose(rng, stop - start, bank)
    return images, labels


def _compose(rng: np.random.Generator, n: int, bank: glyphs.GlyphBank) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images from one generator, every step batched over the images."""
    labels = rng.integers(0, 10, n)
    font = rng.integers(0, bank.num_fonts, n)
    left_digit, right_digit = rng.integers(0, 10, n), rng.integers(0, 10, n)
    centre, left, right = font * 10 + labels, font * 10 + left_digit, font * 10 + right_digit

    inverse, offset = _sample_transforms(rng, n)
    ink = _sample_glyphs(bank.glyphs, centre, inverse, offset, 0.0, 0.0)
    # Neighbours sit on (nearly) the same line, half of each width plus a gap to the side.
    gaps = rng.uniform(*NEIGHBOUR_GAP, (2, n)) * glyphs.GLYPH_HEIGHT
    jitter = rng.normal(0.0, 0.04 * glyphs.GLYPH_HEIGHT, (2, n))
    for side, glyph, gap, dy in ((-1, left, gaps[0], jitter[0]), (1, right, gaps[1], jitter[1])):
        dx = side * ((bank.widths[centre] + bank.widths[glyph]) / 2 + gap)
        present = (rng.random(n) < NEIGHBOUR_PROB).astype(np.float32)[:, None, None]
        np.maximum(ink, present * _sample_glyphs(bank.glyphs, glyph, inverse, offset, dx, dy), out=ink)

    image = _colourise(rng, ink)
    image = _blur(rng, image)
    image += rng.uniform(*NOISE_STD, n).astype(np.float32)[:, None, None, None] * rng.standard_normal(image.shape, np.float32)
    return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8), labels


def _sample_transforms(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image affine maps from crop pixels to bank pixels.

    Returns ``inverse`` (n, 2, 2) and ``offset`` (n, 2) such that the bank position (row,
    column, relative to the glyph centre) seen at crop position p (relative to the crop
    centre) is ``inverse @ (p - offset)``.
    """
    scale = rng.uniform(*DIGIT_HEIGHT_PX, n) / glyphs.GLYPH_HEIGHT
    aspect = np.exp(rng.uniform(np.log(ASPECT_RANGE[0]), np.log(ASPECT_RANGE[1]), n))
    angle = np.deg2rad(np.clip(rng.normal(0.0, ROTATION_DEG, n), -2.5 * ROTATION_DEG, 2.5 * ROTATION_DEG))
    shear = rng.uniform(-SHEAR, SHEAR, n)
    cos, sin = np.cos(angle), np.sin(angle)
    # forward = scale * rotation @ shear @ stretch, in (row, column) coordinates
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shear_m = np.stack([np.stack([np.ones(n), np.zeros(n)], -1), np.stack([shear, np.ones(n)], -1)], -2)
    stretch = np.stack([np.stack([np.ones(n), np.zeros(n)], -1), np.stack([np.zeros(n), aspect], -1)], -2)
    forward = scale[:, None, None] * rotation @ shear_m @ stretch
    offset = rng.uniform(-SHIFT_PX, SHIFT_PX, (n, 2))
    return np.linalg.inv(forward).astype(np.float32), offset.astype(np.float32)


_GRID = np.stack(np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")).astype(np.float32) - (SIZE - 1) / 2


def _sample_glyphs(bank_glyphs, index, inverse, offset, dx, dy) -> np.ndarray:
    """Bilinear samples (n, 32, 32) of bank entries ``index`` seen through the transforms.

    ``dx``, ``dy`` (scalars or (n,)) shift the glyph in bank pixels, for the neighbours.
    """
    rel = _GRID[None] - offset[:, :, None, None]  # (n, 2, 32, 32) crop position - offset
    centre = (glyphs.BANK_SIZE - 1) / 2
    rows = np.einsum("ij,ijhw->ihw", inverse[:, 0], rel) + centre - np.reshape(dy, (-1, 1, 1))
    cols = np.einsum("ij,ijhw->ihw", inverse[:, 1], rel) + centre - np.reshape(dx, (-1, 1, 1))
    # The canvas border is blank, so clamping outside positions onto it reads zeros.
    limit = glyphs.BANK_SIZE - 1.001
    np.clip(rows, 0.0, limit, out=rows)
    np.clip(cols, 0.0, limit, out=cols)
    r0, c0 = rows.astype(np.int32), cols.astype(np.int32)
    fr, fc = rows - r0, cols - c0
    flat = bank_glyphs.reshape(-1)
    base = (index.astype(np.int32) * glyphs.BANK_SIZE**2)[:, None, None] + r0 * glyphs.BANK_SIZE + c0
    top = flat[base] * (1 - fc) + flat[base + 1] * fc
    bottom = flat[base + glyphs.BANK_SIZE] * (1 - fc) + flat[base + glyphs.BANK_SIZE + 1] * fc
    return top * (1 - fr) + bottom * fr


def _colourise(rng: np.random.Generator, ink: np.ndarray) -> np.ndarray:
    """Paint ink coverage (n, 32, 32) as (n, 3, 32, 32) float32 colour images in [0, 1]-ish."""
    n = len(ink)
    background = rng.uniform(0.05, 0.95, n)
    contrast = rng.uniform(*CONTRAST, n)
    sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    foreground = background + sign * contrast
    outside = (foreground < 0) | (foreground > 1)
    foreground = np.clip(np.where(outside, background - sign * contrast, foreground), 0, 1)

    def tint(level):  # grey level plus a random colour cast of random strength
        cast = rng.uniform(-1, 1, (n, 3))
        cast -= cast.mean(axis=1, keepdims=True)
        return np.clip(level[:, None] + rng.uniform(0, SATURATION, (n, 1)) * cast, 0, 1).astype(np.float32)

    bg, fg = tint(background), tint(foreground)
    alpha = ink[:, None]
    image = bg[:, :, None, None] * (1 - alpha) + fg[:, :, None, None] * alpha

    # Uneven lighting: a linear brightness ramp in a random direction.
    direction = rng.uniform(0, 2 * np.pi, n)
    ramp = (np.cos(direction)[:, None, None] * _GRID[0] + np.sin(direction)[:, None, None] * _GRID[1]) / SIZE
    image += (rng.uniform(0, GRADIENT, n)[:, None, None] * ramp).astype(np.float32)[:, None]

    # Clutter: a soft straight edge near the border, beyond which the background changes.
    has_edge = rng.random(n) < CLUTTER_PROB
    normal = rng.uniform(0, 2 * np.pi, n)
    distance = rng.uniform(9.0, 15.0, n)
    side = np.cos(normal)[:, None, None] * _GRID[0] + np.sin(normal)[:, None, None] * _GRID[1] - distance[:, None, None]
    beyond = 1 / (1 + np.exp(-side * 2.0))
    step = (has_edge * rng.uniform(-0.4, 0.4, n))[:, None, None]
    image += (step * beyond).astype(np.float32)[:, None]
    return image.astype(np.float32)


def _blur(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Gaussian blur with one of BLUR_SIGMAS per image (one filter call per level)."""
    from scipy import ndimage

    level = rng.integers(0, len(BLUR_SIGMAS), len(image))
    for k, sigma in enumerate(BLUR_SIGMAS):
        chosen = level == k
        if sigma > 0 and chosen.any():
            image[chosen] = ndimage.gaussian_filter(image[chosen], (0, 0, sigma, sigma), mode="nearest")
    return image
