"""SV3D orbits: the 21 frames SV3D generates around an object (a video, a folder of frames or the frame files),
with the cameras the MindSpore port of InstantMesh gives them (`lrmesh.cameras.sv3d_cameras`).

Frame i is the view from azimuth 360 / 21 * i degrees: frame 0 from azimuth 0 (+x, the input photo's side), the
orbit turning counter-clockwise seen from above (+z), from +x towards +y; elevation 0 for SV3D_u, the orbit's own
(SV3D_p's default is 10 degrees) otherwise; radius 4 x scale; fov 30. SV3D writes 576 px frames on white; any
square size is taken and resized to 320 px (bicubic, antialiased; the port resizes with PIL's Lanczos). Videos
are read with imageio (its ffmpeg plugin for mp4, Pillow for gif).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lrmesh.cameras import SV3D_FRAMES, SV3D_RADIUS, evenly_spaced, sv3d_cameras
from lrmesh.errors import InputError
from lrmesh.io.posed import PosedViews
from lrmesh.io.views import existing_paths, list_view_files, read_image, to_view_size

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".gif")
UINT8_LEVELS = 255


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def read_video(path: str | os.PathLike) -> Tensor:
    """Every frame of a video -> (T, 3, H, W) float32 RGB in [0, 1]. Unreadable: InputError naming the file."""
    import imageio.v2 as imageio

    path = Path(path)
    if not path.is_file():
        raise InputError(f"input not found: {path}")
    try:
        frames = [np.asarray(frame) for frame in imageio.mimread(path, memtest=False)]
    except (OSError, RuntimeError, ValueError, IndexError, StopIteration) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"cannot read video {path}: {message}") from err
    if not frames:
        raise InputError(f"cannot read video {path}: it holds no frames")
    pixels = np.stack([f[..., None].repeat(3, -1) if f.ndim == 2 else f[..., :3] for f in frames])  # (T, H, W, 3)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / UINT8_LEVELS


def read_frames(sources: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[Tensor, list[Path]]:
    """A video, a folder of frame images (sorted by name) or frame files in order -> (T, 3, H, W), their sources."""
    paths = existing_paths(sources, "orbit frames")
    if len(paths) == 1 and paths[0].is_dir():
        files = list_view_files(paths[0])
        if not files:
            raise InputError(f"{paths[0]}: no image files in this folder")
        return read_frames(files)
    if len(paths) == 1 and not is_video(paths[0]):
        raise InputError(f"{paths[0]}: an SV3D orbit is a video ({', '.join(VIDEO_SUFFIXES)}), a folder of "
                         f"{SV3D_FRAMES} frames or {SV3D_FRAMES} image files")
    if len(paths) == 1:
        frames = read_video(paths[0])
        return frames, [paths[0]] * frames.shape[0]
    images = [read_image(p) for p in paths]
    shapes = {tuple(img.shape) for img in images}
    if len(shapes) > 1:
        raise InputError("the orbit frames differ in size: " + ", ".join(
            f"{p.name} {img.shape[2]}x{img.shape[1]}" for p, img in zip(paths, images)))
    return torch.stack(images), paths


def load_sv3d_orbit(sources: str | os.PathLike | Sequence[str | os.PathLike], elevation_deg: float = 0.0,
                    radius: float = SV3D_RADIUS, num_views: int | None = None) -> PosedViews:
    """An SV3D orbit -> PosedViews (model frame, so `to_world` is the identity): all 21 frames, or `num_views`
    of them evenly spaced from frame 0 (`lrmesh.cameras.evenly_spaced`). Raises InputError for another number
    of frames, frames that are not square, or an unreadable input."""
    frames, names = read_frames(sources)
    if frames.shape[0] != SV3D_FRAMES:
        what = names[0] if len(set(names)) == 1 else f"{len(names)} files"
        raise InputError(f"{what}: an SV3D orbit has {SV3D_FRAMES} frames, got {frames.shape[0]}")
    count = SV3D_FRAMES if num_views is None else num_views
    if not 1 <= count <= SV3D_FRAMES:
        raise InputError(f"--orbit-views must be between 1 and {SV3D_FRAMES}, got {count}")
    views = evenly_spaced(count, SV3D_FRAMES)
    images = to_view_size(frames[views], [names[i] for i in views])
    return PosedViews(images, sv3d_cameras(elevation_deg, radius, views), torch.eye(4, dtype=torch.float64))
