"""Triangle rasterization in pure PyTorch: visibility, barycentrics, depth and attribute interpolation.

Why our own rasterizer: the reference (InstantMesh) uses nvdiffrast, which runs on CUDA only and is not on
PyPI, and no PyPI library rasterizes on CPU and CUDA alike behind a torch interface. This module is that
twin: the same few calls on either device, with nvdiffrast used as an accelerator when it is importable and
the tensors live on a GPU (`backend="auto"`).

Conventions (the same as `lrmesh.cameras`):

- Input positions are homogeneous clip coordinates (x, y, z, w); NDC = (x, y, z) / w.
- Pixel (row r, column c) has its centre at NDC ((2c + 1) / W - 1, 1 - (2r + 1) / H): row 0 is the top
  of the image (NDC y = +1), column 0 the left (NDC x = -1).
- A pixel is covered when its centre lies inside or on the edge of a triangle; the nearest NDC z wins,
  ties going to the lower triangle id. Pixels whose NDC z lies outside [-1, 1] are clipped. Triangles with a
  vertex at w <= 0 (behind the eye) are dropped whole instead of being clipped against the near plane.
- Triangles are not culled by facing: both sides rasterize.
- The nvdiffrast backend clips triangles at the near plane instead of dropping them and may break exact
  depth ties differently; everything else agrees.

Algorithm (torch backend), per image: triangles are scan-converted. Each (triangle, pixel row) pair finds
where the row's centre line crosses the triangle's edges, giving a span of covered pixel centres; span pixels
get their NDC z from the triangle's depth plane and meet in a depth buffer through one `scatter_reduce(amin)`
on a packed int64 key (float32 depth bits << 32 | triangle id), which makes "nearest wins" exact and
independent of processing order. Rows and span pixels are enumerated in chunks of about `max_candidates`, so
memory stays bounded whatever the triangle sizes. Edge crossings are computed from the edge's lower-indexed
vertex, so two triangles sharing an edge agree on it bit for bit: no pixel centre falls through the crack
between them. Barycentrics are then computed once per covered pixel from edge functions.

Differentiability: `interpolate` is differentiable w.r.t. the attributes; `barycentrics` and `depth` carry
gradients to the clip positions within each triangle. There are no visibility (silhouette) gradients and no
antialiasing here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lrmesh.cameras import focal_from_fov

Backend = Literal["auto", "torch", "nvdiffrast"]

DEFAULT_MAX_CANDIDATES = 1 << 20  # (triangle, row) pairs or span pixels per chunk: ~100 MB of temporaries
MIN_CLIP_W = 1e-8  # a vertex with w below this is at or behind the eye; its triangle is dropped
INT64_MAX = torch.iinfo(torch.int64).max  # depth-buffer key of an uncovered pixel
TRIANGLE_ID_BITS = 32  # low bits of a depth-buffer key hold the triangle id
CROSSING_DATA = 5  # per scanline edge: anchor x, anchor y, dx / dy, lowest y, highest y


@dataclass
class Rasterization:
    """Which triangle covers each pixel centre, and where inside it.

    `depth` is the clip w of the surface point (interpolated perspective-correctly). For clip coordinates
    from `project` this is the camera-space distance along the view axis, the "z depth" in world units.
    """

    triangle_id: Tensor  # (N, H, W) int64, index into faces; -1 where no triangle covers the pixel
    barycentrics: Tensor  # (N, H, W, 3) perspective-correct weights of the triangle's 3 vertices; 0 off the mesh
    depth: Tensor  # (N, H, W) camera depth (clip w); 0 off the mesh

    @property
    def mask(self) -> Tensor:
        """Covered pixels -> (N, H, W) bool."""
        return self.triangle_id >= 0


def perspective(fov_deg: float, near: float, far: float) -> Tensor:
    """OpenGL projection matrix matching our normalised intrinsics (`lrmesh.cameras.intrinsics_matrix`) -> (4, 4).

    A camera-space point (x, y, z), z < 0 in front, lands on the normalised image point
    u = 0.5 + f x / -z (left to right), v = 0.5 - f y / -z (top to bottom), f = 0.5 / tan(fov / 2); NDC is
    (2u - 1, 1 - 2v), and NDC z maps [near, far] to [-1, 1] as glFrustum does. float64.
    """
    if not 0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
    ndc_focal = 2 * focal_from_fov(fov_deg)  # NDC spans 2 normalised image units
    proj = torch.zeros(4, 4, dtype=torch.float64)
    proj[0, 0] = proj[1, 1] = ndc_focal
    proj[2, 2], proj[2, 3] = -(far + near) / (far - near), -2 * far * near / (far - near)
    proj[3, 2] = -1.0
    return proj


def project(vertices: Tensor, c2w: Tensor, fov_deg: float, near: float = 0.1, far: float = 100.0) -> Tensor:
    """World points to clip coordinates for OpenGL camera-to-world poses.

    Args:
        vertices: (V, 3) world positions.
        c2w: (N, 4, 4) camera-to-world poses (x right, y up, looking along -z).
        fov_deg: vertical (and, the intrinsics being normalised per axis, horizontal) field of view.
    Returns:
        (N, V, 4) clip coordinates.
    """
    w2c = torch.linalg.inv(c2w)  # (N, 4, 4)
    proj = perspective(fov_deg, near, far).to(c2w)
    homogeneous = F.pad(vertices.to(c2w), (0, 1), value=1.0)  # (V, 4)
    return homogeneous @ (proj @ w2c).transpose(1, 2)  # (V, 4) x (N, 4, 4) -> (N, V, 4)


def rasterize(clip: Tensor, faces: Tensor, height: int, width: int, backend: Backend = "auto",
              max_candidates: int = DEFAULT_MAX_CANDIDATES) -> Rasterization:
    """Rasterize triangles given in clip space.

    Args:
        clip: (N, V, 4) or (V, 4) clip coordinates (a (V, 4) input is one image).
        faces: (F, 3) vertex indices.
        height, width: image size in pixels.
        backend: "torch" (any device), "nvdiffrast" (CUDA, if installed) or "auto" (nvdiffrast when
            importable and the tensors are on a GPU, torch otherwise).
        max_candidates: (triangle, pixel) pairs per chunk of the torch backend; bounds its memory.
    Returns:
        Rasterization with (N, H, W) fields.
    """
    clip = clip.unsqueeze(0) if clip.ndim == 2 else clip
    _check_inputs(clip, faces, height, width)
    faces = faces.long()
    if _use_nvdiffrast(backend, clip):
        triangle_id, barycentrics = _rasterize_nvdiffrast(clip, faces, height, width)
        return _rasterization(clip, faces, triangle_id, barycentrics)
    with torch.no_grad():
        screen = _to_screen(clip, height, width)  # (N, V, 3): pixel x, pixel y, NDC z
        triangle_id = torch.stack([
            _visible_triangles(screen[n], clip[n, :, 3], faces, height, width, max_candidates)
            for n in range(clip.shape[0])
        ])  # (N, H, W)
    screen = _to_screen(clip, height, width)  # again, now with gradients to clip
    barycentrics = _pixel_barycentrics(screen, clip[..., 3], faces, triangle_id)
    return _rasterization(clip, faces, triangle_id, barycentrics)


def rasterize_uv(uvs: Tensor, uv_faces: Tensor, resolution: int, backend: Backend = "auto") -> Rasterization:
    """Rasterize a UV layout into a square texture: texel (row r, column c) samples
    (u, v) = ((c + 0.5) / R, 1 - (r + 0.5) / R).

    Row 0 is v = 1, the top of the image, matching `Mesh.texture` (row 0 on top) and OBJ's upward v; this is
    what clip = (2u - 1, 2v - 1, 0, 1) gives with our top-row-is-NDC-y=+1 convention.

    Args:
        uvs: (T, 2) texture coordinates in [0, 1].
        uv_faces: (F, 3) indices into uvs.
        resolution: R, the texture's width and height.
    Returns:
        Rasterization with (1, R, R) fields; triangle ids index uv_faces (and the mesh faces, face for face).
    """
    uv_clip = torch.cat([uvs * 2 - 1, torch.zeros_like(uvs[:, :1]), torch.ones_like(uvs[:, :1])], dim=-1)
    return rasterize(uv_clip, uv_faces, resolution, resolution, backend=backend)


def interpolate(attributes: Tensor, rast: Rasterization, faces: Tensor) -> Tensor:
    """Per-pixel attributes: sum_k barycentrics[k] * attributes[faces[triangle_id, k]], 0 off the mesh.

    Differentiable w.r.t. `attributes` (and through `rast.barycentrics`). `faces` may differ from the faces
    rasterized as long as it matches them face for face (e.g. positions indexed through UV-space rasterization).

    Args:
        attributes: (V, C) shared by all images, or (N, V, C) per image.
        rast: Rasterization with (N, H, W) fields.
        faces: (F, 3) indices into the attributes' V axis.
    Returns:
        (N, H, W, C)
    """
    pixel, image, triangle = _covered(rast.triangle_id)  # (P,) each
    corners = faces.long().index_select(0, triangle)  # (P, 3)
    values = _corner_values(attributes, image, corners)  # (P, 3, C)
    weights = rast.barycentrics.reshape(-1, 3).index_select(0, pixel).to(values.dtype)  # (P, 3)
    per_pixel = (weights[..., None] * values).sum(dim=1)  # (P, C)
    return _scatter_pixels(per_pixel, pixel, rast.triangle_id.shape)


def _covered(triangle_id: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Covered pixels of (N, H, W) triangle ids -> flat pixel index, image index, triangle id; (P,) each."""
    flat = triangle_id.reshape(-1)
    pixel = (flat >= 0).nonzero().squeeze(1)
    pixels_per_image = triangle_id.shape[1] * triangle_id.shape[2]
    return pixel, torch.div(pixel, pixels_per_image, rounding_mode="floor"), flat.index_select(0, pixel)


