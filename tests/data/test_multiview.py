"""Multi-view renders in the three layouts, read back as their consumers read them.

The core check: depth unprojected through the cameras written beside it lands on the ground-truth mesh.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
import trimesh
from einops import rearrange
from PIL import Image
from scipy.spatial import cKDTree

from lrmesh.cameras import ZERO123PP_FOV, orbit_poses, zero123pp_cameras
from lrmesh.data.multiview import (
    DEPTH16_SCALE,
    OCCUPANCY_FILE,
    OCCUPANCY_HALF_SIDE,
    OCCUPANCY_POINTS,
    TRAINING_DEPTH_SCALE,
    TRAINING_FOV,
    load_source_mesh,
    occupancy_samples,
    write_object,
)
from lrmesh.data.synthetic import OBJECT_RADIUS, random_object
from lrmesh.errors import InputError
from lrmesh.render.shaded import render_views
from lrmesh.geometry.mesh import Mesh
from lrmesh.io.mesh import load_mesh
from lrmesh.io.views import load_views

SEED = 1
VIEWS, RESOLUTION = 5, 64
OBJECT_SIZE = 2 * OBJECT_RADIUS
SURFACE_SAMPLES = 300_000


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One procedural object written in every layout -> {layout: object folder}."""
    root = tmp_path_factory.mktemp("synth")
    mesh = random_object(SEED)
    return {layout: write_object(mesh, root / layout, "thing", layout, VIEWS, RESOLUTION, SEED, "test")
            for layout in ("training", "zero123pp", "blender")}


def unproject(depth: np.ndarray, c2w: np.ndarray, fov_deg: float) -> np.ndarray:
    """Pixels with depth > 0 -> world points (M, 3), for a pinhole camera with OpenGL camera-to-world poses:
    pixel (r, c) looks along ((u - 0.5) / f, -(v - 0.5) / f, -1), u = (c + 0.5) / W, v = (r + 0.5) / H."""
    n, h, w = depth.shape
    f = 0.5 / math.tan(math.radians(fov_deg) / 2)
    v, u = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    points = []
    for i in range(n):
        d = depth[i]
        camera = np.stack([(u - 0.5) / f * d, -(v - 0.5) / f * d, -d], axis=-1)[d > 0]  # (M, 3)
        points.append(camera @ c2w[i, :3, :3].T + c2w[i, :3, 3])
    return np.concatenate(points)


def distance_to_surface(points: np.ndarray, gt_path) -> np.ndarray:
    gt = load_mesh(gt_path)
    surface = trimesh.Trimesh(gt.vertices.numpy(), gt.faces.numpy(), process=False)
    samples, _ = trimesh.sample.sample_surface(surface, SURFACE_SAMPLES, seed=0)
    return cKDTree(samples).query(points)[0]


