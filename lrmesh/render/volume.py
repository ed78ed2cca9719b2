"""NeRF volume rendering of a field inside a box, as the InstantNeRF checkpoints were trained to be rendered.

The recipe (EG3D's ImportanceRenderer with TensoRF-style out-of-box filtering, Mip-NeRF's ray marcher):

1. Intersect each ray with the box [-h, h]^3 (slab method); rays that miss borrow the nearest valid limits.
2. `n_coarse` stratified depths t_i = t_near + i * d + u_i * d, d = (t_far - t_near) / (n_coarse - 1).
3. Composite on interval midpoints: sigma_i = softplus(mean of the raw densities at both ends - 1),
   alpha_i = 1 - exp(-sigma_i * delta_i), T_i = prod_{j<i} (1 - alpha_j + 1e-10), w_i = alpha_i T_i.
4. `n_importance` depths drawn by inverse-CDF from the (max-then-mean smoothed, +0.01) coarse weights,
   merged and sorted with the coarse ones, composited again.
5. Background: rgb + bg (1 - sum w), white unless a background colour is given per ray.

Samples outside the box get zero colour and a density so negative that softplus gives exactly zero
(float32 lowest / `empty_density_divisor`: 3 in InstantMesh and OpenLRM v1.0, 8 in OpenLRM v1.1).
The depth is sum w t (InstantMesh) or, with `normalize_depth`, sum w t / sum w (OpenLRM), NaN -> inf; either
way clamped to the range of all sample depths of the call.
Every random draw can be injected (`u_stratified`, `u_importance`) so a render is reproducible across
random generators; otherwise they come from `generator`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# The references' "empty" density is float32 lowest / divisor: large but safe to average without overflowing.
FLOAT32_LOWEST = -torch.finfo(torch.float32).max
DEFAULT_EMPTY_DIVISOR = 3.0
# Keeps the transmittance product away from exact zero (Mip-NeRF ray marcher).
TRANSMITTANCE_EPS = 1e-10
# Floor added to the smoothed coarse weights so every interval can still be sampled (NeRF importance sampling).
IMPORTANCE_FLOOR = 0.01
PDF_EPS = 1e-5

FieldFn = Callable[[Tensor], tuple[Tensor, Tensor]]  # points (R, S, 3) -> raw density (R, S, 1), rgb (R, S, 3)


@dataclass
class RenderOutput:
    rgb: Tensor  # (R, 3), white background composited when asked
    depth: Tensor  # (R, 1), sum of w_i * t_i (divided by the opacity when normalize_depth)
    opacity: Tensor  # (R, 1), sum of w_i


def slab_intersection(origins: Tensor, directions: Tensor, half_side: float) -> tuple[Tensor, Tensor]:
    """Slab method for rays (R, 3) against the box [-h, h]^3 -> signed t_near, t_far (R,), unclamped.

    t_near = max_k min(t_k^-, t_k^+), t_far = min_k max(t_k^-, t_k^+) with t_k^(+-) = (+-h - o_k) / d_k;
    the ray's line meets the box iff t_far > t_near (the caller decides what to do with t < 0 and misses).
    """
    inv = 1.0 / directions
    lo = (-half_side - origins) * inv
    hi = (half_side - origins) * inv
    t_near = torch.minimum(lo, hi)  # (R, 3) per-axis entry
    t_far = torch.maximum(lo, hi)
    near = torch.maximum(torch.maximum(t_near[:, 0], t_near[:, 1]), t_near[:, 2])
    far = torch.minimum(torch.minimum(t_far[:, 0], t_far[:, 1]), t_far[:, 2])
    return near, far


def ray_box_limits(origins: Tensor, directions: Tensor, half_side: float) -> tuple[Tensor, Tensor]:
    """Entry and exit distances of rays (R, 3) through the box [-h, h]^3 -> t_near, t_far (R, 1).

    Rays that miss the box get the limits of the valid rays instead (t_near = min of the valid t_near,
    t_far = max of the valid t_near, as the reference does), so they sample empty space.
    """
    near, far = slab_intersection(origins, directions, half_side)
    valid = far > near
    if valid.any():
        near_valid = near[valid]
        near = torch.where(valid, near, near_valid.min())
        far = torch.where(valid, far, near_valid.max())
    return near[:, None], far[:, None]


def stratified_depths(t_near: Tensor, t_far: Tensor, n: int, u: Tensor) -> Tensor:
    """n jittered depths per ray: t_near + (i + u_i) (t_far - t_near) / (n - 1) -> (R, n); u (R, n) in [0, 1)."""
    steps = torch.arange(n, dtype=torch.float32, device=t_near.device) / (n - 1)
    depths = t_near + steps * (t_far - t_near)
    return depths + u * ((t_far - t_near) / (n - 1))


def composite(rgb: Tensor, sigma_raw: Tensor, depths: Tensor,
              normalize_depth: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Midpoint quadrature of the volume rendering integral.

    Args:
        rgb (R, S, 3), sigma_raw (R, S, 1), depths (R, S) sorted along each ray.
        normalize_depth: depth = sum w t / sum w (OpenLRM) instead of sum w t.
    Returns:
        rgb (R, 3), depth (R, 1), opacity (R, 1), weights (R, S-1). The caller clamps the depth to the
        range of the sample depths of the whole render (so that chunking does not change it).
    """
    deltas = depths[:, 1:] - depths[:, :-1]  # (R, S-1)
    rgb_mid = (rgb[:, :-1] + rgb[:, 1:]) / 2
    sigma_mid = F.softplus((sigma_raw[:, :-1, 0] + sigma_raw[:, 1:, 0]) / 2 - 1)  # activation bias -1 (EG3D)
    depth_mid = (depths[:, :-1] + depths[:, 1:]) / 2
    alpha = 1 - torch.exp(-sigma_mid * deltas)
    shifted = torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha + TRANSMITTANCE_EPS], dim=-1)
    weights = alpha * torch.cumprod(shifted, dim=-1)[:, :-1]  # (R, S-1)
    out_rgb = (weights[..., None] * rgb_mid).sum(dim=1)
    opacity = weights.sum(dim=1, keepdim=True)
    depth = (weights * depth_mid).sum(dim=1, keepdim=True)
    if normalize_depth:
        depth = depth / opacity  # 0 / 0 for an empty ray: NaN, made +inf below and then clamped
    depth = torch.nan_to_num(depth, float("inf"))
    return out_rgb, depth, opacity, weights