def _corner_values(values: Tensor, image: Tensor, corners: Tensor) -> Tensor:
    """Per-vertex values (V, C) or (N, V, C) at the corners (P, 3) of pixels in images (P,) -> (P, 3, C)."""
    if values.ndim == 2:
        return values.index_select(0, corners.reshape(-1)).view(*corners.shape, -1)
    n, v, c = values.shape
    flat_corners = (image[:, None] * v + corners).reshape(-1)
    return values.reshape(n * v, c).index_select(0, flat_corners).view(*corners.shape, c)


def _scatter_pixels(per_pixel: Tensor, pixel: Tensor, shape: torch.Size) -> Tensor:
    """Values (P, C) of flat pixels (P,) into a zero image (*shape, C); differentiable w.r.t. the values."""
    out = per_pixel.new_zeros(shape.numel(), per_pixel.shape[-1])
    return out.index_copy(0, pixel, per_pixel).view(*shape, per_pixel.shape[-1])


def _check_inputs(clip: Tensor, faces: Tensor, height: int, width: int) -> None:
    if clip.ndim != 3 or clip.shape[-1] != 4:
        raise ValueError(f"clip must be (N, V, 4) or (V, 4), got {tuple(clip.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3 or faces.dtype.is_floating_point:
        raise ValueError(f"faces must be integer (F, 3), got {faces.dtype} {tuple(faces.shape)}")
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= clip.shape[1]):
        raise ValueError(f"faces index vertices outside [0, {clip.shape[1]})")


