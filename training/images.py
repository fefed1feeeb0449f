"""Reading a user's image file as a 32×32 RGB uint8 array, for --predict."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError


def read_image(path, size: int = 32) -> np.ndarray:
    """(3, size, size) uint8 image from a PNG or JPEG file, resized if needed (bicubic)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} does not exist")
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BICUBIC)
            pixels = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}; give a PNG or JPEG file") from exc
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))
