"""A non-learned matte for photos on a plain, near-uniform background (a studio sweep, a sheet of paper).

Method (lrmesh's own; used only when no U2-Net model is at hand):

1. Background colour B = per-channel median of a border band (2 % of the shorter side, at least 2 pixels).
2. Distance d = |I - B| (Euclidean, RGB in [0, 1]) for every pixel.
3. The background must be plain: the 75th percentile q of d over the border band is at most
   PLAIN_TOLERANCE; otherwise the photo is refused (a textured or cluttered background needs U2-Net).
4. Soft alpha a = clamp((d - lo) / (hi - lo), 0, 1) with lo = max(MIN_THRESHOLD, NOISE_FACTOR q) (above the
   background's own noise) and hi = lo + RAMP.
5. Holes: regions that are not solid foreground but are enclosed by it (not connected to the image border)
   belong to the object: a white label on a bottle photographed on white stays opaque.
6. Specks: foreground islands smaller than SPECK_FRACTION of the largest one (or than MIN_SPECK pixels) are
   dropped, so the noise of the background cannot stretch the bounding box that recentring uses.
7. Colour: where 0 < a < 1 the pixel is unmixed from the background, F = (I - (1 - a) B) / a (the matting
   equation I = a F + (1 - a) B solved for F), so edges carry no halo of the old background.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from lrmesh.errors import InputError

BORDER_FRACTION = 0.02
MIN_BORDER = 2
PLAIN_TOLERANCE = 0.06  # about 15/255: JPEG noise and mild shading pass, texture does not
NOISE_FACTOR = 2.5
MIN_THRESHOLD = 0.04
RAMP = 0.08
SPECK_FRACTION = 0.005
MIN_SPECK = 4


class BackgroundError(InputError):
    """A photo whose background cannot be removed with what is installed."""


def border_band(height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of the pixels within the border band."""
    band = max(MIN_BORDER, round(BORDER_FRACTION * min(height, width)))
    mask = np.ones((height, width), dtype=bool)
    mask[band:height - band, band:width - band] = False
    return mask


def _drop_specks(solid: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(solid)
    if count <= 1:
        return solid
    areas = np.bincount(labels.ravel())[1:]
    keep = areas >= max(MIN_SPECK, SPECK_FRACTION * areas.max())
    return np.concatenate([[False], keep])[labels]


def plain_background_alpha(rgb: np.ndarray, refusal_hint: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) float RGB in [0, 1] -> (alpha (H, W) in [0, 1], background colour (3,)).

    Raises BackgroundError (ending with `refusal_hint`) when the border is not plain.
    """
    height, width, _ = rgb.shape
    band = border_band(height, width)
    background = np.median(rgb[band], axis=0)  # (3,)
    distance = np.linalg.norm(rgb - background, axis=-1)  # (H, W)
    spread = float(np.quantile(distance[band], 0.75))
    if spread > PLAIN_TOLERANCE:
        raise BackgroundError(f"the background is not plain (its border varies by {spread:.2f} in RGB, more than "
                              f"{PLAIN_TOLERANCE}), so it cannot be removed without a matting model{refusal_hint}")
    low = max(MIN_THRESHOLD, NOISE_FACTOR * spread)
    alpha = np.clip((distance - low) / RAMP, 0.0, 1.0)
    keep = _drop_specks(alpha > 0)
    alpha = np.where(keep, alpha, 0.0)
    not_solid, _ = ndimage.label(alpha < 1)
    outside = np.unique(not_solid[border_band(height, width) & (not_solid > 0)])
    enclosed = (not_solid > 0) & ~np.isin(not_solid, outside)
    alpha = np.where(enclosed, 1.0, alpha)
    return alpha, background


def plain_background_cutout(image: Image.Image, refusal_hint: str = "") -> Image.Image:
    """RGB photo on a plain background -> RGBA cut-out (see the module docstring for the method)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255
    alpha, background = plain_background_alpha(rgb, refusal_hint)
    safe = np.maximum(alpha, 1e-6)[..., None]
    colour = np.where(alpha[..., None] > 0, (rgb - (1 - alpha[..., None]) * background) / safe, 0.0)
    rgba = np.concatenate([np.clip(colour, 0, 1), alpha[..., None]], axis=-1)
    return Image.fromarray(np.round(rgba * 255).astype(np.uint8), "RGBA")