def _to_screen(clip: Tensor, height: int, width: int) -> Tensor:
    """Clip (N, V, 4) -> (N, V, 3): pixel x (columns, left to right), pixel y (rows, top down), NDC z."""
    w = clip[..., 3].clamp(min=MIN_CLIP_W)  # dropped triangles aside, w > 0 already
    ndc = clip[..., :3] / w[..., None]
    x = (ndc[..., 0] + 1) * (0.5 * width)
    y = (1 - ndc[..., 1]) * (0.5 * height)
    return torch.stack([x, y, ndc[..., 2]], dim=-1)


def _edge_functions(corners: Tensor, px: Tensor, py: Tensor) -> Tensor:
    """e_k(p) = (b - a) x (p - a) for the edge a = corner k+1 -> b = corner k+2 opposite corner k.

    corners (P, 3, 2) in pixels, px, py (P,) -> (P, 3); e_k / sum(e) are the screen-space barycentrics.
    """
    a, b = corners[:, [1, 2, 0]], corners[:, [2, 0, 1]]  # (P, 3, 2)
    return (b[..., 0] - a[..., 0]) * (py[:, None] - a[..., 1]) - (b[..., 1] - a[..., 1]) * (px[:, None] - a[..., 0])


def _row_ranges(screen_y: Tensor, height: int) -> tuple[Tensor, Tensor]:
    """First row and row count whose centres r + 0.5 fall in each triangle's y range: (F, 3) -> 2 x (F,) int64."""
    first = torch.ceil(screen_y.amin(dim=1) - 0.5).clamp(0, height).long()
    last = torch.floor(screen_y.amax(dim=1) - 0.5).clamp(-1, height - 1).long()
    return first, (last - first + 1).clamp(min=0)


