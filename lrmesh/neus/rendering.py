"""Volume rendering on packed ray samples for per-scene NeuS / NeRF fitting, in pure PyTorch.

The recipe follows instant-nsr-pl (which calls nerfacc's CUDA kernels); these are the same operations written
with cumulative sums and `index_add`, so they run on CPU and GPU alike:

    ray_aabb -> uniform_samples (fixed step, occupancy test) -> field -> alpha (NeuS) or density (NeRF)
             -> render_weights_from_alpha / _density -> accumulate (rgb, depth, opacity, normal) + losses

Packed layout (nerfacc): the samples of all rays form one flat list of S samples; sample s lies on ray
`ray_indices[s]` between depths `t_starts[s]` and `t_ends[s]`. The samples of a ray are contiguous and sorted by
depth, rays come in increasing index order, and a ray may have no samples at all. `uniform_samples` produces
exactly this; every function below that scans along rays relies on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lrmesh.render.volume import slab_intersection

RayBound = Literal["cube", "sphere"]
OccupiedFn = Callable[[Tensor], Tensor]  # points (N, 3) -> bool (N,), True where a sample must be kept

# NeuS eq. 13 is a ratio of two sigmoids; the reference adds 1e-5 to both terms so that empty space far outside
# (both sigmoids ~0) gives alpha ~1e-5 / 1e-5 -> a finite value instead of 0 / 0 (NeuS models/renderer.py).
NEUS_ALPHA_EPS = 1e-5
# Floor of 1 - alpha inside the log of the transmittance, applied straight-through: where alpha = 1 the log stays
# finite and T behind that sample is at most 1e-6 per opaque sample (negligible colour). It must not be tiny: the
# backward of log divides by it, and the gradient it divides is a difference of two batch-wide packed sums whose
# float64 rounding (~1e-16 of the batch total) a floor like 1e-150 blew up to inf, then NaN (a NeuS fit, step 629).
SURVIVAL_FLOOR = 1e-6
# instant-nsr-pl clamps the opacity to [1e-3, 1 - 1e-3] before its binary cross-entropies (systems/neus.py).
OPACITY_CLAMP = 1e-3


@dataclass
class RayLimits:
    near: Tensor  # (R,) entry depth, at least `near_plane`; 0 where the ray misses
    far: Tensor  # (R,) exit depth; 0 where the ray misses (so near == far: no samples)
    hit: Tensor  # (R,) bool, the ray crosses the bound beyond `near_plane`


@dataclass
class PackedSamples:
    ray_indices: Tensor  # (S,) long, sorted; see the module docstring
    t_starts: Tensor  # (S,)
    t_ends: Tensor  # (S,)

    def __len__(self) -> int:
        return self.ray_indices.shape[0]

    @property
    def t_mid(self) -> Tensor:  # (S,) where the field is queried
        return (self.t_starts + self.t_ends) / 2

    @property
    def intervals(self) -> Tensor:  # (S,) the "dists" / deltas of NeRF and NeuS
        return self.t_ends - self.t_starts

    def points(self, origins: Tensor, dirs: Tensor) -> Tensor:
        """Midpoints o_r + t_mid d_r of the samples of rays (R, 3) -> (S, 3)."""
        return origins[self.ray_indices] + self.t_mid[:, None] * dirs[self.ray_indices]

    def select(self, keep: Tensor) -> PackedSamples:
        """The samples where `keep` (S,) bool is True; the packed order is preserved."""
        return PackedSamples(self.ray_indices[keep], self.t_starts[keep], self.t_ends[keep])


# --- ray marching --------------------------------------------------------------------------------------------------

def _ray_sphere(origins: Tensor, dirs: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """|o + t d| = r: t = (-b -+ sqrt(b^2 - a c)) / a with a = d.d, b = o.d, c = o.o - r^2 -> near, far (R,).

    Lines that miss the sphere (b^2 - a c < 0) get near = +inf, far = -inf.
    """
    a = (dirs * dirs).sum(-1)
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - radius**2
    disc = b * b - a * c
    root = disc.clamp_min(0).sqrt()
    near = torch.where(disc > 0, (-b - root) / a, torch.full_like(a, float("inf")))
    far = torch.where(disc > 0, (-b + root) / a, torch.full_like(a, -float("inf")))
    return near, far


def ray_aabb(origins: Tensor, dirs: Tensor, radius: float, bound: RayBound = "cube",
             near_plane: float = 0.0) -> RayLimits:
    """Where rays (R, 3) cross the cube [-r, r]^3 (slab method) or the sphere |x| <= r.

    near = max(t_enter, near_plane), far = t_exit, hit = far > near; so a camera inside the bound starts at
    `near_plane` and a bound behind the camera is a miss. Misses get near = far = 0. `dirs` need not be unit
    length: depths are in units of |d|.

    Example: origin (0, 0, 3), direction (0, 0, -1), r = 1 -> near 2, far 4 (cube and sphere alike).
    """
    if bound == "cube":
        near, far = slab_intersection(origins, dirs, radius)
    elif bound == "sphere":
        near, far = _ray_sphere(origins, dirs, radius)
    else:
        raise ValueError(f"bound must be 'cube' or 'sphere', got {bound!r}")
    near = near.clamp_min(near_plane)
    hit = far > near  # NaN limits (a zero direction component on a box face) compare False: a miss
    zero = torch.zeros_like(near)
    return RayLimits(near=torch.where(hit, near, zero), far=torch.where(hit, far, zero), hit=hit)


@torch.no_grad()
def uniform_samples(origins: Tensor, dirs: Tensor, near: Tensor, far: Tensor, step_size: float,
                    stratified: bool = False, occupied: OccupiedFn | None = None,
                    generator: torch.Generator | None = None) -> PackedSamples:
    """March rays (R, 3) from `near` to `far` (R,) with a fixed step; not differentiable.

    Sample i of ray r spans [t0 + i dt, t0 + (i + 1) dt] with t0 = near_r + u_r dt, and is kept while its midpoint
    is before far_r (nerfacc's marcher), so a ray has ceil((far - t0) / dt - 1/2) samples and its last interval can
    end up to dt / 2 past `far`. `stratified` draws one u_r ~ U[0, 1) per ray (nerfacc), otherwise u_r = 0.
    `occupied(points (N, 3)) -> (N,) bool` is asked about every midpoint and the samples it rejects are dropped:
    this is how an `OccupancyGrid` skips empty space. Rays with near >= far get no samples.
    """
    n_rays = near.shape[0]
    jitter = torch.zeros_like(near)
    if stratified:
        jitter = torch.rand(n_rays, generator=generator, device=near.device, dtype=near.dtype)
    start = near + jitter * step_size  # (R,)
    counts = torch.ceil((far - start) / step_size - 0.5).clamp_min(0).long()  # (R,)
    ray_indices = torch.repeat_interleave(torch.arange(n_rays, device=near.device), counts)  # (S,)
    first = torch.cumsum(counts, 0) - counts  # (R,) position of each ray's first sample
    local = torch.arange(ray_indices.shape[0], device=near.device) - first[ray_indices]  # (S,) i along its ray
    t_starts = start[ray_indices] + local.to(start.dtype) * step_size
    samples = PackedSamples(ray_indices, t_starts, t_starts + step_size)
    if occupied is not None and len(samples) > 0:
        samples = samples.select(occupied(samples.points(origins, dirs)))
    return samples


# --- compositing ---------------------------------------------------------------------------------------------------

def exclusive_cumsum_packed(x: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """Per-ray exclusive prefix sum of packed values (S,): out_s = sum of x over the earlier samples of its ray.

    One global cumsum, minus its value at the ray's first sample. The subtraction cancels the sums of all earlier
    rays, so pass float64 when those can be large (a float32 running total over a whole batch loses the digits of
    the current ray). Differentiable. Example: x [1, 2, 3 | 4, 5], rays [0, 0, 0, 1, 1] -> [0, 1, 3 | 0, 4].
    """
    exclusive = F.pad(torch.cumsum(x, 0), (1, 0))[:-1]  # (S,) sum over every earlier sample, all rays
    counts = torch.bincount(ray_indices, minlength=n_rays)
    first = torch.cumsum(counts, 0) - counts  # (R,)
    return exclusive - exclusive[first[ray_indices]]


def render_weights_from_alpha(alpha: Tensor, ray_indices: Tensor, n_rays: int) -> tuple[Tensor, Tensor]:
    """Weights w_i = T_i alpha_i with T_i = prod_{j<i} (1 - alpha_j) on each ray -> weights, transmittance (S,).

    Computed as T_i = exp(sum_{j<i} log(1 - alpha_j)) with a per-ray exclusive cumsum in float64 (no Python loop
    over rays, no cumprod, whose gradient nerfacc notes is wrong at zero). 1 - alpha is floored at
    `SURVIVAL_FLOOR` straight-through, so alpha = 1 gives T <= 1e-6 behind it and a finite gradient.

    Example (nerfacc's): alpha [0.4, 0.8, 0.1 | 0.8, 0.1 | 0.0, 0.9] on rays [0, 0, 0, 1, 1, 2, 2]
        -> transmittance [1.0, 0.6, 0.12 | 1.0, 0.2 | 1.0, 1.0], weights [0.4, 0.48, 0.012 | 0.8, 0.02 | 0.0, 0.9].
    """
    survival = 1 - alpha.double()
    survival = survival + (survival.clamp_min(SURVIVAL_FLOOR) - survival).detach()
    log_trans = exclusive_cumsum_packed(torch.log(survival), ray_indices, n_rays)
    transmittance = torch.exp(log_trans).to(alpha.dtype)
    return transmittance * alpha, transmittance


def render_weights_from_density(sigma: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor,
                                n_rays: int) -> tuple[Tensor, Tensor, Tensor]:
    """NeRF quadrature (Max 1995; Mildenhall et al. 2020, eq. 3) on packed samples -> weights, transmittance, alpha.

    alpha_i = 1 - exp(-sigma_i delta_i), T_i = exp(-sum_{j<i} sigma_j delta_j), w_i = T_i alpha_i, delta = t_end -
    t_start; the optical depths are summed per ray in float64. Example (nerfacc's): sigma [0.4, 0.8, 0.1 | 0.8, 0.1]
    with unit intervals on rays [0, 0, 0, 1, 1] -> T [1, 0.670, 0.301 | 1, 0.449], alpha [0.330, 0.551, 0.095 |
    0.551, 0.095].
    """
    optical_depth = sigma * (t_ends - t_starts)  # (S,)
    alpha = 1 - torch.exp(-optical_depth)
    transmittance = torch.exp(-exclusive_cumsum_packed(optical_depth.double(), ray_indices, n_rays)).to(sigma.dtype)
    return transmittance * alpha, transmittance, alpha


def accumulate(weights: Tensor, values: Tensor | None, ray_indices: Tensor, n_rays: int) -> Tensor:
    """Per-ray weighted sums out_r = sum_{s on r} w_s v_s -> (n_rays, D).

    values (S, D) gives D channels (rgb, normals), values (S,) gives (n_rays, 1) (depth from t_mid: not divided
    by the opacity), values None sums the weights themselves: the opacity (n_rays, 1). Rays without samples get 0.
    """
    if values is None:
        src = weights[:, None]
    else:
        src = weights[:, None] * (values[:, None] if values.dim() == 1 else values)  # (S, D)
    return src.new_zeros(n_rays, src.shape[1]).index_add(0, ray_indices, src)


# --- NeuS ----------------------------------------------------------------------------------------------------------

def _alpha_from_sdf_pair(prev_sdf: Tensor, next_sdf: Tensor, inv_s: Tensor | float) -> Tensor:
    """Discrete opacity between two sdf values (NeuS eq. 13): clip((Phi(prev) - Phi(next)) / Phi(prev), 0, 1)."""
    prev_cdf = torch.sigmoid(prev_sdf * inv_s)
    next_cdf = torch.sigmoid(next_sdf * inv_s)
    return ((prev_cdf - next_cdf + NEUS_ALPHA_EPS) / (prev_cdf + NEUS_ALPHA_EPS)).clip(0.0, 1.0)


def neus_alpha(sdf: Tensor, gradients: Tensor, dirs: Tensor, dists: Tensor, inv_s: Tensor | float,
               cos_anneal_ratio: float = 1.0) -> Tensor:
    """Opacity of each sample from the sdf at its midpoint (NeuS, Wang et al. 2021, eq. 13) -> alpha (S,).

    sdf (S,), gradients (S, 3), dirs (S, 3), dists (S,) = t_end - t_start, inv_s = 1 / s, the learned sharpness.
    As NeuS's `render_core` (models/renderer.py) and instant-nsr-pl's `get_alpha` (models/neus.py):

        true_cos = dirs . gradients
        iter_cos = -(relu(-true_cos / 2 + 1/2) (1 - r) + relu(-true_cos) r)      r = cos_anneal_ratio, <= 0
        prev_sdf = sdf - iter_cos dists / 2,   next_sdf = sdf + iter_cos dists / 2   (linear sdf at both ends)
        alpha = clip((Phi(prev_sdf) - Phi(next_sdf) + 1e-5) / (Phi(prev_sdf) + 1e-5), 0, 1),  Phi(x) = sigmoid(inv_s x)

    r grows 0 -> 1 early in training: at r = 0 the slope is never zero, so back faces still get gradient; at r = 1
    it is the plain -relu(-cos). NeuS passes the raw sdf gradient, instant-nsr-pl the normalised one (the normal).
    """
    true_cos = (dirs * gradients).sum(-1)  # (S,)
    iter_cos = -(F.relu(-true_cos * 0.5 + 0.5) * (1.0 - cos_anneal_ratio) + F.relu(-true_cos) * cos_anneal_ratio)
    half_drop = iter_cos * dists * 0.5
    return _alpha_from_sdf_pair(sdf - half_drop, sdf + half_drop, inv_s)


def neus_occupancy_alpha(sdf: Tensor, inv_s: Tensor | float, step_size: float) -> Tensor:
    """`neus_alpha` for a ray meeting the surface head-on (iter_cos = -1) over one marching step -> alpha.

    prev_sdf = sdf + dt / 2, next_sdf = sdf - dt / 2: the occupancy estimate instant-nsr-pl gives its grid
    (`occ_eval_fn` in models/neus.py). Pass it, closed over the field and inv_s, to `OccupancyGrid.update`.
    """
    return _alpha_from_sdf_pair(sdf + step_size * 0.5, sdf - step_size * 0.5, inv_s)


# --- losses --------------------------------------------------------------------------------------------------------

def distortion_loss(weights: Tensor, t_mid: Tensor, intervals: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """Mip-NeRF 360 distortion (Barron et al. 2022, eq. 15) per ray -> (n_rays,); take its mean as the loss.

        L_r = sum_{i,j} w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 delta_i

    in O(n) (the form of torch_efficient_distloss, which instant-nsr-pl calls): with midpoints m sorted along each
    ray, sum_{i,j} w_i w_j |m_i - m_j| = 2 sum_i w_i (m_i W_i - V_i), W_i = sum_{j<i} w_j, V_i = sum_{j<i} w_j m_j.
    Like instant-nsr-pl (and unlike the paper, which uses normalised distances s) m and delta are metric depths.
    """
    w, m = weights.double(), t_mid.double()
    before_w = exclusive_cumsum_packed(w, ray_indices, n_rays)
    before_wm = exclusive_cumsum_packed(w * m, ray_indices, n_rays)
    per_sample = 2 * w * (m * before_w - before_wm) + w * w * intervals.double() / 3
    return accumulate(per_sample, None, ray_indices, n_rays)[:, 0].to(weights.dtype)


def _safe_mean(x: Tensor) -> Tensor:
    """Mean that is 0, not NaN, over no elements: a batch whose rays all hit empty cells has no samples."""
    return x.sum() / max(x.numel(), 1)


def eikonal_loss(gradients: Tensor) -> Tensor:
    """mean (||grad f|| - 1)^2 over samples (S, 3): keeps f a signed distance (Gropp et al. 2020, IGR)."""
    return _safe_mean((torch.linalg.vector_norm(gradients, dim=-1) - 1) ** 2)


def _binary_cross_entropy(p: Tensor, target: Tensor) -> Tensor:
    # written out, as instant-nsr-pl does: F.binary_cross_entropy refuses to run under autocast
    return -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()


def opaque_loss(opacity: Tensor) -> Tensor:
    """Binary entropy of the clamped opacity o (R, 1): -mean(o log o + (1 - o) log(1 - o)), pushes o to 0 or 1.

    instant-nsr-pl's `loss_opaque` = BCE(o, o) with the target not detached; o is clamped to [1e-3, 1 - 1e-3].
    """
    o = opacity.clamp(OPACITY_CLAMP, 1 - OPACITY_CLAMP)
    return _binary_cross_entropy(o, o)


def mask_loss(opacity: Tensor, mask: Tensor) -> Tensor:
    """BCE between the clamped opacity (R, 1) and a foreground mask of the same shape (instant-nsr-pl)."""
    return _binary_cross_entropy(opacity.clamp(OPACITY_CLAMP, 1 - OPACITY_CLAMP), mask.to(opacity.dtype))


def sparsity_loss(sdf: Tensor, scale: float = 1.0) -> Tensor:
    """mean exp(-scale |sdf|) over samples: penalises near-zero sdf away from the surface (instant-nsr-pl)."""
    return _safe_mean(torch.exp(-scale * sdf.abs()))
