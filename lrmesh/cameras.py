"""Camera conventions, orbit poses, intrinsics and rays.

Conventions (fixed by the InstantMesh checkpoints; see DESIGN.md):

- World is z up; cameras look at the origin.
- A pose is an OpenGL camera-to-world matrix: camera x right, y up, looking along its -z axis.
- Intrinsics are normalised by the image size: fx = fy = 0.5 / tan(fov / 2), principal point (0.5, 0.5).
- The encoder's 16-d camera vector is the first three rows of the 4x4 pose flattened row-major (12 numbers)
  followed by fx, fy, cx, cy.
- A render camera is 25 numbers: the 4x4 pose row-major (16) and the 3x3 normalised intrinsics (9).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# Zero123++ v1.2 multiview layout that the official checkpoints were trained on.
ZERO123PP_AZIMUTHS = (30.0, 90.0, 150.0, 210.0, 270.0, 330.0)
ZERO123PP_ELEVATIONS = (20.0, -10.0, 20.0, -10.0, 20.0, -10.0)
ZERO123PP_RADIUS = 4.0
ZERO123PP_FOV = 30.0  # vertical field of view, degrees
# The reference's 4-view mode keeps these views of the six (run.py, --view 4).
FOUR_VIEW_SUBSET = (0, 2, 4, 5)

# SV3D orbits as the MindSpore port of InstantMesh gives them to the model (mindspore-lab/mindone,
# examples/instantmesh/utils/camera_util.py, get_sv3d_input_cameras): 21 frames, frame i at azimuth 360 / 21 * i
# (frame 0 at azimuth 0, the input photo's side, +x), elevation 0 (SV3D_u), radius 4 (x --scale), fov 30, through
# the same spherical look-at poses as the Zero123++ cameras. Azimuth grows from +x towards +y: seen from above
# (+z) the orbit turns counter-clockwise.
SV3D_FRAMES = 21
SV3D_RADIUS = 4.0
SV3D_FOV = 30.0  # vertical field of view, degrees
SV3D_P_ELEVATION = 10.0  # SV3D_p's default orbit elevation, degrees (Stability's generative-models,
# scripts/sampling/simple_video_sample.py: elevations_deg = 10.0)


def look_at_origin(positions: Tensor) -> Tensor:
    """OpenGL camera-to-world matrices for cameras at `positions` (N, 3) looking at the origin, z up -> (N, 4, 4)."""
    up = torch.tensor([0.0, 0.0, 1.0], dtype=positions.dtype, device=positions.device).expand_as(positions)
    back = F.normalize(positions, dim=-1)  # camera +z points away from the target
    right = F.normalize(torch.linalg.cross(up, back, dim=-1), dim=-1)
    cam_up = F.normalize(torch.linalg.cross(back, right, dim=-1), dim=-1)
    c2w = torch.zeros(positions.shape[0], 4, 4, dtype=positions.dtype, device=positions.device)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, cam_up, back, positions
    c2w[:, 3, 3] = 1.0
    return c2w


def spherical_positions(azimuths_deg: Sequence[float] | Tensor, elevations_deg: Sequence[float] | Tensor,
                        radius: float) -> Tensor:
    """Points r * (cos el cos az, cos el sin az, sin el), computed in float64 then cast to float32 -> (N, 3).

    float64 first matches the reference (numpy), so the cameras are the same float32 numbers bit for bit.
    """
    az = torch.deg2rad(torch.as_tensor(azimuths_deg, dtype=torch.float64))
    el = torch.deg2rad(torch.as_tensor(elevations_deg, dtype=torch.float64))
    xyz = torch.stack([torch.cos(el) * torch.cos(az), torch.cos(el) * torch.sin(az), torch.sin(el)], dim=-1)
    return (radius * xyz).float()


def orbit_poses(azimuths_deg: Sequence[float] | Tensor, elevations_deg: Sequence[float] | Tensor,
                radius: float) -> Tensor:
    """Camera-to-world poses on a sphere of `radius`, looking at the origin -> (N, 4, 4)."""
    return look_at_origin(spherical_positions(azimuths_deg, elevations_deg, radius))


def turntable_poses(num_frames: int, radius: float, elevation_deg: float = 20.0) -> Tensor:
    """`num_frames` poses evenly spaced in azimuth from 0 degrees, at one elevation -> (N, 4, 4)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    azimuths = [360.0 * i / num_frames for i in range(num_frames)]
    return orbit_poses(azimuths, [elevation_deg] * num_frames, radius)


