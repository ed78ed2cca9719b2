"""Procedural objects: seeded, varied, normalised into the model frame, made of watertight parts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from lrmesh.data.synthetic import MAX_EDGE, OBJECT_RADIUS, fit_transform, random_object

SEEDS = range(6)


@pytest.fixture(scope="module")
def objects():
    return {seed: random_object(seed) for seed in SEEDS}


def test_same_seed_gives_the_same_object(objects):
    again = random_object(3)
    assert torch.equal(again.vertices, objects[3].vertices)
    assert torch.equal(again.faces, objects[3].faces)
    assert torch.equal(again.vertex_colors, objects[3].vertex_colors)


def test_different_seeds_give_different_objects(objects):
    shapes = {(obj.num_vertices, obj.num_faces) for obj in objects.values()}
    assert len(shapes) == len(objects)


def test_objects_are_normalised_into_the_model_frame(objects):
    for obj in objects.values():
        v = obj.vertices.double()
        assert obj.vertices.dtype == torch.float32 and obj.faces.dtype == torch.int64
        assert v.norm(dim=1).max().item() == pytest.approx(OBJECT_RADIUS, abs=1e-6)  # farthest vertex at 0.9
        centre = (v.min(dim=0).values + v.max(dim=0).values) / 2
        assert centre.abs().max().item() < 1e-6  # bounding box centred on the origin
        assert v.abs().max().item() <= OBJECT_RADIUS + 1e-6  # hence inside the unit cube [-1, 1]^3


def test_parts_are_closed_outward_facing_and_finely_tessellated(objects):
    for obj in objects.values():
        mesh = trimesh.Trimesh(obj.vertices.numpy(), obj.faces.numpy(), process=False)
        parts = mesh.split(only_watertight=False)
        assert 1 <= len(parts) <= 5
        for part in parts:
            assert part.is_watertight and part.is_winding_consistent
            assert part.volume > 0  # counter-clockwise seen from outside
        assert mesh.edges_unique_length.max() <= MAX_EDGE * (1 + 1e-5)


def test_colours_are_valid_and_varied(objects):
    for obj in objects.values():
        colors = obj.vertex_colors
        assert colors.shape == obj.vertices.shape
        assert colors.min() >= 0 and colors.max() <= 1
    all_colors = torch.cat([obj.vertex_colors for obj in objects.values()])
    assert all_colors.std(dim=0).min() > 0.1  # not one colour


def test_fit_transform_by_hand():
    # Box centre (1, 0.5, 0); farthest point (0, 0, 0) or (2, 1, 0) at sqrt(1.25) from it.
    points = np.array([[0.0, 0.0, 0.0], [2.0, 1.0, 0.0], [1.0, 0.5, 0.0]])
    matrix = fit_transform(points, radius=1.0)
    scale = 1 / np.sqrt(1.25)
    np.testing.assert_allclose(matrix[:3, :3], scale * np.eye(3))
    moved = trimesh.transform_points(points, matrix)
    np.testing.assert_allclose(moved[2], 0.0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(moved[:2], axis=1), 1.0)


def test_fit_transform_refuses_a_degenerate_mesh():
    with pytest.raises(ValueError, match="coincide"):
        fit_transform(np.ones((4, 3)))
