"""Synthesizers: what the model does with its triplanes.

- `NerfSynthesizer` (InstantNeRF, stage 1): density + colour, volume rendering; a mesh by marching cubes on
  the density grid.
- `MeshSynthesizer` (InstantMesh, stage 2): SDF + vertex deformation on a FlexiCubes grid and FlexiCubes
  weights per cube; the mesh by FlexiCubes; colour queried at points.

Mesh extraction is where the reference spends its time and memory (all 2.1 M cubes of the 128^3 grid go
through the weight MLP at once). Here every grid query runs through plane tables on the lattice
(`lrmesh.model.lattice`: no per-point triplane sampling or first-layer product), chunked, and the deformation
and weight heads run only where they change the result: on the vertices and cubes that the surface crosses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mcubes
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrmesh.cameras import pixel_rays
from lrmesh.config import SynthesizerConfig
from lrmesh.geometry.flexicubes import flexicubes_extract, flexicubes_grid, surface_cube_mask
from lrmesh.geometry.mesh import Mesh
from lrmesh.model.decoders import FLEXI_WEIGHT_SCALE, MeshDecoder, NerfDecoder, NerfSample, padded_sigmoid
from lrmesh.model.lattice import (LATTICE_CHUNK, at_any_points, at_points, cube_plane_terms, linears, on_lattice,
                                  plane_terms)
from lrmesh.model.triplane import sample_triplanes, sample_triplanes_on_lattice
from lrmesh.render.volume import RenderOutput, render_rays

# Points per chunk for field queries: 2^18 points x 240 features x 4 bytes = 250 MB at the large preset.
POINT_CHUNK = 2**18
# FlexiCubes deformation is tanh(raw) / (grid_res * DEFORMATION_DIVISOR): at most a quarter of a cube.
DEFORMATION_DIVISOR = 4.0
# Rays rendered per chunk.
RAY_CHUNK = 4096

Progress = Callable[[str], None]


def _chunked(fn: Callable[[Tensor], Tensor], points: Tensor, chunk: int = POINT_CHUNK) -> Tensor:
    """fn over rows of points (P, ...) in chunks -> concatenated results."""
    return torch.cat([fn(points[i:i + chunk]) for i in range(0, points.shape[0], chunk)], dim=0)


class NerfSynthesizer(nn.Module):
    """Triplane NeRF: density (softplus(raw - 1)) and colour at points; volume rendering; marching cubes."""

    def __init__(self, cfg: SynthesizerConfig, triplane_dim: int):
        super().__init__()
        self.cfg = cfg
        self.decoder = NerfDecoder(3 * triplane_dim, cfg)

    def query(self, planes: Tensor, points: Tensor) -> NerfSample:
        """planes (B, 3, C, H, W), points (B, P, 3) -> raw density (B, P, 1), rgb (B, P, 3)."""
        return self.decoder(sample_triplanes(planes, points, self.cfg.box_warp))

    def render(self, planes: Tensor, cameras: Tensor, resolution: int, u_stratified: Tensor | None = None,
               u_importance: Tensor | None = None, generator: torch.Generator | None = None,
               backgrounds: Tensor | None = None, region: tuple[int, int, int] | None = None) -> dict[str, Tensor]:
        """Render views of each triplane.

        Args:
            planes: (B, 3, C, H, W); cameras: (B, M, 25) render cameras (cameras.render_cameras), world frame.
            u_stratified, u_importance: optional (B, M, R*R, n) random draws to inject (see render/volume.py).
            backgrounds: optional (B, M, 1 or 3) background colour per view (default white).
            region: optional (row0, col0, R) crop of the S x S image (OpenLRM's training patches).
        Returns:
            images_rgb (B, M, 3, R, R), images_depth (B, M, 1, R, R), images_weight (B, M, 1, R, R).

        With `render_views_jointly` (OpenLRM) the M cameras of a triplane are one batch of rays, and the random
        draws, when not injected, come in the reference's order: the coarse jitter as rand(n, M*R*R) read
        depth-major (its `rand_like` on a permuted tensor), then the importance draws rand(M*R*R, n).
        """
        b, m = cameras.shape[:2]
        size = resolution if region is None else region[2]
        groups = [(i, slice(0, m)) for i in range(b)] if self.cfg.render_views_jointly else \
            [(i, slice(j, j + 1)) for i in range(b) for j in range(m)]  # one camera per call, as InstantMesh
        out: dict[str, list[Tensor]] = {"images_rgb": [], "images_depth": [], "images_weight": []}
        n_coarse = n_fine = self.cfg.samples_per_ray // 2
        for i, views in groups:
            origins, dirs = pixel_rays(cameras[i, views], resolution, region)  # (V, R*R, 3)
            rays = origins.shape[0] * origins.shape[1]
            u_s = None if u_stratified is None else u_stratified[i, views].reshape(rays, -1)
            u_i = None if u_importance is None else u_importance[i, views].reshape(rays, -1)
            if self.cfg.render_views_jointly and u_s is None:
                u_s = torch.rand(n_coarse, rays, generator=generator, device=planes.device).T
                u_i = torch.rand(rays, n_fine, generator=generator, device=planes.device)
            bg = None
            if backgrounds is not None:
                bg = backgrounds[i, views, None, :].expand(-1, size * size, -1).reshape(rays, -1)
            r = self.render_rays(planes[i:i + 1], origins.reshape(-1, 3), dirs.reshape(-1, 3), u_stratified=u_s,
                                 u_importance=u_i, generator=generator, background=bg)
            for key, value in (("images_rgb", r.rgb), ("images_depth", r.depth), ("images_weight", r.opacity)):
                # (V*R*R, c) -> V images (c, R, R)
                out[key].extend(value.reshape(-1, size * size, value.shape[-1]).transpose(1, 2)
                                .reshape(-1, value.shape[-1], size, size).unbind(0))
        return {k: torch.stack(v).reshape(b, m, *v[0].shape) for k, v in out.items()}

    def render_rays(self, planes: Tensor, origins: Tensor, dirs: Tensor, u_stratified: Tensor | None = None,
                    u_importance: Tensor | None = None, generator: torch.Generator | None = None,
                    background: Tensor | None = None) -> RenderOutput:
        """Volume-render rays (R, 3) through one triplane (1, 3, C, H, W): `samples_per_ray` / 2 stratified
        samples, as many importance samples, inside the box the planes span."""
        n_coarse = n_fine = self.cfg.samples_per_ray // 2

        def field(points: Tensor) -> tuple[Tensor, Tensor]:
            sample = self.query(planes, points.reshape(1, -1, 3))
            return sample.sigma.reshape(*points.shape[:-1], 1), sample.rgb.reshape(*points.shape[:-1], 3)

        return render_rays(field, origins, dirs, n_coarse, n_fine, box_half_side=self.cfg.box_warp / 2,
                           u_stratified=u_stratified, u_importance=u_importance, generator=generator, chunk=RAY_CHUNK,
                           background=background, empty_density_divisor=self.cfg.empty_density_divisor,
                           normalize_depth=self.cfg.normalize_depth)

    @torch.no_grad()
    def extract_mesh(self, planes: Tensor, with_colors: bool = True, progress: Progress | None = None,
                     resolution: int | None = None, threshold: float | None = None) -> Mesh:
        """Marching cubes on the activated density over [-1, 1]^3 at `resolution`^3 (default `mesh_resolution`),
        iso-level `threshold` (default `mesh_threshold`); vertex colours from the colour head.
        planes: (1, 3, C, H, W). The mesh is in the planes' world frame (z up)."""
        res, device = resolution or self.cfg.mesh_resolution, planes.device
        level = self.cfg.mesh_threshold if threshold is None else threshold
        if progress:
            progress("grid query")
        density = self.grid_density(planes, res)
        if progress:
            progress("marching cubes")
        verts, faces = mcubes.marching_cubes(density.cpu().numpy(), level)
        # index units -> [-1, 1] in float64, then float32, as the references map PyMCubes' float64 vertices
        vertices = torch.as_tensor(verts / (res - 1) * 2 - 1, dtype=torch.float32, device=device)
        # PyMCubes already winds faces counter-clockwise seen from the low-density side (outside).
        faces = torch.as_tensor(faces.astype("int64"), device=device)
        mesh = Mesh(vertices=vertices, faces=faces)
        if with_colors and mesh.num_vertices:
            if progress:
                progress("colours")
            mesh.vertex_colors = self.rgb(planes, vertices)
        return mesh

    def rgb(self, planes: Tensor, points: Tensor) -> Tensor:
        """Colour at points (P, 3) -> (P, 3), chunked. planes: (1, 3, C, H, W). The decoder's first layer is applied
        to the planes before sampling (`lrmesh.model.lattice.at_any_points`): query(...).rgb up to float32
        rounding."""
        raw = at_any_points(planes, points, linears(self.decoder.net), self.cfg.box_warp, LATTICE_CHUNK)
        return padded_sigmoid(raw[:, 1:])  # as NerfDecoder: output 0 is the density

    def grid_density(self, planes: Tensor, res: int) -> Tensor:
        """Activated density softplus(raw - 1) on the grid linspace(-1, 1, res)^3 -> (res, res, res), [i, j, k]
        at (x_i, y_j, z_k). planes: (1, 3, C, H, W).

        The same numbers as querying every grid point (`query`), up to float32 rounding, for a fraction of the
        work: the first layer's three plane terms are res x res tables and only the later layers run on every
        point (`lrmesh.model.lattice`), in cache-sized blocks.
        """
        axis = torch.linspace(-1, 1, res, device=planes.device)
        first, *rest = linears(self.decoder.net)
        lattice = sample_triplanes_on_lattice(planes, axis, self.cfg.box_warp)
        # only the density row of the last layer (output 0); colours are queried at the vertices later
        out = on_lattice(plane_terms(lattice, first), rest, rows=1)[..., 0]
        return F.softplus(out - 1)


@dataclass
class GridFields:
    """The mesh synthesizer's raw predictions on the whole FlexiCubes grid (training and parity tests)."""

    sdf: Tensor  # (N, 1) raw SDF at the grid vertices
    deformation: Tensor  # (N, 3) raw, before tanh scaling
    weights: Tensor  # (M, 21) raw FlexiCubes weights per cube


class MeshSynthesizer(nn.Module):
    """Triplane SDF field + FlexiCubes (InstantMesh): mesh extraction and colour queries."""

    def __init__(self, cfg: SynthesizerConfig, triplane_dim: int):
        super().__init__()
        self.cfg = cfg
        self.decoder = MeshDecoder(3 * triplane_dim, cfg)
        self._grid: tuple[Tensor, Tensor] | None = None

    def grid(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """FlexiCubes grid vertices (N, 3) and cubes (M, 8), built once per device."""
        if self._grid is None or self._grid[0].device != device:
            self._grid = flexicubes_grid(self.cfg.grid_res, self.cfg.grid_scale, device=device)
        return self._grid

    def features(self, planes: Tensor, points: Tensor) -> Tensor:
        """planes (1, 3, C, H, W), points (P, 3) -> features (P, 3C)."""
        return sample_triplanes(planes, points[None], self.cfg.box_warp)[0]

    def rgb(self, planes: Tensor, points: Tensor) -> Tensor:
        """Colour at points (P, 3) -> (P, 3), chunked; the head's first layer applied to the planes before sampling
        (`lrmesh.model.lattice.at_any_points`): decoder.rgb(features(...)) up to float32 rounding."""
        raw = at_any_points(planes, points, linears(self.decoder.net_rgb), self.cfg.box_warp, LATTICE_CHUNK)
        return padded_sigmoid(raw)  # as MeshDecoder.rgb

    def scale_deformation(self, raw: Tensor) -> Tensor:
        return torch.tanh(raw) / (self.cfg.grid_res * DEFORMATION_DIVISOR)

    def grid_fields(self, planes: Tensor) -> GridFields:
        """All raw predictions on the whole grid; memory grows with the grid (training, tests)."""
        verts, cubes = self.grid(planes.device)
        feats = self.features(planes, verts)  # (N, 3C)
        weights = _chunked(lambda c: self.decoder.weights(feats[c]), cubes, POINT_CHUNK // 8)
        return GridFields(self.decoder.sdf(feats), self.decoder.deformation(feats), weights)

    def fix_empty_sdf(self, sdf: Tensor) -> Tensor:
        """If no interior grid vertex differs in sign from the others, impose a tiny shape (reference
        get_sdf_deformation_prediction): the centre vertex positive, the two outer layers negative."""
        n = self.cfg.grid_res + 1
        interior = sdf.reshape(n, n, n)[1:-1, 1:-1, 1:-1]
        if (interior > 0).any() and (interior < 0).any():
            return sdf
        fixed = torch.zeros(n, n, n, dtype=sdf.dtype, device=sdf.device)
        centre = self.cfg.grid_res // 2 + 1  # the reference's choice, one past the middle
        fixed[centre, centre, centre] = 1.0 - sdf.min()
        boundary = torch.ones(n, n, n, dtype=torch.bool, device=sdf.device)
        boundary[2:-2, 2:-2, 2:-2] = False
        fixed[boundary] = -1.0 - sdf.max()
        fixed = fixed.reshape(-1)
        return torch.where(fixed == 0, sdf, fixed)

    @torch.no_grad()
    def extract_mesh(self, planes: Tensor, with_colors: bool = True, progress: Progress | None = None) -> Mesh:
        """FlexiCubes mesh of one triplane (1, 3, C, H, W), with vertex colours unless asked not to."""
        verts, cubes = self.grid(planes.device)
        if progress:
            progress("grid query")
        # Every head through its plane tables on the grid lattice (lrmesh.model.lattice): the same numbers as
        # grid_fields up to float32 rounding. The grid's axis is the z of vertices (0, 0, k), alike on every axis.
        side = self.cfg.grid_res + 1
        lattice = sample_triplanes_on_lattice(planes, verts[:side, 2], self.cfg.box_warp)
        first, *rest = linears(self.decoder.net_sdf)
        sdf = self.fix_empty_sdf(on_lattice(plane_terms(lattice, first), rest).reshape(-1))  # (N,)
        surface = surface_cube_mask(sdf, cubes)  # (M,)
        # Only vertices of surface cubes can move a mesh vertex, and only surface cubes need weights.
        used = torch.zeros(verts.shape[0], dtype=torch.bool, device=verts.device)
        used[cubes[surface].reshape(-1)] = True  # a scatter, not the sort torch.unique would do
        used = used.nonzero().squeeze(1)  # (K,) ascending
        first, *rest = linears(self.decoder.net_deformation)
        deformed = verts.clone()
        deformed[used] += self.scale_deformation(at_points(plane_terms(lattice, first), used, rest))
        first, *rest = linears(self.decoder.net_weight)
        weights = at_points(cube_plane_terms(lattice, first), surface.nonzero()[:, 0], rest)  # (S, 21)
        weights.mul_(FLEXI_WEIGHT_SCALE)  # as MeshDecoder.weights
        if progress:
            progress("flexicubes")
        fc = flexicubes_extract(deformed, sdf, cubes, self.cfg.grid_res, surface, weights)
        mesh = Mesh(vertices=fc.vertices, faces=fc.faces)
        if with_colors and mesh.num_vertices:
            if progress:
                progress("colours")
            mesh.vertex_colors = self.rgb(planes, mesh.vertices)
        return mesh


def make_synthesizer(cfg: SynthesizerConfig, triplane_dim: int) -> NerfSynthesizer | MeshSynthesizer:
    if cfg.kind == "nerf":
        return NerfSynthesizer(cfg, triplane_dim)
    if cfg.kind == "mesh":
        return MeshSynthesizer(cfg, triplane_dim)
    raise ValueError(f"unknown synthesizer kind {cfg.kind!r}; expected 'mesh' or 'nerf'")
