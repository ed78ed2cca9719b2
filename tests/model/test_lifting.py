"""Projected plane queries: the lines agree with triplane sampling, projection inverts the pixel rays."""

import pytest
import torch

from lrmesh.cameras import encoder_cameras, orbit_poses, pixel_rays, render_cameras, zero123pp_cameras
from lrmesh.config import preset
from lrmesh.errors import ConfigError
from lrmesh.model.lifting import ProjectedQueries, plane_line_points, project
from lrmesh.model.lrm import LRM
from lrmesh.model.triplane import sample_triplanes


@pytest.mark.parametrize("box_warp", [2.0, 3.0])
def test_line_points_fall_in_their_token_cell(box_warp):
    # A triplane whose low-res cell (plane p, row i, column j) holds the token index, upsampled 2x as the
    # transformer's deconvolution does: sampling it at a token's line points gives back that token's index.
    r, s = 4, 5
    index = torch.arange(3 * r * r, dtype=torch.float32).reshape(1, 3, 1, r, r)
    planes = index.repeat_interleave(2, dim=-1).repeat_interleave(2, dim=-2)  # (1, 3, 1, 2r, 2r)
    points = plane_line_points(r, s, box_warp)  # (3 r r, s, 3)
    feats = sample_triplanes(planes, points.reshape(1, -1, 3), box_warp).reshape(3 * r * r, s, 3)
    for p in range(3):
        token = torch.arange(p * r * r, (p + 1) * r * r, dtype=torch.float32)
        assert torch.equal(feats[p * r * r:(p + 1) * r * r, :, p], token[:, None].expand(-1, s))
    # the free axis runs across the box at cell centres
    depth = points[0, :, 2]
    half = box_warp / 2
    assert torch.allclose(depth, torch.linspace(-half + half / s, half - half / s, s))


def test_projection_inverts_pixel_rays():
    poses = orbit_poses([30.0, 200.0], [20.0, -10.0], 2.5)
    res = 6
    origins, directions = pixel_rays(render_cameras(poses, 40.0), res)
    cams = encoder_cameras(poses, 40.0)
    idx = torch.arange(res, dtype=torch.float32)
    rows, cols = torch.meshgrid(idx, idx, indexing="ij")
    expected = torch.stack([(cols + 0.5) / res, (rows + 0.5) / res], dim=-1).reshape(-1, 2)
    for v in range(2):
        points = origins[v] + 1.7 * directions[v]  # in front of camera v
        uv, in_front = project(points, cams[None])
        assert torch.allclose(uv[0, v], expected, atol=1e-5)
        assert in_front[0, v].all()
        behind = origins[v] - 1.0 * directions[v]
        assert not project(behind, cams[None])[1][0, v].any()
        beside = origins[v] + 1.7 * (directions[v] + 2.0 * torch.linalg.inv(poses[v])[0, :3])  # far to the right
        uv, visible = project(beside, cams[None])
        assert (uv[0, v, :, 0] > 1).all() and not visible[0, v].any()


def test_projected_queries_average_the_patches_they_see():
    torch.manual_seed(0)
    dim, grid = 8, (2, 2)
    lift = ProjectedQueries(low_res=2, samples=3, box_warp=2.0, cond_dim=dim, dim=5)
    cams = zero123pp_cameras()[None, :2]  # (1, 2, 16); the unit box is well inside both views
    patch = torch.randn(dim)
    tokens = torch.cat([torch.full((1, 1, dim), 1e6), patch.expand(1, 4, dim)], dim=1).repeat(1, 2, 1)  # CLS first
    out = lift(tokens, cams, grid)
    # every line point lands inside both images, so the mean of a constant patch grid is that constant; the
    # (huge) CLS tokens take no part
    assert out.shape == (1, 12, 5)
    assert torch.allclose(out, lift.proj(patch.repeat(3)).expand(1, 12, 5), atol=1e-4)
    # a view whose tokens run from 0 (left column) to 1 (right): every token reads a value between the two, and
    # tokens whose lines fall on different parts of the image read different values
    ramp = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).reshape(4, 1) * torch.ones(4, dim)
    tokens = torch.cat([torch.zeros(1, 1, dim), ramp[None]], dim=1)
    lift.proj = torch.nn.Identity()
    pooled = lift(tokens, cams[:, :1], grid)[0]  # (12 tokens, 3 samples x dim)
    assert pooled.min() >= 0 and pooled.max() <= 1 and pooled.std() > 0.05


def test_lifting_is_off_in_the_releases_and_adds_its_keys_when_on():
    cfg = preset("tiny")
    assert cfg.transformer.projected_samples == 0
    assert not any(k.startswith("lifting.") for k in LRM(cfg).state_dict())
    cfg.transformer.projected_samples = 4
    model = LRM(cfg)
    assert {k for k in model.state_dict() if k.startswith("lifting.")} == {"lifting.proj.weight", "lifting.proj.bias"}
    images, cams = torch.rand(2, 3, 3, 32, 32), zero123pp_cameras()[None, :3].expand(2, 3, 16)
    planes = model.forward_planes(images, cams)
    assert planes.shape == (2, 3, 8, 16, 16)
    planes.square().mean().backward()
    assert model.lifting.proj.weight.grad.abs().sum() > 0


def test_negative_projected_samples_is_a_config_error():
    cfg = preset("tiny")
    cfg.transformer.projected_samples = -1
    with pytest.raises(ConfigError, match="projected_samples must be 0"):
        LRM(cfg)


def test_reconstruct_uses_the_lifting_as_training_does():
    # Regression: reconstruct once called the transformer without the projected queries, so a model trained with
    # them saw planes at inference that it was never trained on. Its planes must be forward_planes' planes.
    from lrmesh.reconstruct import reconstruct

    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.transformer.projected_samples = 4
    model = LRM(cfg).eval()
    with torch.no_grad():
        model.lifting.proj.bias.fill_(0.5)  # a lifting that moves the planes a lot
    views, cams = torch.rand(6, 3, 48, 48), zero123pp_cameras()
    with torch.no_grad():
        expected = model.forward_planes(views[None], cams[None])
        without = model.transformer(model.encoder(views[None], cams[None]))
    planes = reconstruct(model, views, cams).planes
    assert (without - expected).abs().max() > 1e-2
    torch.testing.assert_close(planes, expected)
