"""Decoder MLPs on a regular lattice of points, for the price of a few plane-sized products.

A decoder head is an MLP on triplane features [f0; f1; f2] (`lrmesh.model.triplane`). Its first layer is linear,
so its pre-activation is W_0 f0 + W_1 f1 + W_2 f2 + b, and at a lattice point (x_i, y_j, z_k) plane p's feature
depends only on the point's two coordinates on that plane. Each term W_p f_p is therefore a (G, G, H) table over
the plane's G x G lattice (`plane_terms`), computed once, and a point's pre-activation is three table entries
added: no triplane sampling per point and no first-layer product per point, which at InstantMesh's sizes
(3 x 80 features in, 64 hidden) is most of a head's work. Only the later, narrow layers run per point.

The FlexiCubes weight head takes the features of a cube's 8 corners (8 x 3C in); corner k of cube (cx, cy, cz)
is the lattice point (cx, cy, cz) + offset_k, so plane p's share of the pre-activation, summed over the 8
corners, depends only on the cube's two coordinates on plane p as well (`cube_plane_terms`): the same three-table
form on the cube lattice, which removes the 1920-wide product per surface cube.

Off the lattice (`at_any_points`: vertex colours, texture texels) the same linearity runs the other way: bilinear
sampling is linear too, so W_p bilinear(f_p) = bilinear(W_p f_p), and the first layer can be applied to the
planes themselves (three H-channel planes of R x R texels instead of 3C channels), leaving a narrower sampling and
no first-layer product per point.

The numbers are those of querying every point (`MeshSynthesizer.grid_fields`, `NerfSynthesizer.query`) up to
float32 rounding: the features are sampled by the same `grid_sample` at the same coordinates; only the order of
the first layer's sums changes. Written here because no library evaluates a factorised first layer; plain
PyTorch, so it runs alike on CPU and GPU.

Conventions: plane p's table [m, n] is at its (column, row) axes `PLANE_AXES[p]` (`sample_triplanes_on_lattice`):
xy [x, y], xz [x, z], zy [z, y].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lrmesh.geometry.flexicubes_tables import CUBE_CORNERS
from lrmesh.model.triplane import PLANE_AXES, sample_triplanes

# Points per block of `on_lattice`: 8192 x 64 hidden x 4 bytes = 2 MiB per buffer, about a core's L2 cache.
LATTICE_CHUNK = 2**13

Terms = tuple[Tensor, Tensor, Tensor]  # xy, xz, zy tables (A, A, H): a first layer's pre-activation, bias in xz


def linears(net: nn.Sequential) -> list[nn.Linear]:
    """The linear layers of an `lrmesh.model.decoders.mlp` stack, in order (ReLU between them)."""
    return [m for m in net if isinstance(m, nn.Linear)]


def plane_terms(lattice: list[Tensor], first: nn.Linear) -> Terms:
    """Plane features on the lattice (three (G, G, C), `sample_triplanes_on_lattice`) and a head's first layer
    (in 3C) -> its pre-activation terms: plane p's (G, G, H) table W_p f_p, the bias added to the xz table."""
    c = lattice[0].shape[-1]
    xy, xz, zy = (f @ first.weight[:, p * c:(p + 1) * c].T for p, f in enumerate(lattice))
    return xy, xz + first.bias, zy


def cube_plane_terms(lattice: list[Tensor], first: nn.Linear) -> Terms:
    """The same for the FlexiCubes weight head (in 8 x 3C: corner k's features at columns k * 3C ..., corners in
    `CUBE_CORNERS` order) on the cube lattice: three (G - 1, G - 1, H) tables; entry [m, n] of plane p holds the
    sum over the 8 corners of cube m, n's plane-p terms. Corners with the same offset on a plane share a lattice
    point there, so their weight blocks are added before the product (4 products per plane, not 8)."""
    c = lattice[0].shape[-1]
    cells = lattice[0].shape[0] - 1
    tables = []
    for p, (a, b) in enumerate(PLANE_AXES):
        table = None
        for da in (0, 1):
            for db in (0, 1):
                corners = [k for k, offset in enumerate(CUBE_CORNERS) if (offset[a], offset[b]) == (da, db)]
                weight = sum(first.weight[:, (3 * k + p) * c:(3 * k + p + 1) * c] for k in corners)  # (H, C)
                term = (lattice[p] @ weight.T)[da:da + cells, db:db + cells]
                table = term if table is None else table + term
        tables.append(table)
    xy, xz, zy = tables
    return xy, xz + first.bias, zy


def _out_dim(layers: list[nn.Linear], width: int, rows: int | None) -> int:
    return rows if rows is not None else layers[-1].out_features if layers else width


def _rest(h: Tensor, layers: list[nn.Linear], rows: int | None) -> Tensor:
    """The layers after the first on pre-activations h (P, H): ReLU, hidden layers, the last layer's first `rows`
    outputs (all when None)."""
    if not layers:
        return h if rows is None else h[:, :rows]
    *hidden, last = layers
    h = h.relu()
    for layer in hidden:
        h = torch.addmm(layer.bias, h, layer.weight.T).relu_()
    weight, bias = (last.weight, last.bias) if rows is None else (last.weight[:rows], last.bias[:rows])
    return torch.addmm(bias, h, weight.T)