def _edge_crossings(screen_xy: Tensor, faces: Tensor) -> Tensor:
    """Per triangle edge, what a scanline needs to find where it crosses the edge -> (F, 3, CROSSING_DATA).

    Fields: anchor x, anchor y, dx/dy, lowest y, highest y (an empty y range for horizontal edges, whose
    end points the other two edges report). Each edge is anchored at its lower-indexed vertex, so two
    triangles sharing an edge compute bit-identical crossings: one covers the pixel centres left of it, the
    other those right of it (both, for a centre exactly on it), and no centre falls through the crack.
    """
    a_idx, b_idx = faces[:, [1, 2, 0]], faces[:, [2, 0, 1]]  # (F, 3) edge k is opposite vertex k
    a = screen_xy[torch.minimum(a_idx, b_idx)]  # (F, 3, 2)
    b = screen_xy[torch.maximum(a_idx, b_idx)]
    dy = b[..., 1] - a[..., 1]
    sloped = dy != 0
    slope = (b[..., 0] - a[..., 0]) / torch.where(sloped, dy, torch.ones_like(dy))
    y_low = torch.where(sloped, torch.minimum(a[..., 1], b[..., 1]), torch.full_like(dy, math.inf))
    y_high = torch.where(sloped, torch.maximum(a[..., 1], b[..., 1]), torch.full_like(dy, -math.inf))
    return torch.stack([a[..., 0], a[..., 1], slope, y_low, y_high], dim=-1)


