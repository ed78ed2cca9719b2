"""lrmesh.metrics: image metrics on known errors, geometry metrics on shapes with analytic answers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import trimesh

from lrmesh import metrics
from lrmesh.geometry.mesh import Mesh
from lrmesh.metrics import (
    GeometryProtocol,
    chamfer_distance,
    f_score,
    fast_winding_number,
    fit_sphere,
    geometry_metrics,
    psnr,
    sample_surface,
    sphere_mesh,
    ssim,
    volume_iou,
    winding_number,
)


def to_mesh(tri: trimesh.Trimesh) -> Mesh:
    return Mesh(torch.tensor(tri.vertices, dtype=torch.float32), torch.tensor(tri.faces, dtype=torch.int64))


def box(low, high) -> Mesh:
    """Axis-aligned box from corner `low` to corner `high`, faces outward."""
    low, high = np.asarray(low, float), np.asarray(high, float)
    return to_mesh(trimesh.creation.box(bounds=np.stack([low, high])))


def concat(*meshes: Mesh) -> Mesh:
    """The parts kept as separate closed shells, like our ground truths."""
    offsets = np.cumsum([0] + [m.num_vertices for m in meshes[:-1]])
    return Mesh(torch.cat([m.vertices for m in meshes]), torch.cat([m.faces + int(o) for m, o in zip(meshes, offsets)]))


EMPTY = Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64))


@pytest.fixture()
def far_field(monkeypatch):
    """Make fast_winding_number cluster even small problems, which it would otherwise sum exactly."""
    monkeypatch.setattr(metrics, "EXACT_PAIRS", 0)


# Images ---------------------------------------------------------------------------------------------------


def test_psnr_of_known_mse():
    target = torch.full((2, 3, 8, 8), 0.5)
    pred = target.clone()
    pred[0] += 0.1  # MSE 1e-2 -> 20 dB
    pred[1] += 0.01  # MSE 1e-4 -> 40 dB
    assert float(psnr(pred, target)) == pytest.approx(30.0, abs=1e-3)  # mean of the per-image values


def test_ssim_is_one_for_identical_images_and_lower_for_noise():
    target = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert float(ssim(target, target)) == pytest.approx(1.0, abs=1e-5)
    noisy = (target + 0.2 * torch.randn(target.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert float(ssim(noisy, target)) < 0.9


def test_load_lpips_without_weights_returns_none_and_warns_once(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(metrics, "_lpips_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert metrics.load_lpips("vgg") is None
        assert metrics.load_lpips("alex") is None
    assert len(caught) == 1
    assert str(tmp_path / "checkpoints" / "vgg16-397923af.pth") in str(caught[0].message)


# Point sets -----------------------------------------------------------------------------------------------


def test_chamfer_and_fscore_of_shifted_points():
    a = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert chamfer_distance(a, a + [0.0, 0.1, 0.0]) == pytest.approx(0.1)
    assert f_score(a, a + [0.0, 0.1, 0.0], 0.2) == pytest.approx(1.0)
    assert f_score(a, a + [0.0, 0.1, 0.0], 0.05) == 0.0


def test_chamfer_and_fscore_asymmetric():
    pred = np.array([[0.0, 0.0, 0.0]])
    gt = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    # pred -> gt: [0]; gt -> pred: [0, 1]; CD = (0 + 0.5) / 2
    assert chamfer_distance(pred, gt) == pytest.approx(0.25)
    # precision 1, recall 1/2: F = 2 * 1 * 0.5 / 1.5
    assert f_score(pred, gt, 0.5) == pytest.approx(2 / 3)


def test_sample_surface_is_seeded_on_the_surface_and_area_weighted():
    cube = box([-0.5] * 3, [0.5] * 3)
    points = sample_surface(cube, 4000, seed=3)
    assert torch.equal(points, sample_surface(cube, 4000, seed=3))
    assert not torch.equal(points, sample_surface(cube, 4000, seed=4))
    assert torch.allclose(points.abs().amax(dim=1), torch.full((4000,), 0.5), atol=1e-6)
    # Two flat rectangles, 1 x 1 and 3 x 1: three quarters of the points fall on the second.
    corners = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0],
                            [2, 0, 0], [5, 0, 0], [5, 1, 0], [2, 1, 0]], dtype=torch.float32)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    share = (sample_surface(Mesh(corners, faces), 20000, seed=0)[:, 0] > 1.5).float().mean()
    assert float(share) == pytest.approx(0.75, abs=0.012)  # ~4 standard errors of a 20000-point fraction


# Winding numbers ------------------------------------------------------------------------------------------


def test_winding_number_closed_mesh(far_field):
    ball = to_mesh(trimesh.creation.icosphere(subdivisions=2, radius=0.5))
    points = torch.tensor([[0.0, 0.0, 0.0], [0.1, -0.2, 0.1], [2.0, 0.0, 0.0], [0.0, 0.0, -0.6]])
    expected = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert torch.allclose(winding_number(points, ball.vertices, ball.faces), expected, atol=1e-5)
    assert torch.allclose(fast_winding_number(points, ball.vertices, ball.faces), expected, atol=2e-2)


def test_winding_number_counts_overlapping_parts(far_field):
    parts = concat(box([-0.5] * 3, [0.5] * 3), box([0, -0.5, -0.5], [1, 0.5, 0.5]))
    points = torch.tensor([[-0.25, 0, 0], [0.25, 0, 0], [0.75, 0, 0], [1.5, 0, 0]])
    expected = torch.tensor([1.0, 2.0, 1.0, 0.0])  # one part, both parts, the other part, none
    assert torch.allclose(winding_number(points, parts.vertices, parts.faces), expected, atol=1e-5)
    assert torch.allclose(fast_winding_number(points, parts.vertices, parts.faces), expected, atol=2e-2)


def test_winding_number_of_an_open_box():
    cube = box([-1] * 3, [1] * 3)
    top = cube.vertices[cube.faces].mean(dim=1)[:, 2] > 0.99  # the two triangles of the top face
    open_box = Mesh(cube.vertices, cube.faces[~top])
    # From the centre every face subtends 4 pi / 6: without one face, w = 5/6, still inside.
    w = winding_number(torch.zeros(1, 3), open_box.vertices, open_box.faces)
    assert float(w) == pytest.approx(5 / 6, abs=1e-5)


def test_fast_winding_number_matches_exact(far_field):
    shapes = concat(to_mesh(trimesh.creation.icosphere(subdivisions=3, radius=0.6)),
                    to_mesh(trimesh.creation.icosphere(subdivisions=3, radius=0.4)))
    shapes.vertices[642:] += torch.tensor([0.5, 0.2, 0.0])  # the second ball (after the first's 642 vertices)
    points = metrics.cube_points(600, seed=1)
    exact = winding_number(points, shapes.vertices, shapes.faces)
    fast = fast_winding_number(points, shapes.vertices, shapes.faces)
    assert (fast - exact).abs().max() < 0.05
    assert torch.equal(fast > 0.5, exact > 0.5)


def test_volume_iou_of_shifted_cubes():
    a, b = box([-0.5] * 3, [0.5] * 3), box([0, -0.5, -0.5], [1, 0.5, 0.5])
    count = 20000
    # intersection 0.5, union 1.5; ~count * 1.5 / 8 points fall in the union
    tolerance = 4 * math.sqrt((1 / 3) * (2 / 3) / (count * 1.5 / 8))
    assert volume_iou(a, b, count, seed=0) == pytest.approx(1 / 3, abs=tolerance)
    assert volume_iou(a, a, count, seed=0) == 1.0
    assert volume_iou(a, EMPTY, count, seed=0) == 0.0


def test_volume_iou_of_overlapping_parts_against_their_union():
    parts = concat(box([-0.5] * 3, [0.5] * 3), box([0, -0.5, -0.5], [1, 0.5, 0.5]))
    union = box([-0.5, -0.5, -0.5], [1, 0.5, 0.5])
    assert volume_iou(parts, union, 5000, seed=0) == pytest.approx(1.0, abs=1e-3)


# Sphere baseline and the whole protocol -------------------------------------------------------------------


def test_fit_sphere_recovers_a_known_sphere():
    directions = torch.nn.functional.normalize(torch.randn(200, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    centre, radius = fit_sphere(torch.tensor([0.1, -0.2, 0.3]) + 0.7 * directions)
    assert torch.allclose(centre, torch.tensor([0.1, -0.2, 0.3]), atol=1e-5)
    assert radius == pytest.approx(0.7, abs=1e-5)
    ball = sphere_mesh(centre, radius)
    assert torch.allclose((ball.vertices - centre).norm(dim=1), torch.full((ball.num_vertices,), 0.7), atol=1e-5)
    with pytest.raises(ValueError, match="plane"):
        fit_sphere(torch.rand(10, 3) * torch.tensor([1.0, 1.0, 0.0]))


def test_geometry_metrics_perfect_and_empty():
    gt = concat(box([-0.5] * 3, [0.5] * 3), box([0, -0.5, -0.5], [1, 0.5, 0.5]))
    protocol = GeometryProtocol(surface_points=2000, volume_points=2000, gt_surface="all")
    perfect = geometry_metrics(gt, gt, protocol)
    assert perfect == {"chamfer": 0.0, "fscore@0.1": 1.0, "fscore@0.2": 1.0, "volume_iou": 1.0}
    worst = geometry_metrics(EMPTY, gt, protocol)
    assert worst == {"chamfer": 2 * math.sqrt(3), "fscore@0.1": 0.0, "fscore@0.2": 0.0, "volume_iou": 0.0}


def test_normalisation_each_ignores_scale_and_offset_gt_does_not():
    gt = box([-0.5, -0.3, -0.2], [0.5, 0.3, 0.2])
    moved = Mesh(gt.vertices * 0.5 + torch.tensor([0.2, 0.0, 0.1]), gt.faces)
    each = geometry_metrics(moved, gt, GeometryProtocol(surface_points=2000, volume_points=2000))
    assert each["chamfer"] < 1e-6 and each["volume_iou"] == 1.0
    shared = geometry_metrics(moved, gt, GeometryProtocol(surface_points=2000, volume_points=2000, normalize="gt"))
    assert shared["chamfer"] > 0.1 and shared["volume_iou"] < 0.5


def test_outer_surface_points_drop_hidden_inner_surfaces():
    import trimesh as _trimesh

    from lrmesh.metrics import outer_surface_points

    big = _trimesh.creation.box(extents=(2.0, 2.0, 2.0))
    small = _trimesh.creation.box(extents=(1.0, 1.0, 1.0))  # wholly inside: all of it hidden
    side = _trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    side.apply_translation((1.0, 0.0, 0.0))  # half inside the big cube, half out
    both = _trimesh.util.concatenate([big, small, side])
    mesh = Mesh(vertices=torch.tensor(both.vertices, dtype=torch.float32), faces=torch.tensor(both.faces))
    points = outer_surface_points(mesh, 4000, seed=0)
    assert points.shape == (4000, 3)
    linf = points.abs().max(dim=1).values
    on_big = (linf - 1).abs() < 1e-5
    on_side_out = (points[:, 0] > 1 - 1e-5) & (points[:, 1:].abs().max(dim=1).values <= 0.5 + 1e-5)
    assert bool((on_big | on_side_out).all())  # nothing from the hidden cube or the side cube's inner half
    assert int(on_side_out.sum()) > 100  # the side cube's outer half is kept


def test_the_outer_ground_truth_surface_is_the_union_s_boundary():
    # Two overlapping boxes kept as two shells; their union is one longer box. Scored against the outer surface,
    # that box is a perfect prediction; against every triangle, the hidden faces inside the other box (x = 0 and
    # x = 0.5, 0.5 from any outer face) become misses.
    parts = concat(box([-0.5] * 3, [0.5] * 3), box([0, -0.5, -0.5], [1, 0.5, 0.5]))
    union = box([-0.5, -0.5, -0.5], [1, 0.5, 0.5])
    outer = geometry_metrics(union, parts, GeometryProtocol(surface_points=4000, volume_points=2000))
    # (0.03 is the sampling noise of 4000 points against 4000 on this surface)
    assert outer["chamfer"] < 0.035 and outer["fscore@0.1"] > 0.995 and outer["volume_iou"] == 1.0
    every = geometry_metrics(union, parts, GeometryProtocol(surface_points=4000, volume_points=2000,
                                                            gt_surface="all"))
    assert every["chamfer"] > outer["chamfer"] + 0.01 and every["fscore@0.1"] < 0.96
    with pytest.raises(ValueError, match="gt_surface"):
        geometry_metrics(union, parts, GeometryProtocol(surface_points=100, volume_points=100, gt_surface="inner"))
