"""FlexiCubes extraction: parity with the InstantMesh reference fixture, mesh sanity on a sphere, gradients."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lrmesh.geometry import flexicubes_tables as tables
from lrmesh.geometry.flexicubes import (
    FLEXI_WEIGHTS,
    flexicubes_extract,
    flexicubes_grid,
    normalize_weights,
    surface_cube_mask,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "instantmesh-tiny" / "expected.npz"
FIXTURE_RES = 32
FIXTURE_SCALE = 2.1
FIXTURE_WEIGHT_SCALE = 0.5
VERTEX_TOL = 1e-4

# sha256 of json.dumps(list) of each table as it appears in the reference tables.py (InstantMesh 08822c5).
TABLE_SHA256 = {
    "DMC_TABLE": "6af3e4e099bb462bf6811096684d64a904d5651c30ecfb16055e622ad8ef6bfe",
    "NUM_VD_TABLE": "10260d1c8c88485653eb0d5ce734ded287ba088af17fe8e9d00941b6bf5f4881",
    "CHECK_TABLE": "15a06864c9aaeb3fa2cd788f052a812577853104052adb0a746d7314626ca4e3",
    "TET_TABLE": "3e21ea1e36254bb3b85dedef6929d7d020248859b5a6428840ef2c750d8e9dd7",
}


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files if key.startswith("mesh_")}


@pytest.fixture(scope="module")
def fixture_inputs(ref: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    grid_verts, cubes = flexicubes_grid(FIXTURE_RES, FIXTURE_SCALE)
    sdf = torch.from_numpy(ref["mesh_sdf"][0, :, 0])
    surface = surface_cube_mask(sdf, cubes)
    raw = torch.from_numpy(ref["mesh_flexicubes_weight_raw"][0])[surface]
    deformed = grid_verts + torch.from_numpy(ref["mesh_deformation"][0])
    return {"grid": grid_verts, "cubes": cubes, "sdf": sdf, "surface": surface, "raw": raw, "deformed": deformed}


def _extract_fixture(inputs: dict[str, torch.Tensor], **kwargs):
    return flexicubes_extract(
        inputs["deformed"], inputs["sdf"], inputs["cubes"], FIXTURE_RES, inputs["surface"], inputs["raw"], **kwargs
    )


def test_tables_decode_to_reference() -> None:
    for name, digest in TABLE_SHA256.items():
        assert hashlib.sha256(json.dumps(getattr(tables, name)).encode()).hexdigest() == digest, name
    for case, verts in enumerate(tables.DMC_TABLE):
        assert sum(vert[0] != -1 for vert in verts) == tables.NUM_VD_TABLE[case]


def test_grid_layout() -> None:
    res, scale = 3, 2.0
    verts, cubes = flexicubes_grid(res, scale)
    assert verts.shape == ((res + 1) ** 3, 3) and verts.dtype == torch.float32
    assert cubes.shape == (res**3, 8) and cubes.dtype == torch.int64
    ix, iy, iz = 1, 2, 3
    n = (ix * (res + 1) + iy) * (res + 1) + iz
    torch.testing.assert_close(verts[n], (torch.tensor([ix, iy, iz]) / res - 0.5) * scale)
    cx, cy, cz = 2, 0, 1
    for k in range(8):
        corner = verts[cubes[(cx * res + cy) * res + cz, k]]
        offset = torch.tensor([k & 1, (k >> 1) & 1, (k >> 2) & 1])
        torch.testing.assert_close(corner, (torch.tensor([cx, cy, cz]) + offset) / res * scale - scale / 2)


def test_grid_matches_fixture(ref, fixture_inputs) -> None:
    np.testing.assert_allclose(fixture_inputs["grid"].numpy(), ref["mesh_grid_verts"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(fixture_inputs["cubes"].numpy(), ref["mesh_grid_cube_indices"])


def test_surface_cubes_match_fixture(ref, fixture_inputs) -> None:
    surface_ids = fixture_inputs["surface"].nonzero().squeeze(1).numpy()
    np.testing.assert_array_equal(surface_ids, ref["mesh_surface_cube_index"])


def test_normalized_weights_match_fixture(ref, fixture_inputs) -> None:
    beta, alpha, gamma = normalize_weights(fixture_inputs["raw"], FIXTURE_WEIGHT_SCALE)
    np.testing.assert_allclose(beta.numpy(), ref["mesh_flexicubes_beta"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(alpha.numpy(), ref["mesh_flexicubes_alpha"], rtol=0, atol=1e-7)
    np.testing.assert_allclose(gamma.numpy(), ref["mesh_flexicubes_gamma"], rtol=0, atol=1e-7)


def test_extract_matches_fixture(ref, fixture_inputs) -> None:
    mesh = _extract_fixture(fixture_inputs)
    assert fixture_inputs["raw"].shape == (860, FLEXI_WEIGHTS)
    assert mesh.vertices.shape == (860, 3) and mesh.faces.shape == (1716, 3)
    assert mesh.faces.dtype == torch.int64
    # Same order as the reference, vertex for vertex and face for face (including winding).
    np.testing.assert_allclose(mesh.vertices.numpy(), ref["mesh_vertices"], rtol=0, atol=VERTEX_TOL)
    np.testing.assert_array_equal(mesh.faces.numpy(), ref["mesh_faces"])
    assert mesh.dev_loss.shape == (0,)  # inference skips L_dev unless asked for it
    asked = _extract_fixture(fixture_inputs, with_dev_loss=True)
    assert torch.equal(asked.vertices, mesh.vertices) and torch.equal(asked.faces, mesh.faces)
    assert asked.dev_loss.ndim == 1 and asked.dev_loss.numel() >= mesh.vertices.shape[0]
    assert torch.isfinite(asked.dev_loss).all()


def _edge_use(faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts of undirected edges and of directed edges over all faces."""
    directed = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    _, undirected_counts = torch.unique(directed.sort(dim=1).values, dim=0, return_counts=True)
    _, directed_counts = torch.unique(directed, dim=0, return_counts=True)
    return undirected_counts, directed_counts