def read_png(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def assert_on_surface(depth: np.ndarray, alpha: np.ndarray, c2w: np.ndarray, fov_deg: float, gt_path,
                      interior_tolerance: float) -> None:
    """Depth is positive exactly where alpha is; its points lie on the ground truth: on average within 1 % of the
    object's size, and within `interior_tolerance` where the pixel is fully covered (its centre ray hits)."""
    np.testing.assert_array_equal(depth > 0, alpha > 0)
    distance = distance_to_surface(unproject(depth, c2w, fov_deg), gt_path)
    assert len(distance) > 200
    assert distance.mean() < 0.01 * OBJECT_SIZE, distance.mean()
    interior = distance_to_surface(unproject(np.where(alpha == 255, depth, 0), c2w, fov_deg), gt_path)
    assert interior.mean() < interior_tolerance, interior.mean()


def test_training_depth_lands_on_the_ground_truth(written):
    folder = written["training"]
    with np.load(folder / "cameras.npz") as cameras:  # as the reference loader: pad, then invert
        assert cameras.files == ["cam_poses"]
        w2c = cameras["cam_poses"]
    assert w2c.shape == (VIEWS, 3, 4) and w2c.dtype == np.float32
    c2w = np.linalg.inv(np.concatenate([w2c, np.tile([[[0, 0, 0, 1]]], (VIEWS, 1, 1))], axis=1))
    depth = np.stack([read_png(folder / f"{i:03d}_depth.png") for i in range(VIEWS)]) / 255.0 * TRAINING_DEPTH_SCALE
    alpha = np.stack([read_png(folder / f"{i:03d}.png")[..., 3] for i in range(VIEWS)])
    # 8-bit depth steps of 6 / 255 = 0.024 units: mean rounding error is a quarter of that.
    assert_on_surface(depth, alpha, c2w, TRAINING_FOV, folder / "gt.glb", 0.006 * OBJECT_SIZE)


def test_zero123pp_depth_lands_on_the_ground_truth(written):
    folder = written["zero123pp"]
    cameras = zero123pp_cameras()  # (6, 16): 3 rows of the pose, then fx, fy, cx, cy
    assert np.allclose(json.loads((folder / "cameras.json").read_text()), cameras.numpy())
    c2w = np.concatenate([cameras[:, :12].reshape(6, 3, 4).numpy(), np.tile([[[0, 0, 0, 1]]], (6, 1, 1))], axis=1)
    depth_grid = read_png(folder / "depth.png").astype(np.float64) / DEPTH16_SCALE
    depth = rearrange(depth_grid, "(r h) (k w) -> (r k) h w", r=3, k=2)
    alpha = rearrange(read_png(folder / "grid.png")[..., 3], "(r h) (k w) -> (r k) h w", r=3, k=2)
    assert_on_surface(depth, alpha, c2w, ZERO123PP_FOV, folder / "gt.glb", 0.002 * OBJECT_SIZE)


def test_blender_depth_lands_on_the_ground_truth(written):
    folder = written["blender"]
    transforms = json.loads((folder / "transforms_train.json").read_text())
    frames = transforms["frames"]
    c2w = np.array([frame["transform_matrix"] for frame in frames])
    depth = np.stack([read_png(folder / f"{frame['file_path']}_depth.png") for frame in frames]) / DEPTH16_SCALE
    alpha = np.stack([read_png(folder / f"{frame['file_path']}.png")[..., 3] for frame in frames])
    fov = math.degrees(transforms["camera_angle_x"])
    assert_on_surface(depth, alpha, c2w, fov, folder / "gt.glb", 0.002 * OBJECT_SIZE)


def test_training_layout_names_and_cameras(written):
    folder = written["training"]
    root = folder.parent.parent
    assert folder.parent.name == "rendering_random_32views"
    assert json.loads((root / "valid_paths.json").read_text()) == {"good_objs": ["thing"]}
    expected = {"cameras.npz", "gt.glb", "meta.json", "occupancy.npz"}
    expected |= {f"{i:03d}{suffix}.png" for i in range(VIEWS) for suffix in ("", "_normal", "_depth")}
    assert {p.name for p in folder.iterdir()} == expected
    assert Image.open(folder / "000.png").mode == "RGBA"
    assert Image.open(folder / "000_normal.png").mode == "RGBA"
    assert Image.open(folder / "000_depth.png").mode == "L"  # cv2 IMREAD_UNCHANGED -> (H, W), as the loader wants
    with np.load(folder / "cameras.npz") as cameras:
        c2w = np.linalg.inv(np.concatenate([cameras["cam_poses"], np.tile([[[0, 0, 0, 1]]], (VIEWS, 1, 1))], axis=1))
    position = c2w[:, :3, 3]
    distance = np.linalg.norm(position, axis=1)
    assert np.all((distance >= 2.0 - 1e-5) & (distance <= 3.5 + 1e-5))
    assert np.all((position[:, 2] >= -0.75 - 1e-5) & (position[:, 2] <= 1.6 + 1e-5))
    np.testing.assert_allclose(c2w[:, :3, 2], position / distance[:, None], atol=1e-5)  # looking at the origin


def test_blender_json_follows_nerf_synthetic(written):
    folder = written["blender"]
    counts = {}
    for split in ("train", "val", "test"):
        transforms = json.loads((folder / f"transforms_{split}.json").read_text())
        assert set(transforms) == {"camera_angle_x", "frames"}
        assert transforms["camera_angle_x"] == pytest.approx(math.radians(ZERO123PP_FOV))
        for i, frame in enumerate(transforms["frames"]):
            assert set(frame) == {"file_path", "transform_matrix"}
            assert frame["file_path"] == f"./{split}/r_{i}"  # no extension
            assert re.fullmatch(r"\./(train|val|test)/r_\d+", frame["file_path"])
            matrix = np.array(frame["transform_matrix"])
            assert matrix.shape == (4, 4)
            np.testing.assert_allclose(matrix[3], [0, 0, 0, 1])
            np.testing.assert_allclose(matrix[:3, :3] @ matrix[:3, :3].T, np.eye(3), atol=1e-5)
            assert np.linalg.det(matrix[:3, :3]) == pytest.approx(1.0, abs=1e-5)
            # OpenGL: the camera looks down its -z axis, at the object in the middle of the world.
            np.testing.assert_allclose(matrix[:3, 2], matrix[:3, 3] / np.linalg.norm(matrix[:3, 3]), atol=1e-5)
            image = Image.open(folder / f"{frame['file_path']}.png")
            assert image.mode == "RGBA" and image.size == (RESOLUTION, RESOLUTION)
        counts[split] = len(transforms["frames"])
    assert counts == {"train": VIEWS, "val": 1, "test": 1}


def test_alpha_is_antialiased_coverage(written):
    rgba = read_png(written["blender"] / "train" / "r_0.png")
    assert rgba.shape == (RESOLUTION, RESOLUTION, 4)
    alpha = rgba[..., 3]
    assert (alpha == 0).any() and (alpha == 255).any()
    assert ((alpha > 0) & (alpha < 255)).any()  # edge pixels partly covered


def test_zero123pp_grid_is_what_reconstruct_reads(tmp_path):
    folder = write_object(random_object(SEED), tmp_path, "thing", "zero123pp", 6, 320, SEED, "test")
    grid = Image.open(folder / "grid.png")
    assert grid.size == (640, 960)
    views = load_views(folder / "grid.png")
    assert views.shape == (6, 3, 320, 320)
    assert (views < 0.9).any() and views[:, :, 0, 0].eq(1).all()  # an object on white


def test_views_match_the_zero123pp_cameras(tmp_path):
    # A sphere of radius 0.9 seen from radius 4 with fov 30: its silhouette's angular radius is asin(0.9 / 4).
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=OBJECT_RADIUS)
    mesh = Mesh(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces))
    resolution = 96
    renders = render_views(mesh, orbit_poses([30.0], [20.0], 4.0), ZERO123PP_FOV, resolution)
    coverage = renders.alpha.sum().item()
    radius_px = math.tan(math.asin(OBJECT_RADIUS / 4)) / math.tan(math.radians(ZERO123PP_FOV / 2)) * resolution / 2
    assert coverage == pytest.approx(math.pi * radius_px**2, rel=0.01)
    ys, xs = torch.meshgrid(torch.arange(resolution) + 0.5, torch.arange(resolution) + 0.5, indexing="ij")
    centre = [(renders.alpha[0] * xs).sum() / coverage, (renders.alpha[0] * ys).sum() / coverage]
    assert torch.allclose(torch.stack(centre), torch.tensor([resolution / 2] * 2), atol=1e-3)  # no half-pixel shift
    # World normals of a sphere point away from its centre; the depth point lies on it.
    covered = renders.alpha[0] == 1
    normal = renders.normals[0][covered]
    centre_depth = torch.where(covered, renders.depth[0], 0)[None].numpy()
    points = torch.from_numpy(unproject(centre_depth, renders.c2w.numpy(), ZERO123PP_FOV)).float()
    assert (points.norm(dim=1) - OBJECT_RADIUS).abs().max() < 0.002  # the icosphere's facets
    radial = points / points.norm(dim=1, keepdim=True)  # same pixel order as `normal`
    assert ((normal * radial).sum(-1) > 0.998).all()  # facets of a 20k-triangle sphere tilt by under 2 degrees
    assert torch.allclose(normal.norm(dim=-1), torch.ones(len(normal)), atol=1e-5)