def focal_from_fov(fov_deg: float) -> float:
    """Normalised focal length of a camera with this field of view (degrees)."""
    return 0.5 / math.tan(math.radians(fov_deg) / 2)


def intrinsics_matrix(fov_deg: float) -> Tensor:
    """Normalised 3x3 intrinsics for a centred principal point -> (3, 3) float32."""
    f = focal_from_fov(fov_deg)
    return torch.tensor([[f, 0.0, 0.5], [0.0, f, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float32)


def encoder_cameras(c2w: Tensor, fov_deg: float | Sequence[float] | Tensor = ZERO123PP_FOV) -> Tensor:
    """The 16-d camera vectors the encoder is conditioned on: (N, 4, 4) -> (N, 16).

    fov_deg: one vertical field of view (degrees, square images, centred principal point) for every view, or one
    per view (N,).
    """
    if isinstance(fov_deg, (int, float)):
        k = intrinsics_matrix(fov_deg).to(c2w)
        fx_fy_cx_cy = torch.stack([k[0, 0], k[1, 1], k[0, 2], k[1, 2]]).expand(c2w.shape[0], 4)
    else:
        fx_fy_cx_cy = torch.stack([torch.cat([k[0, :1], k[1, 1:2], k[:2, 2]])
                                   for k in map(intrinsics_matrix, map(float, fov_deg))]).to(c2w)  # (N, 4)
        if fx_fy_cx_cy.shape[0] != c2w.shape[0]:
            raise ValueError(f"{fx_fy_cx_cy.shape[0]} fields of view for {c2w.shape[0]} poses")
    return torch.cat([c2w[:, :3, :].reshape(-1, 12), fx_fy_cx_cy], dim=-1)


def render_cameras(c2w: Tensor, fov_deg: float = ZERO123PP_FOV) -> Tensor:
    """The 25-d render cameras of the NeRF synthesizer: (N, 4, 4) -> (N, 25)."""
    k = intrinsics_matrix(fov_deg).to(c2w).reshape(1, 9).expand(c2w.shape[0], 9)
    return torch.cat([c2w.reshape(-1, 16), k], dim=-1)


def zero123pp_cameras(radius: float = ZERO123PP_RADIUS, views: Sequence[int] | None = None) -> Tensor:
    """Encoder cameras of the Zero123++ six-view layout (or a subset of its views) -> (V, 16)."""
    poses = orbit_poses(ZERO123PP_AZIMUTHS, ZERO123PP_ELEVATIONS, radius)
    cameras = encoder_cameras(poses)
    return cameras if views is None else cameras[list(views)]


def evenly_spaced(count: int, total: int) -> list[int]:
    """`count` of `total` indices spread evenly from 0: floor(i * total / count), i = 0 .. count - 1."""
    if not 1 <= count <= total:
        raise ValueError(f"cannot pick {count} of {total}")
    return [i * total // count for i in range(count)]


def sv3d_poses(elevation_deg: float = 0.0, radius: float = SV3D_RADIUS) -> Tensor:
    """The 21 SV3D orbit poses (see SV3D_FRAMES): frame i at azimuth 360 / 21 * i, one elevation -> (21, 4, 4)."""
    azimuths = [360.0 / SV3D_FRAMES * i for i in range(SV3D_FRAMES)]
    return orbit_poses(azimuths, [elevation_deg] * SV3D_FRAMES, radius)


def sv3d_cameras(elevation_deg: float = 0.0, radius: float = SV3D_RADIUS,
                 views: Sequence[int] | None = None) -> Tensor:
    """Encoder cameras of an SV3D orbit (or of the frames `views` of it), model frame -> (V, 16)."""
    cameras = encoder_cameras(sv3d_poses(elevation_deg, radius), SV3D_FOV)
    return cameras if views is None else cameras[list(views)]


def axes_meeting_point(c2w: np.ndarray, min_spread: float) -> np.ndarray | None:
    """The point nearest all optical axes of OpenGL poses (N, 4, 4) (float64), or None when the axes are about
    parallel or meet behind the cameras: no common point looked at.

    Least squares: x minimises sum_i |(I - d_i d_i^T)(x - o_i)|^2 over centres o_i and unit view directions
    d_i = -z_i, so mean_i(I - d_i d_i^T) x = mean_i (I - d_i d_i^T) o_i. That matrix's smallest eigenvalue
    (the spread, 0 for parallel axes) must exceed `min_spread`, and x must lie in front of the cameras on average.
    """
    origins, axes = c2w[:, :3, 3], -c2w[:, :3, 2]
    projectors = np.eye(3) - axes[:, :, None] * axes[:, None, :]  # (N, 3, 3)
    spread = projectors.mean(axis=0)
    if np.linalg.eigvalsh(spread)[0] <= min_spread:
        return None
    centre = np.linalg.solve(spread, (projectors @ origins[:, :, None]).mean(axis=0)[:, 0])
    if np.mean(np.einsum("nk,nk->n", centre - origins, axes)) <= 0:
        return None
    return centre


def _camera_points(k: Tensor, resolution: int, region: tuple[int, int, int] | None = None) -> Tensor:
    """Pixel centres lifted to the OpenCV camera plane z = +1 (x right, y down): (N, R*R, 2), ray index r * R + c.

    Pixel (row r, column c) is normalised image point ((c + 0.5) / S, (r + 0.5) / S), row 0 at the top; it
    lifts to ((u - cx + cy s / fy - s v / fy) / fx, (v - cy) / fy) with skew s (EG3D's ray sampler).
    k: (N, 3, 3) normalised intrinsics. `region` = (row0, col0, R): only the R x R pixels from that anchor
    (OpenLRM's training crops); default the whole S x S image.
    """
    dtype, device = k.dtype, k.device
    row0, col0, size = region if region is not None else (0, 0, resolution)
    idx = torch.arange(size, dtype=dtype, device=device)
    v, u = torch.meshgrid(idx + row0, idx + col0, indexing="ij")  # (R, R): row, column
    u = (u.reshape(1, -1) * (1.0 / resolution) + 0.5 / resolution)  # (1, R*R)
    v = (v.reshape(1, -1) * (1.0 / resolution) + 0.5 / resolution)
    fx, fy = k[:, 0, 0, None], k[:, 1, 1, None]
    cx, cy, skew = k[:, 0, 2, None], k[:, 1, 2, None], k[:, 0, 1, None]
    x = (u - cx + cy * skew / fy - skew * v / fy) / fx  # (N, R*R)
    y = (v - cy) / fy
    return torch.stack([x, y], dim=-1)


# OpenCV camera axes (x right, y down, z forward) -> OpenGL's (x right, y up, z backward).
_OPENCV_TO_OPENGL = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


def pixel_rays(render_cameras_25: Tensor, resolution: int,
               region: tuple[int, int, int] | None = None) -> tuple[Tensor, Tensor]:
    """Ray origins and unit directions through pixel centres of a square image (pixels as in `_camera_points`).

    The lifted point (x, y, 1, 1) goes to the world by (c2w @ diag(1, -1, -1, 1)) as one batched 4x4 product,
    as EG3D's ray sampler (InstantMesh, OpenLRM) computes it, so the directions are its float32 numbers.

    Args:
        render_cameras_25: (N, 25) OpenGL camera-to-world poses and normalised intrinsics.
        resolution: S.
        region: optional (row0, col0, R) crop of the image (see `_camera_points`).
    Returns:
        origins, directions: (N, R*R, 3) each, in the world frame of the poses.
    """
    n = render_cameras_25.shape[0]
    c2w = render_cameras_25[:, :16].reshape(n, 4, 4)
    k = render_cameras_25[:, 16:25].reshape(n, 3, 3)
    xy = _camera_points(k, resolution, region)  # (N, R*R, 2)
    ones = torch.ones_like(xy[..., :1])
    homogeneous = torch.cat([xy, ones, ones], dim=-1)  # (N, R*R, 4), OpenCV camera frame at depth 1
    c2w_opencv = torch.bmm(c2w, _OPENCV_TO_OPENGL.to(c2w).expand(n, 4, 4))
    world_points = torch.bmm(c2w_opencv, homogeneous.transpose(1, 2)).transpose(1, 2)[..., :3]
    centres = c2w[:, None, :3, 3]
    directions = F.normalize(world_points - centres, dim=-1)
    return centres.expand_as(directions).contiguous(), directions


def unproject_depth(c2w: Tensor, k: Tensor, depth: Tensor) -> Tensor:
    """World points of the pixel centres of depth maps: c2w (N, 4, 4) OpenGL poses, k (N, 3, 3) normalised
    intrinsics, depth (N, S, S) camera z-depth (distance along the view axis, as the renders and the rasterizer
    store it) -> (N, S, S, 3). The inverse of projecting with the same camera; where depth is 0 the point is the
    camera centre."""
    n, size = depth.shape[0], depth.shape[-1]
    xy = _camera_points(k.to(depth.dtype), size)  # (N, S*S, 2), OpenCV axes
    opengl = torch.stack([xy[..., 0], -xy[..., 1], -torch.ones_like(xy[..., 0])], dim=-1)  # z = -1
    cam = opengl * depth.reshape(n, -1, 1)  # (N, S*S, 3), z = -depth
    world = cam @ c2w[:, :3, :3].transpose(1, 2).to(depth.dtype) + c2w[:, None, :3, 3].to(depth.dtype)
    return world.reshape(n, size, size, 3)


# OpenLRM's cameras (its inferrer): normalised focal 384 / 512 = 0.75 (3DTopia/OpenLRM issue 6: the Objaverse
# renders' fx / w), the source camera on -y at distance 2, the video orbit at height 0.8, 160 frames.
OPENLRM_FOCAL = 0.75
OPENLRM_ORBIT_FRAMES = 160
OPENLRM_ORBIT_HEIGHT = 0.8


def _openlrm_intrinsics() -> Tensor:
    f = OPENLRM_FOCAL
    return torch.tensor([[f, 0.0, 0.5], [0.0, f, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float32)


def openlrm_source_camera(distance: float = 2.0) -> Tensor:
    """OpenLRM's canonical source camera, (1, 16): at (0, -distance, 0) looking along +y at the origin, camera up
    = world +z (z-up world, OpenGL axes), normalised focal 0.75. Every photo is taken as seen from it."""
    c2w = look_at_origin(torch.tensor([[0.0, -distance, 0.0]]))
    k = _openlrm_intrinsics()
    return torch.cat([c2w[:, :3, :].reshape(1, 12), torch.stack([k[0, 0], k[1, 1], k[0, 2], k[1, 2]])[None]], dim=1)


def openlrm_orbit(version: str, num_frames: int = OPENLRM_ORBIT_FRAMES, distance: float = 2.0,
                  height: float = OPENLRM_ORBIT_HEIGHT) -> Tensor:
    """OpenLRM's video orbit as render cameras (N, 25), world frame (z up): a circle of radius
    sqrt(distance^2 - height^2) at z = height, looking at the origin, starting in front (azimuth -90 degrees,
    on -y, the source camera's side). v1.1: theta = linspace(-pi/2, 3 pi/2, N) in float32, so the last frame
    repeats the first; v1.0: theta_i = 2 pi i / N - pi / 2 in float64, then float32."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    ring = math.sqrt(distance**2 - height**2)
    if version == "1.1":
        theta = torch.linspace(-math.pi / 2, 3 * math.pi / 2, num_frames)
        positions = torch.stack([torch.cos(theta) * ring, torch.sin(theta) * ring,
                                 torch.full((num_frames,), height)], dim=1)
    else:
        theta = [2 * math.pi * i / num_frames - math.pi / 2 for i in range(num_frames)]
        positions = torch.tensor([[ring * math.cos(t), ring * math.sin(t), height] for t in theta])
    c2w = look_at_origin(positions)
    return torch.cat([c2w.reshape(-1, 16), _openlrm_intrinsics().reshape(1, 9).expand(num_frames, 9)], dim=1)
