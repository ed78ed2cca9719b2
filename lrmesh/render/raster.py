"""Triangle rasterization in pure PyTorch: visibility, barycentrics, depth, attribute interpolation, antialiasing.

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

Algorithm (torch backend): triangles are scan-converted, all views of a batch at once (the views are stacked
into one tall image; see `_visible_triangles`). Each (triangle, pixel row) pair finds where the row's centre
line crosses the triangle's edges, giving a span of covered pixel centres; span pixels get their NDC z from the
triangle's depth plane and meet in a depth buffer through one `scatter_reduce(amin)` on a packed int64 key
(float32 depth bits << 32 | triangle id), which makes "nearest wins" exact and independent of processing order.
Rows and span pixels are enumerated in chunks of about `max_candidates`, and views are grouped so that the
per-triangle tables (views x faces rows) stay within the same budget, so memory stays bounded whatever the
triangle sizes and the batch. Edge crossings are computed from the edge's lower-indexed vertex, so two
triangles sharing an edge agree on it bit for bit: no pixel centre falls through the crack between them.
Barycentrics are then evaluated per pixel from planes set up once per visible (view, triangle) pair.

Differentiability: `interpolate` is differentiable w.r.t. the attributes and, through `barycentrics`, w.r.t.
the clip positions; `barycentrics` and `depth` carry gradients to the clip positions within each triangle.
Which triangle covers a pixel is discrete, so these gradients never move a silhouette; `antialias` adds that
(analytic coverage at silhouette edges, `lrmesh.render.antialias`), which mask and colour losses need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lrmesh.cameras import intrinsics_matrix
from lrmesh.render.antialias import blend_silhouettes

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
    return perspective_from_intrinsics(intrinsics_matrix(fov_deg).double(), near, far)


def perspective_from_intrinsics(k: Tensor, near: float, far: float) -> Tensor:
    """OpenGL projection matrices for normalised intrinsics (..., 3, 3) (fx, fy, cx, cy in image units, as
    `lrmesh.cameras.intrinsics_matrix`) -> (..., 4, 4), same dtype.

    u = cx + fx x / -z and NDC x = 2u - 1 give clip x = 2 fx x + (2 cx - 1)(-z); v = cy - fy y / -z and
    NDC y = 1 - 2v give clip y = 2 fy y + (1 - 2 cy)(-z); clip w = -z. A crop of a zoomed image is such a camera.
    """
    if not 0 < near < far:
        raise ValueError(f"need 0 < near < far, got near={near}, far={far}")
    proj = k.new_zeros(*k.shape[:-2], 4, 4)
    proj[..., 0, 0], proj[..., 0, 2] = 2 * k[..., 0, 0], 1 - 2 * k[..., 0, 2]  # times z: (2 cx - 1)(-z)
    proj[..., 1, 1], proj[..., 1, 2] = 2 * k[..., 1, 1], 2 * k[..., 1, 2] - 1
    proj[..., 2, 2], proj[..., 2, 3] = -(far + near) / (far - near), -2 * far * near / (far - near)
    proj[..., 3, 2] = -1.0
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
    return project_intrinsics(vertices, c2w, intrinsics_matrix(fov_deg).to(c2w), near, far)


def project_intrinsics(vertices: Tensor, c2w: Tensor, k: Tensor, near: float = 0.1, far: float = 100.0) -> Tensor:
    """`project` for cameras given by normalised intrinsics k: (3, 3) shared or (N, 3, 3) -> (N, V, 4)."""
    w2c = torch.linalg.inv(c2w)  # (N, 4, 4)
    proj = perspective_from_intrinsics(k, near, far).to(c2w)
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
        views = _views_per_group(faces.shape[0], max_candidates)
        triangle_id = torch.cat([
            _visible_triangles(screen[n:n + views], clip[n:n + views, :, 3], faces, height, width, max_candidates)
            for n in range(0, clip.shape[0], views)
        ])  # (N, H, W)
    screen = _to_screen(clip, height, width)  # again, now with gradients to clip
    barycentrics, depth = _pixel_barycentrics(screen[..., :2], clip[..., 3], faces, triangle_id)
    return Rasterization(triangle_id=triangle_id, barycentrics=barycentrics, depth=depth)


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

    Differentiable w.r.t. `attributes` and, through `rast.barycentrics`, the clip positions that were
    rasterized. `faces` may differ from the faces rasterized as long as it matches them face for face (e.g.
    positions indexed through UV-space rasterization).

    Args:
        attributes: (V, C) shared by all images, or (N, V, C) per image.
        rast: Rasterization with (N, H, W) fields.
        faces: (F, 3) indices into the attributes' V axis.
    Returns:
        (N, H, W, C)
    """
    return _interpolate(attributes, rast.triangle_id, rast.barycentrics, faces.long())


