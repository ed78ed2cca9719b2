"""Per-scene models: NeuS (SDF + colour, Wang et al. 2021) and NeRF (density + colour) on hash-grid fields, each
with its occupancy grid, rendering of packed ray samples, training losses, and marching-cubes export.

Both follow instant-nsr-pl's models/neus.py and models/nerf.py with the rendering math of
`lrmesh.neus.rendering` (pure PyTorch, so CPU and GPU alike). Coordinates are the scene's normalised frame
(`lrmesh.data.scenes.Scene`): the object inside [-radius, radius]^3.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import mcubes
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrmesh.errors import LrmeshError
from lrmesh.geometry.mesh import Mesh
from lrmesh.neus.config import FitConfig
from lrmesh.neus.encoding import HashGridConfig
from lrmesh.neus.fields import ColorField, ColorFieldConfig, DensityField, DensityFieldConfig, SDFField
from lrmesh.neus.occupancy import OccupancyGrid
from lrmesh.neus.rendering import (
    PackedSamples,
    accumulate,
    distortion_loss,
    eikonal_loss,
    neus_alpha,
    neus_occupancy_alpha,
    opaque_loss,
    ray_aabb,
    render_weights_from_alpha,
    render_weights_from_density,
    sparsity_loss,
    uniform_samples,
)

INV_S_RANGE = (1e-6, 1e6)  # instant-nsr-pl's VarianceNetwork clips exp(10 v) to this
NERF_MESH_THRESHOLD = 10.0  # density iso-level of NeRF meshes (instant-nsr-pl's nerf configs use 2.5-10)
MESH_CHUNK = 65536  # points per field query during export
FINE_PADDING = 0.05  # the fine pass covers the coarse mesh's box grown by this fraction of its size per side
CONTRACTED_RADIUS = 2.0  # mip-NeRF 360's contraction maps all of space into the ball of this radius


def contract(points: Tensor, radius: float) -> Tensor:
    """mip-NeRF 360's contraction (Barron et al. 2022, eq. 10) of x / radius: the unit ball is kept, the rest of
    space is squeezed into the shell 1 < |c| < 2, so a finite grid covers an unbounded scene."""
    x = points / radius
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.where(norm <= 1, x, (2 - 1 / norm) * x / norm)


class BackgroundModel(nn.Module):
    """NeRF of what lies beyond the scene box (instant-nsr-pl's learned background for unbounded scenes): density
    and colour on a hash grid over contracted space, sampled behind the box uniformly in disparity."""

    def __init__(self, cfg: FitConfig, radius: float):
        super().__init__()
        self.radius = radius
        self.samples = cfg.render.background_samples
        self.far = cfg.render.background_far * radius
        grid = HashGridConfig(n_levels=8, log2_hashmap_size=17, base_resolution=8, max_resolution=256, start_level=8)
        self.geometry = DensityField(DensityFieldConfig(radius=CONTRACTED_RADIUS, grid=grid, feature_dim=16))
        self.color = ColorField(ColorFieldConfig(feature_dim=16, use_normal=False, n_hidden_layers=1))

    def update_step(self, step: int) -> None:
        self.geometry.update_step(step)

    def forward(self, origins: Tensor, dirs: Tensor, start: Tensor, background: Tensor, stratified: bool,
                generator: torch.Generator | None) -> Tensor:
        """Colour (R, 3) seen beyond depth `start` (R,), composited over `background`."""
        n_rays, n = origins.shape[0], self.samples
        near = start.clamp_min(1e-3)
        u = torch.arange(n + 1, device=origins.device, dtype=origins.dtype).expand(n_rays, n + 1) / n
        if stratified:
            jitter = torch.rand(n_rays, 1, device=origins.device, generator=generator) / n
            u = torch.cat([u[:, :1], (u[:, 1:-1] + jitter).clamp_max(1), u[:, -1:]], dim=1)
        t = 1 / torch.lerp(1 / near[:, None], torch.full_like(near[:, None], 1 / self.far), u)  # (R, n + 1)
        ray_indices = torch.arange(n_rays, device=origins.device).repeat_interleave(n)
        samples = PackedSamples(ray_indices, t[:, :-1].reshape(-1), t[:, 1:].reshape(-1))
        points = contract(samples.points(origins, dirs), self.radius)
        out = self.geometry(points)
        weights, _, _ = render_weights_from_density(out.density, samples.t_starts, samples.t_ends, ray_indices,
                                                    n_rays)
        rgb = self.color(out.features, dirs[ray_indices])
        opacity = accumulate(weights, None, ray_indices, n_rays)
        return accumulate(weights, rgb, ray_indices, n_rays) + background * (1 - opacity)


@dataclass
class RenderOutput:
    rgb: Tensor  # (R, 3) composited over the background
    opacity: Tensor  # (R, 1)
    depth: Tensor  # (R, 1) expected depth (not divided by the opacity)
    num_samples: int
    samples: PackedSamples
    weights: Tensor  # (S,)
    sdf: Tensor | None = None  # (S,) NeuS
    gradients: Tensor | None = None  # (S, 3) NeuS, raw sdf gradients (eikonal)
    normal: Tensor | None = None  # (R, 3) NeuS, accumulated unit normals


class SceneModel(nn.Module):
    """What NeuS and NeRF share: the occupancy grid, ray marching, export. Subclasses provide the fields."""

    def __init__(self, cfg: FitConfig, radius: float):
        super().__init__()
        self.cfg = cfg
        self.radius = float(radius)
        self.step_size = math.sqrt(3) * 2 * self.radius / cfg.render.num_samples_per_ray
        self.occupancy = OccupancyGrid(self.radius, cfg.render.occupancy_resolution)
        self.background = BackgroundModel(cfg, self.radius) if cfg.render.background_model else None
        self.global_step = 0

    # --- to implement ---------------------------------------------------------------------------------------------
    def shade(self, points: Tensor, dirs: Tensor, samples: PackedSamples, n_rays: int) -> dict:
        raise NotImplementedError

    def occupancy_value(self, points: Tensor) -> Tensor:
        raise NotImplementedError

    def level(self, points: Tensor) -> Tensor:
        """The scalar field marching cubes reads, larger inside."""
        raise NotImplementedError

    def surface_colors(self, points: Tensor, normals: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def mesh_threshold(self) -> float:
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------------------------------
    def update_step(self, step: int) -> None:
        self.global_step = step
        self.geometry.update_step(step)
        if self.background is not None:
            self.background.update_step(step)

    def update_occupancy(self, step: int, generator: torch.Generator | None = None) -> bool:
        r = self.cfg.render
        return self.occupancy.update(step, self.occupancy_value, occ_thre=r.occupancy_threshold,
                                     warmup_steps=r.occupancy_warmup, n=r.occupancy_every, generator=generator)

    def render(self, origins: Tensor, dirs: Tensor, background: Tensor, stratified: bool = False,
               generator: torch.Generator | None = None) -> RenderOutput:
        """Rays (R, 3) with unit directions -> colours over `background` ((R, 3) or (3,)) and what the losses read."""
        n_rays = origins.shape[0]
        limits = ray_aabb(origins, dirs, self.radius, self.cfg.render.bound)
        samples = uniform_samples(origins, dirs, limits.near, limits.far, self.step_size, stratified=stratified,
                                  occupied=self.occupancy.occupied, generator=generator)
        points = samples.points(origins, dirs)
        out = self.shade(points, dirs[samples.ray_indices], samples, n_rays)
        weights = out["weights"]
        ri = samples.ray_indices
        opacity = accumulate(weights, None, ri, n_rays)
        if self.background is not None:  # what lies behind the box, seen through the foreground's holes
            background = self.background(origins, dirs, limits.far, background.expand(n_rays, 3), stratified,
                                         generator)
        rgb = accumulate(weights, out["rgb"], ri, n_rays) + background * (1 - opacity)
        depth = accumulate(weights, samples.t_mid, ri, n_rays)
        normal = None
        if out.get("normal") is not None:
            normal = accumulate(weights, out["normal"], ri, n_rays)
        return RenderOutput(rgb=rgb, opacity=opacity, depth=depth, num_samples=len(samples), samples=samples,
                            weights=weights, sdf=out.get("sdf"), gradients=out.get("gradients"), normal=normal)

    @torch.no_grad()
    def render_image(self, origins: Tensor, dirs: Tensor, background: Tensor, chunk: int) -> RenderOutput:
        """`render` in chunks of rays, without gradients; only rgb, opacity and depth are filled."""
        parts = [self.render(o, d, background) for o, d in zip(origins.split(chunk), dirs.split(chunk), strict=True)]
        cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
        empty = PackedSamples(*(torch.zeros(0, device=origins.device) for _ in range(3)))
        return RenderOutput(rgb=cat("rgb"), opacity=cat("opacity"), depth=cat("depth"),
                            num_samples=sum(p.num_samples for p in parts), samples=empty,
                            weights=torch.zeros(0, device=origins.device))

    def regularisers(self, out: RenderOutput, n_rays: int) -> dict[str, Tensor]:
        """Loss terms other than the colour and mask ones, unweighted."""
        loss = self.cfg.loss
        terms: dict[str, Tensor] = {}
        if loss.opaque:
            terms["opaque"] = opaque_loss(out.opacity)
        if loss.distortion:
            s = out.samples
            terms["distortion"] = distortion_loss(out.weights, s.t_mid, s.intervals, s.ray_indices, n_rays).mean()
        return terms

    @torch.no_grad()
    def extract_mesh(self, resolution: int, threshold: float | None = None, fine_pass: bool = True,
                     progress: Callable[[str], None] | None = None) -> Mesh:
        """Marching cubes on [-radius, radius]^3, then (fine_pass) again on the coarse mesh's padded box; vertex
        colours from the colour field seen head-on (view direction = -normal). In the normalised scene frame."""
        level = self.mesh_threshold if threshold is None else threshold
        lo = torch.full((3,), -self.radius)
        hi = torch.full((3,), self.radius)
        vertices, faces = self._marching_cubes(lo, hi, resolution, level)
        if fine_pass and len(vertices):
            if progress:
                progress("fine marching cubes")
            v_lo, v_hi = vertices.min(0).values, vertices.max(0).values
            pad = (v_hi - v_lo) * FINE_PADDING + (hi - lo) / (resolution - 1)
            vertices, faces = self._marching_cubes((v_lo - pad).clamp_min(-self.radius),
                                                   (v_hi + pad).clamp_max(self.radius), resolution, level)
        if not len(faces):
            raise LrmeshError(f"the fitted field has no surface at iso-level {level:g}: nothing to export "
                              "(fit longer, or set mesh.threshold)")
        device = next(self.parameters()).device
        vertices = vertices.to(device)
        faces_t = faces.to(device)
        normals = _vertex_normals(vertices, faces_t)
        colors = torch.cat([self.surface_colors(v, n) for v, n in
                            zip(vertices.split(MESH_CHUNK), normals.split(MESH_CHUNK), strict=True)])
        return Mesh(vertices=vertices.float(), faces=faces_t, vertex_colors=colors.clamp(0, 1).float())

    def _marching_cubes(self, lo: Tensor, hi: Tensor, resolution: int, level: float) -> tuple[Tensor, Tensor]:
        device = next(self.parameters()).device
        axes = [torch.linspace(float(lo[i]), float(hi[i]), resolution, device=device) for i in range(3)]
        points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
        values = torch.cat([self.level(p) for p in points.split(MESH_CHUNK)]).reshape((resolution,) * 3)
        verts, faces = mcubes.marching_cubes(values.float().cpu().numpy(), level)
        # PyMCubes winds faces counter-clockwise seen from the low side: outward for a field larger inside.
        scale = ((hi - lo) / (resolution - 1)).numpy()
        vertices = torch.from_numpy((verts * scale + lo.numpy()).astype(np.float32))
        return vertices, torch.from_numpy(faces.astype(np.int64))


def _vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals of a counter-clockwise mesh."""
    v0, v1, v2 = (vertices[faces[:, i]] for i in range(3))
    face_normals = torch.cross(v1 - v0, v2 - v0, dim=-1)
    normals = torch.zeros_like(vertices)
    for i in range(3):
        normals.index_add_(0, faces[:, i], face_normals)
    return F.normalize(normals, dim=-1)


class NeuSModel(SceneModel):
    """SDF field + colour field reading (features, normal, view direction), a learned sharpness inv_s."""

    def __init__(self, cfg: FitConfig, radius: float):
        super().__init__(cfg, radius)
        self.geometry = SDFField(dataclasses.replace(cfg.geometry, radius=self.radius))
        self.color = ColorField(dataclasses.replace(cfg.color, feature_dim=cfg.geometry.feature_dim, use_normal=True))
        self.variance = nn.Parameter(torch.tensor(float(cfg.neus.init_variance)))

    @property
    def inv_s(self) -> Tensor:
        return torch.exp(self.variance * 10.0).clamp(*INV_S_RANGE)

    @property
    def cos_anneal_ratio(self) -> float:
        steps = self.cfg.neus.cos_anneal_steps
        return 1.0 if steps <= 0 else min(1.0, self.global_step / steps)

    def shade(self, points: Tensor, dirs: Tensor, samples: PackedSamples, n_rays: int) -> dict:
        out = self.geometry(points, with_grad=True)
        normal = F.normalize(out.gradient, dim=-1)
        ratio = self.cos_anneal_ratio if self.training else 1.0
        alpha = neus_alpha(out.sdf, normal, dirs, samples.intervals, self.inv_s, ratio)
        weights, _ = render_weights_from_alpha(alpha, samples.ray_indices, n_rays)
        rgb = self.color(out.features, dirs, normal)
        return {"weights": weights, "rgb": rgb, "sdf": out.sdf, "gradients": out.gradient, "normal": normal}

    def occupancy_value(self, points: Tensor) -> Tensor:
        return neus_occupancy_alpha(self.geometry.sdf(points), self.inv_s, self.step_size)

    def level(self, points: Tensor) -> Tensor:
        return -self.geometry.sdf(points)

    @property
    def mesh_threshold(self) -> float:
        return 0.0

    def surface_colors(self, points: Tensor, normals: Tensor) -> Tensor:
        out = self.geometry(points, with_grad=True)
        normal = F.normalize(out.gradient, dim=-1)
        return self.color(out.features, -normal, normal)

    def regularisers(self, out: RenderOutput, n_rays: int) -> dict[str, Tensor]:
        terms = super().regularisers(out, n_rays)
        loss = self.cfg.loss
        if loss.eikonal and out.gradients is not None:
            terms["eikonal"] = eikonal_loss(out.gradients)
        if loss.sparsity and out.sdf is not None:
            terms["sparsity"] = sparsity_loss(out.sdf, loss.sparsity_scale)
        return terms


class NeRFModel(SceneModel):
    """Density field + colour field reading (features, view direction)."""

    def __init__(self, cfg: FitConfig, radius: float):
        super().__init__(cfg, radius)
        self.geometry = DensityField(dataclasses.replace(cfg.density, radius=self.radius))
        self.color = ColorField(dataclasses.replace(cfg.color, feature_dim=cfg.density.feature_dim, use_normal=False))

    def shade(self, points: Tensor, dirs: Tensor, samples: PackedSamples, n_rays: int) -> dict:
        out = self.geometry(points)
        weights, _, _ = render_weights_from_density(out.density, samples.t_starts, samples.t_ends,
                                                    samples.ray_indices, n_rays)
        return {"weights": weights, "rgb": self.color(out.features, dirs)}

    def occupancy_value(self, points: Tensor) -> Tensor:
        return self.geometry.density(points) * self.step_size

    def level(self, points: Tensor) -> Tensor:
        return self.geometry.density(points)

    @property
    def mesh_threshold(self) -> float:
        return NERF_MESH_THRESHOLD

    def surface_colors(self, points: Tensor, normals: Tensor) -> Tensor:
        return self.color(self.geometry(points).features, -normals)


def build_model(cfg: FitConfig, radius: float) -> SceneModel:
    return (NeuSModel if cfg.method == "neus" else NeRFModel)(cfg, radius)
