"""Rasterizer: analytic coverage, perspective-correct interpolation, depth, occlusion, gradients."""

import math

import pytest
import torch
import trimesh

from lrmesh.cameras import focal_from_fov, orbit_poses
from lrmesh.render.raster import interpolate, project, rasterize, rasterize_uv

QUAD_FACES = torch.tensor([[0, 1, 2], [0, 2, 3]])


def pixel_centres_ndc(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NDC x, y of every pixel centre, (H, W) each; row 0 on top."""
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                                indexing="ij")
    return (2 * cols + 1) / width - 1, 1 - (2 * rows + 1) / height


def icosphere(subdivisions: int) -> tuple[torch.Tensor, torch.Tensor]:
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions)
    return torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces, dtype=torch.int64)


def test_screen_filling_quad_interpolates_ndc_exactly():
    clip = torch.tensor([[-1.0, -1.0, 0.0, 1.0], [1.0, -1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 1.0], [-1.0, 1.0, 0.0, 1.0]])
    rast = rasterize(clip, QUAD_FACES, 12, 16, backend="torch")
    assert rast.triangle_id.shape == (1, 12, 16)
    assert bool(rast.mask.all())
    xy = interpolate(clip[:, :2], rast, QUAD_FACES)[0]  # (H, W, 2)
    x, y = pixel_centres_ndc(12, 16)
    torch.testing.assert_close(xy[..., 0].double(), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(xy[..., 1].double(), y, atol=1e-5, rtol=0)
    torch.testing.assert_close(rast.barycentrics.sum(-1), torch.ones(1, 12, 16))


def test_perspective_correct_barycentrics_and_depth_match_analytic_solve():
    # A screen-filling quad whose corners sit at different depths w: the pixel's point on each (planar)
    # triangle solves sum_i a_i (X_i - x W_i) = 0, sum_i a_i (Y_i - y W_i) = 0, sum_i a_i = 1.
    corners = torch.tensor([[-1.2, -1.3], [1.25, -1.2], [1.2, 1.2], [-1.3, 1.25]], dtype=torch.float64)
    w = torch.tensor([1.0, 2.5, 4.0, 1.7], dtype=torch.float64)
    clip = torch.cat([corners * w[:, None], torch.zeros(4, 1, dtype=torch.float64), w[:, None]], dim=1)
    attributes = torch.tensor([[0.0, 1.0], [2.0, -1.0], [5.0, 3.0], [-2.0, 0.5]], dtype=torch.float64)
    rast = rasterize(clip, QUAD_FACES, 20, 24, backend="torch")
    assert bool(rast.mask.all())
    values = interpolate(attributes, rast, QUAD_FACES)[0]  # (H, W, 2)
    x, y = pixel_centres_ndc(20, 24)
    tri = QUAD_FACES[rast.triangle_id[0]]  # (H, W, 3)
    cw, cx, cy = w[tri], clip[tri][..., 0], clip[tri][..., 1]
    system = torch.stack([cx - x[..., None] * cw, cy - y[..., None] * cw, torch.ones_like(cw)], dim=-2)
    alpha = torch.linalg.solve(system, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(20, 24, 3))
    expected = (alpha[..., None] * attributes[tri]).sum(-2)
    torch.testing.assert_close(rast.barycentrics[0], alpha, atol=1e-9, rtol=0)
    torch.testing.assert_close(values, expected, atol=1e-9, rtol=0)
    torch.testing.assert_close(rast.depth[0], (alpha * cw).sum(-1), atol=1e-9, rtol=0)


def test_image_orientation_row_zero_is_top_and_column_zero_is_left():
    clip = torch.tensor([[-1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0], [-1.0, 0.0, 0.0, 1.0]])  # upper-left corner
    mask = rasterize(clip, torch.tensor([[0, 1, 2]]), 8, 8, backend="torch").mask[0]
    assert bool(mask[0, 0]) and not bool(mask[7, 7]) and not bool(mask[0, 7]) and not bool(mask[7, 0])
    assert int(mask.sum()) == 4 + 3 + 2 + 1  # centres (c + 0.5, r + 0.5) with c + r + 1 <= 4 (hypotenuse included)


def test_sphere_silhouette_area_and_centre_depth():
    vertices, faces = icosphere(4)
    resolution, distance, fov = 256, 4.0, 30.0
    clip = project(vertices, orbit_poses([0.0], [0.0], distance), fov)
    rast = rasterize(clip, faces, resolution, resolution, backend="torch")
    # A unit sphere seen from distance d subtends asin(1 / d); its image is a disc of radius f tan(asin(1 / d)).
    disc_radius = focal_from_fov(fov) * resolution * math.tan(math.asin(1.0 / distance))
    area = math.pi * disc_radius**2
    assert abs(int(rast.mask.sum()) - area) / area < 0.02
    centre = rast.depth[0, resolution // 2 - 1:resolution // 2 + 1, resolution // 2 - 1:resolution // 2 + 1]
    torch.testing.assert_close(centre, torch.full_like(centre, distance - 1.0), atol=1e-2, rtol=0)
    assert float(rast.depth[0, 0, 0]) == 0.0 and int(rast.triangle_id[0, 0, 0]) == -1


def test_closed_mesh_leaves_no_cracks():
    # Every pixel centre well inside the silhouette must be covered: shared edges are rasterized watertight.
    vertices, faces = icosphere(5)
    resolution = 200
    clip = project(vertices, orbit_poses([17.0], [23.0], 4.0), 30.0)
    mask = rasterize(clip, faces, resolution, resolution, backend="torch").mask[0]
    x, y = pixel_centres_ndc(resolution, resolution)
    ndc_radius = 2 * focal_from_fov(30.0) * math.tan(math.asin(1.0 / 4.0))
    inside = (x**2 + y**2).sqrt() < ndc_radius * 0.97
    assert bool(mask[inside].all())


def test_jittered_grid_leaves_no_cracks():
    generator = torch.Generator().manual_seed(0)
    n = 12
    ticks = torch.linspace(-1.1, 1.1, n)
    gy, gx = torch.meshgrid(ticks, ticks, indexing="ij")
    jitter = (torch.rand(n, n, 2, generator=generator) - 0.5) * 0.12
    jitter[[0, -1]] = 0
    jitter[:, [0, -1]] = 0
    xy = torch.stack([gx, gy], dim=-1) + jitter
    clip = torch.cat([xy.reshape(-1, 2), torch.zeros(n * n, 1), torch.ones(n * n, 1)], dim=1)
    idx = torch.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]
    faces = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([a, c, d], -1).reshape(-1, 3)])
    assert bool(rasterize(clip, faces, 97, 131, backend="torch").mask.all())


def test_nearest_triangle_wins_in_either_order():
    near = [[-1.0, -1.0, -0.5, 1.0], [1.0, -1.0, -0.5, 1.0], [0.0, 1.0, -0.5, 1.0]]
    far = [[-1.0, -1.0, 0.5, 1.0], [1.0, -1.0, 0.5, 1.0], [-1.0, 1.0, 0.5, 1.0]]
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    for clip, near_id in ((torch.tensor(near + far), 0), (torch.tensor(far + near), 1)):
        ids = rasterize(clip, faces, 16, 16, backend="torch").triangle_id[0]
        assert int(ids[8, 8]) == near_id  # both cover the centre
        assert int(ids[1, 1]) == 1 - near_id  # only the far one covers the upper left


def test_behind_camera_and_out_of_depth_range_are_clipped():
    faces = torch.tensor([[0, 1, 2]])
    full = torch.tensor([[-3.0, -3.0, 0.0, 1.0], [3.0, -3.0, 0.0, 1.0], [0.0, 3.0, 0.0, 1.0]])
    behind = full.clone()
    behind[0, 3] = -1.0
    beyond = full.clone()
    beyond[:, 2] = 1.5
    assert bool(rasterize(full, faces, 8, 8, backend="torch").mask.all())
    assert not bool(rasterize(behind, faces, 8, 8, backend="torch").mask.any())
    assert not bool(rasterize(beyond, faces, 8, 8, backend="torch").mask.any())


def test_batched_views_match_single_views_and_small_chunks():
    vertices, faces = icosphere(2)
    clip = project(vertices, orbit_poses([0.0, 120.0], [20.0, -10.0], 3.0), 30.0)
    both = rasterize(clip, faces, 40, 40, backend="torch", max_candidates=97)
    for n in range(2):
        one = rasterize(clip[n], faces, 40, 40, backend="torch")
        assert torch.equal(both.triangle_id[n], one.triangle_id[0])
        torch.testing.assert_close(both.barycentrics[n], one.barycentrics[0])


def test_interpolate_gradient_is_the_barycentrics():
    clip = torch.tensor([[-0.9, -0.8, 0.0, 1.0], [0.9, -0.7, 0.2, 2.0], [0.1, 0.9, 0.1, 1.5]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2]])
    rast = rasterize(clip, faces, 6, 6, backend="torch")
    attributes = torch.tensor([[0.3], [-1.2], [2.0]], dtype=torch.float64, requires_grad=True)
    jacobian = torch.autograd.functional.jacobian(lambda a: interpolate(a, rast, faces), attributes)
    # d out[n, h, w, 0] / d attributes[v, 0] = barycentrics[n, h, w, v] on covered pixels.
    torch.testing.assert_close(jacobian[..., 0, :, 0], rast.barycentrics)
    weights = torch.rand(1, 6, 6, 1, dtype=torch.float64)
    loss = (interpolate(attributes, rast, faces) * weights).sum()
    (grad,) = torch.autograd.grad(loss, attributes)
    eps = 1e-6
    for v in range(3):
        bumped = attributes.detach().clone()
        bumped[v, 0] += eps
        finite = ((interpolate(bumped, rast, faces) * weights).sum() - loss.detach()) / eps
        assert abs(float(finite) - float(grad[v, 0])) < 1e-6


def test_barycentrics_and_depth_carry_gradients_to_clip_positions():
    faces = torch.tensor([[0, 1, 2]])
    clip = torch.tensor([[-3.0, -3.0, 0.1, 1.0], [3.0, -2.5, 0.2, 1.3], [0.2, 3.0, 0.3, 1.1]], dtype=torch.float64,
                        requires_grad=True)

    def fields(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rast = rasterize(c, faces, 5, 5, backend="torch")
        return rast.barycentrics, rast.depth

    assert torch.autograd.gradcheck(fields, (clip,))


def test_interpolate_gradients_match_finite_differences():
    # Through the barycentrics, interpolated values move with the clip positions as well as with the attributes.
    faces = torch.tensor([[0, 1, 2]])
    clip = torch.tensor([[-0.9, -0.8, 0.1, 1.0], [1.44, -1.12, 0.2, 1.6], [0.12, 1.08, 0.3, 1.2]], dtype=torch.float64,
                        requires_grad=True)  # NDC (x, y) = (-0.9, -0.8), (0.9, -0.7), (0.1, 0.9)
    attributes = torch.tensor([[0.3, 1.0], [-1.2, 0.5], [2.0, -0.7]], dtype=torch.float64, requires_grad=True)

    def render(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return interpolate(a, rasterize(c, faces, 7, 6, backend="torch"), faces)

    assert bool(rasterize(clip, faces, 7, 6, backend="torch").mask.sum() > 10)
    assert torch.autograd.gradcheck(render, (attributes, clip))
    (grad,) = torch.autograd.grad(render(attributes, clip).sum(), clip)
    assert float(grad.abs().sum()) > 0


def test_views_rasterized_together_match_one_by_one():
    vertices, faces = icosphere(2)
    clip = project(vertices, orbit_poses([0.0, 90.0, 200.0], [20.0, -10.0, 45.0], 3.0), 30.0)
    together = rasterize(clip, faces, 40, 40, backend="torch")  # one group of 3 views
    apart = rasterize(clip, faces, 40, 40, backend="torch", max_candidates=faces.shape[0])  # 1 view per group
    assert torch.equal(together.triangle_id, apart.triangle_id)
    torch.testing.assert_close(together.barycentrics, apart.barycentrics)
    torch.testing.assert_close(together.depth, apart.depth)


def test_interpolate_is_zero_off_the_mesh_whatever_the_attributes():
    clip = torch.tensor([[-0.5, -0.5, 0.0, 1.0], [0.5, -0.5, 0.0, 1.0], [0.0, 0.5, 0.0, 1.0]])
    faces = torch.tensor([[0, 1, 2]])
    rast = rasterize(clip, faces, 8, 8, backend="torch")
    out = interpolate(torch.tensor([[float("nan")], [1.0], [2.0]]), rast, faces)
    assert bool((out[~rast.mask] == 0).all())


def test_batched_attributes_per_image():
    clip = torch.tensor([[-1.0, -1.0, 0.0, 1.0], [1.0, -1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 1.0], [-1.0, 1.0, 0.0, 1.0]])
    rast = rasterize(clip.expand(2, 4, 4), QUAD_FACES, 4, 4, backend="torch")
    attributes = torch.stack([torch.ones(4, 1), 2 * torch.ones(4, 1)])  # (N, V, C)
    out = interpolate(attributes, rast, QUAD_FACES)
    torch.testing.assert_close(out[0], torch.ones(4, 4, 1))
    torch.testing.assert_close(out[1], 2 * torch.ones(4, 4, 1))


def test_uv_rasterization_puts_v_up_on_row_zero():
    uvs = torch.tensor([[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]])  # the upper half of UV space
    rast = rasterize_uv(uvs, QUAD_FACES, 8)
    assert rast.triangle_id.shape == (1, 8, 8)
    assert bool(rast.mask[0, :4].all()) and not bool(rast.mask[0, 4:].any())
    texel_uv = interpolate(uvs, rast, QUAD_FACES)[0, :4]  # (4, 8, 2)
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(8.0), indexing="ij")
    torch.testing.assert_close(texel_uv[..., 0], (cols + 0.5) / 8)
    torch.testing.assert_close(texel_uv[..., 1], 1 - (rows + 0.5) / 8)


def test_invalid_inputs_raise_clear_errors():
    clip = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="faces index vertices"):
        rasterize(clip, torch.tensor([[0, 1, 3]]), 4, 4)
    with pytest.raises(ValueError, match=r"clip must be \(N, V, 4\)"):
        rasterize(torch.zeros(3, 3), torch.tensor([[0, 1, 2]]), 4, 4)
    with pytest.raises(ValueError, match="backend"):
        rasterize(clip, torch.tensor([[0, 1, 2]]), 4, 4, backend="opengl")


def test_project_agrees_with_camera_pixel_rays():
    from lrmesh.cameras import pixel_rays, render_cameras

    c2w = orbit_poses([40.0], [25.0], 3.0)
    resolution = 16
    origins, directions = pixel_rays(render_cameras(c2w, 30.0), resolution)
    pixel = 5 * resolution + 11  # row 5, column 11
    point = origins[0, pixel] + 2.5 * directions[0, pixel]
    clip = project(point[None], c2w, 30.0)[0, 0]
    ndc = clip[:2] / clip[3]
    x, y = pixel_centres_ndc(resolution, resolution)
    torch.testing.assert_close(ndc.double(), torch.stack([x[5, 11], y[5, 11]]), atol=1e-5, rtol=0)
