"""Turntable videos of a mesh: render frames with our rasterizer and write them as an mp4.

The reference CLI renders its turntable from the triplanes (NeRF or FlexiCubes renderer); this renders the
exported `Mesh` itself, so the video shows exactly what was saved, on CPU or GPU. Frames use the reference's
orbit (`lrmesh.cameras.turntable_poses`: azimuth from 0 degrees, one elevation, radius 4.5 by default, 30 degree
field of view) and a flat, view-independent look: albedo from the vertex colours (interpolated) or the texture
(bilinear), times ambient + headlight Lambert on the face normals, 0.6 + 0.4 |n . v|, over a plain background.
The absolute value lights both sides of a face, so inside-out or open meshes still read clearly.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from lrmesh.cameras import turntable_poses
from lrmesh.geometry.mesh import Mesh
from lrmesh.geometry.texture import sample_texture
from lrmesh.render.raster import Rasterization, interpolate, project, rasterize

AMBIENT = 0.6  # light every visible surface gets
HEADLIGHT = 0.4  # Lambert term of a light at the camera; AMBIENT + HEADLIGHT = 1 keeps colours in range
UNCOLORED = 0.8  # albedo of a mesh with neither vertex colours nor texture (light grey)
NEAR, FAR = 0.1, 100.0  # clip planes, world units; the object sits ~4 units from the camera
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
            frames.append(render_views(mesh, batch, fov_deg, resolution, background))
            bar.update(batch.shape[0])
    return torch.cat(frames)


def render_views(mesh: Mesh, c2w: Tensor, fov_deg: float, resolution: int, background: float = 1.0) -> Tensor:
    """Shaded renders of `mesh` from OpenGL camera-to-world poses (N, 4, 4) -> (N, H, W, 3) in [0, 1]."""
    vertices = mesh.vertices.to(c2w.dtype)
    rast = rasterize(project(vertices, c2w, fov_deg, NEAR, FAR), mesh.faces, resolution, resolution)
    albedo = _albedo(mesh, rast)  # (N, H, W, 3)
    points = interpolate(vertices, rast, mesh.faces)  # (N, H, W, 3) world positions
    corners = vertices[mesh.faces]  # (F, 3, 3)
    face_normals = F.normalize(torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]),
                               dim=-1)
    normals = face_normals[rast.triangle_id.clamp(min=0)]  # (N, H, W, 3)
    to_eye = F.normalize(c2w[:, None, None, :3, 3] - points, dim=-1)
    shade = AMBIENT + HEADLIGHT * (normals * to_eye).sum(dim=-1).abs()  # (N, H, W)
    shaded = (albedo * shade[..., None]).clamp(0, 1)
    return torch.where(rast.mask[..., None], shaded, torch.full_like(shaded, background))


def _albedo(mesh: Mesh, rast: Rasterization) -> Tensor:
    """Surface colour per pixel: texture, vertex colours or a uniform grey -> (N, H, W, 3)."""
    if mesh.texture is not None:
        uv = interpolate(mesh.uvs.to(mesh.vertices.dtype), rast, mesh.uv_faces)  # (N, H, W, 2)
        return sample_texture(mesh.texture.to(uv.dtype), uv)
    if mesh.vertex_colors is not None:
        return interpolate(mesh.vertex_colors.to(mesh.vertices.dtype), rast, mesh.faces)
    return torch.full((*rast.triangle_id.shape, 3), UNCOLORED, dtype=mesh.vertices.dtype,
                      device=mesh.vertices.device)


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