def antialias(color: Tensor, rast: Rasterization, clip: Tensor, faces: Tensor, backend: Backend = "auto") -> Tensor:
    """Blend colours across silhouette edges by their analytic coverage (Laine et al. 2020, nvdiffrast's antialias).

    For adjacent pixels p0, p1 whose triangles differ, the front triangle's silhouette edge crossing the segment
    between their centres at t (0 at the front pixel's centre, 1 at the other's) gives the front surface a
    1D coverage; with alpha = s (1/2 - t) (s = +1 if the front triangle is p0's, -1 if p1's), p0 gets
    alpha (c1 - c0) if alpha > 0, else p1 does. See `lrmesh.render.antialias` for the derivation. The result is
    differentiable w.r.t. `color` and, through t, the clip positions of silhouette edges; for a mask, the
    gradient is the derivative of the covered area. The torch backend also walks across triangles too thin
    to cover a pixel centre to find the silhouette behind them, which nvdiffrast does not: on fine meshes the
    two backends differ there.

    Args:
        color: (N, H, W, C) shaded image, background composited in: silhouettes blend with what is behind them.
        rast: the Rasterization `color` was shaded from.
        clip: (N, V, 4) or (V, 4) the clip coordinates that were rasterized.
        faces: (F, 3) the faces that were rasterized; their connectivity decides which edges are silhouettes.
        backend: as for `rasterize` (nvdiffrast's `antialias` on "nvdiffrast").
    Returns:
        (N, H, W, C)
    """
    num_images, height, width = rast.triangle_id.shape
    clip = clip.unsqueeze(0) if clip.ndim == 2 else clip
    _check_inputs(clip, faces, height, width)
    if color.shape[:3] != rast.triangle_id.shape or color.ndim != 4:
        raise ValueError(f"color must be (N, H, W, C) = {(num_images, height, width)} + (C,), got {tuple(color.shape)}")
    if clip.shape[0] not in (1, num_images):
        raise ValueError(f"clip has {clip.shape[0]} views, the rasterization {num_images}")
    clip, faces = clip.expand(num_images, -1, -1), faces.long()
    if _use_nvdiffrast(backend, clip):
        return _antialias_nvdiffrast(color, rast, clip, faces)
    return blend_silhouettes(color, rast.triangle_id, _to_screen(clip, height, width), faces)


def _interpolate(attributes: Tensor, triangle_id: Tensor, barycentrics: Tensor, faces: Tensor) -> Tensor:
    """`interpolate` on the raw fields: (V, C) or (N, V, C), (N, H, W), (N, H, W, 3), (F, 3) -> (N, H, W, C).

    Every pixel is evaluated, covered or not (off the mesh with face 0 and zero weights), then masked: cheaper
    than gathering the covered pixels out and scattering them back unless few are covered.
    """
    values = _corner_values(attributes, triangle_id.clamp(min=0), faces)  # (N, H, W, 3, C)
    weights = barycentrics.to(values.dtype)[..., None, :]  # (N, H, W, 1, 3)
    per_pixel = (weights @ values).squeeze(-2)  # (N, H, W, 1, 3) x (N, H, W, 3, C) -> (N, H, W, C)
    return torch.where((triangle_id >= 0)[..., None], per_pixel, 0)


