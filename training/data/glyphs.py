"""A bank of digit glyphs rendered from the fonts that ship with matplotlib.

The synthetic dataset (``training.data.synthetic``) draws every image from this bank: each
entry is one digit in one font, anti-aliased, scaled so that its ink is exactly
``GLYPH_HEIGHT`` pixels tall and centred on a ``BANK_SIZE`` x ``BANK_SIZE`` canvas with a
blank margin all round (so sampling outside the ink reads zeros).
"""
from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass

import numpy as np

# Regular, bold, italic; sans, serif, monospace; DejaVu, STIX and Computer Modern.
FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmss10.ttf",
    "cmb10.ttf",
    "cmtt10.ttf",
)
GLYPH_HEIGHT = 32  # ink height of every glyph in the bank, in bank pixels
BANK_SIZE = 48  # canvas side; leaves >= 8 blank pixels above and below the ink
RENDER_POINTS = 96  # rendering size before resampling to GLYPH_HEIGHT (supersampling)
PREBLUR_SIGMA = 0.6  # softens the glyphs a little so downscaled sampling does not alias


@dataclass(frozen=True)
class GlyphBank:
    """Digits 0..9 in every available font.

    glyphs: (F * 10, BANK_SIZE, BANK_SIZE) float32 ink coverage in [0, 1]; entry
        ``font * 10 + digit``, ink centred on the canvas.
    widths: (F * 10,) float32 ink width of each entry, in bank pixels.
    fonts:  the F font file names used.
    """

    glyphs: np.ndarray
    widths: np.ndarray
    fonts: tuple[str, ...]

    @property
    def num_fonts(self) -> int:
        return len(self.fonts)


@functools.lru_cache(maxsize=1)
def glyph_bank() -> GlyphBank:
    """Render (once per process) the bank of digit glyphs from matplotlib's fonts."""
    import matplotlib

    font_dir = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    glyphs, widths, fonts = [], [], []
    for name in FONT_FILES:
        rendered = _render_font(os.path.join(font_dir, name))
        if rendered is None:
            continue
        glyphs.extend(g for g, _ in rendered)
        widths.extend(w for _, w in rendered)
        fonts.append(name)
    if not fonts:
        raise RuntimeError(f"none of matplotlib's fonts {FONT_FILES} could be rendered from {font_dir}")
    return GlyphBank(np.stack(glyphs).astype(np.float32), np.asarray(widths, np.float32), tuple(fonts))


def _render_font(path: str) -> list[tuple[np.ndarray, float]] | None:
    """The 10 digits of one font as (canvas, ink width) pairs, or None if the font lacks them."""
    from matplotlib.ft2font import FT2Font

    if not os.path.exists(path):
        return None
    font = FT2Font(path)
    font.set_size(RENDER_POINTS, 72)
    out = []
    for digit in "0123456789":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a font without the glyph warns; we check below
            font.set_text(digit, 0.0)
        font.draw_glyphs_to_bitmap(antialiased=True)
        ink = np.asarray(font.get_image(), dtype=np.float32) / 255.0
        rows, cols = np.nonzero(ink > 0.05)
        if rows.size == 0:
            return None
        out.append(_to_canvas(ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]))
    return out


def _to_canvas(ink: np.ndarray) -> tuple[np.ndarray, float]:
    """Scale cropped ink to GLYPH_HEIGHT rows (keeping its aspect) and centre it on the canvas."""
    from scipy import ndimage

    zoom = GLYPH_HEIGHT / ink.shape[0]
    ink = ndimage.gaussian_filter(ink, 0.4 / zoom)  # low-pass before shrinking, against aliasing
    small = np.clip(ndimage.zoom(ink, zoom, order=1, grid_mode=True, mode="grid-constant"), 0.0, 1.0)
    small = small[:, : BANK_SIZE - 2]  # never wider than the canvas (no digit comes close)
    canvas = np.zeros((BANK_SIZE, BANK_SIZE), np.float32)
    top = (BANK_SIZE - small.shape[0]) // 2
    left = (BANK_SIZE - small.shape[1]) // 2
    canvas[top : top + small.shape[0], left : left + small.shape[1]] = small
    canvas = ndimage.gaussian_filter(canvas, PREBLUR_SIGMA)
    # Recentre exactly: the centre of the ink box is at the canvas centre after a sub-pixel shift.
    shift = ((BANK_SIZE - 1) / 2 - (top + (small.shape[0] - 1) / 2), (BANK_SIZE - 1) / 2 - (left + (small.shape[1] - 1) / 2))
    canvas = ndimage.shift(canvas, shift, order=1)
    return np.clip(canvas, 0.0, 1.0), float(small.shape[1])
