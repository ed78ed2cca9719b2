"""Analytic silhouette antialiasing: colours blended across silhouette edges by where the edge passes between
two pixel centres. This is the method of nvdiffrast's `antialias` (Laine et al. 2020, "Modular Primitives for
High-Performance Differentiable Rendering", sec. 3.3), written in vectorised PyTorch.

Why: a rasterized image is piecewise constant in the vertex positions. Moving a silhouette vertex changes
which pixels are covered only in jumps, so a mask, depth or colour loss gets no gradient that would move the
silhouette. After this step the image is a continuous function of the silhouette edges' screen positions.

The method. Pixel centres sit at integer + 1/2 in pixel units. For every pair of horizontally or vertically
adjacent pixels p0, p1 (p1 right of or below p0) whose triangle ids differ:

1. Front triangle. T is the pair's nearer triangle (lower NDC z at its own pixel centre), or the only one
   when the other pixel is background. T's pixel is o ("own"), the other n; s = +1 if o = p0, -1 if o = p1.
2. Crossing. With the origin at o's centre, u along the pair (towards p1) and v across it, an edge (a, b)
   whose end points lie on opposite sides of v = 0 crosses that line at
       u* = (u_a v_b - v_a u_b) / (v_b - v_a),
   and t = s u* is the crossing's distance from o towards n, in pixels. Of a triangle's two crossings, the
   one with the larger t is where the segment from o to n leaves it.
3. Silhouette search. Follow the segment from T: at the edge where it leaves the current triangle, stop if
   the edge is a silhouette edge (no other face shares it, or the face across it turns the other way on
   screen: its far vertex lies on the same side of the edge as the current triangle's third vertex), or if
   t >= 1 + 1/16 (the surface continues past n's centre: no silhouette between the pixels); otherwise step
   into the face across and repeat (a walk also ends on reaching n's own face). nvdiffrast looks at T's
   own edges only; walking on matters when thin triangles at the silhouette cover no pixel centre, which is
   the rule, not the exception, once triangles are a few pixels across or smaller. Pairs whose two faces
   share an edge and wind the same way on screen (most pairs, on a fine mesh) are skipped up front: the
   surface runs on from one to the other.
4. The silhouette edge found counts if |v_b - v_a| >= |u_b - u_a| (it is within 45 degrees of perpendicular
   to the pair; flatter edges are left to pairs in the other direction, so no edge is counted twice) and
   t > -1/16 (rasterization round-off); then t := clamp(t, 0, 1).
5. Blend. Along the segment between the centres, T's surface covers [-1/2, t]; the pixels' border is at 1/2:
       t < 1/2:  c_o' = c_o + (1/2 - t) (c_n - c_o)     (the surface covers only part of o)
       t > 1/2:  c_n' = c_n + (t - 1/2) (c_o - c_n)     (the surface spills into n)
   Equivalently, with alpha = s (1/2 - t): p0 gets alpha (c_1 - c_0) if alpha > 0, else p1 does. Each pixel
   sums the updates of its (up to four) pairs, all computed from the input colours.

Summed along a pixel row these updates make the row's total exactly the length of its centre line that T
covers. For a straight silhouette that is the area T covers in the row, so the mean of an antialiased mask
is the true covered area, not a count of pixel centres. Example: a mask row 1, 1, 0, 0 whose silhouette
crosses the row at x = 2.3 px (pixel centres at 0.5, 1.5, 2.5, ...): for the pair (1, 2), o = pixel 1,
t = 2.3 - 1.5 = 0.8 > 1/2, so pixel 2 gets (0.8 - 1/2) (1 - 0) and the row reads 1, 1, 0.3, 0: total 2.3.

Gradients: c' depends on t, a smooth function of the edge's end points and so of their clip coordinates,
with d c_o' / d t = -(c_n - c_o) (for t < 1/2). This is what lets a mask or colour loss pull silhouette
vertices. Colours get gradients through both terms of the blend.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

SUBPIXEL_TOLERANCE = 1 / 16  # crossings this far outside [0, 1] still count (round-off); nvdiffrast's value
MAX_WALK_STEPS = 16  # faces crossed looking for a silhouette between two pixel centres; unfound means no blend
NO_TWIN = -1  # in `edge_twins`: a boundary edge, or one shared by more than two faces


def blend_silhouettes(color: Tensor, triangle_id: Tensor, screen: Tensor, faces: Tensor) -> Tensor:
    """The antialiasing step above, for all pixel pairs of all images at once.

    Args:
        color: (N, H, W, C) shaded pixels, background included.
        triangle_id: (N, H, W) the rasterization `color` was shaded from; -1 is background.
        screen: (N, V, 3) vertex pixel x (column), pixel y (row) and NDC z; gradients flow to x and y.
        faces: (F, 3) int64.
    Returns:
        (N, H, W, C)
    """
    flat_color = color.reshape(-1, color.shape[-1])  # (N H W, C)
    mesh = _ScreenMesh(screen.detach().reshape(-1, 3), faces, screen.shape[1])
    out = flat_color.clone()
    for vertical in (False, True):
        pixel0, pixel1 = _candidate_pairs(triangle_id, mesh, vertical)  # (M,) each
        alpha = _pair_blends(pixel0, pixel1, triangle_id, screen, mesh, vertical)  # (M,)
        difference = flat_color.index_select(0, pixel1) - flat_color.index_select(0, pixel0)  # (M, C)
        out.index_add_(0, torch.where(alpha > 0, pixel0, pixel1), alpha.to(color.dtype)[:, None] * difference)
    return out.view_as(color)


def edge_twins(faces: Tensor) -> Tensor:
    """For edge k of each face (the edge opposite vertex k), the same edge in the one other face sharing it.

    (F, 3) -> (F, 3) half-edge indices 3 g + l (edge l of face g, whose far vertex is faces[g, l]), or NO_TWIN
    where the edge has no single other face (a boundary, or a non-manifold edge; both count as silhouettes).
    Edges are matched by sorting their vertex pairs.
    """
    num_faces = faces.shape[0]
    if num_faces == 0:
        return faces.new_full((0, 3), NO_TWIN)
    start, end = faces.roll(-1, dims=1), faces.roll(-2, dims=1)  # (F, 3) edge k runs between these
    key = torch.minimum(start, end) * (int(faces.max()) + 1) + torch.maximum(start, end)  # (F, 3)
    degenerate = (start == end).any(dim=1, keepdim=True)  # a face with a repeated vertex shares no edge
    key = torch.where(degenerate, -1 - torch.arange(3 * num_faces, device=faces.device).view(-1, 3), key)
    sorted_key, order = key.view(-1).sort(stable=True)  # (3F,)
    _, group_size = torch.unique_consecutive(sorted_key, return_counts=True)
    size = group_size.repeat_interleave(group_size)  # (3F,) faces on each sorted edge
    first = ((sorted_key[:-1] == sorted_key[1:]) & (size[:-1] == 2)).nonzero().squeeze(1)  # pairs (i, i + 1)
    twins = torch.full((3 * num_faces,), NO_TWIN, dtype=torch.int64, device=faces.device)
    twins[order[first]], twins[order[first + 1]] = order[first + 1], order[first]
    return twins.view(num_faces, 3)


@dataclass
class _ScreenMesh:
    """The mesh as all N images see it: vertex positions stacked image by image, and its edges."""

    points: Tensor  # (N V, 3) pixel x, pixel y, NDC z; no gradients
    faces: Tensor  # (F, 3)
    num_vertices: int  # V

    def __post_init__(self) -> None:
        self.edge_start = self.faces.roll(-1, dims=1)  # (F, 3): edge k runs from vertex k + 1 ...
        self.edge_end = self.faces.roll(-2, dims=1)  # ... to vertex k + 2
        self.twins = edge_twins(self.faces)  # (F, 3) half-edge across each edge
        self.across = torch.div(self.twins, 3, rounding_mode="floor")  # (F, 3) face across, NO_TWIN if none
        num_images = self.points.shape[0] // self.num_vertices
        images = torch.arange(num_images, device=self.faces.device)[:, None].expand(-1, self.faces.shape[0])
        self.winding = _winding(self.at(self.faces.expand(num_images, -1, -1).reshape(-1, 3),
                                        images.reshape(-1)))  # (N F,) per image and face

    def at(self, vertex: Tensor, image: Tensor) -> Tensor:
        """Points of vertices (A, ...) in images (A,) -> (A, ..., 3)."""
        offset = (image * self.num_vertices).view(-1, *([1] * (vertex.ndim - 1)))
        return self.points.index_select(0, (vertex + offset).view(-1)).view(*vertex.shape, 3)


@dataclass
class _Pairs:
    """M pixel pairs of one direction, seen from their front pixel o (steps 1-2)."""

    image: Tensor  # (M,)
    origin: Tensor  # (M, 2) o's centre, pixels
    sign: Tensor  # (M,) s: +1 if o = p0, -1 if o = p1
    vertical: bool  # p1 below p0 rather than right of it

    def along_across(self, points: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """Pixel positions (K, ..., >= 2) of pairs `index` (K,) -> u along the pair and v across it, from o's
        centre; (K, ...) each."""
        along, across = (1, 0) if self.vertical else (0, 1)
        origin = self.origin.index_select(0, index).view(-1, *([1] * (points.ndim - 2)), 2)
        return points[..., along] - origin[..., along], points[..., across] - origin[..., across]


def _candidate_pairs(triangle_id: Tensor, mesh: _ScreenMesh, vertical: bool) -> tuple[Tensor, Tensor]:
    """Adjacent pixels in one direction whose triangles differ and may have a silhouette between them -> flat
    indices of p0 and p1, (M,) each.

    Pairs whose faces share an edge and wind the same way on screen are left out: the surface runs on from
    one to the other, so there is no silhouette between them (on a fine mesh, most pairs).
    """
    num_images, height, width = triangle_id.shape
    differ = triangle_id[:, :-1] != triangle_id[:, 1:] if vertical else triangle_id[..., :-1] != triangle_id[..., 1:]
    image, row, col = differ.nonzero().unbind(1)  # (M,) each: p0's position
    pixel0 = (image * height + row) * width + col
    pixel1 = pixel0 + (width if vertical else 1)
    id0, id1 = triangle_id.view(-1).index_select(0, pixel0), triangle_id.view(-1).index_select(0, pixel1)
    first_face = image * mesh.faces.shape[0]
    same_winding = (mesh.winding.index_select(0, first_face + id0.clamp(min=0))
                    == mesh.winding.index_select(0, first_face + id1.clamp(min=0)))
    adjacent = (mesh.across.index_select(0, id0.clamp(min=0)) == id1[:, None]).any(dim=1)
    keep = (~((id0 >= 0) & (id1 >= 0) & same_winding & adjacent)).nonzero().squeeze(1)
    return pixel0.index_select(0, keep), pixel1.index_select(0, keep)


def _pair_blends(pixel0: Tensor, pixel1: Tensor, triangle_id: Tensor, screen: Tensor, mesh: _ScreenMesh,
                 vertical: bool) -> Tensor:
    """alpha = s (1/2 - t) of pixel pairs (p0, p1), flat indices (M,) each, where a silhouette edge qualifies
    (steps 1-4 of the module docstring), else 0 -> (M,).

    The search runs without gradients; t is then recomputed, differentiably, for the edges found.
    """
    num_images, height, width = triangle_id.shape
    image = torch.div(pixel0, height * width, rounding_mode="floor")
    row = torch.div(pixel0 - image * (height * width), width, rounding_mode="floor")
    col = pixel0 - image * (height * width) - row * width
    id0, id1 = triangle_id.view(-1).index_select(0, pixel0), triangle_id.view(-1).index_select(0, pixel1)
    centre0 = torch.stack([col, row], dim=1).to(screen.dtype) + 0.5  # (M, 2) pixel x, y
    centre1 = centre0 + torch.tensor([0.0, 1.0] if vertical else [1.0, 0.0], dtype=screen.dtype, device=screen.device)
    with torch.no_grad():
        corners0 = mesh.at(mesh.faces.index_select(0, id0.clamp(min=0)), image)  # (M, 3, 3)
        corners1 = mesh.at(mesh.faces.index_select(0, id1.clamp(min=0)), image)
        own0 = (id1 < 0) | ((id0 >= 0) & (_depth_at(corners0, centre0) < _depth_at(corners1, centre1)))  # (M,)
        sign = torch.where(own0, 1.0, -1.0).to(screen.dtype)
        pairs = _Pairs(image, torch.where(own0[:, None], centre0, centre1), sign, vertical)
        everyone = torch.arange(own0.shape[0], device=own0.device)
        index, face, edge, qualifies = _walk_to_silhouettes(mesh, pairs, everyone, torch.where(own0, id0, id1),
                                                            torch.where(own0, id1, id0))
    t = _crossing(screen, mesh, pairs, index, face, edge)  # (K,) differentiable
    alpha = torch.where(qualifies, pairs.sign[index] * (0.5 - t.clamp(0, 1)), 0)
    return torch.zeros_like(pairs.sign).index_copy(0, index, alpha)


def _walk_to_silhouettes(mesh: _ScreenMesh, pairs: _Pairs, active: Tensor, face: Tensor,
                         target: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Step 3, without gradients: for pairs `active` (A,), from their front faces (A,), follow the segment from
    o's centre towards n to the first silhouette edge; a walk also ends in n's own face `target` (A,) or
    past n's centre.

    Returns the pairs that found a silhouette edge, its face and edge index, and whether it qualifies
    (step 4): (K,) each.
    """
    found: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    for _ in range(MAX_WALK_STEPS):
        image = pairs.image.index_select(0, active)
        u_a, v_a = pairs.along_across(mesh.at(mesh.edge_start.index_select(0, face), image), active)  # (A, 3) each
        u_b, v_b = pairs.along_across(mesh.at(mesh.edge_end.index_select(0, face), image), active)
        t, edge = _exit_crossing(u_a, v_a, u_b, v_b, pairs.sign.index_select(0, active))  # (A,) each
        ahead = torch.isfinite(t) & (t < 1 + SUBPIXEL_TOLERANCE)  # the segment leaves the face before n
        half_edge = face * 3 + edge
        twin = mesh.twins.view(-1).index_select(0, half_edge)  # (A,)
        own_vertex = mesh.faces.view(-1).index_select(0, half_edge)  # vertex k, opposite edge k
        far_vertex = torch.where(twin >= 0, mesh.faces.view(-1).index_select(0, twin.clamp(min=0)), own_vertex)
        ends = [x.gather(1, edge[:, None])[:, 0] for x in (u_a, v_a, u_b, v_b)]  # (A,) each
        own = pairs.along_across(mesh.at(own_vertex, image), active)
        far = pairs.along_across(mesh.at(far_vertex, image), active)
        silhouette = torch.signbit(_area(*far, *ends)) == torch.signbit(_area(*own, *ends))
        stop = (ahead & silhouette).nonzero().squeeze(1)
        steep = (ends[3] - ends[1]).abs() >= (ends[2] - ends[0]).abs()  # step 4: within 45 degrees of across
        qualifies = (steep & (t > -SUBPIXEL_TOLERANCE)).index_select(0, stop)
        found.append((active.index_select(0, stop), face.index_select(0, stop), edge.index_select(0, stop), qualifies))
        walk_on = (ahead & ~silhouette & (twin >= 0)).nonzero().squeeze(1)
        next_face = torch.div(twin.index_select(0, walk_on), 3, rounding_mode="floor")
        keep = (next_face != target.index_select(0, walk_on)).nonzero().squeeze(1)
        active, face, target = (x.index_select(0, keep) for x in (active.index_select(0, walk_on), next_face,
                                                                  target.index_select(0, walk_on)))
        if active.numel() == 0:
            break
    index, face, edge, qualifies = (torch.cat(parts) for parts in zip(*found))
    return index, face, edge, qualifies


