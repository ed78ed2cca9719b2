"""FlexiCubes isosurface extraction, restricted to the cubes the surface passes through.

FlexiCubes (Shen et al., "Flexible Isosurface Extraction for Gradient-Based Mesh Optimization", ACM TOG 42(4),
SIGGRAPH 2023) is Dual Marching Cubes with learnt per-cube weights: beta (one per cube edge) weights the edge
crossings averaged into a dual vertex, alpha (one per corner) bends where an edge is crossed, and gamma (one per
cube) picks how each quad is split into triangles. The output is differentiable in the grid vertex positions, the
SDF and the weights.

Why our own rather than the reference class (nv-tlabs/FlexiCubes, vendored by TencentARC/InstantMesh): that class
puts its tables on a device fixed at construction ("cuda" by default), normalises weights for every cube of the
grid, allocates a (res, res, res, 5) int64 volume for the ambiguity check on every call, and builds its grid by
deduplicating 8 corner positions per cube (47 s and 5 GB at res 128 on a 2-core CPU), while InstantMesh's wrapper
adds a `unique` over all 25 M cube edges. This version only looks at the surface cubes, weights included, so the
caller can evaluate the weight MLP on those alone; the only work over all cubes is the boolean surface test, and
the grid is computed in closed form. It runs on whatever device its inputs are on, CPU and GPU alike.

It follows the reference's sequence of sorts and scatters, so vertices, faces and L_dev come out in the reference's
order and with the same floating-point operations (parity is tested against the InstantMesh fixture). One
deliberate difference: a quad whose grid edge starts at a vertex with sdf exactly 0 is wound outwards here, where
the reference winds it inwards (see `_oriented_quads`); that also moves it within the face list. Tetrahedral
output and the QEF (`grad_func`) mode of the reference are not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

from lrmesh.geometry import flexicubes_tables as tables

NUM_EDGES = 12
NUM_CORNERS = 8
ENTRY_CHUNK = 2**20  # (dual vertex, edge) entries per chunk of _dual_vertices
FLEXI_WEIGHTS = NUM_EDGES + NUM_CORNERS + 1  # raw weight columns: 12 beta (edges), 8 alpha (corners), 1 gamma
BETA_COLUMNS = slice(0, NUM_EDGES)
ALPHA_COLUMNS = slice(NUM_EDGES, NUM_EDGES + NUM_CORNERS)
GAMMA_COLUMN = NUM_EDGES + NUM_CORNERS
QUAD_SIZE = 4  # cubes around an interior grid edge = corners of its dual quad
GRID_DECIMALS_SCALE = 1e5  # the reference rounds grid coordinates to 5 decimals before deduplicating them
SPLIT_EPS = 1e-8  # keeps the gamma-weighted quad centre finite when both gamma products vanish

# Quad corners are (a, b, c, d) in cyclic order; two triangles sharing a diagonal.
_SPLIT_ALONG_02 = [0, 1, 2, 0, 2, 3]
_SPLIT_ALONG_13 = [0, 1, 3, 3, 1, 2]
# The four quad sides (a, b), (b, c), (c, d), (d, a); each becomes a triangle with the quad centre.
_QUAD_SIDES = [0, 1, 1, 2, 2, 3, 3, 0]
# The four cubes around an edge come sorted by cube index; these reorder them into a cycle whose winding makes
# the face normal point towards positive SDF, depending on whether the edge's first end point is outside.
_CYCLE_FIRST_OUTSIDE = [0, 1, 3, 2]
_CYCLE_FIRST_INSIDE = [2, 3, 1, 0]


@dataclass
class FlexiCubesMesh:
    """Output of `flexicubes_extract`."""

    vertices: Tensor  # (V, 3) dual vertices (plus, when training, one centre per quad)
    faces: Tensor  # (F, 3) int64, wound so the normal points towards positive SDF (outwards)
    # L_dev of the paper (eq. 8): |distance(crossing, dual vertex) - its mean over the dual vertex|, one entry per
    # (dual vertex, edge) pair, shape (K,); exactly the reference's third return value (callers take the mean).
    # Empty (0,) when not asked for (`flexicubes_extract(with_dev_loss=False)`, the inference default).
    dev_loss: Tensor


@dataclass(frozen=True)
class _Tables:
    dmc: Tensor  # (256, 4, 7) int8 edge ids per dual vertex, -1 padded (int8: its (S, 4, 7) gather stays small)
    num_vd: Tensor  # (256,)
    check: Tensor  # (256, 5) [is_ambiguous, dx, dy, dz, replacement case]
    cube_edges: Tensor  # (12, 2) corner pairs


@cache
def _device_tables(device: torch.device) -> _Tables:
    def as_long(data: list) -> Tensor:
        return torch.tensor(data, dtype=torch.long, device=device)

    return _Tables(
        dmc=torch.tensor(tables.DMC_TABLE, dtype=torch.int8, device=device),
        num_vd=as_long(tables.NUM_VD_TABLE),
        check=as_long(tables.CHECK_TABLE),
        cube_edges=as_long(tables.CUBE_EDGES),
    )


def flexicubes_grid(res: int, scale: float, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """The regular FlexiCubes grid: vertices ((res + 1)^3, 3) float32 and cubes (res^3, 8) int64.

    Vertex (ix, iy, iz) has index (ix * (res + 1) + iy) * (res + 1) + iz and sits at
    (round5(i / res) - 0.5) * scale per axis, where round5 rounds to 5 decimals in float32 as the reference's
    construct_voxel_grid does (it deduplicates rounded corner positions). The rounding is a no-op when res divides
    10^5 (32 for one); at 64 or 128 it moves coordinates by up to 5e-6 * scale. Cube (cx, cy, cz) has index
    (cx * res + cy) * res + cz and corner k at offset (k & 1, (k >> 1) & 1, (k >> 2) & 1).
    """
    side = res + 1
    axis = torch.arange(side, dtype=torch.float32, device=device) / res
    axis = (torch.round(axis * GRID_DECIMALS_SCALE) / GRID_DECIMALS_SCALE - 0.5) * scale  # (res + 1,)
    gx, gy, gz = torch.meshgrid(axis, axis, axis, indexing="ij")
    vertices = torch.stack([gx, gy, gz], dim=-1).reshape(-1, 3)

    cell = torch.arange(res, device=device)
    first_corner = (cell[:, None, None] * side + cell[None, :, None]) * side + cell[None, None, :]  # (res,)*3
    corner_steps = torch.tensor([side * side, side, 1], device=device)
    corner_offsets = (torch.tensor(tables.CUBE_CORNERS, device=device) * corner_steps).sum(-1)  # (8,)
    cubes = first_corner.reshape(-1, 1) + corner_offsets
    return vertices, cubes


def surface_cube_mask(sdf: Tensor, cubes: Tensor) -> Tensor:
    """(M,) bool: cubes whose 8 corners do not all share the sign of sdf (sdf < 0 is inside)."""
    inside = (sdf.reshape(-1) < 0)[cubes]  # (M, 8) bool, the only per-corner tensor over all cubes
    return inside.any(dim=1) & ~inside.all(dim=1)


def normalize_weights(raw: Tensor, weight_scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Raw (S, 21) network weights to beta (S, 12), alpha (S, 8) in 1 +- scale and gamma (S,) in (0, 1)."""
    # mul then add_ in place: one temporary fewer per tensor, and autograd keeps tanh's output intact.
    beta = torch.tanh(raw[:, BETA_COLUMNS]).mul(weight_scale).add_(1)
    alpha = torch.tanh(raw[:, ALPHA_COLUMNS]).mul(weight_scale).add_(1)
    gamma = torch.sigmoid(raw[:, GAMMA_COLUMN]).mul(weight_scale).add_((1 - weight_scale) / 2)
    return beta, alpha, gamma