def test_a_textured_glb_renders_its_texture(tmp_path):
    box = trimesh.creation.box(extents=[0.4, 1.0, 0.4])  # tall along glTF's up axis, y
    box.unmerge_vertices()
    uv = np.stack([(box.vertices[:, 0] > 0).astype(float) * 0.5 + 0.25, np.full(len(box.vertices), 0.5)], axis=1)
    texture = np.zeros((4, 4, 3), np.uint8)
    texture[:, :2] = (255, 0, 0)
    texture[:, 2:] = (0, 0, 255)  # left half red, right half blue
    material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(texture))
    box.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    path = tmp_path / "user.glb"
    box.export(path)
    mesh, source_to_model = load_source_mesh(path)
    assert mesh.texture is not None
    extent = mesh.vertices.max(dim=0).values - mesh.vertices.min(dim=0).values
    assert extent.argmax().item() == 2  # glTF's y up became the model's z up
    loaded = trimesh.load(path, force="mesh", process=False)
    np.testing.assert_allclose(trimesh.transform_points(loaded.vertices, source_to_model), mesh.vertices.numpy(),
                               atol=1e-5)
    renders = render_views(mesh, orbit_poses([0.0, 90.0, 180.0, 270.0], [0.0] * 4, 4.0), ZERO123PP_FOV, 48)
    seen = renders.rgb[renders.alpha == 1]
    assert ((seen[:, 0] > 0.5) & (seen[:, 2] < 0.1)).any() and ((seen[:, 2] > 0.5) & (seen[:, 0] < 0.1)).any()


