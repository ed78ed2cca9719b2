"""Packed volume rendering: hand-computed values (nerfacc style), packed == per-ray loops (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from lrmesh.neus.rendering import (
    accumulate,
    distortion_loss,
    eikonal_loss,
    exclusive_cumsum_packed,
    mask_loss,
    neus_alpha,
    neus_occupancy_alpha,
    opaque_loss,
    ray_aabb,
    render_weights_from_alpha,
    render_weights_from_density,
    sparsity_loss,
    uniform_samples,
)

# Three rays of 3, 0 and 4 samples, then one of 1: an empty ray in the middle and rays of different lengths.
LENGTHS = [3, 0, 4, 1]


def packed_rays(lengths=LENGTHS):
    ray_indices = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    return ray_indices, len(lengths)


def split(x, lengths=LENGTHS):
    return torch.split(x, lengths)


def loop_weights_from_alpha(alpha, lengths=LENGTHS):
    """Reference: torch.cumprod on each ray separately."""
    weights, trans = [], []
    for a in split(alpha, lengths):
        t = torch.cumprod(torch.cat([a.new_ones(1), 1 - a[:-1]]), 0) if len(a) else a
        weights.append(t * a)
        trans.append(t)
    return torch.cat(weights), torch.cat(trans)


def test_exclusive_cumsum_example():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    out = exclusive_cumsum_packed(x, torch.tensor([0, 0, 0, 1, 1]), 2)
    assert out.tolist() == [0.0, 1.0, 3.0, 0.0, 4.0]


def test_weights_from_alpha_hand_computed():
    alpha = torch.tensor([0.0, 0.3, 0.8, 0.8])
    weights, trans = render_weights_from_alpha(alpha, torch.zeros(4, dtype=torch.long), 1)
    # transmittance: 1, 1, 0.7, 0.7 * 0.2; weights: 0, 0.3, 0.7 * 0.8, 0.14 * 0.8
    torch.testing.assert_close(trans, torch.tensor([1.0, 1.0, 0.7, 0.14]))
    torch.testing.assert_close(weights, torch.tensor([0.0, 0.3, 0.56, 0.112]))


def test_weights_from_alpha_several_rays():
    alpha = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1, 0.0, 0.9])
    weights, trans = render_weights_from_alpha(alpha, torch.tensor([0, 0, 0, 1, 1, 2, 2]), 3)
    torch.testing.assert_close(trans, torch.tensor([1.0, 0.6, 0.12, 1.0, 0.2, 1.0, 1.0]))
    torch.testing.assert_close(weights, torch.tensor([0.4, 0.48, 0.012, 0.8, 0.02, 0.0, 0.9]))


def test_weights_from_density_hand_computed():
    sigma = torch.tensor([0.4, 0.8, 0.1, 0.8, 0.1])
    t = torch.arange(5.0)
    weights, trans, alpha = render_weights_from_density(sigma, t, t + 1, torch.tensor([0, 0, 0, 1, 1]), 2)
    e = math.exp
    torch.testing.assert_close(trans, torch.tensor([1.0, e(-0.4), e(-1.2), 1.0, e(-0.8)]))
    torch.testing.assert_close(alpha, 1 - torch.exp(-sigma))
    torch.testing.assert_close(weights, trans * alpha)
    # the density and alpha routes agree
    torch.testing.assert_close(render_weights_from_alpha(alpha, torch.tensor([0, 0, 0, 1, 1]), 2)[0], weights)


def test_weights_from_alpha_packed_equals_loop_with_gradients():
    ray_indices, n_rays = packed_rays()
    alpha = torch.rand(len(ray_indices), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    alpha.requires_grad_(True)
    w, t = render_weights_from_alpha(alpha, ray_indices, n_rays)
    w_ref, t_ref = loop_weights_from_alpha(alpha)
    torch.testing.assert_close(w, w_ref)
    torch.testing.assert_close(t, t_ref)
    cotangent = torch.randn(len(alpha), 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad = torch.autograd.grad((torch.stack([w, t], -1) * cotangent).sum(), alpha)[0]
    grad_ref = torch.autograd.grad((torch.stack([w_ref, t_ref], -1) * cotangent).sum(), alpha)[0]
    torch.testing.assert_close(grad, grad_ref)
    assert torch.autograd.gradcheck(lambda a: render_weights_from_alpha(a, ray_indices, n_rays), (alpha,))


def test_weights_from_alpha_gradient_through_an_opaque_sample():
    # alpha_1 = 1: T_2 = (1 - a0)(1 - a1) = 0 (here 0.5 * the 1e-6 floor), but dT_2/da1 = -(1 - a0) must survive
    # the log-space product.
    alpha = torch.tensor([0.5, 1.0, 0.3], requires_grad=True)
    _, trans = render_weights_from_alpha(alpha, torch.zeros(3, dtype=torch.long), 1)
    assert 0 < trans[2].item() <= 1e-6
    (grad,) = torch.autograd.grad(trans[2], alpha)
    torch.testing.assert_close(grad, torch.tensor([0.0, -0.5, 0.0]))


def test_opaque_samples_in_a_large_batch_keep_finite_gradients():
    # The packed cumsum's backward is a difference of batch-wide sums; dividing its float64 rounding by a tiny
    # survival floor (once 1e-150) gave inf, then NaN, gradients in a real NeuS fit.
    g = torch.Generator().manual_seed(0)
    n_rays, per_ray = 4000, 64
    alpha = torch.rand(n_rays * per_ray, generator=g)
    alpha[torch.rand(alpha.shape, generator=g) < 0.05] = 1.0
    alpha.requires_grad_(True)
    ray_indices = torch.arange(n_rays).repeat_interleave(per_ray)
    weights, _ = render_weights_from_alpha(alpha, ray_indices, n_rays)
    colour = torch.rand(weights.shape, generator=g)
    (grad,) = torch.autograd.grad((weights * colour).sum(), alpha)
    assert torch.isfinite(grad).all()


def test_weights_from_density_gradcheck():
    ray_indices, n_rays = packed_rays()
    g = torch.Generator().manual_seed(2)
    sigma = torch.rand(len(ray_indices), generator=g, dtype=torch.float64, requires_grad=True)
    t_starts = torch.rand(len(ray_indices), generator=g, dtype=torch.float64)
    t_ends = t_starts + 0.5
    assert torch.autograd.gradcheck(
        lambda s: render_weights_from_density(s, t_starts, t_ends, ray_indices, n_rays), (sigma,))


def test_accumulate():
    ray_indices, n_rays = packed_rays()
    weights = torch.tensor([0.1, 0.2, 0.3, 0.5, 0.25, 0.125, 0.0625, 1.0])
    rgb = torch.arange(24.0).view(8, 3)
    depth = torch.arange(8.0)
    opacity = accumulate(weights, None, ray_indices, n_rays)
    torch.testing.assert_close(opacity[:, 0], torch.tensor([0.6, 0.0, 0.9375, 1.0]))
    torch.testing.assert_close(accumulate(weights, depth, ray_indices, n_rays)[:, 0],
                               torch.tensor([0.2 + 0.6, 0.0, 1.5 + 1.0 + 0.625 + 0.375, 7.0]))
    expected = torch.stack([(weights[:, None] * rgb)[s].sum(0) for s in [slice(0, 3), slice(0, 0), slice(3, 7),
                                                                          slice(7, 8)]])
    torch.testing.assert_close(accumulate(weights, rgb, ray_indices, n_rays), expected)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_neus_alpha_hand_computed():
    # A plane sdf = z (|grad| = 1) seen head-on (cos = -1); r = 1: prev = sdf + d/2, next = sdf - d/2.
    sdf, dists, inv_s = torch.tensor([0.05]), torch.tensor([0.1]), 20.0
    grad, dirs = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.0, 0.0, -1.0]])
    prev, nxt = sigmoid(0.1 * inv_s), sigmoid(0.0)
    expected = (prev - nxt + 1e-5) / (prev + 1e-5)  # 0.3808
    alpha = neus_alpha(sdf, grad, dirs, dists, inv_s, cos_anneal_ratio=1.0)
    assert alpha.item() == pytest.approx(expected, rel=1e-6)
    # the occupancy estimate is the same head-on case
    assert neus_occupancy_alpha(sdf, inv_s, 0.1).item() == pytest.approx(expected, rel=1e-6)
    # r = 0: iter_cos = -relu(-cos / 2 + 1/2) is also -1 for cos = -1
    assert neus_alpha(sdf, grad, dirs, dists, inv_s, 0.0).item() == pytest.approx(expected, rel=1e-6)
    # a grazing ray (cos = 0): r = 1 sees no sdf change (alpha = 1e-5 / (Phi(sdf) + 1e-5)), r = 0 half the slope
    grazing = torch.tensor([[1.0, 0.0, 0.0]])
    flat = 1e-5 / (sigmoid(0.05 * inv_s) + 1e-5)
    assert neus_alpha(sdf, grad, grazing, dists, inv_s, 1.0).item() == pytest.approx(flat, rel=1e-4)
    prev, nxt = sigmoid(0.075 * inv_s), sigmoid(0.025 * inv_s)
    half = (prev - nxt + 1e-5) / (prev + 1e-5)
    assert neus_alpha(sdf, grad, grazing, dists, inv_s, 0.0).item() == pytest.approx(half, rel=1e-5)


def test_neus_weights_peak_at_the_crossing():
    # A ray down the z axis from z = 1 through the plane z = 0 (sdf = z): the weights peak where it crosses.
    origins, dirs = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.0, 0.0, -1.0]])
    samples = uniform_samples(origins, dirs, torch.tensor([0.0]), torch.tensor([2.0]), step_size=0.02)
    points = samples.points(origins, dirs)
    sdf, grad = points[:, 2], torch.tensor([[0.0, 0.0, 1.0]]).expand(len(samples), 3)
    alpha = neus_alpha(sdf, grad, dirs[samples.ray_indices], samples.intervals, inv_s=64.0)
    weights, _ = render_weights_from_alpha(alpha, samples.ray_indices, 1)
    peak = samples.t_mid[weights.argmax()].item()
    assert abs(peak - 1.0) <= 0.02
    depth = accumulate(weights, samples.t_mid, samples.ray_indices, 1).item()
    assert depth == pytest.approx(1.0, abs=0.02)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-3)  # solid below the plane: opaque


def brute_force_distortion(w, m, delta):
    pair = (w[:, None] * w[None, :] * (m[:, None] - m[None, :]).abs()).sum()
    return pair + (w * w * delta).sum() / 3


def test_distortion_loss_equals_brute_force_with_gradients():
    ray_indices, n_rays = packed_rays()
    g = torch.Generator().manual_seed(3)
    s = len(ray_indices)
    w = torch.rand(s, generator=g, dtype=torch.float64, requires_grad=True)
    delta = torch.rand(s, generator=g, dtype=torch.float64) * 0.2 + 0.05
    # sorted midpoints along each ray
    m = torch.cat([torch.cumsum(d, 0) for d in split(delta)]) - delta / 2
    loss = distortion_loss(w, m, delta, ray_indices, n_rays)
    reference = torch.stack([brute_force_distortion(*parts) for parts in zip(split(w), split(m), split(delta))])
    torch.testing.assert_close(loss, reference)
    grad = torch.autograd.grad(loss.sum(), w)[0]
    grad_ref = torch.autograd.grad(reference.sum(), w)[0]
    torch.testing.assert_close(grad, grad_ref)


def test_small_losses():
    assert eikonal_loss(torch.tensor([[0.0, 0.6, 0.8], [0.0, 0.0, 3.0]])).item() == pytest.approx(2.0)
    assert eikonal_loss(torch.zeros(0, 3)).item() == 0.0  # no samples: 0, not NaN
    assert sparsity_loss(torch.tensor([0.0, 1.0]), scale=2.0).item() == pytest.approx((1 + math.exp(-2)) / 2)
    # binary entropy: ln 2 at 0.5, ~0 at the clamped extremes
    assert opaque_loss(torch.tensor([[0.5]])).item() == pytest.approx(math.log(2))
    assert opaque_loss(torch.tensor([[0.0], [1.0]])).item() < 0.01
    # mask BCE: -ln(0.8) for opacity 0.8 on the object, -ln(0.8) for 0.2 off it; clamped away from log(0)
    assert mask_loss(torch.tensor([[0.8], [0.2]]), torch.tensor([[1.0], [0.0]])).item() == pytest.approx(-math.log(0.8))
    assert math.isfinite(mask_loss(torch.tensor([[0.0]]), torch.tensor([[1.0]])).item())


@pytest.mark.parametrize("bound", ["cube", "sphere"])
def test_ray_aabb_axis_rays(bound):
    origins = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 3.0], [0.5, 0.0, 3.0], [0.0, 0.0, 0.0], [0.0, 2.0, 3.0]])
    dirs = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0], [0.0, 0.0, -2.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    limits = ray_aabb(origins, dirs, 1.0, bound=bound)
    # down the axis; pointing away (the box is behind: a miss); off-axis with |d| = 2; from the centre; beside it
    assert limits.hit.tolist() == [True, False, True, True, False]
    assert limits.near[0].item() == 2.0 and limits.far[0].item() == 4.0
    assert limits.near[3].item() == 0.0 and limits.far[3].item() == 1.0  # starts at near_plane = 0
    chord = 1.0 if bound == "cube" else math.sqrt(1 - 0.5**2)
    assert limits.near[2].item() == pytest.approx((3 - chord) / 2)
    assert limits.far[2].item() == pytest.approx((3 + chord) / 2)
    assert limits.near[1].item() == limits.far[1].item() == 0.0


def test_ray_aabb_corner_ray_differs_for_the_sphere():
    origins, dirs = torch.tensor([[0.95, 0.95, 3.0]]), torch.tensor([[0.0, 0.0, -1.0]])
    assert ray_aabb(origins, dirs, 1.0, "cube").hit.item()
    assert not ray_aabb(origins, dirs, 1.0, "sphere").hit.item()


def test_uniform_samples_layout():
    origins = torch.zeros(3, 3)
    dirs = torch.tensor([[1.0, 0.0, 0.0]]).expand(3, 3)
    near, far = torch.tensor([0.0, 0.5, 1.0]), torch.tensor([1.0, 0.5, 1.24])  # 10, 0 and 2 samples of 0.1
    samples = uniform_samples(origins, dirs, near, far, step_size=0.1)
    assert samples.ray_indices.tolist() == [0] * 10 + [2] * 2
    torch.testing.assert_close(samples.t_starts[:10], torch.arange(10) * 0.1)
    torch.testing.assert_close(samples.t_starts[10:], torch.tensor([1.0, 1.1]))
    torch.testing.assert_close(samples.intervals, torch.full((12,), 0.1))
    assert (samples.t_mid < far[samples.ray_indices]).all()


def test_uniform_samples_stratified_and_occupancy_callback():
    g = torch.Generator().manual_seed(4)
    origins, dirs = torch.zeros(64, 3), torch.tensor([[1.0, 0.0, 0.0]]).expand(64, 3)
    near, far = torch.zeros(64), torch.ones(64)
    samples = uniform_samples(origins, dirs, near, far, 0.1, stratified=True, generator=g)
    # one offset per ray in [0, dt): the first sample starts in [0, 0.1), all midpoints before far
    first = samples.t_starts[torch.cumsum(torch.bincount(samples.ray_indices), 0) - 1]
    assert samples.t_starts.min() >= 0 and (samples.t_mid < 1).all()
    assert first.max() > 0.8  # the last sample of some ray starts late
    # a callback dropping x > 0.5 keeps exactly the samples with midpoints at x <= 0.5
    kept = uniform_samples(origins, dirs, near, far, 0.1, occupied=lambda p: p[:, 0] <= 0.5)
    assert kept.t_mid.max() <= 0.5 and len(kept) == 64 * 5


def test_neus_alpha_gradcheck_with_a_learned_sharpness():
    g = torch.Generator().manual_seed(5)
    sdf = (torch.rand(6, generator=g, dtype=torch.float64) - 0.5) * 0.2
    grad = torch.randn(6, 3, generator=g, dtype=torch.float64)
    dirs = torch.nn.functional.normalize(torch.randn(6, 3, generator=g, dtype=torch.float64), dim=-1)
    dists = torch.full((6,), 0.05, dtype=torch.float64)
    inv_s = torch.tensor(30.0, dtype=torch.float64)
    inputs = tuple(x.requires_grad_(True) for x in (sdf, grad, inv_s))
    assert torch.autograd.gradcheck(lambda s, n, k: neus_alpha(s, n, dirs, dists, k, 0.3), inputs)


def test_transmittance_of_a_late_ray_does_not_depend_on_the_batch_before_it():
    # 20000 nearly opaque samples on earlier rays sum to a log-transmittance of about -3e5; the last ray must still
    # get its own values to float32 precision (the scans run in float64).
    n_before = 20000
    alpha = torch.cat([torch.full((n_before,), 1 - 1e-7), torch.tensor([0.3, 0.5, 0.2])])
    ray_indices = torch.cat([torch.arange(n_before) // 2, torch.full((3,), n_before // 2)])
    weights, trans = render_weights_from_alpha(alpha, ray_indices, n_before // 2 + 1)
    torch.testing.assert_close(trans[-3:], torch.tensor([1.0, 0.7, 0.35]), rtol=1e-6, atol=0)
    torch.testing.assert_close(weights[-3:], torch.tensor([0.3, 0.35, 0.07]), rtol=1e-6, atol=0)


def test_a_batch_without_samples():
    # every ray misses or lands in empty cells: outputs are zeros, losses 0, nothing is NaN
    none, ray_indices = torch.zeros(0), torch.zeros(0, dtype=torch.long)
    weights, _ = render_weights_from_alpha(none, ray_indices, 2)
    assert accumulate(weights, torch.zeros(0, 3), ray_indices, 2).eq(0).all()
    assert accumulate(weights, none, ray_indices, 2).shape == (2, 1)
    assert distortion_loss(weights, none, none, ray_indices, 2).eq(0).all()
    assert sparsity_loss(none).item() == 0.0