def _case_ids(inside: Tensor, surface_ids: Tensor, res: int, tab: _Tables) -> Tensor:
    """(S,) marching-cubes case per surface cube, with the C16/C19 face ambiguity resolved.

    An ambiguous cube whose table-given neighbour is ambiguous as well (judged on the original cases) takes the
    replacement case. Neighbours are found by index arithmetic on the regular grid and a binary search among the
    ambiguous surface cubes, so nothing the size of the grid is allocated.
    """
    case = inside[:, 0].long()  # (S,): corner k inside sets bit k (no (S, 8) int64 product)
    for k in range(1, NUM_CORNERS):
        case |= inside[:, k].long() << k
    check = tab.check[case]  # (S, 5)
    ambiguous = (check[:, 0] == 1).nonzero().squeeze(1)  # (P,) rows into the surface cubes
    if ambiguous.numel() == 0:
        return case
    cube = surface_ids[ambiguous]  # (P,) ascending, since surface_ids is
    coords = torch.stack([cube // (res * res), (cube // res) % res, cube % res], dim=-1)  # (P, 3)
    neighbour = coords + check[ambiguous, 1:4]
    in_grid = ((neighbour >= 0) & (neighbour < res)).all(dim=-1)
    neighbour_id = (neighbour[:, 0] * res + neighbour[:, 1]) * res + neighbour[:, 2]
    slot = torch.searchsorted(cube, neighbour_id).clamp(max=cube.numel() - 1)
    flip = in_grid & (cube[slot] == neighbour_id)
    case = case.clone()
    case[ambiguous[flip]] = check[ambiguous[flip], 4]
    return case


def _crossed_edges(corners: Tensor, inside: Tensor, num_vertices: int, tab: _Tables) -> tuple[Tensor, Tensor, Tensor]:
    """Deduplicate the sign-changing grid edges of the surface cubes.

    Returns the edges as (E, 2) vertex ids ordered like the reference's row-wise `unique` (lexicographically),
    slot_edge (S, 12) giving each cube edge's id in that list or -1 where the edge has no sign change, and how many
    surface cubes hold each edge (E,) (4 for every edge off the grid boundary).
    """
    first, second = tab.cube_edges[:, 0], tab.cube_edges[:, 1]  # every cube orients a shared edge the same way
    crossed = inside.index_select(1, first) != inside.index_select(1, second)  # (S, 12)
    where = crossed.reshape(-1).nonzero().squeeze(1)  # row-major (cube, edge) positions of the crossed edges
    cube, edge = where // NUM_EDGES, where % NUM_EDGES
    # Sorting keys v0 * N + v1 sorts the (v0, v1) rows.
    key = corners[cube, first[edge]] * num_vertices + corners[cube, second[edge]]
    unique_keys, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    slot_edge = torch.full(crossed.shape, -1, dtype=torch.int32, device=corners.device)  # int32: (S, 12) is large
    slot_edge.view(-1)[where] = inverse.int()
    edges = torch.stack([unique_keys // num_vertices, unique_keys % num_vertices], dim=-1)  # (E, 2)
    return edges, slot_edge, counts


@dataclass
class _DualLayout:
    """Which (cube, edge) pairs feed which dual vertex, in the reference's numbering."""

    entry_cube: Tensor  # (K,) surface-cube row of each (dual vertex, edge) entry
    entry_edge: Tensor  # (K,) cube edge 0..11
    entry_vd: Tensor  # (K,) dual vertex id
    vd_cube: Tensor  # (V,) surface-cube row of each dual vertex
    vd_num_edges: Tensor  # (V,) edges averaged by each dual vertex


def _dual_layout(case: Tensor, tab: _Tables) -> _DualLayout:
    """Enumerate dual vertices and their (cube, edge) entries in the reference's numbering.

    Cubes are grouped by how many dual vertices they emit (1, 2, 3, 4), keep their order within a group, and
    number their dual vertices consecutively; entries follow the same order.
    """
    order = torch.sort(tab.num_vd[case], stable=True).indices  # (S,)
    groups = tab.dmc[case[order]]  # (S, 4, 7) int8
    _, slots, width = groups.shape
    used = groups != -1
    vd_used = used[..., 0]  # (S, 4); a cube emitting n dual vertices fills rows 0..n-1
    # Row-major positions of the used entries and dual vertices (one nonzero each; mask indexing would repeat it).
    entries = used.reshape(-1).nonzero().squeeze(1)  # (K,) into (S, 4, 7), ascending
    vds = vd_used.reshape(-1).nonzero().squeeze(1)  # (V,) into (S, 4), ascending; dual vertex i is vds[i]
    vd_id = torch.empty(vd_used.numel(), dtype=torch.long, device=case.device)
    vd_id[vds] = torch.arange(vds.numel(), device=case.device)
    return _DualLayout(
        entry_cube=order[entries // (slots * width)],
        entry_edge=groups.reshape(-1)[entries].long(),
        entry_vd=vd_id[entries // width],
        vd_cube=order[vds // slots],
        vd_num_edges=used.sum(dim=-1).reshape(-1)[vds],
    )


def _interpolate_zero(values: Tensor, points: Tensor) -> Tensor:
    """Zero of the linear function through (points[:, 0], values[:, 0]) and (points[:, 1], values[:, 1]).

    values (K, 2), points (K, 2, 3) -> (K, 3); written as (p0 * v1 - p1 * v0) / (v1 - v0), the reference's exact
    float operations.
    """
    v0, v1 = values[:, 0:1], values[:, 1:2]
    return (points[:, 0] * v1 - points[:, 1] * v0) / (v1 - v0)


def _dev_loss(vd: Tensor, crossings: Tensor, layout: _DualLayout) -> Tensor:
    """L_dev (eq. 8): per entry, |distance(crossing, its dual vertex) - mean of those distances at that vertex|."""
    dist = torch.linalg.vector_norm(crossings - vd[layout.entry_vd], dim=-1)  # (K,)
    mean = torch.zeros_like(vd[:, 0]).index_add(0, layout.entry_vd, dist) / layout.vd_num_edges.float()  # (V,)
    return (dist - mean[layout.entry_vd]).abs()


def _dual_vertices(
    vertices: Tensor,
    sdf: Tensor,
    edges: Tensor,
    slot_edge: Tensor,
    layout: _DualLayout,
    beta: Tensor,
    alpha: Tensor,
    tab: _Tables,
    with_dev_loss: bool = True,
) -> tuple[Tensor, Tensor]:
    """Dual vertices (V, 3), beta-weighted means of the alpha-shifted edge crossings (paper section 4.2), and L_dev
    (empty unless with_dev_loss). The (K, ...) per-entry work runs in chunks of ENTRY_CHUNK entries, each summed into
    the dual vertices in entry order, so its temporaries stay small at millions of entries."""
    num_vd = layout.vd_cube.numel()
    beta_sum = beta.new_zeros(num_vd, 1)
    weighted = vertices.new_zeros(num_vd, 3)
    for start in range(0, layout.entry_vd.numel(), ENTRY_CHUNK):
        part = slice(start, start + ENTRY_CHUNK)
        cube, edge, vd_id = layout.entry_cube[part], layout.entry_edge[part], layout.entry_vd[part]
        entry_slot = cube * NUM_EDGES + edge  # row-major into (S, 12)
        ends = edges[slot_edge.reshape(-1)[entry_slot].long()]  # (k, 2)
        corner_pair = tab.cube_edges[edge]  # (k, 2) the cube corners at the edge's two ends
        entry_alpha = alpha.reshape(-1)[cube[:, None] * NUM_CORNERS + corner_pair]  # (k, 2)
        shifted = _interpolate_zero(sdf[ends] * entry_alpha, vertices[ends])  # (k, 3)
        entry_beta = beta.reshape(-1)[entry_slot][:, None]  # (k, 1)
        beta_sum = beta_sum.index_add(0, vd_id, entry_beta)
        weighted = weighted.index_add(0, vd_id, shifted * entry_beta)
    vd = weighted / beta_sum
    if not with_dev_loss:
        return vd, vd.new_zeros(0)
    entry_edge_id = slot_edge.reshape(-1)[layout.entry_cube * NUM_EDGES + layout.entry_edge].long()  # (K,)
    crossings = _interpolate_zero(sdf[edges], vertices[edges])  # (E, 3) plain linear crossings
    return vd, _dev_loss(vd, crossings[entry_edge_id], layout)


def _oriented_quads(sdf: Tensor, edges: Tensor, slot_edge: Tensor, edge_counts: Tensor, slot_vd: Tensor) -> Tensor:
    """(Q, 4) dual-vertex ids of the quad around every crossed interior edge, wound towards positive SDF.

    Quads come in the reference's order: first those whose edge starts outside, then the others, each group by
    edge id; within a quad the four cubes around the edge are taken in cube order before being cycled.
    """
    where = (slot_edge >= 0).reshape(-1).nonzero().squeeze(1)  # row-major (cube, edge) slots of crossed edges
    in_quad = where[edge_counts[slot_edge.reshape(-1)[where].long()] == QUAD_SIZE]  # ascending, as a mask gives
    edge_ids, order = torch.sort(slot_edge.reshape(-1)[in_quad].long(), stable=True)  # stable keeps cube order
    quads = slot_vd.reshape(-1)[in_quad][order].long().reshape(-1, QUAD_SIZE)  # (Q, 4)
    # "Outside" is not (sdf < 0), the same test that classified the corners. The reference tests sdf > 0 here,
    # which winds the quads around an edge ending in an exact zero the wrong way; elsewhere the two agree.
    first_outside = ~(sdf[edges[edge_ids[::QUAD_SIZE], 0]] < 0)  # (Q,)
    cycle_out = quads.new_tensor(_CYCLE_FIRST_OUTSIDE)
    cycle_in = quads.new_tensor(_CYCLE_FIRST_INSIDE)
    return torch.cat([quads[first_outside][:, cycle_out], quads[~first_outside][:, cycle_in]])


def _split_quads(vd: Tensor, vd_gamma: Tensor, quads: Tensor, training: bool) -> tuple[Tensor, Tensor]:
    """Triangulate quads (paper section 4.3). Returns the mesh vertices and (F, 3) faces.

    Inference: two triangles, cut along the diagonal whose end points have the larger gamma product.
    Training: four triangles fanning from a centre vertex, the gamma-weighted blend of the two diagonal midpoints,
    so the split stays differentiable in gamma.
    """
    quad_gamma = vd_gamma[quads]  # (Q, 4)
    gamma_02 = quad_gamma[:, 0] * quad_gamma[:, 2]  # (Q,)
    gamma_13 = quad_gamma[:, 1] * quad_gamma[:, 3]
    if not training:
        along_02 = (gamma_02 > gamma_13)[:, None]
        faces = torch.where(along_02, quads[:, _SPLIT_ALONG_02], quads[:, _SPLIT_ALONG_13])  # (Q, 6)
        return vd, faces.reshape(-1, 3)
    corners = vd[quads]  # (Q, 4, 3)
    mid_02 = (corners[:, 0] + corners[:, 2]) / 2
    mid_13 = (corners[:, 1] + corners[:, 3]) / 2
    weight_sum = (gamma_02 + gamma_13 + SPLIT_EPS)[:, None]
    centre = (mid_02 * gamma_02[:, None] + mid_13 * gamma_13[:, None]) / weight_sum  # (Q, 3)
    centre_id = torch.arange(quads.shape[0], device=quads.device) + vd.shape[0]
    sides = quads[:, _QUAD_SIDES].reshape(-1, QUAD_SIZE, 2)  # (Q, 4, 2)
    fan = centre_id[:, None, None].expand(-1, QUAD_SIZE, 1)
    faces = torch.cat([sides, fan], dim=-1).reshape(-1, 3)  # (4Q, 3)
    return torch.cat([vd, centre]), faces


def _empty_mesh(like: Tensor) -> FlexiCubesMesh:
    return FlexiCubesMesh(
        vertices=like.new_zeros(0, 3),
        faces=torch.zeros(0, 3, dtype=torch.long, device=like.device),
        dev_loss=like.new_zeros(0),
    )


def flexicubes_extract(
    vertices: Tensor,
    sdf: Tensor,
    cubes: Tensor,
    res: int,
    surface: Tensor,
    weights: Tensor | None,
    training: bool = False,
    weight_scale: float = 0.5,
    qef_reg_scale: float = 1e-3,
    with_dev_loss: bool | None = None,
) -> FlexiCubesMesh:
    """Extract the FlexiCubes triangle mesh of the zero level set of `sdf`.

    vertices: (N, 3) grid vertices, possibly deformed; sdf: (N,) (or (N, 1)), negative inside; cubes: (M, 8) from
    `flexicubes_grid(res, ...)` (the ambiguity check relies on its cube numbering); surface: (M,) bool from
    `surface_cube_mask`; weights: raw (S, 21) network weights of the surface cubes only, rows in ascending cube
    order, or None for plain Dual Marching Cubes (all weights 1). training: split quads into four triangles around
    a differentiable centre instead of two. with_dev_loss: compute L_dev (default: when training; inference has no
    use for it and skips its per-entry tensors). qef_reg_scale belongs to the reference's QEF mode, which is not
    implemented; it is accepted for signature parity and unused.
    """
    del qef_reg_scale
    sdf = sdf.reshape(-1)
    surface_ids = surface.nonzero().squeeze(1)  # (S,) ascending
    num_surface = surface_ids.numel()
    if num_surface == 0:
        return _empty_mesh(vertices)
    if weights is None:
        beta = vertices.new_ones(num_surface, NUM_EDGES)
        alpha = vertices.new_ones(num_surface, NUM_CORNERS)
        gamma = vertices.new_ones(num_surface)
    elif weights.shape != (num_surface, FLEXI_WEIGHTS):
        expected = (num_surface, FLEXI_WEIGHTS)
        raise ValueError(f"weights must be {expected} (surface cubes only), got {tuple(weights.shape)}")
    else:
        beta, alpha, gamma = normalize_weights(weights, weight_scale)

    tab = _device_tables(sdf.device)
    corners = cubes[surface_ids]  # (S, 8)
    inside = sdf[corners] < 0  # (S, 8)
    case = _case_ids(inside, surface_ids, res, tab)
    edges, slot_edge, edge_counts = _crossed_edges(corners, inside, vertices.shape[0], tab)
    layout = _dual_layout(case, tab)
    vd, dev_loss = _dual_vertices(vertices, sdf, edges, slot_edge, layout, beta, alpha, tab,
                                  training if with_dev_loss is None else with_dev_loss)

    slot_vd = torch.zeros_like(slot_edge)  # (S, 12) dual vertex serving each crossed cube edge
    slot_vd.view(-1)[layout.entry_cube * NUM_EDGES + layout.entry_edge] = layout.entry_vd.int()
    quads = _oriented_quads(sdf, edges, slot_edge, edge_counts, slot_vd)
    mesh_vertices, faces = _split_quads(vd, gamma[layout.vd_cube], quads, training)
    return FlexiCubesMesh(vertices=mesh_vertices, faces=faces, dev_loss=dev_loss)
