"""UV unwrapping (xatlas) and texture baking: turn a colour field into a texture map for a mesh.

The reference (InstantMesh `extract_mesh(use_texture_map=True)`) unwraps with xatlas, rasterizes the UV
layout with nvdiffrast, interpolates vertex positions at the covered texels, queries its colour field there
and dilates the result once (3x3) when saving. We do the same with our own UV rasterizer
(`lrmesh.render.raster.rasterize_uv`), so baking works on CPU as well as GPU.

Layout conventions: UVs have v pointing up (OBJ); the texture is stored with row 0 at the top of the image
(v = 1), as `Mesh.texture` expects, so it can be written to PNG without flipping.

Seams: a texel is "covered" when its centre lies inside a UV triangle. Bilinear lookups near a chart's border
also read the neighbouring uncovered texels, which would pull in the background colour along every UV seam.
So, after baking, the covered region is grown by `dilation` texels: each pass gives every uncovered texel that
touches (8-neighbourhood) a filled texel the mean colour of its filled neighbours. xatlas is asked to keep
`CHART_PADDING_TEXELS` empty texels around each chart, which the dilation fills, so neighbouring charts do
not bleed into each other either. Texels further away keep the background colour (black, as the reference).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
import xatlas
from torch import Tensor

from lrmesh.geometry.mesh import Mesh
from lrmesh.render.raster import interpolate, rasterize_uv

CHART_PADDING_TEXELS = 2  # empty texels xatlas keeps around each chart (on top of its bilinear guard)
DILATION_TEXELS = 4  # passes of seam dilation; >= the padding, so the gaps between charts get filled
BACKGROUND = 0.0  # colour of texels no chart reaches (black, as the reference's texture maps)
DEFAULT_CHUNK = 262144  # texels per call of the colour function


def unwrap_uv(vertices: Tensor, faces: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """xatlas charts packed for a `resolution`-texel square texture.

    Args:
        vertices: (V, 3) positions.
        faces: (F, 3) vertex indices.
        resolution: texture width and height the packing aims at (xatlas may grow the atlas slightly; the
            UVs are normalised to [0, 1] either way).
    Returns:
        uvs: (T, 2) float32 in [0, 1], v up, on the vertices' device.
        uv_faces: (F, 3) int64 indices into uvs, face for face with `faces` (same corner order).
    """
    positions = np.ascontiguousarray(vertices.detach().cpu().numpy(), dtype=np.float32)
    indices = np.ascontiguousarray(faces.detach().cpu().numpy(), dtype=np.uint32)
    atlas = xatlas.Atlas()
    atlas.add_mesh(positions, indices)
    pack = xatlas.PackOptions()
    pack.resolution = resolution
    pack.padding = CHART_PADDING_TEXELS
    atlas.generate(xatlas.ChartOptions(), pack)
    vmapping, uv_faces, uvs = atlas[0]  # (T,), (F, 3), (T, 2)
    if uv_faces.shape != indices.shape or not np.array_equal(vmapping[uv_faces], indices):
        raise RuntimeError("xatlas returned UV faces that do not match the input faces corner for corner")
    device = vertices.device
    return torch.from_numpy(uvs.astype(np.float32)).to(device), torch.from_numpy(uv_faces.astype(np.int64)).to(device)


def bake_texture(mesh: Mesh, color_fn: Callable[[Tensor], Tensor], resolution: int = 1024,
                 chunk: int = DEFAULT_CHUNK, dilation: int = DILATION_TEXELS) -> Mesh:
    """Unwrap `mesh` and bake `color_fn` into a texture map.

    Args:
        mesh: geometry to texture (any colours it has are dropped).
        color_fn: (P, 3) world points -> (P, 3) colours in [0, 1]; called without gradients, on at most
            `chunk` points at a time, and only for texels the mesh covers.
        resolution: texture width and height in texels.
        chunk: points per call of `color_fn`.
        dilation: texels the baked region is grown by around every chart (see the module docstring).
    Returns:
        A Mesh with uvs, uv_faces and texture (resolution, resolution, 3), vertex_colors None.
    """
    if mesh.num_faces == 0:
        raise ValueError("cannot bake a texture for a mesh without faces")
    uvs, uv_faces = unwrap_uv(mesh.vertices, mesh.faces, resolution)
    rast = rasterize_uv(uvs, uv_faces, resolution)
    with torch.no_grad():
        positions = interpolate(mesh.vertices.detach(), rast, mesh.faces)[0]  # (R, R, 3) world points
        covered = rast.mask[0]  # (R, R)
        points = positions[covered]  # (P, 3)
        colors = torch.cat([color_fn(points[i:i + chunk]) for i in range(0, points.shape[0], chunk)])
        texture = torch.full((resolution, resolution, 3), BACKGROUND, dtype=colors.dtype, device=colors.device)
        texture[covered] = colors.clamp(0, 1)
        texture, _ = dilate(texture, covered, dilation)
    return replace(mesh, vertex_colors=None, uvs=uvs, uv_faces=uv_faces, texture=texture)


def dilate(texture: Tensor, filled: Tensor, iterations: int) -> tuple[Tensor, Tensor]:
    """Grow the filled region of a texture by `iterations` texels.

    Each pass sets every unfilled texel with at least one filled 8-neighbour to the mean of those neighbours.

    Args:
        texture: (H, W, C) colours.
        filled: (H, W) bool, texels holding real colours.
    Returns:
        texture (H, W, C) and the grown mask (H, W).
    """
    kernel = torch.ones(1, 1, 3, 3, dtype=texture.dtype, device=texture.device)
    image = texture.permute(2, 0, 1)[:, None]  # (C, 1, H, W): channels as a batch
    weight = filled.to(texture.dtype)[None, None]  # (1, 1, H, W)
    for _ in range(iterations):
        neighbour_sum = F.conv2d(image * weight, kernel, padding=1)  # (C, 1, H, W)
        neighbour_count = F.conv2d(weight, kernel, padding=1)  # (1, 1, H, W)
        grow = (neighbour_count > 0) & (weight == 0)
        image = torch.where(grow, neighbour_sum / neighbour_count.clamp(min=1), image)
        weight = torch.where(grow, torch.ones_like(weight), weight)
    return image[:, 0].permute(1, 2, 0), weight[0, 0] > 0


def sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear texture lookup at UVs; v points up and texture row 0 is the top, so texel (r, c) has its centre
    at (u, v) = ((c + 0.5) / W, 1 - (r + 0.5) / H).

    Args:
        texture: (H, W, C).
        uv: (..., 2) in [0, 1]; lookups beyond the border clamp to the edge texels.
    Returns:
        (..., C), differentiable w.r.t. texture and uv.
    """
    grid = torch.stack([uv[..., 0] * 2 - 1, 1 - uv[..., 1] * 2], dim=-1)  # grid_sample's y points down
    grid = grid.reshape(1, 1, -1, 2)
    image = texture.permute(2, 0, 1)[None]  # (1, C, H, W)
    sampled = F.grid_sample(image, grid.to(texture.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return sampled[0, :, 0].transpose(0, 1).reshape(*uv.shape[:-1], texture.shape[-1])