def _exit_crossing(u_a: Tensor, v_a: Tensor, u_b: Tensor, v_b: Tensor, sign: Tensor) -> tuple[Tensor, Tensor]:
    """Where the segment from o towards n leaves a triangle (step 2).

    Edge k runs from (u_a, v_a)[:, k] to (u_b, v_b)[:, k], (A, 3) each, coordinates from o's centre; sign: (A,)
    s. Returns the largest crossing t (-inf when the line misses the triangle) and its edge k, (A,) each.
    """
    crosses = (v_a < 0) != (v_b < 0)  # then v_b - v_a != 0
    t = sign[:, None] * (u_a * v_b - v_a * u_b) / torch.where(crosses, v_b - v_a, 1)
    return torch.where(crosses, t, -torch.inf).max(dim=1)


def _crossing(screen: Tensor, mesh: _ScreenMesh, pairs: _Pairs, index: Tensor, face: Tensor, edge: Tensor) -> Tensor:
    """t of edge `edge` of `face` for pairs `index` (K,), differentiable w.r.t. screen (N, V, 3) -> (K,)."""
    points = screen.reshape(-1, 3)  # (N V, 3)
    offset = pairs.image.index_select(0, index) * mesh.num_vertices
    half_edge = face * 3 + edge
    u_a, v_a = pairs.along_across(points.index_select(0, mesh.edge_start.view(-1)[half_edge] + offset), index)
    u_b, v_b = pairs.along_across(points.index_select(0, mesh.edge_end.view(-1)[half_edge] + offset), index)
    return pairs.sign.index_select(0, index) * (u_a * v_b - v_a * u_b) / (v_b - v_a)


