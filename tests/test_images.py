"""read_image (--predict): every image Pillow reads becomes the right 32×32 RGB picture,
and anything else one DataError."""
from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from training.data.images import read_image
from training.errors import DataError

ORIENTATION = 0x0112  # the EXIF tag


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size in its header and holds no pixels (all Pillow reads before decoding)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_exif_orientation_is_applied(tmp_path):
    """A phone's portrait photo is stored sideways with Orientation 6; it must be read upright."""
    picture = Image.new("RGB", (40, 20), (0, 0, 0))
    picture.paste((255, 0, 0), (0, 0, 20, 20))  # red left half
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "rotate 90° clockwise to display"
    picture.save(tmp_path / "sideways.png", exif=exif)
    picture.rotate(-90, expand=True).save(tmp_path / "upright.png")  # red top half
    upright = read_image(tmp_path / "upright.png")
    np.testing.assert_array_equal(read_image(tmp_path / "sideways.png"), upright)
    assert upright[0, :8].mean() > 200 and upright[0, -8:].mean() < 50  # red on top, not on the left


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    levels = np.array([0, 257 * 100, 257 * 200, 65535], np.uint16)
    Image.fromarray(np.tile(np.repeat(levels, 8), (32, 1))).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I;16")
    pixels = read_image(tmp_path / "grey16.png")
    np.testing.assert_array_equal(pixels[:, :, [2, 10, 18, 26]], np.broadcast_to(np.array([0, 100, 200, 255], np.uint8), (3, 32, 4)))


@pytest.mark.parametrize("values, expected", [(0.5, 128), (100.0, 100)], ids=["fractions", "0-255"])
def test_float_greyscale(tmp_path, values, expected):
    Image.fromarray(np.full((32, 32), values, np.float32), "F").save(tmp_path / "float.tiff")
    assert (read_image(tmp_path / "float.tiff") == expected).all()


def test_transparent_pixels_are_shown_over_white(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (0, 0, 0, 255)  # an opaque black square on a transparent (black) background
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    pixels = read_image(tmp_path / "alpha.png")
    assert (pixels[:, 0, 0] == 255).all() and (pixels[:, 16, 16] == 0).all()


@pytest.mark.parametrize("mode", ["1", "L", "P", "CMYK", "LA", "RGBA", "YCbCr", "I"])
def test_other_modes_become_rgb(tmp_path, mode):
    Image.new("RGB", (20, 30), (200, 30, 90)).convert(mode).save(tmp_path / "image.tiff")
    pixels = read_image(tmp_path / "image.tiff")
    assert pixels.shape == (3, 32, 32) and pixels.dtype == np.uint8


def test_a_large_jpeg_is_decoded_at_a_smaller_scale(tmp_path):
    Image.new("RGB", (1024, 768), (10, 200, 30)).save(tmp_path / "big.jpg", quality=90)
    with Image.open(tmp_path / "big.jpg") as image:
        image.draft("RGB", (32, 32))
        assert image.size == (128, 96)  # what read_image asks the decoder for: 1/8 of the pixels per side
    assert np.abs(read_image(tmp_path / "big.jpg").astype(int) - np.array([10, 200, 30])[:, None, None]).max() <= 3


@pytest.mark.parametrize("size", [(20000, 20000), (9500, 9500)], ids=["400-megapixels", "90-megapixels"])
def test_too_large_images_are_one_clear_error_without_warnings(tmp_path, size):
    (tmp_path / "huge.png").write_bytes(png_header_only(*size))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match=rf"image {tmp_path / 'huge.png'} is too large to read safely \(Image size "
                                            rf"\({size[0] * size[1]} pixels\) exceeds limit.*89 million pixels is the most"):
            read_image(tmp_path / "huge.png")


def test_an_unreadable_file_names_the_cause(tmp_path, monkeypatch):
    Image.new("RGB", (32, 32)).save(tmp_path / "locked.png")

    def no_permission(path, *args, **kwargs):  # chmod 000 does not stop root, who may run these tests
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("training.saving.regular_files._read_descriptor", no_permission)  # how read_image opens a file
    with pytest.raises(DataError, match=r"cannot read image .*locked.png: Permission denied$"):
        read_image(tmp_path / "locked.png")


def _image_bytes(kind: str) -> bytes:
    stream = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(stream, format=kind)
    return stream.getvalue()


VALID = {kind: _image_bytes(kind) for kind in ("PNG", "JPEG", "GIF", "BMP")}


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(sorted(VALID)), position=st.integers(0, 10**6), payload=st.binary(min_size=1, max_size=8),
       cut=st.booleans())
def test_damaged_images_are_read_or_refused_with_a_data_error(tmp_path_factory, kind, position, payload, cut):
    data = bytearray(VALID[kind])
    position %= len(data)
    if cut:
        del data[position:]
    else:
        data[position:position + len(payload)] = payload
    path = tmp_path_factory.getbasetemp() / f"damaged.{kind.lower()}"
    path.write_bytes(bytes(data))
    try:
        pixels = read_image(path)
    except DataError as exc:  # damage may also make a header claim a huge size
        assert str(exc).startswith((f"cannot read image {path}", f"image {path} is too large to read safely")), exc
        return
    assert pixels.shape == (3, 32, 32) and pixels.dtype == np.uint8