def _corner_values(values: Tensor, triangle: Tensor, faces: Tensor) -> Tensor:
    """Per-vertex values (V, C) or (N, V, C) at the corners of triangles (N, ...) -> (N, ..., 3, C).

    Shared values are gathered per face first, (F, 3, C), so each pixel reads one row.
    """
    if values.ndim == 2:
        per_face = values[faces]  # (F, 3, C)
        return per_face.index_select(0, triangle.reshape(-1)).view(*triangle.shape, 3, values.shape[-1])
    n, v, c = values.shape
    corners = faces.index_select(0, triangle.reshape(-1)).view(n, -1)  # (N, ... * 3)
    flat_corners = (corners + torch.arange(n, device=corners.device)[:, None] * v).reshape(-1)
    return values.reshape(n * v, c).index_select(0, flat_corners).view(*triangle.shape, 3, c)


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
    a_idx, b_idx = faces.roll(-1, dims=1), faces.roll(-2, dims=1)  # (F, 3) edge k is opposite vertex k
    a = screen_xy.index_select(0, torch.minimum(a_idx, b_idx).view(-1)).view(-1, 3, 2)  # (F, 3, 2)
    b = screen_xy.index_select(0, torch.maximum(a_idx, b_idx).view(-1)).view(-1, 3, 2)
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