def _signed_volume(vertices: torch.Tensor, faces: torch.Tensor) -> float:
    a, b, c = vertices[faces].unbind(dim=1)
    return float(torch.linalg.det(torch.stack([a, b, c], dim=1)).sum() / 6)


def test_sphere_is_closed_and_outward() -> None:
    # Six grid vertices lie exactly on this sphere (sdf == 0, which counts as outside): they must not flip quads.
    res, scale, radius = 24, 2.0, 0.5
    verts, cubes = flexicubes_grid(res, scale)
    sdf = verts.norm(dim=-1) - radius
    surface = surface_cube_mask(sdf, cubes)
    mesh = flexicubes_extract(verts, sdf, cubes, res, surface, None)
    cell = scale / res
    assert ((mesh.vertices.norm(dim=-1) - radius).abs() < cell).all()
    undirected, directed = _edge_use(mesh.faces)
    assert (undirected == 2).all(), "every edge must be shared by exactly two faces"
    assert (directed == 1).all(), "neighbouring faces must be wound consistently"
    volume = _signed_volume(mesh.vertices, mesh.faces)
    assert volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.05)


def test_training_split(fixture_inputs) -> None:
    plain = _extract_fixture(fixture_inputs, with_dev_loss=True)
    train = _extract_fixture(fixture_inputs, training=True)
    num_quads = plain.faces.shape[0] // 2
    assert train.faces.shape == (4 * num_quads, 3)
    assert train.vertices.shape == (plain.vertices.shape[0] + num_quads, 3)
    torch.testing.assert_close(train.vertices[: plain.vertices.shape[0]], plain.vertices, rtol=0, atol=0)
    torch.testing.assert_close(train.dev_loss, plain.dev_loss, rtol=0, atol=0)
    assert torch.isfinite(train.dev_loss).all() and train.dev_loss.mean() > 0
    undirected, directed = _edge_use(train.faces)
    assert (undirected == 2).all() and (directed == 1).all()
    assert _signed_volume(train.vertices, train.faces) > 0


def test_training_gradients_reach_inputs(fixture_inputs) -> None:
    vertices = fixture_inputs["deformed"].clone().requires_grad_()
    sdf = fixture_inputs["sdf"].clone().requires_grad_()
    raw = fixture_inputs["raw"].clone().requires_grad_()
    cubes, surface = fixture_inputs["cubes"], fixture_inputs["surface"]
    mesh = flexicubes_extract(vertices, sdf, cubes, FIXTURE_RES, surface, raw, training=True)
    (mesh.vertices.square().sum() + mesh.dev_loss.mean()).backward()
    for name, grad in [("vertices", vertices.grad), ("sdf", sdf.grad), ("weights", raw.grad)]:
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    # The gamma column only acts through the training split.
    assert raw.grad[:, -1].abs().sum() > 0


@pytest.mark.parametrize("training", [False, True])
def test_gradcheck_small_grid(training: bool) -> None:
    res = 4
    gen = torch.Generator().manual_seed(0)
    verts, cubes = flexicubes_grid(res, 2.0)
    verts = verts.double()
    sdf = verts.norm(dim=-1) - 0.55 + 0.05 * torch.rand(verts.shape[0], generator=gen, dtype=torch.float64)
    sdf = sdf + 0.01 * torch.where(sdf < 0, -1.0, 1.0)  # keep finite differences from flipping any sign
    surface = surface_cube_mask(sdf, cubes)
    deformed = verts + (torch.rand(verts.shape, generator=gen, dtype=torch.float64) - 0.5) * 0.2 / res
    raw = torch.randn(int(surface.sum()), FLEXI_WEIGHTS, generator=gen, dtype=torch.float64)

    def extract(v: torch.Tensor, s: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mesh = flexicubes_extract(v, s, cubes, res, surface, w, training=training)
        return mesh.vertices, mesh.dev_loss

    inputs = tuple(t.clone().requires_grad_() for t in (deformed, sdf, raw))
    # The training path covers every differentiable step, so it gets the full (slower) Jacobian comparison.
    assert torch.autograd.gradcheck(extract, inputs, fast_mode=not training)


def test_weights_must_cover_surface_cubes_only(fixture_inputs) -> None:
    inputs = dict(fixture_inputs, raw=fixture_inputs["raw"][:-1])
    with pytest.raises(ValueError):
        _extract_fixture(inputs)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_empty_surface(sign: float) -> None:
    verts, cubes = flexicubes_grid(4, 2.0)
    sdf = torch.full((verts.shape[0],), sign)
    surface = surface_cube_mask(sdf, cubes)
    assert not surface.any()
    mesh = flexicubes_extract(verts, sdf, cubes, 4, surface, verts.new_zeros(0, FLEXI_WEIGHTS), training=True)
    assert mesh.vertices.shape == (0, 3) and mesh.vertices.dtype == torch.float32
    assert mesh.faces.shape == (0, 3) and mesh.faces.dtype == torch.int64
    assert mesh.dev_loss.numel() == 0 and float(mesh.dev_loss.sum()) == 0.0
