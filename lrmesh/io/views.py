"""Input views: a Zero123++ grid image, a folder of images, or a list of image files.

Whatever the source, the result is (V, 3, 320, 320) float32 RGB in [0, 1] on white, views in the Zero123++
order (azimuths 30, 90, ..., 330 degrees; see lrmesh.cameras):

- grid: one image 2 columns wide and 3 rows high (640 x 960 for 320 px views); view i is at row i // 2,
  column i % 2, as the reference's run.py splits Zero123++ output;
- folder: its image files sorted by name;
- files: in the order given.

RGBA is composited on white (the models were trained on white backgrounds). Square views of another size are
resized to 320 px (bicubic, antialiased, as run.py does); anything else is an error naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from lrmesh.cameras import FOUR_VIEW_SUBSET
from lrmesh.errors import InputError

VIEW_SIZE = 320
GRID_ROWS, GRID_COLS = 3, 2
NUM_VIEWS = 6
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# A pixel belongs to the object when a channel differs from the view's background colour by more than this
# (a little above JPEG noise on a plain background); a view with less than OBJECT_FRACTION_MIN of such pixels
# shows no object.
BACKGROUND_TOLERANCE = 12 / 255
OBJECT_FRACTION_MIN = 1e-3


def read_image(path: Path) -> Tensor:
    """One image file -> (3, H, W) float32 in [0, 1], transparency composited on white."""
    try:
        with Image.open(path) as img:
            img.load()
            has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
            arr = np.asarray(img.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32) / np.float32(255)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot read image {path}: {err}") from err
    if has_alpha:
        rgb, alpha = arr[..., :3], arr[..., 3:]
        arr = rgb * alpha + (1 - alpha)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)


def split_grid(grid: Tensor, source: Path | str = "grid") -> Tensor:
    """(3, 3s, 2s) Zero123++ grid -> (6, 3, s, s) views."""
    _, h, w = grid.shape
    if h * GRID_COLS != w * GRID_ROWS or h % GRID_ROWS:
        raise InputError(f"{source}: a view grid must be {GRID_COLS} views wide and {GRID_ROWS} high "
                         f"(e.g. 640 x 960), got {w} x {h}")
    return rearrange(grid, "c (r h) (k w) -> (r k) c h w", r=GRID_ROWS, k=GRID_COLS)


def to_view_size(views: Tensor, sources: Sequence[Path | str]) -> Tensor:
    """Check that views (V, 3, H, W) are square and resize them to 320 px if needed."""
    for view, source in zip(views, sources):
        if view.shape[-1] != view.shape[-2]:
            raise InputError(f"{source}: views must be square, got {view.shape[-1]} x {view.shape[-2]}")
    if views.shape[-1] == VIEW_SIZE:
        return views
    resized = F.interpolate(views, size=(VIEW_SIZE, VIEW_SIZE), mode="bicubic", antialias=True, align_corners=False)
    return resized.clamp(0, 1)


def list_view_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def existing_paths(sources: str | os.PathLike | Sequence[str | os.PathLike], what: str) -> list[Path]:
    """One path or several -> a list of paths, each of which exists (InputError naming the first that does not)."""
    paths = [Path(sources)] if isinstance(sources, (str, os.PathLike)) else [Path(s) for s in sources]
    if not paths:
        raise InputError(f"no {what} given")
    for p in paths:
        if not p.exists():
            raise InputError(f"input not found: {p}")
    return paths


def load_views(sources: str | Path | Sequence[str | Path], num_views: int = NUM_VIEWS) -> Tensor:
    """Read input views -> (num_views, 3, 320, 320).

    With num_views=4 the reference's four-view subset (views 0, 2, 4, 5) is used: give six views (the subset is
    taken) or exactly those four.
    """
    if num_views not in (4, 6):
        raise InputError(f"the models take 6 views or the 4-view subset, not {num_views}")
    paths = existing_paths(sources, "input views")
    if len(paths) == 1 and paths[0].is_dir():
        files = list_view_files(paths[0])
        if not files:
            raise InputError(f"{paths[0]}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return load_views(files, num_views)
    if len(paths) == 1:
        views, names = split_grid(read_image(paths[0]), paths[0]), [paths[0]] * NUM_VIEWS
    else:
        if len(paths) not in (NUM_VIEWS, num_views):
            raise InputError(f"expected {NUM_VIEWS} views (or one grid image), got {len(paths)}: "
                             + ", ".join(p.name for p in paths))
        images = [read_image(p) for p in paths]
        shapes = {tuple(img.shape) for img in images}
        if len(shapes) > 1:
            raise InputError("the views differ in size: " + ", ".join(
                f"{p.name} {img.shape[2]}x{img.shape[1]}" for p, img in zip(paths, images)))
        views, names = torch.stack(images), paths
    views = to_view_size(views, names)
    if num_views == 4 and views.shape[0] == NUM_VIEWS:
        views = views[list(FOUR_VIEW_SUBSET)]
    return views


def blank_views(views: Tensor) -> list[int]:
    """Indices of the views (V, 3, H, W) in [0, 1] that show no object: one plain background colour.

    The background colour of a view is the median of its border pixels (white for composited views); a pixel
    is the object's when max_c |view_c - background_c| > BACKGROUND_TOLERANCE.
    """
    border = torch.cat([views[..., 0, :], views[..., -1, :], views[..., :, 0], views[..., :, -1]], dim=-1)
    background = border.median(dim=-1).values  # (V, 3)
    distance = (views - background[..., None, None]).abs().amax(dim=1)  # (V, H, W)
    fraction = (distance > BACKGROUND_TOLERANCE).float().mean(dim=(1, 2))
    return [i for i, f in enumerate(fraction.tolist()) if f < OBJECT_FRACTION_MIN]
