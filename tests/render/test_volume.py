"""Volume rendering against hand-computed values, and chunking invariance."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lrmesh.render.volume import composite, importance_depths, ray_box_limits, render_rays


def constant_field(density: float, color=(0.2, 0.4, 0.6)):
    raw = math.log(math.expm1(density)) + 1  # softplus(raw - 1) = density

    def field(points):
        sigma = torch.full((*points.shape[:-1], 1), raw)
        return sigma, torch.tensor(color).expand(*points.shape[:-1], 3)

    return field


def test_box_limits():
    origins = torch.tensor([[4.0, 0.0, 0.0], [4.0, 3.0, 0.0]])
    dirs = torch.tensor([[-1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])  # second ray misses the box
    near, far = ray_box_limits(origins, dirs, 1.0)
    assert near[0].item() == 3.0 and far[0].item() == 5.0
    # a miss borrows the valid rays' limits: [min near, max near] -> an empty interval [3, 3]
    assert near[1].item() == 3.0 and far[1].item() == 3.0


def test_constant_density_slab():
    # Transmittance through 2 units of density 0.5: exp(-1) = 0.3679; opacity 0.6321.
    origins, dirs = torch.tensor([[4.0, 0.0, 0.0]]), torch.tensor([[-1.0, 0.0, 0.0]])
    n = 9
    out = render_rays(constant_field(0.5), origins, dirs, n_coarse=n, n_importance=0, white_background=True,
                      u_stratified=torch.zeros(1, n))
    opacity = 1 - math.exp(-1.0)
    assert abs(out.opacity.item() - opacity) < 1e-5
    expected_rgb = torch.tensor([0.2, 0.4, 0.6]) * opacity + (1 - opacity)
    assert torch.allclose(out.rgb[0], expected_rgb, atol=1e-5)
    # depth is sum(w_i t_i), not divided by the opacity: 2.43 here, clamped to the sampled range [3, 5]
    assert out.depth.item() == 3.0


def test_depth_of_a_dense_slab():
    # density 4 over intervals of 0.25: w_i = e^-i (1 - e^-1) at midpoints 3.125 + 0.25 i
    origins, dirs = torch.tensor([[4.0, 0.0, 0.0]]), torch.tensor([[-1.0, 0.0, 0.0]])
    out = render_rays(constant_field(4.0), origins, dirs, n_coarse=9, n_importance=0, u_stratified=torch.zeros(1, 9))
    depth = sum(math.exp(-i) * (1 - math.exp(-1)) * (3.125 + 0.25 * i) for i in range(8))
    assert abs(out.depth.item() - depth) < 1e-4


def test_composite_weights_hand_computed():
    # densities after softplus(raw - 1): 1, 0 (empty), ...; deltas 1: alpha = 1 - e^-1 for the first interval
    depths = torch.tensor([[0.0, 1.0, 2.0]])
    raw = torch.tensor([[[math.log(math.expm1(1.0)) + 1], [math.log(math.expm1(1.0)) + 1], [-1e30]]])
    rgb = torch.ones(1, 3, 3)
    _, _, opacity, weights = composite(rgb, raw, depths)
    a = 1 - math.exp(-1)
    assert torch.allclose(weights, torch.tensor([[a, 0.0]]), atol=1e-6)
    assert abs(opacity.item() - a) < 1e-6


def test_importance_samples_follow_the_weights():
    depths = torch.linspace(0, 1, 17)[None]
    weights = torch.zeros(1, 16)
    weights[0, 8] = 1.0  # all mass in [0.5, 0.5625]
    u = torch.rand(1, 256, generator=torch.Generator().manual_seed(0))
    fine = importance_depths(depths, weights, u)
    assert fine.min() >= depths[0, 0] and fine.max() <= depths[0, -1]
    near_peak = ((fine > 0.40) & (fine < 0.66)).float().mean()
    assert near_peak > 0.8


def test_chunking_does_not_change_the_render():
    g = torch.Generator().manual_seed(3)
    origins = torch.tensor([[3.0, 0.3, 0.2]]).expand(50, 3)
    dirs = F.normalize(torch.randn(50, 3, generator=g) * 0.2 + torch.tensor([-1.0, 0.0, 0.0]), dim=-1)

    def field(points):
        sigma = 3 - 4 * points.norm(dim=-1, keepdim=True)
        return sigma, torch.sigmoid(points)

    u1, u2 = torch.rand(50, 8, generator=g), torch.rand(50, 8, generator=g)
    whole = render_rays(field, origins, dirs, 8, 8, u_stratified=u1, u_importance=u2, chunk=1000)
    parts = render_rays(field, origins, dirs, 8, 8, u_stratified=u1, u_importance=u2, chunk=7)
    for a, b in ((whole.rgb, parts.rgb), (whole.depth, parts.depth), (whole.opacity, parts.opacity)):
        assert torch.allclose(a, b, atol=1e-6)
