"""Reading a user's image file as a 32×32 RGB uint8 array, for prediction (``predict()``, ``cli.py --predict``).

Pillow does the work, with its own tools for what photographs and scans bring:

* ``ImageOps.exif_transpose`` turns a photo the way its EXIF orientation tag says (phones
  store portrait photos sideways and set that tag);
* ``Image.draft`` lets the JPEG decoder shrink a large photo by 2, 4 or 8 while decoding;
* ``Image.MAX_IMAGE_PIXELS``, Pillow's limit against decompression bombs, is the size
  limit: a larger image is refused with one clear error (not Pillow's warning or
  DecompressionBombError);
* every mode Pillow reads becomes 8-bit RGB: 16-bit greyscale (modes I;16 and I) is scaled
  from 0..65535 to 0..255 instead of clipped to white; 32-bit float greyscale (mode F) is
  read as 0..1 when no value exceeds 1, else as 0..255; transparent pixels are shown
  over white; palette, CMYK, YCbCr, LAB and HSV images are converted.

The image is then resized to 32×32 (bicubic; the aspect ratio is not kept, as in SVHN's
cropped digits).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..saving.regular_files import NotARegularFile, open_to_read

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def read_image(path, size: int = 32) -> np.ndarray:
    """(3, size, size) uint8 image from a PNG, JPEG or other image file Pillow reads."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder, not an image file; give the path of a PNG or JPEG file")
    if not path.exists():
        raise DataError(f"image {path} does not exist")
    try:
        stream = open_to_read(path)  # a FIFO or a device would block or never end
    except NotARegularFile as exc:
        raise DataError(f"{path} is {exc.kind}, not an image file; give the path of a PNG or JPEG file") from None
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    with stream:
        image = _decoded(path, stream, size)
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def _decoded(path: Path, stream, size: int):
    """The image in ``stream`` as a size×size RGB PIL image; DataError for anything Pillow refuses."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream)
        image.draft("RGB", (size, size))  # JPEG only: decode at a smaller scale (no effect on other formats)
        image = ImageOps.exif_transpose(image)
        image = _as_rgb(image)
        return image.resize((size, size), Image.Resampling.BICUBIC)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        limit = Image.MAX_IMAGE_PIXELS
        raise DataError(
            f"image {path} is too large to read safely ({exc.args[0].split(',')[0]}); {limit / 1e6:.0f} million pixels "
            f"is the most xpnet reads (Pillow's MAX_IMAGE_PIXELS) and a digit needs only {size}×{size}: shrink it first"
        ) from None
    except UnidentifiedImageError:
        raise DataError(f"cannot read image {path}: Pillow does not recognise it as an image (PNG, JPEG, GIF, BMP, TIFF, ...); "
                        "give a PNG or JPEG file") from None
    except Exception as exc:  # Pillow raises many kinds for truncated or damaged files
        raise DataError(
            f"cannot read image {path} ({type(exc).__name__}: {exc}); it is not an image Pillow can decode, or it is damaged: "
            "give a PNG or JPEG file"
        ) from None


def _as_rgb(image):
    """Any Pillow mode as 8-bit RGB (see the module's docstring)."""
    from PIL import Image

    if image.mode in SIXTEEN_BIT_MODES:
        return image.point(lambda value: value / 257 + 0.5).convert("L").convert("RGB")
    if image.mode == "F":
        brightest = image.getextrema()[1]
        scale = 255.0 if brightest <= 1.0 else 1.0
        return image.point(lambda value: value * scale + 0.5).convert("L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")