def _row_spans(crossings: Tensor, y: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Columns whose centres c + 0.5 lie between a row's edge crossings: (P, 3, 5), (P,) -> first, count (P,)."""
    anchor_x, anchor_y, slope, y_low, y_high = crossings.unbind(-1)  # (P, 3) each
    x = anchor_x + (y[:, None] - anchor_y) * slope
    hit = (y[:, None] >= y_low) & (y[:, None] <= y_high)
    left = torch.where(hit, x, math.inf).amin(dim=1)
    right = torch.where(hit, x, -math.inf).amax(dim=1)
    first = torch.ceil(left - 0.5).clamp(0, width).long()
    last = torch.floor(right - 0.5).clamp(-1, width - 1).long()
    return first, (last - first + 1).clamp(min=0)


def _depth_planes(triangles: Tensor) -> Tensor:
    """NDC z as an affine function of pixel position, z = z0 + gx (x - x0) + gy (y - y0): (F, 3, 3) -> (F, 5)."""
    origin = triangles[:, 0]  # (F, 3): x0, y0, z0
    e1, e2 = triangles[:, 1] - origin, triangles[:, 2] - origin
    area = e1[:, 0] * e2[:, 1] - e2[:, 0] * e1[:, 1]
    gx = (e1[:, 2] * e2[:, 1] - e2[:, 2] * e1[:, 1]) / area
    gy = (e2[:, 2] * e1[:, 0] - e1[:, 2] * e2[:, 0]) / area
    return torch.cat([origin, gx[:, None], gy[:, None]], dim=1)


def _groups(counts: Tensor, budget: int) -> list[tuple[int, int]]:
    """Split consecutive segments into groups totalling at most budget + the longest segment."""
    if counts.numel() == 0:
        return []
    group = torch.div(counts.cumsum(0) - 1, budget, rounding_mode="floor")
    bounds = torch.unique_consecutive(group, return_counts=True)[1].cumsum(0).tolist()
    return list(zip([0] + bounds[:-1], bounds))


def _expand(counts: Tensor) -> tuple[Tensor, Tensor]:
    """Enumerate ragged segments: counts (S,) -> segment index and position within it, (sum(counts),) each."""
    segment = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    starts = counts.cumsum(0) - counts
    return segment, torch.arange(segment.numel(), device=counts.device) - starts.index_select(0, segment)


def _visible_triangles(screen: Tensor, w: Tensor, faces: Tensor, height: int, width: int,
                       max_candidates: int) -> Tensor:
    """Z-buffer one image: screen (V, 3), w (V,) -> triangle id per pixel (H, W), -1 where uncovered.

    Triangles are scanned row by row: (triangle, row) pairs give column spans, every span pixel is a
    covered candidate, and candidates meet in the depth buffer (see `_depth_test`).
    """
    keys = torch.full((height * width,), INT64_MAX, dtype=torch.int64, device=screen.device)
    triangles = screen[faces]  # (F, 3, 3)
    first_row, num_rows = _row_ranges(triangles[..., 1], height)
    planes = _depth_planes(triangles)  # (F, 5)
    front = (w[faces] > MIN_CLIP_W).all(dim=1)
    keep = (front & planes.isfinite().all(dim=1) & (num_rows > 0)).nonzero().squeeze(1)  # (K,) ids
    crossings = _edge_crossings(screen[:, :2], faces[keep]).flatten(1)  # (K, 15)
    first_row, num_rows, planes = first_row[keep], num_rows[keep], planes[keep]
    for start, stop in _groups(num_rows, max_candidates):
        k, local = _expand(num_rows[start:stop])
        k = k + start
        row = first_row.index_select(0, k) + local  # (P,)
        y = row.to(screen.dtype) + 0.5
        first_col, num_cols = _row_spans(crossings.index_select(0, k).view(-1, 3, CROSSING_DATA), y, width)
        for span_start, span_stop in _groups(num_cols, max_candidates):
            span = slice(span_start, span_stop)
            _depth_test(keys, keep.index_select(0, k[span]), planes.index_select(0, k[span]), row[span],
                        first_col[span], num_cols[span], width)
    covered = keys != INT64_MAX
    triangle_id = torch.where(covered, keys & ((1 << TRIANGLE_ID_BITS) - 1), -1)
    return triangle_id.view(height, width)


def _depth_test(keys: Tensor, triangle: Tensor, plane: Tensor, row: Tensor, first_col: Tensor, num_cols: Tensor,
                width: int) -> None:
    """Write the nearest (NDC z, triangle id) of each span pixel into the packed depth buffer `keys` (H*W,).

    A key is the float32 bits of (z + 1) / 2 (monotone in z, being >= 0) above the triangle id, so one
    `scatter_reduce(amin)` keeps the nearest surface, ties going to the lower id. Spans are (S,) tensors.
    """
    x0, y0, z0, gx, gy = plane.unbind(-1)  # (S,) each
    z_first = z0 + gx * (first_col.to(z0.dtype) + 0.5 - x0) + gy * (row.to(z0.dtype) + 0.5 - y0)
    span, local = _expand(num_cols)  # (P,) each
    z = z_first.index_select(0, span) + gx.index_select(0, span) * local.to(z0.dtype)
    pixel = (row * width + first_col).index_select(0, span) + local
    in_range = ((z >= -1) & (z <= 1)).nonzero().squeeze(1)  # NDC z outside [-1, 1] is clipped
    depth_bits = (z.index_select(0, in_range) * 0.5 + 0.5).float().view(torch.int32).long()
    packed = (depth_bits << TRIANGLE_ID_BITS) | triangle.index_select(0, span.index_select(0, in_range))
    keys.scatter_reduce_(0, pixel.index_select(0, in_range), packed, reduce="amin")


def _pixel_barycentrics(screen: Tensor, w: Tensor, faces: Tensor, triangle_id: Tensor) -> Tensor:
    """Perspective-correct barycentrics of covered pixels: screen (N, V, 3), w (N, V) -> (N, H, W, 3).

    Screen-space weights l_k = e_k / sum(e) (edge functions at the pixel centre) are corrected as
    b_k = (l_k / w_k) / sum_j (l_j / w_j).
    """
    width = triangle_id.shape[2]
    pixel, image, triangle = _covered(triangle_id)  # (P,) each
    corners = faces.index_select(0, triangle)  # (P, 3)
    within_image = pixel - image * (triangle_id.shape[1] * width)
    row = torch.div(within_image, width, rounding_mode="floor")
    col = within_image - row * width
    e = _edge_functions(_corner_values(screen[..., :2], image, corners), col.to(screen.dtype) + 0.5,
                        row.to(screen.dtype) + 0.5)  # (P, 3)
    over_w = e / e.sum(dim=1, keepdim=True) / _corner_values(w[..., None], image, corners)[..., 0]
    weights = over_w / over_w.sum(dim=1, keepdim=True)
    return _scatter_pixels(weights, pixel, triangle_id.shape)


def _rasterization(clip: Tensor, faces: Tensor, triangle_id: Tensor, barycentrics: Tensor) -> Rasterization:
    """Assemble the result; depth = sum_k b_k w_k, which for perspective-correct b is the exact clip w."""
    pixel, image, triangle = _covered(triangle_id)
    corners_w = _corner_values(clip[..., 3:], image, faces.index_select(0, triangle))[..., 0]  # (P, 3)
    weights = barycentrics.reshape(-1, 3).index_select(0, pixel)
    depth = _scatter_pixels((weights * corners_w).sum(dim=1, keepdim=True), pixel, triangle_id.shape)
    return Rasterization(triangle_id=triangle_id, barycentrics=barycentrics, depth=depth[..., 0])


def _use_nvdiffrast(backend: Backend, clip: Tensor) -> bool:
    """The one backend choice: nvdiffrast when asked for, or on "auto" when it is importable and clip is on CUDA."""
    if backend not in ("auto", "torch", "nvdiffrast"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'nvdiffrast', got {backend!r}")
    if backend == "torch":
        return False
    available = clip.is_cuda and _nvdiffrast() is not None
    if backend == "nvdiffrast" and not available:
        raise RuntimeError("backend='nvdiffrast' needs the nvdiffrast package and CUDA tensors; "
                           "install it from https://github.com/NVlabs/nvdiffrast or use backend='torch'")
    return available


_NVDIFFRAST_CONTEXTS: dict[torch.device, object] = {}


def _nvdiffrast():
    """nvdiffrast.torch if installed, else None."""
    try:
        import nvdiffrast.torch as dr
    except ImportError:
        return None
    return dr


def _rasterize_nvdiffrast(clip: Tensor, faces: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """nvdiffrast on CUDA -> triangle_id (N, H, W), barycentrics (N, H, W, 3) in our row order.

    nvdiffrast returns (u, v, z / w, id + 1) per pixel with row 0 at NDC y = -1 (the bottom), so rows are
    flipped; u, v are the perspective-correct weights of vertices 0 and 1.
    """
    dr = _nvdiffrast()
    if clip.device not in _NVDIFFRAST_CONTEXTS:
        _NVDIFFRAST_CONTEXTS[clip.device] = dr.RasterizeCudaContext(device=clip.device)
    raw, _ = dr.rasterize(_NVDIFFRAST_CONTEXTS[clip.device], clip.float().contiguous(), faces.int().contiguous(),
                          resolution=[height, width])
    raw = raw.flip(1)  # (N, H, W, 4), row 0 on top
    triangle_id = raw[..., 3].round().long() - 1
    u, v = raw[..., 0], raw[..., 1]
    barycentrics = torch.stack([u, v, 1 - u - v], dim=-1) * (triangle_id >= 0)[..., None]
    return triangle_id, barycentrics.to(clip.dtype)