def _depth_at(corners: Tensor, point: Tensor) -> Tensor:
    """NDC z of triangles (M, 3, 3) (pixel x, y, NDC z per corner) at points (M, 2), from their depth planes.

    z = sum_k e_k z_k / sum_k e_k with e_k the edge function of edge k, i.e. twice the signed area of (point,
    v_{k+1}, v_{k+2}). NaN for a degenerate triangle (never one that covers a pixel).
    """
    (x0, x1, x2), (y0, y1, y2), (z0, z1, z2) = (c.unbind(1) for c in corners.unbind(-1))  # (M,) each
    p_x, p_y = point.unbind(1)
    e0, e1, e2 = _area(p_x, p_y, x1, y1, x2, y2), _area(p_x, p_y, x2, y2, x0, y0), _area(p_x, p_y, x0, y0, x1, y1)
    return (e0 * z0 + e1 * z1 + e2 * z2) / (e0 + e1 + e2)


def _winding(corners: Tensor) -> Tensor:
    """Which way triangles (M, 3, >= 2) wind on screen: the sign bit of their signed area -> (M,) bool."""
    x, y = corners[..., 0], corners[..., 1]  # (M, 3) each
    return torch.signbit(_area(x[:, 0], y[:, 0], x[:, 1], y[:, 1], x[:, 2], y[:, 2]))


def _area(p_u: Tensor, p_v: Tensor, a_u: Tensor, a_v: Tensor, b_u: Tensor, b_v: Tensor) -> Tensor:
    """Twice the signed area of triangles (p, a, b), (A,) coordinates each -> (A,). Its sign says which side of
    edge (a, b) p lies on: the far vertex across a silhouette edge lies on the same side as the face's own."""
    return (a_u - p_u) * (b_v - p_v) - (a_v - p_v) * (b_u - p_u)
