"""Occupancy grid: a sphere's cells become occupied, empty cells are skipped by the marcher, state round-trips."""

from __future__ import annotations

import warnings

import pytest
import torch

from lrmesh.neus.occupancy import OccupancyGrid
from lrmesh.neus.rendering import ray_aabb, uniform_samples

RES = 16
SPHERE_RADIUS = 0.5


def empty(points):
    return torch.zeros(points.shape[0])


def in_sphere(points):
    return (points.norm(dim=-1) < SPHERE_RADIUS).float()


def cell_corner_distances(grid):
    """Nearest and farthest distance from the origin of each cell (res, res, res)."""
    edges = torch.linspace(-grid.radius, grid.radius, grid.resolution + 1)
    lo, hi = edges[:-1], edges[1:]
    nearest = torch.where(lo > 0, lo, torch.where(hi < 0, -hi, torch.zeros_like(lo)))
    farthest = torch.maximum(lo.abs(), hi.abs())
    near = torch.stack(torch.meshgrid(nearest, nearest, nearest, indexing="ij"), -1).norm(dim=-1)
    far = torch.stack(torch.meshgrid(farthest, farthest, farthest, indexing="ij"), -1).norm(dim=-1)
    return near, far


def trained_grid(steps=range(0, 64, 16), **kwargs):
    grid = OccupancyGrid(radius=1.0, resolution=RES)
    g = torch.Generator().manual_seed(0)
    for step in steps:
        grid.update(step, in_sphere, occ_thre=0.01, generator=g, **kwargs)
    return grid


def test_starts_all_occupied():
    grid = OccupancyGrid(radius=1.0, resolution=RES)
    assert grid.binary.all() and grid.binary.shape == (RES, RES, RES)
    assert grid.occupied(torch.tensor([[0.9, -0.9, 0.0], [1.5, 0.0, 0.0]])).tolist() == [True, False]


def test_sphere_cells_become_occupied_and_empty_ones_do_not():
    grid = trained_grid()
    near, far = cell_corner_distances(grid)
    inside = far < SPHERE_RADIUS  # every point of the cell is in the sphere
    outside = near >= SPHERE_RADIUS
    assert inside.any() and outside.any()
    assert grid.binary[inside].all()
    assert not grid.binary[outside].any()
    # cells crossing the sphere are occupied once any of their jittered points landed inside
    assert grid.occupied_fraction() < 0.1


def test_after_warmup_visited_cells_decay():
    grid = trained_grid()
    # the sphere vanishes: after warmup, values decay (0.95 per visit) in the cells visited, never growing
    before = grid.values.clone()
    grid.update(256, empty, occ_thre=0.01, warmup_steps=256)
    assert (grid.values <= before).all() and (grid.values < before).any()
    assert grid.binary.any()


def test_update_only_every_n_steps():
    grid = OccupancyGrid(radius=1.0, resolution=4)
    assert not grid.update(3, in_sphere, n=16)
    assert grid.values.eq(0).all()
    assert grid.update(32, in_sphere, n=16)


def test_all_empty_update_keeps_the_previous_grid_and_warns_once():
    grid = trained_grid()
    previous = grid.binary.clone()
    grid.values.zero_()
    with pytest.warns(RuntimeWarning, match="no cell occupied"):
        grid.update(0, empty)
    assert torch.equal(grid.binary, previous)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grid.update(16, empty)


def test_marching_skips_empty_cells():
    grid = trained_grid()
    n = 32
    g = torch.Generator().manual_seed(1)
    origins = torch.cat([torch.zeros(n, 2), torch.full((n, 1), 3.0)], dim=1)
    origins[:, :2] = (torch.rand(n, 2, generator=g) - 0.5) * 1.6  # some rays miss the sphere, all hit the box
    dirs = torch.tensor([[0.0, 0.0, -1.0]]).expand(n, 3)
    limits = ray_aabb(origins, dirs, 1.0)
    assert limits.hit.all()
    step = 2 / 128
    dense = uniform_samples(origins, dirs, limits.near, limits.far, step)
    sparse = uniform_samples(origins, dirs, limits.near, limits.far, step, occupied=grid.occupied)
    assert len(sparse) < len(dense) / 4
    assert grid.occupied(sparse.points(origins, dirs)).all()
    # every dense sample in an occupied cell is kept
    assert len(sparse) == int(grid.occupied(dense.points(origins, dirs)).sum())
    # rays farther from the axis than the sphere plus a cell diagonal get no samples at all
    far_rays = origins[:, :2].norm(dim=-1) > SPHERE_RADIUS + 3**0.5 * grid.cell_size
    assert far_rays.any()
    assert not far_rays[sparse.ray_indices].any()


def test_state_dict_round_trip():
    grid = trained_grid()
    state = grid.state_dict()
    assert set(state) == {"values", "binary", "_extra_state"}
    restored = OccupancyGrid(radius=1.0, resolution=RES)
    restored.load_state_dict(state)
    assert torch.equal(restored.values, grid.values) and torch.equal(restored.binary, grid.binary)
    points = torch.rand(100, 3) * 2 - 1
    assert torch.equal(restored.occupied(points), grid.occupied(points))
    with pytest.raises(ValueError, match="radius"):
        OccupancyGrid(radius=2.0, resolution=RES).load_state_dict(state)
