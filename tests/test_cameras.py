"""Camera conventions against the fixture's cameras and analytic cases."""

from __future__ import annotations

import math

import numpy as np
import torch

from lrmesh.cameras import (focal_from_fov, orbit_poses, pixel_rays, render_cameras, turntable_poses,
                            zero123pp_cameras)


def test_zero123pp_cameras_are_the_references_bit_for_bit(fixture_cameras):
    assert torch.equal(zero123pp_cameras(), fixture_cameras)
    assert torch.equal(zero123pp_cameras(views=[0, 2, 4, 5]), fixture_cameras[[0, 2, 4, 5]])


def test_render_cameras_match_fixture(expected):
    view5 = render_cameras(orbit_poses([330.0], [-10.0], 4.0))
    orbit20 = render_cameras(turntable_poses(120, 4.5, 20.0)[20:21])
    assert torch.equal(torch.cat([view5, orbit20]), torch.from_numpy(expected["nerf_render_cameras"][0]))


def test_pose_looks_at_origin_z_up():
    c2w = orbit_poses([90.0], [0.0], 2.0)[0]
    assert torch.allclose(c2w[:3, 3], torch.tensor([0.0, 2.0, 0.0]), atol=1e-6)
    assert torch.allclose(-c2w[:3, 2], torch.tensor([0.0, -1.0, 0.0]), atol=1e-6)  # looks along -z_cam
    assert torch.allclose(c2w[:3, 1], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)  # camera up is world up
    assert torch.allclose(c2w[:3, :3] @ c2w[:3, :3].T, torch.eye(3), atol=1e-6)


def test_pixel_rays_centre_and_corner():
    cams = render_cameras(orbit_poses([0.0], [0.0], 4.0))
    origins, dirs = pixel_rays(cams, 2)  # 2x2 pixels: centres at +-1/4 of the image
    f = focal_from_fov(30.0)
    assert torch.allclose(origins[0, 0], torch.tensor([4.0, 0.0, 0.0]))
    # top-left pixel: left (world -y seen from +x... camera right is world +y) and up (+z)
    expected = torch.tensor([-f, -0.25, 0.25])
    expected = expected / expected.norm()
    assert torch.allclose(dirs[0, 0], expected, atol=1e-6)
    assert math.isclose(f, 0.5 / math.tan(math.radians(15)), rel_tol=1e-12)


def test_turntable_starts_at_azimuth_zero():
    poses = turntable_poses(4, 3.0, 0.0)
    np.testing.assert_allclose(poses[:, :3, 3].numpy(), [[3, 0, 0], [0, 3, 0], [-3, 0, 0], [0, -3, 0]], atol=1e-5)


def test_unproject_depth_lands_on_the_pixel_rays_and_on_a_rasterized_sphere():
    from lrmesh.cameras import intrinsics_matrix, unproject_depth
    from lrmesh.metrics import sphere_mesh
    from lrmesh.render.raster import project_intrinsics, rasterize

    poses = orbit_poses([20.0, 135.0, 250.0], [25.0, -10.0, 5.0], 2.5)
    k = torch.stack([intrinsics_matrix(0.9), intrinsics_matrix(0.9), intrinsics_matrix(0.7)])
    k[2, 0, 2] += 0.05  # an off-centre principal point
    size = 24
    # On its pixel's ray, at the given distance along the view axis.
    depth = 1.5 + torch.rand(3, size, size)
    points = unproject_depth(poses, k, depth).reshape(3, -1, 3)
    origins, directions = pixel_rays(torch.cat([poses.reshape(3, 16), k.reshape(3, 9)], 1), size)
    offset = points - origins
    along = torch.linalg.cross(offset, directions).norm(dim=-1)
    assert along.max() < 1e-5
    forward = -poses[:, None, :3, 2]  # the camera looks down its -z
    torch.testing.assert_close((offset * forward).sum(-1), depth.reshape(3, -1))
    # The rasterizer's depth of a sphere lifts back onto the sphere (off-centre, so a mirrored lift misses it).
    radius, centre = 0.6, torch.tensor([0.3, -0.2, 0.25])
    sphere = sphere_mesh(centre, radius, subdivisions=4)
    rast = rasterize(project_intrinsics(sphere.vertices, poses, k), sphere.faces, size, size)
    lifted = unproject_depth(poses, k, rast.depth)[rast.mask]
    assert rast.mask.sum() > 100
    assert ((lifted - centre).norm(dim=-1) - radius).abs().max() < 0.01  # the facets' distance below the sphere


