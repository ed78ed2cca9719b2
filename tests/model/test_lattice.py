"""The lattice evaluation of the decoder heads (lrmesh.model.lattice) against querying every point.

Oracle: the per-point path, `sample_triplanes` at each point and the head's MLP on its features
(`MeshSynthesizer.grid_fields`, `NerfSynthesizer.query`), which the parity tests tie to the reference.
"""

from __future__ import annotations

import pytest
import torch

import lrmesh.model.synthesizers as synthesizers
from lrmesh.config import SynthesizerConfig
from lrmesh.model.decoders import mlp
from lrmesh.model.lattice import at_any_points, at_points, cube_plane_terms, linears, on_lattice, plane_terms
from lrmesh.model.synthesizers import MeshSynthesizer, NerfSynthesizer
from lrmesh.model.triplane import sample_triplanes, sample_triplanes_on_lattice

C = 8  # channels per plane


def random_planes(seed: int, size: int = 16) -> torch.Tensor:
    return torch.randn(1, 3, C, size, size, generator=torch.Generator().manual_seed(seed))


def randomise(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)


@pytest.mark.parametrize("num_layers", [1, 2, 4])
def test_a_head_on_the_lattice_and_at_lattice_points_is_the_mlp_on_sampled_features(num_layers):
    planes = random_planes(0)
    head = mlp(3 * C, 16, 5, num_layers)
    randomise(head, 1)
    axis = torch.linspace(-0.9, 0.95, 7)
    gx, gy, gz = torch.meshgrid(axis, axis, axis, indexing="ij")
    points = torch.stack([gx, gy, gz], -1).reshape(-1, 3)
    with torch.no_grad():
        expected = head(sample_triplanes(planes, points[None])[0])  # (343, 5), [x, y, z] order
        first, *rest = linears(head)
        terms = plane_terms(sample_triplanes_on_lattice(planes, axis), first)
        whole = on_lattice(terms, rest, chunk=20)  # blocks of two y rows, the last one of one
        some = torch.tensor([0, 5, 48, 100, 342, 77])
        picked = at_points(terms, some, rest, chunk=4)
        two_rows = on_lattice(terms, rest, chunk=20, rows=2)
    assert whole.shape == (7, 7, 7, 5)
    torch.testing.assert_close(whole.reshape(-1, 5), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(picked, expected[some], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(two_rows.reshape(-1, 2), expected[:, :2], rtol=1e-5, atol=1e-5)


def test_cube_terms_are_the_weight_head_on_its_eight_corners():
    res = 5
    planes = random_planes(2)
    head = mlp(8 * 3 * C, 16, 21, 3)
    randomise(head, 3)
    synth = MeshSynthesizer(SynthesizerConfig(kind="mesh", grid_res=res, grid_scale=1.8), C)
    verts, cubes = synth.grid(torch.device("cpu"))
    with torch.no_grad():
        corner_features = sample_triplanes(planes, verts[None])[0][cubes]  # (M, 8, 3C) in CUBE_CORNERS order
        expected = head(corner_features.flatten(-2))
        first, *rest = linears(head)
        terms = cube_plane_terms(sample_triplanes_on_lattice(planes, verts[:res + 1, 2]), first)
        got = at_points(terms, torch.arange(res ** 3), rest, chunk=32)
    assert terms[0].shape == (res, res, 16)
    scale = float(expected.abs().max())  # the 192-wide sums of random weights reach tens: rounding scales with it
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6 * scale)


def test_mesh_extraction_uses_the_grid_fields_values(monkeypatch):
    """What extract_mesh hands FlexiCubes (SDF, deformed vertices, surface-cube weights) equals grid_fields'
    per-point predictions on the same planes, where the surface needs them."""
    cfg = SynthesizerConfig(kind="mesh", grid_res=24, grid_scale=2.1)
    synth = MeshSynthesizer(cfg, C)
    randomise(synth, 4)
    planes = random_planes(5)
    seen = {}
    original = synthesizers.flexicubes_extract

    def spy(deformed, sdf, cubes, res, surface, weights):
        seen.update(deformed=deformed, sdf=sdf, surface=surface, weights=weights)
        return original(deformed, sdf, cubes, res, surface, weights)

    monkeypatch.setattr(synthesizers, "flexicubes_extract", spy)
    mesh = synth.extract_mesh(planes)
    with torch.no_grad():
        fields = synth.grid_fields(planes)
    verts, cubes = synth.grid(planes.device)
    surface = seen["surface"]
    assert 0 < int(surface.sum()) < cubes.shape[0] and mesh.num_faces > 0
    torch.testing.assert_close(seen["sdf"], synth.fix_empty_sdf(fields.sdf[:, 0]), rtol=1e-5, atol=1e-5)
    used = torch.unique(cubes[surface])
    torch.testing.assert_close(seen["deformed"][used], verts[used] + synth.scale_deformation(fields.deformation[used]),
                               rtol=1e-5, atol=1e-6)
    unused = torch.ones(verts.shape[0], dtype=torch.bool)
    unused[used] = False
    assert torch.equal(seen["deformed"][unused], verts[unused])
    torch.testing.assert_close(seen["weights"], fields.weights[surface], rtol=1e-5, atol=1e-5)


def test_nerf_grid_density_is_the_density_at_every_grid_point():
    synth = NerfSynthesizer(SynthesizerConfig(kind="nerf"), C)
    randomise(synth, 6)
    planes = random_planes(7)
    res = 9
    axis = torch.linspace(-1, 1, res)
    gx, gy, gz = torch.meshgrid(axis, axis, axis, indexing="ij")
    with torch.no_grad():
        raw = synth.query(planes, torch.stack([gx, gy, gz], -1).reshape(1, -1, 3)).sigma.reshape(res, res, res)
        got = synth.grid_density(planes, res)
    torch.testing.assert_close(got, torch.nn.functional.softplus(raw - 1), rtol=1e-5, atol=1e-5)


def test_a_head_at_any_points_is_the_mlp_on_sampled_features_inside_and_outside_the_box():
    planes = random_planes(8)
    head = mlp(3 * C, 16, 3, 4)
    randomise(head, 9)
    points = torch.rand(500, 3, generator=torch.Generator().manual_seed(10)) * 2.6 - 1.3  # some beyond the planes
    with torch.no_grad():
        expected = head(sample_triplanes(planes, points[None], 2.0)[0])
        got = at_any_points(planes, points, linears(head), 2.0, chunk=128)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_mesh_colours_are_the_colour_head_on_sampled_features():
    synth = MeshSynthesizer(SynthesizerConfig(kind="mesh", grid_res=8), C)
    randomise(synth, 11)
    planes, points = random_planes(12), torch.rand(300, 3, generator=torch.Generator().manual_seed(13)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(synth.rgb(planes, points), synth.decoder.rgb(synth.features(planes, points)),
                                   rtol=1e-5, atol=1e-5)  # colours in [0, 1]: far below one 8-bit level


def test_nerf_colours_are_the_decoder_on_sampled_features():
    synth = NerfSynthesizer(SynthesizerConfig(kind="nerf"), C)
    randomise(synth, 14)
    planes, points = random_planes(15), torch.rand(300, 3, generator=torch.Generator().manual_seed(16)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(synth.rgb(planes, points), synth.query(planes, points[None]).rgb[0],
                                   rtol=1e-5, atol=1e-5)
