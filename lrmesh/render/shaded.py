"""Deterministic shaded renders of a `Mesh`: antialiased RGBA, depth and normals, for datasets and videos.

`render_views` renders in pure PyTorch through `lrmesh.render.raster` (CPU or CUDA): the mesh is rasterized on
a grid twice as fine plus one sample, whose samples sit on every pixel centre and every pixel corner, and
filtered with the 3x3 tent [1 2 1] x [1 2 1] / 16 around each centre. So alpha is antialiased coverage (in
sixteenths) while depth is that of the sample exactly on the pixel centre, where the camera's ray through the
pixel hits the surface; at the few edge pixels whose centre misses the mesh but whose alpha is positive, it is
the nearest covered sample's, so depth > 0 exactly where alpha > 0 (the reference's depth loss reads depth
wherever alpha > 0). Colour: albedo (vertex colours, a texture, or grey) times ambient + headlight
Lambert (the constants below), flat: one light factor per face and view, from the face normal
turned towards the camera and the direction from the face's centroid to the eye; no shadows. Normals are those
face normals, so they are exact for the mesh that is written as ground truth.
Colour is straight (not premultiplied) alpha: composite it on a background to show it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lrmesh.geometry.mesh import Mesh
from lrmesh.geometry.texture import sample_texture
from lrmesh.render.raster import Backend, project, rasterize

AMBIENT = 0.6  # light every visible surface gets
HEADLIGHT = 0.4  # Lambert term of a light at the camera; AMBIENT + HEADLIGHT = 1 keeps colours in range
UNCOLORED = 0.8  # albedo of a mesh with neither vertex colours nor texture (light grey)
NEAR, FAR = 0.1, 100.0  # clip planes, world units; cameras stand 2 to 4.5 units from an object of radius <= 1
TENT = (0.25, 0.5, 0.25)  # 1-D weights of the antialiasing filter over (corner, centre, corner) samples
SAMPLES_PER_BATCH = 8 * 641 * 641  # samples rendered together (8 views at 320 px): about 600 MB at peak


@dataclass
class Renders:
    """Views of a mesh, all (N, H, W, ...) float32 on the mesh's device."""

    rgb: Tensor  # (N, H, W, 3) straight colour in [0, 1]; white where alpha = 0
    alpha: Tensor  # (N, H, W) coverage in [0, 1]
    depth: Tensor  # (N, H, W) z-depth at the pixel centre (at edge pixels whose centre misses, see _pixel_depth); 0 off
    normals: Tensor  # (N, H, W, 3) unit world-space normals facing the camera (coverage-averaged); 0 off the mesh
    c2w: Tensor  # (N, 4, 4) OpenGL camera-to-world poses
    fov_deg: float


