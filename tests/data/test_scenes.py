"""Per-scene datasets: the blender, dtu and colmap layouts the data engine writes, read back by `load_scene`.

The core checks: the loaded cameras, taken back to the model frame through `to_world` and the written
`model_to_world`, are the cameras the engine rendered with, and the ground-truth mesh projected through them
lands on the masks.
"""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh
from PIL import Image

from lrmesh.cameras import ZERO123PP_FOV, ZERO123PP_RADIUS, focal_from_fov
from lrmesh.data import colmap
from lrmesh.data.multiview import CAMERA_STREAM, sphere_poses, write_object
from lrmesh.data.scenes import (
    BLENDER_RADIUS,
    POINTS_FILL,
    decompose_projection,
    load_scene,
    transform_poses,
)
from lrmesh.data.synthetic import random_object
from lrmesh.errors import InputError
from lrmesh.io.mesh import load_mesh

SEED = 1
VIEWS, RESOLUTION = 9, 40  # nine views: 0 and 8 held out for test
FOCAL = RESOLUTION * focal_from_fov(ZERO123PP_FOV)  # pixels


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One procedural object in each per-scene layout -> {layout: scene folder}."""
    root = tmp_path_factory.mktemp("scenes")
    mesh = random_object(SEED)
    return {layout: write_object(mesh, root / layout, "thing", layout, VIEWS, RESOLUTION, SEED, "test")
            for layout in ("blender", "dtu", "colmap")}


@pytest.fixture()
def copy_of(written, tmp_path):
    """A scratch copy of a written scene, to break."""
    def make(layout):
        return shutil.copytree(written[layout], tmp_path / layout)
    return make


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float32) / 255


def gt_vertices(folder) -> np.ndarray:
    return load_mesh(folder / "gt.glb").vertices.double().numpy()


def model_to_scene(folder, scene) -> np.ndarray:
    """(4, 4) model frame -> the scene's normalised frame: through the dataset's world frame and back."""
    meta = json.loads((folder / "meta.json").read_text())
    model_to_world = np.array(meta.get("model_to_world", np.eye(4)))
    return np.linalg.inv(scene.to_world.numpy()) @ model_to_world


def project(points: np.ndarray, scene) -> np.ndarray:
    """World points (P, 3) -> pixel coordinates (N, P, 2) (top-left corner at 0, 0) through OpenGL c2w poses."""
    c2w = scene.c2w.double().numpy()
    camera = np.einsum("nji,npj->npi", c2w[:, :3, :3], points[None] - c2w[:, None, :3, 3])  # (N, P, 3)
    fx, fy, cx, cy = scene.intrinsics.double().numpy().T[..., None]  # (N, 1) each
    depth = -camera[..., 2]
    assert (depth > 0).all()
    return np.stack([fx * camera[..., 0] / depth + cx, -fy * camera[..., 1] / depth + cy], axis=-1)


def expected_c2w() -> np.ndarray:
    """The engine's dtu / colmap views: the first draw of the object's camera stream (its blender train views)."""
    return sphere_poses(np.random.default_rng([CAMERA_STREAM, SEED]), VIEWS, ZERO123PP_RADIUS).double().numpy()


# Round trips ---------------------------------------------------------------------------------------------


def test_blender_round_trip(written):
    folder = written["blender"]
    scene = load_scene(folder, "blender", "train")
    transforms = json.loads((folder / "transforms_train.json").read_text())
    assert scene.kind == "blender" and len(scene) == VIEWS
    assert scene.names == [f"train/r_{i}.png" for i in range(VIEWS)]
    np.testing.assert_allclose(scene.c2w.numpy(), [f["transform_matrix"] for f in transforms["frames"]], atol=1e-6)
    assert torch.equal(scene.to_world, torch.eye(4, dtype=torch.float64)) and scene.radius == BLENDER_RADIUS
    focal = 0.5 * RESOLUTION / math.tan(transforms["camera_angle_x"] / 2)
    np.testing.assert_allclose(scene.intrinsics.numpy(), [[focal, focal, RESOLUTION / 2, RESOLUTION / 2]] * VIEWS,
                               rtol=1e-6)
    rgba = np.stack([png(folder / name) for name in scene.names])
    np.testing.assert_allclose(scene.masks.numpy(), rgba[..., 3], atol=1e-6)
    np.testing.assert_allclose(scene.images.numpy(), rgba[..., :3] * rgba[..., 3:] + 1 - rgba[..., 3:], atol=1e-6)
    black = load_scene(folder, "blender", "train", white_background=False)
    np.testing.assert_allclose(black.images.numpy(), rgba[..., :3] * rgba[..., 3:], atol=1e-6)
    # Cameras 4 units out, the bounding sphere of radius 1.5 between near and far.
    assert scene.near == pytest.approx(4.0 - BLENDER_RADIUS, abs=1e-5)
    assert scene.far == pytest.approx(4.0 + BLENDER_RADIUS, abs=1e-5)


@pytest.mark.parametrize("layout", ["dtu", "colmap"])
def test_cameras_come_back_through_to_world(layout, written):
    folder = written[layout]
    scene = load_scene(folder, layout, "all")
    assert scene.kind == layout and scene.width == scene.height == RESOLUTION and scene.radius == 1.0
    model_c2w = transform_poses(np.linalg.inv(model_to_scene(folder, scene)), scene.c2w.double().numpy())
    np.testing.assert_allclose(model_c2w, expected_c2w(), atol=2e-5)
    np.testing.assert_allclose(scene.intrinsics.numpy(), [[FOCAL, FOCAL, RESOLUTION / 2, RESOLUTION / 2]] * VIEWS,
                               rtol=1e-5)
    # to_world is a similarity, and the dataset's world frame really differs from the model frame.
    linear = scene.to_world.numpy()[:3, :3]
    scale = np.cbrt(np.linalg.det(linear))
    np.testing.assert_allclose(linear @ linear.T, scale**2 * np.eye(3), atol=1e-9 * scale**2)
    assert not np.allclose(json.loads((folder / "meta.json").read_text())["model_to_world"], np.eye(4), atol=0.1)


@pytest.mark.parametrize("layout", ["dtu", "colmap"])
def test_photos_and_masks_are_the_written_files(layout, written):
    folder = written[layout]
    scene = load_scene(folder, layout, "all", use_masks=True)
    mask_dir = "mask" if layout == "dtu" else "masks"
    expected_names = [f"image/{i:06d}.png" for i in range(VIEWS)] if layout == "dtu" else [
        f"images/{i:04d}.png" for i in range(VIEWS)]
    assert scene.names == expected_names
    mask_names = [f"{i:03d}.png" for i in range(VIEWS)] if layout == "dtu" else [f"{i:04d}.png" for i in range(VIEWS)]
    np.testing.assert_array_equal(scene.images.numpy(), np.stack([png(folder / name) for name in scene.names]))
    masks = np.stack([png(folder / mask_dir / name) for name in mask_names])
    np.testing.assert_array_equal(scene.masks.numpy(), masks)
    # The masks are the renders' alpha, the blender layout's for the same cameras.
    blender = load_scene(written["blender"], "blender", "train")
    np.testing.assert_allclose(masks, blender.masks.numpy(), atol=1 / 255)


@pytest.mark.parametrize("layout", ["dtu", "colmap"])
def test_the_object_fills_the_unit_sphere(layout, written):
    folder = written[layout]
    scene = load_scene(folder, layout, "train")
    vertices = trimesh.transform_points(gt_vertices(folder), model_to_scene(folder, scene))
    radius = np.linalg.norm(vertices, axis=1).max()
    # dtu: scale_mat is the bounding sphere, so its farthest vertex lies on the unit sphere; colmap: the farthest
    # sparse point lands at POINTS_FILL, and the farthest vertex a little beyond it.
    low, high = (1.0 - 1e-6, 1.0 + 1e-6) if layout == "dtu" else (POINTS_FILL, 1.0)
    assert low <= radius <= high, radius
    # The normalised frame is z up again: the model's z axis, estimated from the camera up vectors.
    model_up = model_to_scene(folder, scene)[:3, 2]
    assert np.degrees(np.arccos(model_up[2] / np.linalg.norm(model_up))) < 15


def vertices_off_the_masks(vertices: np.ndarray, scene, shift=(0.0, 0.0)) -> int:
    """How many (view, vertex) projections, moved by `shift` pixels, fall on a pixel of zero coverage."""
    pixels = np.floor(project(vertices, scene) + shift).astype(int)  # (N, V, 2) column, row
    assert ((pixels >= 0) & (pixels < [scene.width, scene.height])).all()
    return sum(int((mask[rows, columns] == 0).sum())
               for mask, (columns, rows) in zip(scene.masks.numpy(), pixels.transpose(0, 2, 1)))


@pytest.mark.parametrize(("layout", "downscale"), [("blender", 1), ("dtu", 1), ("colmap", 1), ("colmap", 2)])
def test_the_ground_truth_projects_onto_the_masks(layout, downscale, written):
    folder = written[layout]
    scene = load_scene(folder, layout, "train", downscale=downscale)
    assert scene.width == RESOLUTION // downscale
    vertices = trimesh.transform_points(gt_vertices(folder), model_to_scene(folder, scene))
    projections = len(scene) * len(vertices)
    # Every vertex lies inside the silhouette, so on a covered pixel, but for the odd one whose pixel's 3x3
    # coverage samples all miss a sliver. Half a pixel off and hundreds miss.
    assert vertices_off_the_masks(vertices, scene) <= 1e-4 * projections
    if downscale == 1:
        assert vertices_off_the_masks(vertices, scene, (0.5, 0.0)) > 2e-3 * projections
        assert vertices_off_the_masks(vertices, scene, (0.0, 0.5)) > 2e-3 * projections


def test_downscale_averages_pixels_and_scales_intrinsics(written):
    full = load_scene(written["colmap"], "colmap", "train")
    half = load_scene(written["colmap"], "colmap", "train", downscale=2)
    assert (half.width, half.height) == (RESOLUTION // 2, RESOLUTION // 2)
    torch.testing.assert_close(half.intrinsics, full.intrinsics / 2)
    pooled = F.avg_pool2d(full.images.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    torch.testing.assert_close(half.images, pooled)
    torch.testing.assert_close(half.masks, F.avg_pool2d(full.masks[:, None], 2)[:, 0])


def test_dtu_world_mats_are_neus_projections(written):
    # Read as NeuS reads them: P = world_mat @ scale_mat maps normalised points to integer pixel coordinates.
    folder = written["dtu"]
    cameras = np.load(folder / "cameras_sphere.npz")
    scene = load_scene(folder, "dtu", "all")
    unit = trimesh.transform_points(gt_vertices(folder), model_to_scene(folder, scene))
    # The scene's frame is NeuS's normalised frame turned upright; undo the turn.
    upright = np.linalg.inv(cameras["scale_mat_0"]) @ scene.to_world.numpy()
    neus = trimesh.transform_points(unit, upright)
    assert np.linalg.norm(neus, axis=1).max() == pytest.approx(1.0, abs=1e-6)
    misses = {"integer centres": 0, "corner origin": 0}
    for i in range(VIEWS):
        projection = (cameras[f"world_mat_{i}"] @ cameras[f"scale_mat_{i}"])[:3]
        uvw = np.c_[neus, np.ones(len(neus))] @ projection.T
        uv = uvw[:, :2] / uvw[:, 2:]
        mask = png(folder / "mask" / f"{i:03d}.png")
        for convention, pixel in (("integer centres", np.round(uv)), ("corner origin", np.floor(uv))):
            columns, rows = pixel.astype(int).T
            misses[convention] += int((mask[rows, columns] == 0).sum())
    # OpenCV's convention (pixel i centred on i) fits; reading them the other way is half a pixel off.
    assert misses["integer centres"] <= 1e-4 * VIEWS * len(neus) < misses["corner origin"] / 10, misses


def test_splits_hold_out_every_eighth_view(written):
    for layout, prefix in (("dtu", "image/0000"), ("colmap", "images/00")):
        test = load_scene(written[layout], layout, "test").names
        assert test == [f"{prefix}00.png", f"{prefix}08.png"]
        assert load_scene(written[layout], layout, "val").names == test
        train = load_scene(written[layout], layout, "train").names
        assert len(train) == VIEWS - 2 and not set(train) & set(test)
    assert len(load_scene(written["blender"], "blender", "test")) == VIEWS // 4
    assert len(load_scene(written["blender"], "blender", "all")) == VIEWS + 2 * (VIEWS // 4)


def test_auto_detects_each_layout(written):
    for layout, folder in written.items():
        assert load_scene(folder).kind == layout


def test_masks_are_none_when_absent_or_declined(written, copy_of):
    assert load_scene(written["dtu"], use_masks=False).masks is None
    folder = copy_of("colmap")
    shutil.rmtree(folder / "masks")
    assert load_scene(folder).masks is None  # never a silent all-white mask


# The COLMAP model ----------------------------------------------------------------------------------------


def test_colmap_sparse_points_lie_on_the_surface_and_project_to_their_observations(written):
    folder = written["colmap"]
    model = colmap.read_model(folder / "sparse" / "0")
    assert [c.model for c in model.cameras.values()] == ["PINHOLE"] and len(model.points) > 100
    scene = load_scene(folder, "colmap", "all")
    to_scene = np.linalg.inv(scene.to_world.numpy())
    for point in list(model.points.values())[:50]:
        assert len(point.image_ids) >= 2
        xyz = trimesh.transform_points(point.xyz[None], to_scene)
        for image_id, index in zip(point.image_ids, point.point2d_idxs):
            image = model.images[image_id]
            assert image.point3d_ids[index] == point.id
            view = scene.names.index(f"images/{image.name}")
            np.testing.assert_allclose(project(xyz, scene)[view, 0], image.xys[index], atol=1e-3)
    # In the model frame each point lies on a triangle of the ground truth (tested against those whose boxes hold it).
    mesh = load_mesh(folder / "gt.glb")
    triangles = mesh.vertices.double().numpy()[mesh.faces.numpy()]  # (F, 3, 3)
    model_to_world = np.array(json.loads((folder / "meta.json").read_text())["model_to_world"])
    points = trimesh.transform_points(np.array([p.xyz for p in model.points.values()]), np.linalg.inv(model_to_world))
    low, high = triangles.min(axis=1) - 1e-6, triangles.max(axis=1) + 1e-6
    for point in points[:40]:
        near = np.all((low <= point) & (point <= high), axis=1)
        closest = trimesh.triangles.closest_point(triangles[near], np.repeat(point[None], near.sum(), axis=0))
        assert np.linalg.norm(closest - point, axis=1).min() < 1e-6


def test_colmap_text_and_binary_models_agree(written, copy_of):
    folder = copy_of("colmap")
    binary = colmap.read_model(folder / "sparse" / "0", ".bin")
    colmap.write_model(binary, folder / "sparse" / "0", ".txt")
    text = colmap.read_model(folder / "sparse" / "0", ".txt")
    for kind in ("cameras", "images", "points"):
        a, b = getattr(binary, kind), getattr(text, kind)
        assert a.keys() == b.keys()
        for key in a:
            for name, value in vars(a[key]).items():
                np.testing.assert_array_equal(value, vars(b[key])[name], err_msg=f"{kind} {key} {name}")
    for name in ("cameras", "images", "points3D"):
        (folder / "sparse" / "0" / f"{name}.bin").unlink()
    from_text, from_binary = load_scene(folder, "colmap", "all"), load_scene(written["colmap"], "colmap", "all")
    torch.testing.assert_close(from_text.c2w, from_binary.c2w, rtol=0, atol=0)
    torch.testing.assert_close(from_text.to_world, from_binary.to_world, rtol=0, atol=0)


def test_colmap_text_format_by_hand(tmp_path):
    (tmp_path / "cameras.txt").write_text("# Camera list\n1 SIMPLE_RADIAL 640 480 500.5 320 240 0.01\n\n")
    (tmp_path / "images.txt").write_text(
        "# Image list with two lines of data per image:\n"
        "1 1 0 0 0 0.5 -1 2 1 a.jpg\n"
        "10.5 20.25 7 3 4 -1\n"
        "2 0 1 0 0 0 0 0 1 b c.jpg\n"
        "\n")
    (tmp_path / "points3D.txt").write_text("7 1.5 2.5 -3.5 255 128 0 0.25 1 0 2 5\n")
    model = colmap.read_model(tmp_path)
    camera = model.cameras[1]
    assert (camera.model, camera.width, camera.height) == ("SIMPLE_RADIAL", 640, 480)
    np.testing.assert_array_equal(camera.params, [500.5, 320, 240, 0.01])
    first, second = model.images[1], model.images[2]
    np.testing.assert_array_equal(first.xys, [[10.5, 20.25], [3, 4]])
    np.testing.assert_array_equal(first.point3d_ids, [7, -1])
    np.testing.assert_array_equal(first.world_to_camera(), [[1, 0, 0, 0.5], [0, 1, 0, -1], [0, 0, 1, 2], [0, 0, 0, 1]])
    assert second.name == "b c.jpg" and second.xys.shape == (0, 2)
    np.testing.assert_allclose(second.world_to_camera()[:3, :3], np.diag([1, -1, -1]), atol=1e-15)  # 180 deg about x
    point = model.points[7]
    np.testing.assert_array_equal(point.rgb, [255, 128, 0])
    assert point.error == 0.25 and point.image_ids.tolist() == [1, 2] and point.point2d_idxs.tolist() == [0, 5]


def test_colmap_distortion_is_ignored_with_a_warning(copy_of):
    folder = copy_of("colmap")
    sparse = folder / "sparse" / "0"
    model = colmap.read_model(sparse)
    f, _, c, _ = model.cameras[1].params
    model.cameras[1] = colmap.Camera(1, "SIMPLE_RADIAL", RESOLUTION, RESOLUTION, np.array([f, c, c, 0.02]))
    colmap.write_model(model, sparse)
    with pytest.warns(UserWarning, match="distortion of SIMPLE_RADIAL"):
        scene = load_scene(folder, "colmap")
    np.testing.assert_allclose(scene.intrinsics[0].numpy(), [f, f, c, c], rtol=1e-6)
    model.cameras[1] = colmap.Camera(1, "OPENCV_FISHEYE", RESOLUTION, RESOLUTION, np.zeros(8))
    colmap.write_model(model, sparse)
    with pytest.raises(InputError, match=f"{re.escape(str(sparse / 'cameras.bin'))}.*OPENCV_FISHEYE"):
        load_scene(folder, "colmap")


def test_colmap_without_points_scales_from_the_cameras(copy_of):
    folder = copy_of("colmap")
    model = colmap.read_model(folder / "sparse" / "0")
    colmap.write_model(colmap.Model(model.cameras, model.images, {}), folder / "sparse" / "0")
    with pytest.warns(UserWarning, match="from the cameras alone"):
        scene = load_scene(folder, "colmap")
    assert np.linalg.norm(scene.c2w[:, :3, 3].numpy(), axis=1).min() == pytest.approx(3.0)


def test_decompose_projection_recovers_k_and_pose():
    k = np.array([[300.0, 0.0, 100.0], [0.0, 310.0, 80.0], [0.0, 0.0, 1.0]])
    c2w = np.eye(4)
    c2w[:3, :3] = trimesh.transformations.rotation_matrix(0.7, [1, 2, 3])[:3, :3]
    c2w[:3, 3] = [1.0, -2.0, 3.0]
    projection = -2.5 * k @ np.linalg.inv(c2w)[:3]  # any scale, negative included
    k_out, c2w_out = decompose_projection(projection)
    np.testing.assert_allclose(k_out, k, atol=1e-9)
    np.testing.assert_allclose(c2w_out, c2w, atol=1e-12)


# Errors name the file ------------------------------------------------------------------------------------


def raises_naming(path, message=""):
    return pytest.raises(InputError, match=f"{message}.*{re.escape(str(path))}|{re.escape(str(path))}.*{message}")


def test_missing_images_are_named(copy_of):
    blender = copy_of("blender")
    (blender / "train" / "r_3.png").unlink()
    with raises_naming(blender / "train" / "r_3.png", "'./train/r_3' named in"):
        load_scene(blender)
    folder = copy_of("colmap")
    (folder / "images" / "0003.png").unlink()
    with raises_naming(folder / "images" / "0003.png", "image not found"):
        load_scene(folder, split="all")


def test_image_count_must_match_the_cameras(copy_of):
    folder = copy_of("dtu")
    (folder / "image" / "000004.png").unlink()
    with raises_naming(folder / "image", f"{VIEWS - 1} images, but .* holds {VIEWS} cameras"):
        load_scene(folder)


def test_image_size_must_match_the_intrinsics(copy_of):
    folder = copy_of("colmap")
    image = folder / "images" / "0002.png"
    Image.open(image).resize((20, 20)).save(image)
    with raises_naming(image, "is 20x20, but its camera"):
        load_scene(folder)
    folder = copy_of("dtu")
    for path in (folder / "image").iterdir():  # images halved, cameras not
        Image.open(path).resize((RESOLUTION // 2, RESOLUTION // 2)).save(path)
    with raises_naming(folder / "image" / "000001.png", "principal point"):
        load_scene(folder)


@pytest.mark.parametrize(("layout", "mask_dir"), [("dtu", "mask"), ("colmap", "masks")])
def test_masks_asked_for_but_missing(layout, mask_dir, copy_of):
    folder = copy_of(layout)
    shutil.rmtree(folder / mask_dir)
    with raises_naming(folder / mask_dir, "mask folder is missing"):
        load_scene(folder, use_masks=True)


def test_unknown_layouts_are_refused(written, tmp_path):
    with raises_naming(written["dtu"], "unknown scene layout 'llff'"):
        load_scene(written["dtu"], "llff")
    with raises_naming(tmp_path, "not a scene folder"):
        load_scene(tmp_path)


def test_corrupt_files_are_named(copy_of):
    folder = copy_of("colmap")
    cameras = folder / "sparse" / "0" / "cameras.bin"
    cameras.write_bytes(cameras.read_bytes()[:-5])
    with raises_naming(cameras, "corrupt COLMAP file"):
        load_scene(folder)
    folder = copy_of("blender")
    (folder / "transforms_train.json").write_text("{not json")
    with raises_naming(folder / "transforms_train.json", "corrupt camera file"):
        load_scene(folder)
    image = folder / "val" / "r_0.png"
    image.write_bytes(b"\x89PNG broken")
    with raises_naming(image, "cannot read image"):
        load_scene(folder, split="val")
    folder = copy_of("dtu")
    (folder / "cameras_sphere.npz").write_bytes(b"PK not a zip")
    with raises_naming(folder / "cameras_sphere.npz", "corrupt camera file"):
        load_scene(folder)
