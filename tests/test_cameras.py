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