def _views_per_group(num_faces: int, max_candidates: int) -> int:
    """Views z-buffered together: enough that the per-triangle tables (views x F rows) stay within the budget."""
    return max(1, max_candidates // max(1, num_faces))


def _visible_triangles(screen: Tensor, w: Tensor, faces: Tensor, height: int, width: int,
                       max_candidates: int) -> Tensor:
    """Z-buffer a group of n images: screen (n, V, 3), w (n, V) -> triangle id per pixel (n, H, W), -1 if uncovered.

    The images are stacked into one tall image of n * H rows holding n copies of the mesh (triangle n' * F + f
    is face f seen by view n'), so one pass serves them all. Triangles are scanned row by row: (triangle, row)
    pairs give column spans, every span pixel is a covered candidate, and candidates meet in the depth buffer
    (see `_depth_test`).
    """
    n, num_vertices = screen.shape[:2]
    num_faces = faces.shape[0]
    offsets = torch.arange(n, device=faces.device) * num_vertices
    stacked = (faces[None] + offsets[:, None, None]).reshape(-1, 3)  # (n F, 3) indices into the (n V) vertices
    screen, w = screen.reshape(-1, 3), w.reshape(-1)
    keys = torch.full((n * height * width,), INT64_MAX, dtype=torch.int64, device=screen.device)
    triangles = screen.index_select(0, stacked.view(-1)).view(-1, 3, 3)  # (n F, 3, 3)
    first_row, num_rows = _row_ranges(triangles[..., 1], height)
    planes = _depth_planes(triangles)  # (n F, 5)
    front = (w.index_select(0, stacked.view(-1)).view(-1, 3) > MIN_CLIP_W).all(dim=1)
    keep = (front & planes.isfinite().all(dim=1) & (num_rows > 0)).nonzero().squeeze(1)  # (K,) stacked ids
    crossings = _edge_crossings(screen[:, :2], stacked.index_select(0, keep)).flatten(1)  # (K, 15)
    image = torch.div(keep, num_faces, rounding_mode="floor")  # (K,)
    face, image_first_row = keep - image * num_faces, image * height  # (K,) face id, image offset in the stack
    first_row, num_rows, planes = (x.index_select(0, keep) for x in (first_row, num_rows, planes))
    for start, stop in _groups(num_rows, max_candidates):
        k, local = _expand(num_rows[start:stop])
        k = k + start
        row = first_row.index_select(0, k) + local  # (P,) row within the image
        y = row.to(screen.dtype) + 0.5
        first_col, num_cols = _row_spans(crossings.index_select(0, k).view(-1, 3, CROSSING_DATA), y, width)
        pixel_start = (image_first_row.index_select(0, k) + row) * width + first_col  # (P,) in the stack
        for span_start, span_stop in _groups(num_cols, max_candidates):
            span = slice(span_start, span_stop)
            _depth_test(keys, face.index_select(0, k[span]), planes.index_select(0, k[span]), y[span],
                        first_col[span], pixel_start[span], num_cols[span])
    covered = keys != INT64_MAX
    triangle_id = torch.where(covered, keys & ((1 << TRIANGLE_ID_BITS) - 1), -1)
    return triangle_id.view(n, height, width)


def _depth_test(keys: Tensor, triangle: Tensor, plane: Tensor, y: Tensor, first_col: Tensor, pixel_start: Tensor,
                num_cols: Tensor) -> None:
    """Write the nearest (NDC z, triangle id) of each span pixel into the packed depth buffer `keys` (n*H*W,).

    A span is `num_cols` pixels from `pixel_start` (flat index) on the row whose centre line is `y`, starting
    at column `first_col`. A key is the float32 bits of (z + 1) / 2 (monotone in z, being >= 0) above the
    triangle id, so one `scatter_reduce(amin)` keeps the nearest surface, ties going to the lower id; NDC z
    outside [-1, 1] is clipped by giving the candidate the key of an empty pixel. Spans are (S,) tensors.
    """
    x0, y0, z0, gx, gy = plane.unbind(-1)  # (S,) each
    z_first = z0 + gx * (first_col.to(z0.dtype) + 0.5 - x0) + gy * (y - y0)
    span, local = _expand(num_cols)  # (P,) each
    z = z_first.index_select(0, span) + gx.index_select(0, span) * local.to(z0.dtype)
    depth_bits = (z * 0.5 + 0.5).float().view(torch.int32).long()
    packed = (depth_bits << TRIANGLE_ID_BITS) | triangle.index_select(0, span)
    packed = torch.where((z >= -1) & (z <= 1), packed, INT64_MAX)
    keys.scatter_reduce_(0, pixel_start.index_select(0, span) + local, packed, reduce="amin")


def _pixel_barycentrics(screen_xy: Tensor, w: Tensor, faces: Tensor, triangle_id: Tensor) -> tuple[Tensor, Tensor]:
    """Perspective-correct barycentrics (N, H, W, 3) and depth (N, H, W) of covered pixels, 0 elsewhere.

    screen_xy (N, V, 2) pixel positions and w (N, V) clip w carry the gradients. Each visible (image, triangle)
    pair gets its planes once (`_barycentric_planes`); every pixel gathers its pair's planes and evaluates
    q_k = a_k dx + b_k dy + c_k = l_k / w_k, giving b_k = q_k / sum_j q_j and depth = 1 / sum_j q_j
    (= sum_k b_k w_k, since sum_k l_k = 1). Pixels are evaluated densely, covered or not, which beats
    compacting them unless few are covered; off the mesh sum_j q_j := inf makes both 0, gradients included.
    """
    num_images, height, width = triangle_id.shape
    covered = triangle_id >= 0  # (N, H, W)
    if not bool(covered.any()):
        return screen_xy.new_zeros(num_images, height, width, 3), screen_xy.new_zeros(num_images, height, width)
    pairs, slot = _visible_pairs(triangle_id, faces.shape[0])  # (U,), (N H W,)
    pair_image = torch.div(pairs, faces.shape[0], rounding_mode="floor")
    corners = faces.index_select(0, pairs - pair_image * faces.shape[0])  # (U, 3)
    flat_corners = (corners + pair_image[:, None] * screen_xy.shape[1]).view(-1)
    planes = _barycentric_planes(screen_xy.reshape(-1, 2).index_select(0, flat_corners).view(-1, 3, 2),
                                 w.reshape(-1).index_select(0, flat_corners).view(-1, 3))
    origin, slopes, offset = (table.index_select(0, slot).view(num_images, height, width, *table.shape[1:])
                              for table in planes)  # (N, H, W, 2), (N, H, W, 3, 2), (N, H, W, 3)
    rows, cols = torch.meshgrid(torch.arange(height, device=slot.device), torch.arange(width, device=slot.device),
                                indexing="ij")
    centres = torch.stack([cols, rows], dim=-1).to(origin.dtype) + 0.5  # (H, W, 2) pixel x, y
    dx, dy = (centres - origin).unbind(-1)  # (N, H, W) each, from vertex 0
    slope_x, slope_y = slopes.unbind(-1)  # (N, H, W, 3) each
    over_w = slope_x * dx[..., None] + slope_y * dy[..., None] + offset  # (N, H, W, 3): l_k / w_k
    total = over_w.sum(dim=-1).masked_fill(~covered, torch.inf)  # (N, H, W)
    return over_w / total[..., None], 1 / total


def _visible_pairs(triangle_id: Tensor, num_faces: int) -> tuple[Tensor, Tensor]:
    """The (image, triangle) pairs that cover some pixel, as image * F + triangle, (U,) ascending, and each
    pixel's row in that list, (N H W,) (an arbitrary valid row off the mesh)."""
    num_pairs = triangle_id.shape[0] * num_faces
    image = torch.arange(triangle_id.shape[0], device=triangle_id.device)[:, None, None]
    pair = torch.where(triangle_id >= 0, image * num_faces + triangle_id, num_pairs).view(-1)  # spare slot off it
    used = torch.zeros(num_pairs + 1, dtype=torch.bool, device=pair.device)
    used[pair] = True
    used[-1] = False
    slot = (used.cumsum(0) - 1).clamp(min=0).index_select(0, pair)
    return used.nonzero().squeeze(1), slot


def _barycentric_planes(corners: Tensor, corners_w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per triangle, l_k / w_k as an affine function of the pixel offset d = p - v_0.

    l_k / w_k = a_k d_x + b_k d_y + c_k, where l_k = e_k(p) / e(v_0) are the screen-space barycentrics from
    the edge functions e_k(p) = (v_{k+2} - v_{k+1}) x (p - v_{k+1}) and e(v_0) = e_0(v_0) is twice the signed
    area. Anchoring at v_0 keeps the numbers small (a few pixels), so float32 loses no more than evaluating
    the edge functions per pixel would.

    Args:
        corners: (U, 3, 2) pixel positions; corners_w: (U, 3) clip w.
    Returns:
        v_0 (U, 2), slopes (a_k, b_k) (U, 3, 2) and offsets c_k (U, 3).
    """
    a, b = corners.roll(-1, dims=1), corners.roll(-2, dims=1)  # (U, 3, 2): edge k runs from a to b
    edge = b - a
    origin = corners[:, 0]  # (U, 2)
    at_origin = edge[..., 0] * (origin[:, None, 1] - a[..., 1]) - edge[..., 1] * (origin[:, None, 0] - a[..., 0])
    scale = 1 / (at_origin[:, :1] * corners_w)  # (U, 3): 1 / (e(v_0) w_k)
    slopes = torch.stack([-edge[..., 1], edge[..., 0]], dim=-1) * scale[..., None]  # (U, 3, 2)
    return origin, slopes, at_origin * scale


def _rasterization(clip: Tensor, faces: Tensor, triangle_id: Tensor, barycentrics: Tensor) -> Rasterization:
    """Assemble the result; depth = sum_k b_k w_k, which for perspective-correct b is the exact clip w."""
    depth = _interpolate(clip[..., 3:], triangle_id, barycentrics, faces)[..., 0]
    return Rasterization(triangle_id=triangle_id, barycentrics=barycentrics, depth=depth)


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


def _antialias_nvdiffrast(color: Tensor, rast: Rasterization, clip: Tensor, faces: Tensor) -> Tensor:
    """nvdiffrast's antialias on CUDA, in our row order -> (N, H, W, C).

    It reads nvdiffrast's own rasterizer output, (u, v, z / w, id + 1) per pixel with row 0 at the bottom, so
    that is rebuilt from `rast` (z / w, NDC depth, from clip z interpolated perspective-correctly) and rows are
    flipped on the way in and out. It differentiates w.r.t. color and clip, never w.r.t. the rasterization.
    """
    dr = _nvdiffrast()
    with torch.no_grad():
        clip_z = interpolate(clip[..., 2:3], rast, faces)[..., 0]  # (N, H, W)
        ndc_z = torch.where(rast.mask, clip_z / torch.where(rast.mask, rast.depth, 1), 0)
        raw = torch.stack([rast.barycentrics[..., 0], rast.barycentrics[..., 1], ndc_z,
                           (rast.triangle_id + 1).to(ndc_z.dtype)], dim=-1)  # (N, H, W, 4)
    out = dr.antialias(color.flip(1).float().contiguous(), raw.flip(1).float().contiguous(), clip.float().contiguous(),
                       faces.int().contiguous())
    return out.flip(1).to(color.dtype)
