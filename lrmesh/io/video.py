"""Turntable videos of a mesh: render frames with `lrmesh.render.shaded` and write them as an mp4.

The reference CLI renders its turntable from the triplanes (NeRF or FlexiCubes renderer); this renders the
exported `Mesh` itself, so the video shows exactly what was saved, on CPU or GPU. Frames use the reference's
orbit (`lrmesh.cameras.turntable_poses`: azimuth from 0 degrees, one elevation, radius 4.5 by default, 30 degree
field of view) and the shaded renderer's flat, antialiased look (albedo times ambient + headlight Lambert, both
sides of a face lit) over a plain background.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from lrmesh.cameras import turntable_poses
from lrmesh.geometry.mesh import Mesh
from lrmesh.render.shaded import render_views

FRAMES_PER_BATCH = 8  # frames rasterized together; bounds memory at high resolutions
VIDEO_CODEC, PIXEL_FORMAT = "libx264", "yuv420p"  # H.264 in the pixel format every player decodes
VIDEO_QUALITY = 8  # imageio's 0-10 scale (10 = best)
MACRO_BLOCK = 2  # yuv420p halves chroma resolution, so sizes must be even; imageio scales odd ones up


def render_turntable(mesh: Mesh, num_frames: int = 120, radius: float = 4.5, elevation_deg: float = 20.0,
                     fov_deg: float = 30.0, resolution: int = 512, background: float = 1.0,
                     progress: bool = False) -> Tensor:
    """Render `num_frames` views evenly spaced in azimuth around `mesh` (model frame, z up).

    Returns:
        (T, H, W, 3) float frames in [0, 1], on the mesh's device.
    """
    poses = turntable_poses(num_frames, radius, elevation_deg).to(mesh.vertices.device)  # (T, 4, 4)
    frames = []
    with torch.no_grad(), tqdm(total=num_frames, disable=not progress, desc="turntable", unit="frame") as bar:
        for start in range(0, num_frames, FRAMES_PER_BATCH):
            batch = poses[start:start + FRAMES_PER_BATCH]
            views = render_views(mesh, batch, fov_deg, resolution)
            alpha = views.alpha[..., None]  # straight colour over the background
            frames.append(views.rgb * alpha + background * (1 - alpha))
            bar.update(batch.shape[0])
    return torch.cat(frames)


def write_video(frames: Tensor, path: str | os.PathLike, fps: int = 30) -> Path:
    """Write (T, H, W, 3) frames (float in [0, 1], or uint8) as an H.264 mp4; returns the path.

    The file is encoded under a temporary name beside `path` and renamed when complete.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3), got {tuple(frames.shape)}")
    writer_factory = _ffmpeg_writer_factory()
    path = Path(path)
    pixels = frames.detach().cpu()
    if pixels.dtype != torch.uint8:
        pixels = (pixels.float().clamp(0, 1) * 255).round().to(torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp{path.suffix}")
    try:
        writer = writer_factory(temporary, fps)
        try:
            for frame in pixels.numpy():
                writer.append_data(np.ascontiguousarray(frame))
        finally:
            writer.close()
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _ffmpeg_writer_factory():
    """A function (path, fps) -> imageio ffmpeg writer, or a clear error when the writer is unavailable."""
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg
        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as error:
        raise RuntimeError("writing mp4 needs imageio with the ffmpeg backend: pip install imageio imageio-ffmpeg "
                           f"({error})") from error

    def open_writer(path: Path, fps: int):
        return imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec=VIDEO_CODEC, quality=VIDEO_QUALITY,
                                  pixelformat=PIXEL_FORMAT, macro_block_size=MACRO_BLOCK)

    return open_writer
