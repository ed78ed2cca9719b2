"""Silhouette antialiasing: exact coverage of straight edges, area gradients, silhouettes only, batches, parity."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F
import trimesh

from lrmesh.cameras import orbit_poses
from lrmesh.render.antialias import NO_TWIN, edge_twins
from lrmesh.render.raster import antialias, project, rasterize

HEIGHT, WIDTH = 40, 56
ONE_TRIANGLE = torch.tensor([[0, 1, 2]])
IMAGE_SQUARE = [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]  # NDC, counter-clockwise


def clipped_area(polygon: list[tuple[float, float]], box: list[tuple[float, float]] = IMAGE_SQUARE) -> float:
    """Area of a polygon inside a convex box (Sutherland-Hodgman clipping, then the shoelace formula)."""
    for (ax, ay), (bx, by) in zip(box, box[1:] + box[:1]):
        def inside(p: tuple[float, float]) -> bool:
            return (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax) >= 0

        def cut(p: tuple[float, float], q: tuple[float, float]) -> tuple[float, float]:
            dp = (bx - ax) * (p[1] - ay) - (by - ay) * (p[0] - ax)
            dq = (bx - ax) * (q[1] - ay) - (by - ay) * (q[0] - ax)
            s = dp / (dp - dq)
            return p[0] + s * (q[0] - p[0]), p[1] + s * (q[1] - p[1])

        clipped = []
        for p, q in zip(polygon, polygon[1:] + polygon[:1]):
            if inside(p):
                clipped.append(p)
            if inside(p) != inside(q):
                clipped.append(cut(p, q))
        polygon = clipped
    return 0.5 * abs(sum(p[0] * q[1] - q[0] * p[1] for p, q in zip(polygon, polygon[1:] + polygon[:1])))


def flat_clip(xy: list[tuple[float, float]], z: float = 0.0) -> torch.Tensor:
    """NDC points at w = 1 -> (V, 4) float64 clip coordinates."""
    return torch.tensor([[x, y, z, 1.0] for x, y in xy], dtype=torch.float64)


def antialiased_mask(clip: torch.Tensor, faces: torch.Tensor, height: int = HEIGHT, width: int = WIDTH):
    rast = rasterize(clip, faces, height, width, backend="torch")
    return rast, antialias(rast.mask[..., None].to(clip.dtype), rast, clip, faces)[..., 0]


# A triangle whose only edge inside the image is a long slanted one; the covered part of the image is everything
# on one side of it. The edges move half a pixel per pixel row (column), so the hard mask's rounding errors do
# not average out. A steep edge is handled by horizontal pixel pairs, a shallow one by vertical pairs.
STEEP_SLOPE, SHALLOW_SLOPE = 0.5 * HEIGHT / WIDTH, 0.5 * WIDTH / HEIGHT  # NDC x per NDC y, and y per x
STEEP = [(0.08 - 1.5 * STEEP_SLOPE, -1.5), (0.08 + 1.5 * STEEP_SLOPE, 1.5), (-8.0, 0.0)]  # covers the left
SHALLOW = [(-1.5, 0.09 - 1.5 * SHALLOW_SLOPE), (1.5, 0.09 + 1.5 * SHALLOW_SLOPE), (0.0, 8.0)]  # covers the top


@pytest.mark.parametrize("corners", [STEEP, SHALLOW], ids=["steep", "shallow"])
def test_antialiased_mask_gives_the_covered_area_of_a_straight_edge(corners):
    rast, mask = antialiased_mask(flat_clip(corners), ONE_TRIANGLE)
    exact = clipped_area(corners) / 4  # fraction of the 2 x 2 NDC square
    hard_error = abs(float(rast.mask.double().mean()) - exact)
    assert hard_error > 1e-3  # the hard mask rounds coverage to pixel centres
    # Per pixel row (column), the blended coverages add up to the covered length of its centre line, which for a
    # straight edge is the row's covered area: the mean is exact, not just better.
    assert abs(float(mask.mean()) - exact) < 0.3 * hard_error
    assert abs(float(mask.mean()) - exact) < 1e-9
    assert float(mask.min()) >= 0 and float(mask.max()) <= 1


def test_hand_computed_row():
    # A vertical silhouette at x = 2.3 px (NDC 2 * 2.3 / 4 - 1 = 0.15), covered to its left. Pixel centres sit at
    # 0.5, 1.5, 2.5, 3.5: the hard mask is 1, 1, 0, 0; the pair (1, 2) sees the edge at t = 2.3 - 1.5 = 0.8 from
    # pixel 1's centre, past the pixels' border at 1/2, so pixel 2 gets 0.8 - 1/2 = 0.3 of the covered colour.
    _, mask = antialiased_mask(flat_clip([(0.15, -3.0), (0.15, 3.0), (-5.0, 0.0)]), ONE_TRIANGLE, 2, 4)
    expected = torch.tensor([1.0, 1.0, 0.3, 0.0], dtype=torch.float64).expand(1, 2, 4)
    torch.testing.assert_close(mask, expected)


@pytest.mark.parametrize("vertex", [0, 1])
def test_mask_gradient_is_the_area_derivative(vertex):
    # Moving an end of the silhouette edge right grows the covered area (the triangle lies left of it).
    clip = flat_clip(STEEP).requires_grad_(True)
    _, mask = antialiased_mask(clip, ONE_TRIANGLE)
    (grad,) = torch.autograd.grad(mask.mean(), clip)
    step = 1e-4
    moved = [list(c) for c in STEEP]
    moved[vertex][0] += step
    ahead = clipped_area([tuple(c) for c in moved])
    moved[vertex][0] -= 2 * step
    behind = clipped_area([tuple(c) for c in moved])
    finite = (ahead - behind) / (2 * step) / 4
    assert float(grad[vertex, 0]) > 0
    assert abs(float(grad[vertex, 0]) - finite) < 0.02 * finite
    assert float(grad[2].abs().max()) == 0.0  # the far vertex's edges lie outside the image


def test_a_mask_loss_moves_the_silhouette_onto_its_target():
    # Without antialiasing this loss has no gradient w.r.t. the vertices at all.
    _, target = antialiased_mask(flat_clip([(0.3, -1.5), (0.1, 1.5), (-8.0, 0.0)]), ONE_TRIANGLE)
    clip = flat_clip([(0.0, -1.5), (-0.2, 1.5), (-8.0, 0.0)]).requires_grad_(True)
    optimizer = torch.optim.Adam([clip], lr=0.02)
    losses = []
    for _ in range(40):
        loss = (antialiased_mask(clip, ONE_TRIANGLE)[1] - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.03 * losses[0]
    torch.testing.assert_close(clip[:2, 0].detach(), torch.tensor([0.3, 0.1], dtype=torch.float64), atol=0.05, rtol=0)


def test_invalid_inputs_raise_clear_errors():
    rast = rasterize(flat_clip(STEEP), ONE_TRIANGLE, HEIGHT, WIDTH, backend="torch")
    with pytest.raises(ValueError, match="color must be"):
        antialias(torch.zeros(1, HEIGHT, WIDTH + 1, 3), rast, flat_clip(STEEP), ONE_TRIANGLE)
    with pytest.raises(ValueError, match="views"):
        antialias(torch.zeros(1, HEIGHT, WIDTH, 3), rast, flat_clip(STEEP).expand(2, 3, 4), ONE_TRIANGLE)


def test_only_pixels_beside_silhouettes_change():
    sphere = trimesh.creation.icosphere(subdivisions=3)
    vertices, faces = torch.tensor(sphere.vertices), torch.tensor(sphere.faces)
    clip = project(vertices, orbit_poses([10.0, 100.0], [20.0, -10.0], 5.0), 30.0)
    rast = rasterize(clip, faces, 64, 64, backend="torch")
    color = torch.rand(2, 64, 64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    changed = (antialias(color, rast, clip, faces) != color).any(dim=-1)
    coverage = rast.mask[:, None].double()
    beside_silhouette = ((F.max_pool2d(coverage, 3, 1, 1) > 0) & (F.max_pool2d(1 - coverage, 3, 1, 1) > 0))[:, 0]
    inner_edges = (rast.triangle_id[..., 1:] != rast.triangle_id[..., :-1]) & rast.mask[..., 1:] & rast.mask[..., :-1]
    assert int(inner_edges.sum()) > 100  # many pixel pairs straddle edges between front faces ...
    assert not bool((changed & ~beside_silhouette).any())  # ... but only silhouette pixels change
    assert int(changed.sum()) > 0.5 * int((~rast.mask & beside_silhouette).sum())  # most outer pixels blend


def test_images_without_silhouettes_are_unchanged():
    quad = flat_clip([(-1.5, -1.5), (1.5, -1.5), (1.5, 1.5), (-1.5, 1.5)])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    color = torch.rand(1, HEIGHT, WIDTH, 3, dtype=torch.float64)
    rast = rasterize(quad, faces, HEIGHT, WIDTH, backend="torch")
    assert bool(rast.mask.all()) and len(rast.triangle_id.unique()) == 2
    assert torch.equal(antialias(color, rast, quad, faces), color)
    offscreen = quad + torch.tensor([5.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    empty = rasterize(offscreen, faces, HEIGHT, WIDTH, backend="torch")
    assert torch.equal(antialias(color, empty, offscreen, faces), color)


def test_occluding_triangle_blends_with_the_surface_behind():
    # A small triangle in front of a screen-filling one: its edges are silhouettes over a covered background.
    front = [(-0.5, -0.6), (0.6, -0.4), (0.1, 0.7)]
    clip = torch.cat([flat_clip([(-3.0, -3.0), (3.0, -3.0), (0.0, 3.0)], z=0.5), flat_clip(front, z=-0.5)])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    rast = rasterize(clip, faces, HEIGHT, WIDTH, backend="torch")
    assert bool(rast.mask.all())
    front_color = (rast.triangle_id == 1)[..., None].double()
    blended = antialias(front_color, rast, clip, faces)[..., 0]
    exact = clipped_area(front) / 4
    hard_error = abs(float(front_color.mean()) - exact)
    assert abs(float(blended.mean()) - exact) < 0.3 * hard_error


def test_silhouette_behind_a_sliver_that_covers_no_pixel_centre():
    # A big triangle with a sliver along its right edge, both edges between the same two columns of pixel
    # centres (30.5 and 31.5 px) in every row: the sliver covers no pixel centre, so the pixels beside the true
    # silhouette (the sliver's outer edge) belong to the big triangle, whose own edge there is no silhouette.
    # Walking across the sliver still finds it (nvdiffrast, looking at the big triangle's edges only, would not).
    inner_bottom, inner_top, outer_bottom = (0.090179, -1.5), (0.095536, 1.5), (0.105179, -1.5)
    clip = flat_clip([inner_bottom, inner_top, (-6.0, 0.0), outer_bottom])
    faces = torch.tensor([[0, 1, 2], [0, 3, 1]])
    rast, mask = antialiased_mask(clip, faces)
    assert not bool((rast.triangle_id == 1).any())
    exact = clipped_area([(-6.0, 0.0), inner_bottom, outer_bottom, inner_top]) / 4
    hard_error = abs(float(rast.mask.double().mean()) - exact)
    assert hard_error > 1e-3
    assert abs(float(mask.mean()) - exact) < 1e-9


def test_gradients_match_finite_differences():
    clip = flat_clip([(-0.83, -0.71), (0.77, -0.52), (0.12, 0.88)]).requires_grad_(True)
    rast = rasterize(clip.detach(), ONE_TRIANGLE, 8, 10, backend="torch")
    color = torch.rand(1, 8, 10, 1, dtype=torch.float64, requires_grad=True)
    assert bool((antialias(color, rast, clip, ONE_TRIANGLE) != color).any())
    assert torch.autograd.gradcheck(lambda c, p: antialias(c, rast, p, ONE_TRIANGLE), (color, clip), fast_mode=True)


def test_batched_views_match_single_views():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    vertices, faces = torch.tensor(sphere.vertices), torch.tensor(sphere.faces)
    clip = project(vertices, orbit_poses([0.0, 120.0, 240.0], [20.0, -10.0, 20.0], 3.0), 30.0)
    rast = rasterize(clip, faces, 32, 32, backend="torch")
    color = torch.rand(3, 32, 32, 3, dtype=torch.float64)
    both = antialias(color, rast, clip, faces)
    for n in range(3):
        one = rasterize(clip[n], faces, 32, 32, backend="torch")
        torch.testing.assert_close(both[n:n + 1], antialias(color[n:n + 1], one, clip[n], faces))


def test_edge_twins_pair_shared_edges():
    # Two triangles sharing edge (0, 2), and a dangling third sharing nothing.
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6]])
    twins = edge_twins(faces)
    # Edge 1 of face 0 (opposite vertex 1) is (2, 0); edge 2 of face 1 (opposite vertex 3) is (0, 2).
    assert int(twins[0, 1]) == 3 * 1 + 2 and int(twins[1, 2]) == 3 * 0 + 1
    assert int((twins == NO_TWIN).sum()) == 9 - 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("nvdiffrast") is None,
                    reason="needs CUDA and nvdiffrast")
def test_nvdiffrast_antialias_agrees_on_a_single_triangle():
    clip = flat_clip(STEEP).float().cuda()
    rast = rasterize(clip, ONE_TRIANGLE.cuda(), HEIGHT, WIDTH, backend="nvdiffrast")
    color = torch.rand(1, HEIGHT, WIDTH, 3, device="cuda")
    ours = antialias(color, rast, clip, ONE_TRIANGLE.cuda(), backend="torch")
    torch.testing.assert_close(antialias(color, rast, clip, ONE_TRIANGLE.cuda(), backend="nvdiffrast"), ours,
                               atol=1e-4, rtol=0)