def _later_layers(h: Tensor, spare: Tensor, layers: list[nn.Linear], out: Tensor) -> None:
    """The layers after the first on pre-activations h (P, H) -> out (P, out_dim), the last layer's first out_dim
    outputs; h and spare (the same shape) are scratch buffers, overwritten."""
    if not layers:
        out.copy_(h[:, :out.shape[1]])
        return
    *hidden, last = layers
    h.relu_()
    for layer in hidden:
        h, spare = torch.addmm(layer.bias, h, layer.weight.T, out=spare).relu_(), h
    rows = out.shape[1]
    torch.addmm(last.bias[:rows], h, last.weight[:rows].T, out=out)


def at_points(terms: Terms, ids: Tensor, layers: list[nn.Linear], chunk: int = LATTICE_CHUNK,
              rows: int | None = None) -> Tensor:
    """The head at lattice points -> (P, out). ids (P,): flat ids of the tables' side^3 lattice in [x, y, z]
    order, id = (x * side + y) * side + z; `layers` are the head's linear layers after the first. In blocks of
    `chunk` points through two hidden buffers reused block after block, as `on_lattice` (no fresh tensor per
    block)."""
    xy, xz, zy = (t.reshape(-1, t.shape[-1]) for t in terms)
    side, width = terms[0].shape[1], xy.shape[1]
    out = xy.new_empty(ids.shape[0], _out_dim(layers, width, rows))
    buffers = [xy.new_empty(min(chunk, ids.shape[0]), width) for _ in range(2)]
    for start in range(0, ids.shape[0], chunk):
        block = ids[start:start + chunk]
        xy_id, z = block.div(side, rounding_mode="floor"), block.remainder(side)  # x * side + y, z
        x, y = xy_id.div(side, rounding_mode="floor"), xy_id.remainder(side)
        h, spare = buffers[0][:block.shape[0]], buffers[1][:block.shape[0]]
        torch.index_select(xy, 0, xy_id, out=h)
        h += torch.index_select(xz, 0, x * side + z, out=spare)
        h += torch.index_select(zy, 0, z * side + y, out=spare)
        _later_layers(h, spare, layers, out[start:start + block.shape[0]])
    return out


def on_lattice(terms: Terms, layers: list[nn.Linear], chunk: int = LATTICE_CHUNK, rows: int | None = None) -> Tensor:
    """The head at every point of the lattice -> (G, G, G, out), [i, j, k] at (x_i, y_j, z_k).

    In blocks of about `chunk` points (one x, a run of y, every z), through two hidden buffers reused block after
    block: the per-point work is a few passes over (points, H) tensors, bound by memory traffic, so blocks that
    stay in the core's cache run faster than large ones (bench/lattice.py) and fresh tensors per op would cost
    more in page faults than the arithmetic.
    """
    xy, xz, zy = terms
    g, width = xy.shape[0], xy.shape[-1]
    yz = zy.transpose(0, 1).contiguous()  # (y, z, H)
    out_dim = _out_dim(layers, width, rows)
    out = xy.new_empty(g, g, g, out_dim)
    run = max(1, min(g, chunk // g))  # y rows per block
    buffers = [xy.new_empty(run * g, width) for _ in range(2)]
    for i in range(g):
        for j in range(0, g, run):
            n = min(run, g - j)
            h, spare = buffers[0][:n * g], buffers[1][:n * g]
            torch.add(xy[i, j:j + n, None], xz[i, None], out=h.view(n, g, width))
            h.view(n, g, width).add_(yz[j:j + n])  # (n * g, H): the first layer's pre-activation
            _later_layers(h, spare, layers, out[i, j:j + n].view(n * g, out_dim))
    return out


def at_any_points(planes: Tensor, points: Tensor, layers: list[nn.Linear], box_warp: float, chunk: int) -> Tensor:
    """A head (its linear layers, first in 3C) at points (P, 3) anywhere, planes (1, 3, C, R, R) -> (P, out): the
    first layer applied to the planes before sampling (module docstring), chunks of `chunk` points.
    Differentiable, so training may use it as well."""
    first, *rest = layers
    c = planes.shape[2]
    weight = first.weight.reshape(first.out_features, 3, c)  # (H, plane, C)
    projected = torch.einsum("hpc,bpcij->bphij", weight, planes)  # (1, 3, H, R, R)
    outs = []
    for start in range(0, points.shape[0], chunk):
        sampled = sample_triplanes(projected, points[None, start:start + chunk], box_warp)[0]  # (n, 3H)
        h = sampled.view(sampled.shape[0], 3, -1).sum(dim=1) + first.bias
        outs.append(_rest(h, rest, None))
    return torch.cat(outs) if outs else planes.new_zeros(0, _out_dim(rest, first.out_features, None))