def importance_depths(depths: Tensor, weights: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF samples from the coarse weights (NeRF, Mildenhall et al. 2020, sec. 5.2).

    depths (R, S) coarse, weights (R, S-1) from `composite`, u (R, K) in [0, 1) -> (R, K) new depths.
    The weights are smoothed by a 2-tap max then a 2-tap mean (Mip-NeRF), floored, and define a piecewise
    constant pdf over the interval midpoints, dropping the two end intervals.
    """
    with torch.no_grad():
        w = F.max_pool1d(weights[:, None], 2, 1, padding=1)
        w = F.avg_pool1d(w, 2, 1)[:, 0] + IMPORTANCE_FLOOR  # (R, S-1)
        bins = 0.5 * (depths[:, :-1] + depths[:, 1:])  # (R, S-1) edges of S-2 bins
        w = w[:, 1:-1] + PDF_EPS  # (R, S-3)
        pdf = w / w.sum(dim=-1, keepdim=True)
        cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, dim=-1)], dim=-1)  # (R, S-2)
        idx = torch.searchsorted(cdf, u.contiguous(), right=True)
        below = (idx - 1).clamp_min(0)
        above = idx.clamp_max(pdf.shape[-1])
        cdf_lo, cdf_hi = cdf.gather(1, below), cdf.gather(1, above)
        bin_lo, bin_hi = bins.gather(1, below), bins.gather(1, above)
        denom = cdf_hi - cdf_lo
        denom = torch.where(denom < PDF_EPS, torch.ones_like(denom), denom)
        return bin_lo + (u - cdf_lo) / denom * (bin_hi - bin_lo)


def _query(field: FieldFn, origins: Tensor, directions: Tensor, depths: Tensor, box: tuple[float, float],
           empty_density: float) -> tuple[Tensor, Tensor]:
    """Field at depths along rays, with the out-of-box samples emptied -> rgb (R, S, 3), sigma (R, S, 1)."""
    points = origins[:, None] + depths[..., None] * directions[:, None]  # (R, S, 3)
    sigma, rgb = field(points)
    inside = ((points >= box[0]) & (points <= box[1])).all(dim=-1, keepdim=True)
    sigma = torch.where(inside, sigma, torch.full_like(sigma, empty_density))
    rgb = torch.where(inside, rgb, torch.zeros_like(rgb))
    return rgb, sigma


def render_rays(field: FieldFn, origins: Tensor, directions: Tensor, n_coarse: int, n_importance: int,
                box_half_side: float = 1.0, white_background: bool = True, u_stratified: Tensor | None = None,
                u_importance: Tensor | None = None, generator: torch.Generator | None = None,
                chunk: int = 8192, background: Tensor | None = None,
                empty_density_divisor: float = DEFAULT_EMPTY_DIVISOR, normalize_depth: bool = False) -> RenderOutput:
    """Render rays (R, 3) through a field in the box [-h, h]^3; see the module docstring for the recipe.

    `background` (R, 1) or (R, 3) replaces the white background when given (OpenLRM's random backgrounds).
    """
    r, device = origins.shape[0], origins.device
    if u_stratified is None:
        u_stratified = torch.rand(r, n_coarse, generator=generator, device=device)
    if u_importance is None and n_importance > 0:
        u_importance = torch.rand(r, n_importance, generator=generator, device=device)
    # Ray limits use statistics over all rays, so they are computed before chunking.
    t_near, t_far = ray_box_limits(origins, directions, box_half_side)
    box = (-box_half_side, box_half_side)
    empty = FLOAT32_LOWEST / empty_density_divisor
    outputs, depth_lo, depth_hi = [], float("inf"), -float("inf")
    for s in range(0, r, chunk):
        o, d = origins[s:s + chunk], directions[s:s + chunk]
        depths = stratified_depths(t_near[s:s + chunk], t_far[s:s + chunk], n_coarse, u_stratified[s:s + chunk])
        rgb, sigma = _query(field, o, d, depths, box, empty)
        if n_importance > 0:
            weights = composite(rgb, sigma, depths)[3]
            fine = importance_depths(depths, weights, u_importance[s:s + chunk])
            rgb_f, sigma_f = _query(field, o, d, fine, box, empty)
            depths, order = torch.sort(torch.cat([depths, fine], dim=1), dim=1)
            rgb = torch.cat([rgb, rgb_f], dim=1).gather(1, order[..., None].expand(-1, -1, 3))
            sigma = torch.cat([sigma, sigma_f], dim=1).gather(1, order[..., None])
        outputs.append(composite(rgb, sigma, depths, normalize_depth)[:3])
        depth_lo, depth_hi = min(depth_lo, depths.min().item()), max(depth_hi, depths.max().item())
    rgb, depth, opacity = (torch.cat(parts, dim=0) for parts in zip(*outputs))
    depth = depth.clamp(depth_lo, depth_hi)
    if background is not None:
        rgb = rgb + background * (1 - opacity)
    elif white_background:
        rgb = rgb + 1 - opacity
    return RenderOutput(rgb=rgb, depth=depth, opacity=opacity)
