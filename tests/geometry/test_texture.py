"""Texture baking: xatlas UVs, UV-space rasterization, colour queries, seam dilation, texture lookups."""

import pytest
import torch
import torch.nn.functional as F
import trimesh

from lrmesh.geometry.mesh import Mesh
from lrmesh.geometry.texture import BACKGROUND, DILATION_TEXELS, bake_texture, dilate, sample_texture
from lrmesh.render.raster import rasterize_uv

RESOLUTION = 256


def colour_field(points: torch.Tensor) -> torch.Tensor:
    return (points + 1) / 2


@pytest.fixture(scope="module")
def baked() -> tuple[Mesh, Mesh]:
    sphere = trimesh.creation.icosphere(subdivisions=3)
    mesh = Mesh(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces, dtype=torch.int64),
                vertex_colors=torch.full((len(sphere.vertices), 3), 0.5))
    return mesh, bake_texture(mesh, colour_field, resolution=RESOLUTION, chunk=1000)


def test_baked_mesh_layout(baked):
    mesh, textured = baked
    assert textured.vertex_colors is None
    assert textured.texture.shape == (RESOLUTION, RESOLUTION, 3)
    assert textured.uv_faces.shape == mesh.faces.shape and textured.uv_faces.dtype == torch.int64
    assert torch.equal(textured.vertices, mesh.vertices) and torch.equal(textured.faces, mesh.faces)
    assert float(textured.uvs.min()) >= 0.0 and float(textured.uvs.max()) <= 1.0
    assert float(textured.texture.min()) >= 0.0 and float(textured.texture.max()) <= 1.0


def test_texture_lookup_at_vertex_uvs_reproduces_the_field(baked):
    mesh, textured = baked
    corner_vertex, corner_uv = mesh.faces.reshape(-1), textured.uv_faces.reshape(-1)
    looked_up = sample_texture(textured.texture, textured.uvs[corner_uv])  # (3F, 3)
    error = (looked_up - colour_field(mesh.vertices[corner_vertex])).abs().amax(dim=-1)
    # Vertices with a single UV are away from seams: bilinear lookups there read only baked texels.
    pairs = torch.unique(torch.stack([corner_vertex, corner_uv], dim=1), dim=0)
    uvs_per_vertex = torch.bincount(pairs[:, 0], minlength=mesh.num_vertices)
    interior = uvs_per_vertex[corner_vertex] == 1
    assert bool(interior.any()) and bool((~interior).any())
    assert float(error[interior].max()) < 2 / 255
    assert float(error.max()) < 6 / 255  # at seams the dilated texels are a neighbour average


def test_coverage_and_untouched_background(baked):
    _, textured = baked
    covered = rasterize_uv(textured.uvs, textured.uv_faces, RESOLUTION).mask[0]
    assert float(covered.float().mean()) > 0.3
    reach = F.max_pool2d(covered.float()[None, None], 2 * DILATION_TEXELS + 1, stride=1,
                         padding=DILATION_TEXELS)[0, 0] > 0
    assert bool((textured.texture[~reach] == BACKGROUND).all())
    assert bool(((~reach).float().mean()) > 0.05)
    grown = reach & ~covered  # the seam band: filled from the neighbours, not left as background
    assert bool((textured.texture[grown].sum(-1) > 0).all())


def test_dilate_grows_by_one_texel_per_pass():
    texture = torch.zeros(9, 9, 3)
    filled = torch.zeros(9, 9, dtype=torch.bool)
    texture[4, 4] = torch.tensor([0.2, 0.4, 0.6])
    filled[4, 4] = True
    once, mask_once = dilate(texture, filled, 1)
    assert int(mask_once.sum()) == 9 and bool((once[3:6, 3:6] == texture[4, 4]).all())
    twice, mask_twice = dilate(texture, filled, 2)
    assert int(mask_twice.sum()) == 25 and float(twice[0].abs().sum()) == 0.0
    torch.testing.assert_close(twice[2:7, 2:7], texture[4, 4].expand(5, 5, 3))


def test_dilate_averages_filled_neighbours():
    texture = torch.zeros(1, 3, 1)
    texture[0, 0], texture[0, 2] = 1.0, 0.0
    out, _ = dilate(texture, torch.tensor([[True, False, True]]), 1)
    assert float(out[0, 1, 0]) == pytest.approx(0.5)


def test_sample_texture_row_zero_is_v_one():
    texture = torch.zeros(4, 4, 3)
    texture[0] = torch.tensor([1.0, 0.0, 0.0])  # top row red
    texture[-1] = torch.tensor([0.0, 0.0, 1.0])  # bottom row blue
    uv = torch.tensor([[0.5, 1 - 0.5 / 4], [0.5, 0.5 / 4], [0.125, 0.5]])
    out = sample_texture(texture, uv)
    torch.testing.assert_close(out[0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(out[1], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(out[2], torch.zeros(3))