def render_views(mesh: Mesh, c2w: Tensor, fov_deg: float, resolution: int, backend: Backend = "auto") -> Renders:
    """Render `mesh` (model frame) from OpenGL camera-to-world poses (N, 4, 4), square `resolution` px views.

    `backend` picks the rasterizer (see `lrmesh.render.raster.rasterize`); the rest runs in PyTorch on the mesh's
    device.
    """
    c2w = c2w.to(device=mesh.vertices.device, dtype=torch.float32)
    per_batch = max(1, SAMPLES_PER_BATCH // (2 * resolution + 1) ** 2)
    batches = [_render_batch(mesh, c2w[start:start + per_batch], fov_deg, resolution, backend)
               for start in range(0, c2w.shape[0], per_batch)]
    rgb, alpha, depth, normals = (torch.cat(parts) for parts in zip(*batches))
    return Renders(rgb=rgb, alpha=alpha, depth=depth, normals=normals, c2w=c2w, fov_deg=fov_deg)


@torch.no_grad()
def _render_batch(mesh: Mesh, c2w: Tensor, fov_deg: float, resolution: int, backend: Backend) -> tuple[Tensor, ...]:
    """One batch of views -> rgb (B, R, R, 3), alpha (B, R, R), depth (B, R, R), normals (B, R, R, 3)."""
    fine = 2 * resolution + 1  # samples at every pixel centre and pixel corner
    vertices, faces = mesh.vertices.float(), mesh.faces.long()
    clip = project(vertices, c2w, fov_deg, NEAR, FAR)  # (B, V, 4)
    # Shrinking NDC x, y by 2R / (2R + 1) moves the fine grid's sample k to pixel position k / 2 of the view.
    clip = clip * clip.new_tensor([2 * resolution / fine, 2 * resolution / fine, 1.0, 1.0])
    rast = rasterize(clip, faces, fine, fine, backend=backend)
    per_face = _face_shading(vertices, faces, c2w)  # (B*F, 4)
    # Colour only the covered samples (P of them), then scatter them into the (B, S, S) sample grid.
    flat_ids = rast.triangle_id.reshape(-1)
    sample = (flat_ids >= 0).nonzero().squeeze(1)  # (P,)
    triangle = flat_ids.index_select(0, sample)
    view = torch.repeat_interleave(torch.arange(c2w.shape[0], device=c2w.device), rast.mask.sum(dim=(1, 2)))
    normal_shade = per_face.index_select(0, view * faces.shape[0] + triangle)  # (P, 4)
    weights = rast.barycentrics.reshape(-1, 3).index_select(0, sample)  # (P, 3)
    color = _albedo(mesh, triangle, weights) * normal_shade[:, 3:]
    samples = torch.zeros(flat_ids.shape[0], 7, device=vertices.device)
    samples.index_copy_(0, sample, torch.cat([color, normal_shade[:, :3], torch.ones_like(color[:, :1])], dim=-1))
    filtered = _tent_downsample(samples.view(*rast.triangle_id.shape, 7))  # (B, R, R, 7), premultiplied
    alpha = filtered[..., 6]
    seen = alpha[..., None] > 0
    rgb = torch.where(seen, filtered[..., :3] / alpha[..., None].clamp(min=1e-12), torch.ones_like(filtered[..., :3]))
    unit_normals = torch.where(seen, F.normalize(filtered[..., 3:6], dim=-1), torch.zeros_like(filtered[..., 3:6]))
    return rgb.clamp(0, 1), alpha, _pixel_depth(rast.depth, rast.mask), unit_normals


def _face_shading(vertices: Tensor, faces: Tensor, c2w: Tensor) -> Tensor:
    """Flat shading per (view, face): the unit face normal turned towards the camera (exactly: towards the side
    of the face's plane the eye is on) and the light factor AMBIENT + HEADLIGHT |n . v|, v pointing from the
    face's centroid to the eye -> (B*F, 4), row b * F + f."""
    corners = vertices[faces]  # (F, 3, 3)
    normals = F.normalize(torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), dim=-1)
    to_eye = F.normalize(c2w[:, None, :3, 3] - corners.mean(dim=1), dim=-1)  # (B, F, 3)
    facing = (normals * to_eye).sum(dim=-1, keepdim=True)  # (B, F, 1)
    light = AMBIENT + HEADLIGHT * facing.abs()
    return torch.cat([torch.where(facing < 0, -normals, normals), light], dim=-1).reshape(-1, 4)


def _pixel_depth(depth: Tensor, covered: Tensor) -> Tensor:
    """Sample depths and coverage (B, 2R+1, 2R+1) -> pixel depth (B, R, R): the depth on the pixel centre where the
    centre is covered; else, at edge pixels, the nearest covered sample of the 3x3 filter window; else 0. So depth
    is positive exactly where alpha is."""
    centre = depth[:, 1::2, 1::2]
    far = torch.where(covered, depth, torch.full_like(depth, math.inf))
    nearest = -F.max_pool2d(-far[:, None], kernel_size=3, stride=2)[:, 0]  # (B, R, R), min over each window
    edge = torch.where(nearest.isfinite(), nearest, torch.zeros_like(nearest))
    return torch.where(covered[:, 1::2, 1::2], centre, edge)


def _tent_downsample(samples: Tensor) -> Tensor:
    """(B, 2R+1, 2R+1, C) samples -> (B, R, R, C): 3x3 tent around each pixel-centre sample (odd indices).

    Separable: each axis takes 1/4 corner + 1/2 centre + 1/4 corner, sample 2r+1 being pixel r's centre.
    """
    corner, centre = TENT[0], TENT[1]
    rows = corner * samples[:, 0:-1:2] + centre * samples[:, 1::2] + corner * samples[:, 2::2]  # (B, R, S, C)
    return corner * rows[:, :, 0:-1:2] + centre * rows[:, :, 1::2] + corner * rows[:, :, 2::2]


def _albedo(mesh: Mesh, triangle: Tensor, weights: Tensor) -> Tensor:
    """Surface colour at samples on faces `triangle` (P,) with barycentrics (P, 3): vertex colours, texture or
    uniform grey -> (P, 3)."""
    if mesh.vertex_colors is not None:
        return _interpolate(mesh.vertex_colors.float(), mesh.faces, triangle, weights)
    if mesh.texture is not None:
        return sample_texture(mesh.texture.float(), _interpolate(mesh.uvs.float(), mesh.uv_faces, triangle, weights))
    return torch.full((triangle.shape[0], 3), UNCOLORED, device=weights.device)


def _interpolate(attributes: Tensor, faces: Tensor, triangle: Tensor, weights: Tensor) -> Tensor:
    """Attributes (V, C) at samples on faces `triangle` (P,) with barycentrics (P, 3) -> (P, C)."""
    corners = faces.long().index_select(0, triangle).reshape(-1)  # (3P,)
    corner_values = attributes.index_select(0, corners).view(-1, 3, attributes.shape[-1])  # (P, 3, C)
    return torch.bmm(weights[:, None, :], corner_values)[:, 0]