def test_sv3d_frame_zero_sits_at_plus_x_and_the_orbit_turns_counter_clockwise_from_above():
    from lrmesh.cameras import sv3d_cameras

    cams = sv3d_cameras()
    assert cams.shape == (21, 16)
    f = 0.5 / math.tan(math.radians(15))
    # Frame 0, hand-derived: at (4, 0, 0) looking down -x; camera right = z_world x back = +y, camera up = +z.
    np.testing.assert_allclose(cams[0].numpy(), [0, 0, 1, 4, 1, 0, 0, 0, 0, 1, 0, 0, f, f, 0.5, 0.5], atol=1e-6)
    step = math.radians(360 / 21)
    np.testing.assert_allclose(cams[1, [3, 7, 11]].numpy(), [4 * math.cos(step), 4 * math.sin(step), 0], atol=1e-6)
    positions = cams[:, [3, 7, 11]]
    turn = torch.linalg.cross(positions, positions.roll(-1, 0), dim=-1)[:, 2]
    assert (turn > 0).all()  # every step is counter-clockwise seen from +z
    # SV3D_p: the orbit's elevation, radius 4 x scale, frames picked by index
    p = sv3d_cameras(elevation_deg=10.0, radius=6.0, views=[0, 7])
    np.testing.assert_allclose(p[0, [3, 7, 11]].numpy(), [6 * math.cos(math.radians(10)), 0,
                                                          6 * math.sin(math.radians(10))], atol=1e-5)
    assert torch.equal(p[1], sv3d_cameras(10.0, 6.0)[7])


def test_encoder_cameras_take_one_fov_per_view():
    from lrmesh.cameras import encoder_cameras

    poses = orbit_poses([0.0, 120.0, 240.0], [10.0, 0.0, -5.0], 3.0)
    mixed = encoder_cameras(poses, [30.0, 50.0, 30.0])
    assert torch.equal(mixed[[0, 2]], encoder_cameras(poses, 30.0)[[0, 2]])
    assert torch.equal(mixed[1], encoder_cameras(poses, 50.0)[1])


def test_evenly_spaced_frames():
    from lrmesh.cameras import evenly_spaced

    assert evenly_spaced(7, 21) == [0, 3, 6, 9, 12, 15, 18]
    assert evenly_spaced(21, 21) == list(range(21))
    assert evenly_spaced(4, 21) == [0, 5, 10, 15]


def test_axes_meeting_point():
    from lrmesh.cameras import axes_meeting_point, look_at_origin

    target = np.array([1.0, -2.0, 0.5])
    c2w = look_at_origin(torch.tensor([[3.0, 0, 1], [0, 4, 0.5], [-2, -1, 2]], dtype=torch.float64)).numpy()
    c2w[:, :3, 3] += target  # the same cameras moved: they all look at `target`
    np.testing.assert_allclose(axes_meeting_point(c2w, 1e-3), target, atol=1e-9)
    outward = c2w.copy()
    outward[:, :3, :3] = -outward[:, :3, :3]  # each camera turned away (axes through target, looking outwards)
    assert axes_meeting_point(outward, 1e-3) is None
    parallel = np.repeat(c2w[:1], 3, axis=0)
    parallel[:, :3, 3] += np.array([[0, 0, 0], [0, 1, 0], [0, 0, 1]])
    assert axes_meeting_point(parallel, 1e-3) is None
