"""Recentre a cut-out object: crop to its alpha bounding box, pad to a square, pad again to a foreground ratio.

This is InstantMesh's `resize_foreground` (src/utils/infer_util.py, commit 08822c5), re-implemented so that its
output is the same array, including one quirk of the reference: the crop is rows y_min up to *but not
including* y_max (and the same for columns), so the last row and the last column of the object are dropped.
We keep that on purpose: Zero123++ sees exactly the image the reference gives it, and the grids match.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from lrmesh.errors import InputError

FOREGROUND_RATIO = 0.85  # InstantMesh run.py / app.py: resize_foreground(image, 0.85)


def foreground_box(alpha: np.ndarray) -> tuple[int, int, int, int]:
    """(y_min, y_max, x_min, x_max), inclusive, of the pixels with alpha > 0 in an (H, W) array."""
    rows, cols = np.nonzero(alpha > 0)
    if rows.size == 0:
        raise InputError("the image has no foreground: every pixel is fully transparent after background removal")
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def _pad_split(total: int) -> tuple[int, int]:
    """Padding before / after: the smaller half (rounded down) first, as numpy's pad is given by the reference."""
    return total // 2, total - total // 2


def recentre(image: Image.Image, ratio: float = FOREGROUND_RATIO) -> Image.Image:
    """RGBA image -> RGBA image with the object centred, filling `ratio` of the side. No resampling.

    Steps (transparent black, (0, 0, 0, 0), is the padding):
      1. crop rows y_min:y_max and columns x_min:x_max of the alpha > 0 box (end excluded: the reference's
         off-by-one; a one-pixel-thin object keeps its one row or column instead of vanishing);
      2. pad to a square of side s = max(h, w), floor((s - h) / 2) rows above and the rest below, the same
         for columns;
      3. pad all four sides to side n = int(s / ratio) (truncated), floor((n - s) / 2) before, the rest after.
    """
    if image.mode != "RGBA":
        raise InputError(f"recentring needs an RGBA image (with alpha), got mode {image.mode}")
    if not 0 < ratio <= 1:
        raise InputError(f"the foreground ratio must be in (0, 1], got {ratio}")
    pixels = np.asarray(image)  # (H, W, 4) uint8
    y0, y1, x0, x1 = foreground_box(pixels[..., 3])
    crop = pixels[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
    side = max(crop.shape[0], crop.shape[1])
    square = np.pad(crop, (_pad_split(side - crop.shape[0]), _pad_split(side - crop.shape[1]), (0, 0)))
    framed_side = int(side / ratio)
    margin = _pad_split(framed_side - side)
    framed = np.pad(square, (margin, margin, (0, 0)))
    return Image.fromarray(framed, "RGBA")