@pytest.mark.parametrize("suffix", [".obj", ".ply"])
def test_obj_and_ply_are_read_as_they_are_z_up(suffix, tmp_path):
    box = trimesh.creation.box(extents=[0.2, 0.4, 1.0])  # tall along z
    box.visual.vertex_colors = [10, 200, 30, 255]
    path = tmp_path / f"user{suffix}"
    box.export(path)
    mesh, source_to_model = load_source_mesh(path)
    assert np.linalg.det(source_to_model[:3, :3]) > 0  # scaled, never mirrored
    np.testing.assert_allclose(trimesh.transform_points(box.vertices, source_to_model)[:, 2].max(),
                               mesh.vertices[:, 2].max().item(), atol=1e-5)
    extent = mesh.vertices.max(dim=0).values - mesh.vertices.min(dim=0).values
    assert extent.argmax().item() == 2
    assert mesh.vertex_colors is not None
    np.testing.assert_allclose(mesh.vertex_colors[0].numpy(), np.array([10, 200, 30]) / 255, atol=1e-6)


def test_a_mesh_without_triangles_is_refused_by_name(tmp_path):
    path = tmp_path / "points.ply"
    trimesh.PointCloud(np.random.default_rng(0).normal(size=(10, 3))).export(path)
    with pytest.raises(InputError, match="points.ply"):
        load_source_mesh(path)


def test_training_layout_can_start_with_the_zero123pp_views(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=OBJECT_RADIUS)
    mesh = Mesh(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces))
    folder = write_object(mesh, tmp_path, "ball", "training", 8, 32, 3, "test", zero123pp_inputs=True)
    cameras = np.load(folder / "cameras.npz")
    assert cameras["fov"].tolist() == [ZERO123PP_FOV] * 6 + [TRAINING_FOV] * 2
    c2w = np.linalg.inv(np.concatenate([cameras["cam_poses"], np.tile([[[0, 0, 0, 1]]], (8, 1, 1))], axis=1))
    expected = zero123pp_cameras()[:, :12].reshape(6, 3, 4).numpy()
    np.testing.assert_allclose(c2w[:6, :3], expected, atol=1e-5)
    # Same pixels as the zero123pp layout's first view.
    first = np.asarray(Image.open(folder / "000.png"))
    reference = render_views(mesh, torch.from_numpy(c2w[:1]).float(), ZERO123PP_FOV, 32).alpha[0].numpy()
    np.testing.assert_allclose(first[..., 3] / 255.0, reference, atol=1 / 255)
    with pytest.raises(ValueError, match="more than 6 views"):
        write_object(mesh, tmp_path, "few", "training", 6, 32, 3, "test", zero123pp_inputs=True)


def test_training_layout_writes_the_occupancy_of_its_ground_truth(tmp_path):
    # A ball of radius r: a point is inside exactly when |p| < r (up to the tessellation, well under 0.005).
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=OBJECT_RADIUS)
    mesh = Mesh(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces))
    folder = write_object(mesh, tmp_path, "ball", "training", 2, 16, 4, "test")
    with np.load(folder / OCCUPANCY_FILE) as stored:
        points, inside = stored["points"].astype(np.float64), stored["inside"]
    assert points.shape == (OCCUPANCY_POINTS, 3) and inside.dtype == bool
    assert np.abs(points).max() <= OCCUPANCY_HALF_SIDE + 0.2  # the cube, plus the jitter around the surface
    radius = np.linalg.norm(points, axis=1)
    clear = np.abs(radius - OBJECT_RADIUS) > 0.005
    np.testing.assert_array_equal(inside[clear], radius[clear] < OBJECT_RADIUS)
    # Half on the surface (jittered by at most a few 0.05), and of the uniform half the shell's share of the cube:
    # 4/3 pi (1.05^3 - 0.75^3) / 2.1^3 = 0.333 -> 0.5 + 0.5 * 0.333 = 0.667 expected within 0.15 of the surface.
    near = np.abs(radius - OBJECT_RADIUS) < 0.15
    assert 0.64 < near.mean() < 0.69
    assert 0.3 < inside.mean() < 0.6
    # The same seed gives the same points.
    again, _ = occupancy_samples(mesh, OCCUPANCY_POINTS, 4)
    np.testing.assert_array_equal(again.numpy().astype(np.float16), stored_points(folder))


def stored_points(folder):
    with np.load(folder / OCCUPANCY_FILE) as stored:
        return stored["points"]
