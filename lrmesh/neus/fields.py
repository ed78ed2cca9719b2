"""Per-scene fields on a hash grid: a NeuS signed distance field, a NeRF density field, and a colour field.

They follow instant-nsr-pl's volume-sdf, volume-density and volume-radiance models. Points are world
coordinates inside the scene's bounding box [-radius, radius]^3, which the hash grid sees as [0, 1]^3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm as _weight_norm

from lrmesh.neus.encoding import CompositeEncoding, HashGrid, HashGridConfig, SphericalHarmonics

# softplus(beta x) / beta: a ReLU whose kink is smoothed over ~1/beta, so the SDF has the second derivatives
# the eikonal loss needs; beta = 100 as NeuS and instant-nsr-pl.
SDF_SOFTPLUS_BETA = 100.0
# trunc_exp's backward uses exp(min(x, 15)): exp's gradient explodes for large logits (torch-ngp, instant-nsr-pl).
TRUNC_EXP_MAX = 15.0
XYZ_DIMS = 3  # the world position leads the SDF MLP's input (CompositeEncoding); the grid features follow


def mlp(
    in_dim: int,
    out_dim: int,
    hidden_dim: int,
    n_hidden_layers: int,
    *,
    activation: Literal["relu", "softplus"] = "relu",
    sphere_init_radius: float | None = None,
    weight_norm: bool = False,
) -> nn.Sequential:
    """Linear -> act -> (Linear -> act) x (n_hidden_layers - 1) -> Linear.

    `sphere_init_radius`: the geometric initialisation of Atzmon & Lipman 2020 ("SAL") as used by IGR and NeuS,
    so that every output (the SDF in column 0) starts as about |x| - r of the first three inputs x (the positive-homogeneous network has
    E[sum_j w_j relu(v_j . x)] = |x| for these variances). The last layer's weights are N(sqrt(pi) / sqrt(hidden),
    1e-4) with bias -r, the hidden ones N(0, sqrt(2) / sqrt(hidden)), and the first layer sees only the
    position: its weights on the inputs after the first three (the grid features) start at zero. Otherwise
    weights are Kaiming-uniform and biases zero. `weight_norm` reparametrises every linear layer as g v / |v| (Salimans &
    Kingma 2016), after the initialisation, so the initial function is unchanged.
    """
    if n_hidden_layers < 1:
        raise ValueError(f"mlp: n_hidden_layers must be >= 1, got {n_hidden_layers}")
    dims = [in_dim] + [hidden_dim] * n_hidden_layers + [out_dim]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(pairwise(dims)):
        linear = nn.Linear(a, b)
        is_first, is_last = i == 0, i == len(dims) - 2
        if sphere_init_radius is None:
            nn.init.kaiming_uniform_(linear.weight, nonlinearity="relu")
            nn.init.zeros_(linear.bias)
        else:
            _sphere_init(linear, is_first, is_last, sphere_init_radius)
        layers.append(_weight_norm(linear) if weight_norm else linear)
        if not is_last:
            layers.append(nn.Softplus(beta=SDF_SOFTPLUS_BETA) if activation == "softplus" else nn.ReLU())
    return nn.Sequential(*layers)


@torch.no_grad()
def _sphere_init(linear: nn.Linear, is_first: bool, is_last: bool, radius: float) -> None:
    fan_in, fan_out = linear.in_features, linear.out_features
    if is_last:
        linear.weight.normal_(math.sqrt(math.pi) / math.sqrt(fan_in), 1e-4)
        linear.bias.fill_(-radius)
        return
    linear.bias.zero_()
    linear.weight.normal_(0.0, math.sqrt(2) / math.sqrt(fan_out))
    if is_first:
        linear.weight[:, XYZ_DIMS:] = 0.0


class _TruncExp(torch.autograd.Function):
    """exp(x) whose gradient is exp(min(x, 15)) (torch-ngp's trunc_exp). The backward is made of differentiable
    operations, so it also has a (truncated) double backward."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=TRUNC_EXP_MAX))


def trunc_exp(x: Tensor) -> Tensor:
    return _TruncExp.apply(x)


def to_unit_cube(points: Tensor, radius: float) -> Tensor:
    """World points in [-radius, radius]^3 -> [0, 1]^3, the hash grid's domain."""
    return (points + radius) / (2 * radius)


@dataclass
class SDFFieldConfig:
    """NeuS geometry (instant-nsr-pl's volume-sdf; defaults from its neus-blender config where it sets them)."""

    radius: float = 1.0  # half-side of the scene box; [-radius, radius]^3 is the hash grid's [0, 1]^3
    grid: HashGridConfig = field(default_factory=HashGridConfig)
    include_xyz: bool = True  # feed the MLP the world position before the grid features (needed by sphere_init)
    hidden_dim: int = 64  # MLP width
    n_hidden_layers: int = 1  # MLP hidden layers
    feature_dim: int = 13  # MLP outputs; column 0 is the SDF, all of them go to the colour field
    grad_type: Literal["analytic", "finite_difference"] = "analytic"  # how SDFOutput.gradient is computed
    finite_difference_eps: float = 1e-3  # step of the central differences, world units
    sphere_init: bool = True  # start as the SDF of a sphere (mlp's geometric initialisation)
    sphere_init_radius: float = 0.5  # that sphere's radius, world units
    weight_norm: bool = True  # weight normalisation on the MLP's layers


@dataclass
class SDFOutput:
    sdf: Tensor  # (B,) signed distance in world units at init, negative inside
    gradient: Tensor | None  # (B, 3) d sdf / d points; None when not asked for
    features: Tensor  # (B, feature_dim) all MLP outputs, column 0 the SDF (as instant-nsr-pl)


class SDFField(nn.Module):
    """points (B, 3) world -> SDF, its spatial gradient (normal direction, eikonal loss) and geometry features.

    The MLP reads [points, hash grid features]: the position in world units (instant-nsr-pl feeds points / radius
    instead, which makes its initial SDF radius-relative), so at initialisation sdf = |x| - sphere_init_radius and
    |gradient| = 1, both in the scene's units.
    """

    def __init__(self, cfg: SDFFieldConfig, device: torch.device | str | None = None):
        super().__init__()
        if cfg.sphere_init and not cfg.include_xyz:
            raise ValueError("SDFFieldConfig: sphere_init needs include_xyz (it initialises the sphere from xyz)")
        self.cfg = cfg
        grid = HashGrid(cfg.grid, device)
        # The grid reads u in [0, 1]; u * 2r - r gives the MLP the world position back.
        self.encoding = CompositeEncoding(grid, cfg.include_xyz, scale=2 * cfg.radius, offset=-cfg.radius)
        self.network = mlp(
            self.encoding.n_output_dims,
            cfg.feature_dim,
            cfg.hidden_dim,
            cfg.n_hidden_layers,
            activation="softplus",
            sphere_init_radius=cfg.sphere_init_radius if cfg.sphere_init else None,
            weight_norm=cfg.weight_norm,
        )

    def update_step(self, global_step: int) -> None:
        self.encoding.update_step(global_step)

    def _outputs(self, points: Tensor) -> Tensor:
        return self.network(self.encoding(to_unit_cube(points, self.cfg.radius)))  # (B, feature_dim)

    def sdf(self, points: Tensor) -> Tensor:
        """(B, 3) -> (B,), without the spatial gradient: for marching cubes and the occupancy grid."""
        return self._outputs(points)[:, 0]

    def forward(self, points: Tensor, with_grad: bool = True) -> SDFOutput:
        """Differentiable w.r.t. the parameters (the gradient included) whenever autograd is enabled."""
        if not with_grad:
            out = self._outputs(points)
            return SDFOutput(sdf=out[:, 0], gradient=None, features=out)
        if self.cfg.grad_type == "finite_difference":
            return self._finite_difference(points)
        return self._analytic(points)

    def _analytic(self, points: Tensor) -> SDFOutput:
        create_graph = torch.is_grad_enabled()  # keep the gradient's graph for the eikonal loss
        # The gradient needs autograd even under no_grad / inference_mode; the results are detached then.
        with torch.inference_mode(False), torch.enable_grad():
            x = points.clone() if points.is_inference() else points
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            out = self._outputs(x)  # (B, feature_dim)
            sdf = out[:, 0]
            (gradient,) = torch.autograd.grad(sdf, x, torch.ones_like(sdf), create_graph=create_graph)
        if not create_graph:
            out, gradient = out.detach(), gradient.detach()
        return SDFOutput(sdf=out[:, 0], gradient=gradient, features=out)

    def _finite_difference(self, points: Tensor) -> SDFOutput:
        """Central differences (f(x + eps e_i) - f(x - eps e_i)) / (2 eps), one network call for all 7 points."""
        eps = self.cfg.finite_difference_eps
        steps = torch.eye(3, device=points.device, dtype=points.dtype) * eps
        steps = torch.stack([steps, -steps], dim=1).view(6, 3)  # +x, -x, +y, -y, +z, -z
        shifted = (points[:, None, :] + steps).view(-1, 3)  # (B * 6, 3)
        out = self._outputs(torch.cat([points, shifted]))  # (B * 7, feature_dim)
        n = points.shape[0]
        sdf_shifted = out[n:, 0].view(n, 3, 2)  # (B, axis, +/-)
        gradient = (sdf_shifted[..., 0] - sdf_shifted[..., 1]) / (2 * eps)  # (B, 3)
        return SDFOutput(sdf=out[:n, 0], gradient=gradient, features=out[:n])


@dataclass
class DensityFieldConfig:
    """NeRF geometry (instant-nsr-pl's volume-density; defaults from its nerf-blender config)."""

    radius: float = 1.0  # half-side of the scene box; [-radius, radius]^3 is the hash grid's [0, 1]^3
    grid: HashGridConfig = field(default_factory=HashGridConfig)
    include_xyz: bool = False  # also feed the MLP the world position
    hidden_dim: int = 64  # MLP width
    n_hidden_layers: int = 1  # MLP hidden layers
    feature_dim: int = 16  # MLP outputs; column 0 is the raw density, all of them go to the colour field
    density_activation: Literal["trunc_exp", "softplus"] = "trunc_exp"  # raw output -> density >= 0
    density_bias: float = -1.0  # added to the raw output before the activation: low density at init


@dataclass
class DensityOutput:
    density: Tensor  # (B,) volume density sigma >= 0
    features: Tensor  # (B, feature_dim) all MLP outputs, column 0 the raw density (as instant-nsr-pl)


class DensityField(nn.Module):
    """points (B, 3) world -> NeRF density and features (hash grid -> ReLU MLP)."""

    def __init__(self, cfg: DensityFieldConfig, device: torch.device | str | None = None):
        super().__init__()
        self.cfg = cfg
        grid = HashGrid(cfg.grid, device)
        self.encoding = CompositeEncoding(grid, cfg.include_xyz, scale=2 * cfg.radius, offset=-cfg.radius)
        self.network = mlp(self.encoding.n_output_dims, cfg.feature_dim, cfg.hidden_dim, cfg.n_hidden_layers)

    def update_step(self, global_step: int) -> None:
        self.encoding.update_step(global_step)

    def _activate(self, raw: Tensor) -> Tensor:
        raw = raw + self.cfg.density_bias
        return trunc_exp(raw) if self.cfg.density_activation == "trunc_exp" else nn.functional.softplus(raw)

    def density(self, points: Tensor) -> Tensor:
        """(B, 3) -> (B,): for the occupancy grid and marching cubes."""
        return self.forward(points).density

    def forward(self, points: Tensor) -> DensityOutput:
        out = self.network(self.encoding(to_unit_cube(points, self.cfg.radius)))  # (B, feature_dim)
        return DensityOutput(density=self._activate(out[:, 0]), features=out)


@dataclass
class ColorFieldConfig:
    """View-dependent colour (instant-nsr-pl's volume-radiance; defaults from its neus-blender config)."""

    feature_dim: int = 13  # width of the geometry features read (SDFFieldConfig / DensityFieldConfig.feature_dim)
    use_normal: bool = True  # also read the surface normal (NeuS; instant-nsr-pl's input_feature_dim + 3)
    sh_degree: int = 4  # spherical-harmonics bands of the view direction (degree^2 values)
    hidden_dim: int = 64  # MLP width
    n_hidden_layers: int = 2  # MLP hidden layers


class ColorField(nn.Module):
    """[features, normal?, SH(view direction)] -> ReLU MLP -> sigmoid -> rgb (B, 3) in [0, 1]."""

    def __init__(self, cfg: ColorFieldConfig):
        super().__init__()
        self.cfg = cfg
        self.direction_encoding = SphericalHarmonics(cfg.sh_degree)
        in_dim = cfg.feature_dim + 3 * cfg.use_normal + self.direction_encoding.n_output_dims
        self.network = mlp(in_dim, 3, cfg.hidden_dim, cfg.n_hidden_layers)

    def forward(self, features: Tensor, directions: Tensor, normals: Tensor | None = None) -> Tensor:
        """features (B, feature_dim), unit view directions (B, 3), normals (B, 3) when use_normal -> (B, 3)."""
        if (normals is not None) != self.cfg.use_normal:
            raise ValueError(f"ColorField: use_normal={self.cfg.use_normal} but normals given: {normals is not None}")
        inputs = [features, self.direction_encoding(directions)]
        if normals is not None:
            inputs.insert(1, normals)
        return torch.sigmoid(self.network(torch.cat(inputs, dim=-1)))
