"""Render any mesh to posed views (RGBA, depth, normals) and write them in one of the dataset layouts below.

Why: training, evaluating and smoke-testing reconstruction needs posed images of objects whose ground truth is
known: procedural ones (`lrmesh.data.synthetic`) or a user's OBJ / GLB / PLY.

Rendering: `lrmesh.render.shaded.render_views` (antialiased RGBA, depth, normals).

Every layout writes, per object, in its folder: `gt.glb`, the ground-truth mesh in the model frame (see
`lrmesh.data.synthetic`; the world frame of the cameras, except in dtu and colmap, see below), saved by
`lrmesh.io.mesh.save_mesh` so that `lrmesh.io.mesh.load_mesh` returns model-frame coordinates; and `meta.json`
with its source, seed, `source_to_model` (4x4, taking the source file's coordinates as trimesh loads them to the
model frame) and how depth is encoded. A user's mesh is read with trimesh, turned into the model frame (GLB: glTF's y up
becomes z up by `lrmesh.io.mesh.GLB_FRAME`; OBJ / PLY: taken as they are, z up, so a y-up OBJ lies on its side)
and normalised like procedural objects. OBJ / PLY are deliberately not read like `lrmesh.io.mesh.load_mesh`
reads them: that undoes the z mirror the reference writes, and applied to meshes from elsewhere it would mirror
them (text on a texture would read backwards). To render a mesh `lrmesh reconstruct` wrote, give its .glb.

Layouts:

- "training", the reference's training data, read as-is by InstantMesh's `src/data/objaverse.py`
  (`ObjaverseData` with root_dir = the output folder, meta_fname = its default `valid_paths.json`, the image dirs
  of its training config and total_view_n = the views per object, which must be at least the 10 it draws):
  `valid_paths.json` = {"good_objs": [names]} and `rendering_random_32views/<name>/`: `%03d.png` RGBA,
  `%03d_normal.png` RGBA (world-space normal n as (n + 1) / 2, alpha = coverage; the loader composites it on
  black), `%03d_depth.png` 8-bit grey z-depth as the loader decodes it (png / 255 * 6.0), and `cameras.npz`
  holding `cam_poses` (N, 3, 4) float32: OpenGL *world-to-camera* matrices (the loader pads and inverts them
  into OpenGL camera-to-world). Views as the reference renders Objaverse (its authors, InstantMesh issue #13):
  fov 50 degrees, distance uniform in [2.0, 3.5], camera height z uniform in [-0.75, 1.6], azimuth uniform.
  Beyond the reference's files, `occupancy.npz` (OCCUPANCY_FILE): points in the grid's cube and whether the
  object contains each, known here because the ground truth is, for the optional occupancy loss.
- "zero123pp", what `lrmesh reconstruct` takes: `<name>/grid.png` RGBA, 2 views wide and 3 high (view i at row
  i // 2, column i % 2) from the Zero123++ cameras (`lrmesh.cameras`: radius 4.0, fov 30); `normal.png` RGBA and
  `depth.png` 16-bit grids alike; `cameras.json`, the (6, 16) encoder cameras.
- "blender", the NeRF-synthetic layout: `<name>/transforms_{train,val,test}.json` ({"camera_angle_x": horizontal
  fov in radians, "frames": [{"file_path": "./train/r_0" (no extension), "transform_matrix": OpenGL
  camera-to-world 4x4}]}), `train/r_0.png` RGBA with `r_0_depth.png` (16-bit) and `r_0_normal.png` beside
  each. Radius 4.0, fov 30; train and val views uniform over the sphere between elevations -30 and 60 degrees,
  test views a turntable at elevation 20 degrees.

- "dtu", the NeuS DTU layout (as NeuS's `models/dataset.py` and instant-nsr-pl's `datasets/dtu.py` read it):
  `<name>/image/000000.png` RGB, `mask/000.png` grey coverage (the names of NeuS's released DTU scans, which
  instant-nsr-pl opens by name; NeuS itself takes both folders in name order) and `cameras_sphere.npz` with, per
  view i, `world_mat_i` = K @ w2c (4x4: OpenCV world-to-camera, K with pixel centres on integers, so a centred
  principal point is ((W - 1) / 2, (H - 1) / 2) as NeuS's own preprocessing writes it) and `scale_mat_i`, the
  similarity taking the unit sphere onto the object's bounding sphere (NeuS's rule: centred on the bounding box,
  radius the farthest vertex).
- "colmap", a COLMAP sparse model over photos: `<name>/images/0000.png` RGB, `masks/0000.png` grey coverage, and
  `sparse/0/{cameras,images,points3D}.bin` (`lrmesh.data.colmap`): one PINHOLE camera, each image's pose and the
  2-D observations of the sparse points, which are COLMAP_POINTS points sampled on the surface and kept where at
  least MIN_TRACK views see them (they pass the depth test against the render), with their colour and tracks.

dtu and colmap views are the blender layout's train views (same seed, same cameras), RGB composited on white.
Their world frame is not the model frame: as a real capture's, it is arbitrary, a random similarity
(`random_similarity`: rotation, translation and scale) away, recorded in meta.json as `model_to_world` (4x4,
model frame -> the frame of the cameras and sparse points); `gt.glb` stays in the model frame. They write no depth
or normal maps (`depth_levels_per_unit` is null).

16-bit depth PNGs hold z-depth (distance along the camera's view axis) * 1000, 0 off the object.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import trimesh
from einops import rearrange
from PIL import Image
from scipy.spatial.transform import Rotation
from torch import Tensor

from lrmesh import metrics
from lrmesh.cameras import (
    ZERO123PP_AZIMUTHS,
    ZERO123PP_ELEVATIONS,
    ZERO123PP_FOV,
    ZERO123PP_RADIUS,
    encoder_cameras,
    focal_from_fov,
    look_at_origin,
    orbit_poses,
    spherical_positions,
    turntable_poses,
)
from lrmesh.data import LAYOUTS, colmap
from lrmesh.data.scenes import (
    COLMAP_IMAGES,
    COLMAP_MASKS,
    DTU_CAMERAS,
    DTU_IMAGES,
    DTU_MASKS,
    OPENGL_FROM_OPENCV,
    transform_poses,
)
from lrmesh.data.synthetic import fit_transform
from lrmesh.errors import InputError
from lrmesh.geometry.mesh import Mesh
from lrmesh.io.mesh import GLB_FRAME, MESH_FORMATS, FileFrame, from_file_frame, save_mesh
from lrmesh.io.views import GRID_COLS, GRID_ROWS, NUM_VIEWS
from lrmesh.render.shaded import UNCOLORED, Renders, render_views

Layout = Literal["training", "zero123pp", "blender", "dtu", "colmap"]  # one of LAYOUTS

UINT8_MAX = 255
DEPTH16_SCALE = 1000.0  # 16-bit depth PNG levels per world unit: steps of 0.001 up to 65.5 units
GT_MESH, META = "gt.glb", "meta.json"

# The reference's training layout (InstantMesh src/data/objaverse.py, ObjaverseData defaults).
TRAINING_IMAGE_DIR = "rendering_random_32views"
TRAINING_META, TRAINING_META_KEY = "valid_paths.json", "good_objs"
TRAINING_CAMERAS, TRAINING_POSES_KEY = "cameras.npz", "cam_poses"
TRAINING_DEPTH_SCALE = 6.0  # the loader's depth_scale: depth = png / 255 * 6
TRAINING_FOV = 50.0
TRAINING_FOV_KEY = "fov"  # optional (N,) degrees in cameras.npz; absent means TRAINING_FOV for every view
TRAINING_DISTANCE = (2.0, 3.5)  # camera distance range of the reference's Objaverse renders
TRAINING_HEIGHT = (-0.75, 1.6)  # camera z range, likewise
# Not in the reference's layout: for objects whose ground truth is known (the data engine's), points in the
# FlexiCubes grid's cube and whether each is inside the object, for the optional occupancy loss
# (`LossConfig.occupancy`). Half uniform in the cube, half on the surface jittered by a Gaussian of either
# standard deviation; inside by the generalised winding number (`lrmesh.metrics.inside`).
OCCUPANCY_FILE = "occupancy.npz"  # arrays: points (N, 3) float16, inside (N,) bool
OCCUPANCY_POINTS = 16384
OCCUPANCY_HALF_SIDE = 1.05  # the FlexiCubes grid's half side (SynthesizerConfig.grid_scale / 2)
OCCUPANCY_NOISE = (0.01, 0.05)  # model units
OCCUPANCY_STREAM = 3  # occupancy samples of object `seed` come from default_rng([OCCUPANCY_STREAM, seed])

# Zero123++ grid files.
GRID_IMAGE, GRID_DEPTH, GRID_NORMAL, GRID_CAMERAS = "grid.png", "depth.png", "normal.png", "cameras.json"

# NeRF-synthetic layout.
BLENDER_ELEVATIONS = (-30.0, 60.0)  # degrees, range of the random train / val views
BLENDER_TEST_ELEVATION = 20.0
BLENDER_HELD_OUT_FRACTION = 4  # val and test each get views // 4 views (at least one)

# NeuS DTU and COLMAP layouts (file names: `lrmesh.data.scenes`, which reads them).
COLMAP_SPARSE_DIR = "sparse/0"
COLMAP_POINTS = 400  # surface samples offered as sparse points
MIN_TRACK = 2  # views that must see a sample for it to become a point, as COLMAP triangulates from two or more
VISIBLE_DEPTH_PIXELS = 3.0  # a sample is seen where it lies within this many pixel footprints of the rendered depth
WORLD_STREAM = 2  # the world frame of object `seed` comes from default_rng([WORLD_STREAM, seed])
WORLD_SCALE = (0.1, 10.0)  # range of its log-uniform scale (model units -> world units)
WORLD_OFFSET = 3.0  # standard deviation of its translation per axis, world units per unit of scale


# Reading a user's mesh ------------------------------------------------------------------------------------

AS_IS = FileFrame(((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
_FILE_FRAMES = {".obj": AS_IS, ".ply": AS_IS, ".glb": GLB_FRAME}  # see the module docstring


def load_source_mesh(path: str | os.PathLike) -> tuple[Mesh, np.ndarray]:
    """Read an OBJ / GLB / PLY (any scene: its parts are merged) into the model frame, normalised.

    A single textured part keeps its texture; otherwise textures are sampled at the vertices, and parts
    without colour become uniform grey. Returns the mesh and `source_to_model` (4, 4), which takes the file's
    coordinates (as trimesh loads them) to the model frame. Raises `InputError` naming the file if it cannot
    be used.
    """
    path = Path(path)
    if path.suffix.lower() not in _FILE_FRAMES:
        raise InputError(f"{path}: a mesh file must end in one of {', '.join(MESH_FORMATS)}")
    if not path.is_file():
        raise InputError(f"mesh file not found: {path}")
    parts = _read_parts(path)
    raw = _merge_parts(parts)
    if not torch.isfinite(raw.vertices).all():
        raise InputError(f"{path}: the mesh has non-finite vertex positions")
    frame = _FILE_FRAMES[path.suffix.lower()]
    vertices, faces = from_file_frame(frame, raw.vertices.numpy(), raw.faces.numpy())
    try:
        to_model = fit_transform(vertices.numpy())
    except ValueError as err:
        raise InputError(f"{path}: {err}") from err
    uv_faces = faces if raw.uv_faces is not None else None  # trimesh keeps one UV per vertex
    model_vertices = trimesh.transform_points(vertices.numpy(), to_model).astype(np.float32)
    mesh = Mesh(torch.from_numpy(model_vertices), faces, vertex_colors=raw.vertex_colors, uvs=raw.uvs,
                uv_faces=uv_faces, texture=raw.texture)
    frame_matrix = np.eye(4)
    frame_matrix[:3, :3] = np.array(frame.matrix).T  # file -> model axes, as from_file_frame applies them
    return mesh, to_model @ frame_matrix


def _read_parts(path: Path) -> list[trimesh.Trimesh]:
    """The triangle meshes of a file, scene transforms applied."""
    try:
        loaded = trimesh.load(path, process=False)
    except Exception as err:  # noqa: BLE001 - trimesh's parsers raise many kinds of error on a broken file
        raise InputError(f"cannot read mesh {path}: {type(err).__name__}: {err}") from err
    parts = loaded.dump(concatenate=False) if isinstance(loaded, trimesh.Scene) else [loaded]
    parts = [p for p in parts if isinstance(p, trimesh.Trimesh) and len(p.faces) > 0]
    if not parts:
        raise InputError(f"cannot read mesh {path}: it holds no triangles")
    return parts


def _merge_parts(parts: list[trimesh.Trimesh]) -> Mesh:
    """trimesh parts -> one Mesh in the file's coordinates, with a texture, vertex colours or no colour."""
    image = _texture_image(parts[0]) if len(parts) == 1 else None
    if image is not None:
        texture = np.asarray(image.convert("RGB"), dtype=np.float32) / UINT8_MAX  # (H, W, 3), row 0 on top
        faces = torch.from_numpy(parts[0].faces.astype(np.int64))
        return Mesh(torch.from_numpy(np.asarray(parts[0].vertices, np.float32)), faces,
                    uvs=torch.from_numpy(np.asarray(parts[0].visual.uv, np.float32)), uv_faces=faces,
                    texture=torch.from_numpy(texture))
    colors = [_vertex_colors(p) for p in parts]
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    vertices = np.concatenate([p.vertices for p in parts]).astype(np.float32)
    faces = np.concatenate([p.faces + offset for p, offset in zip(parts, offsets)]).astype(np.int64)
    vertex_colors = None
    if any(c is not None for c in colors):
        vertex_colors = torch.from_numpy(np.concatenate([
            c if c is not None else np.full((len(p.vertices), 3), UNCOLORED) for p, c in zip(parts, colors)
        ]).astype(np.float32))
    return Mesh(torch.from_numpy(vertices), torch.from_numpy(faces), vertex_colors=vertex_colors)


def _texture_image(part: trimesh.Trimesh) -> Image.Image | None:
    """The base-colour image (glTF) or diffuse map (OBJ) of a textured part with UVs, else None.

    Only the image is used: a glTF baseColorFactor multiplying it is ignored.
    """
    visual = part.visual
    if visual.kind != "texture" or getattr(visual, "uv", None) is None or visual.material is None:
        return None
    image = getattr(visual.material, "baseColorTexture", None)
    return image if image is not None else getattr(visual.material, "image", None)


def _vertex_colors(part: trimesh.Trimesh) -> np.ndarray | None:
    """Per-vertex RGB in [0, 1] from vertex, face or texture colours -> (V, 3), or None for an uncoloured part."""
    visual = part.visual
    if visual.kind == "texture" and visual.material is not None:
        uv = getattr(visual, "uv", None)
        rgba = visual.material.to_color(uv) if uv is not None else getattr(visual.material, "main_color", None)
        if rgba is None:
            return None
        rgba = np.broadcast_to(np.asarray(rgba), (len(part.vertices), 4))
    elif visual.kind in ("vertex", "face"):
        rgba = np.asarray(visual.vertex_colors)
    else:
        return None
    return rgba[:, :3].astype(np.float32) / UINT8_MAX


# Camera sets ----------------------------------------------------------------------------------------------


def training_poses(rng: np.random.Generator, count: int) -> Tensor:
    """Random views as the reference renders Objaverse: distance and height (z) uniform in their ranges,
    azimuth uniform -> (N, 4, 4) OpenGL camera-to-world."""
    distance = rng.uniform(*TRAINING_DISTANCE, size=count)
    elevation = np.degrees(np.arcsin(rng.uniform(*TRAINING_HEIGHT, size=count) / distance))
    azimuth = rng.uniform(0.0, 360.0, size=count)
    positions = spherical_positions(azimuth, elevation, 1.0) * torch.from_numpy(distance).float()[:, None]
    return look_at_origin(positions)


def sphere_poses(rng: np.random.Generator, count: int, radius: float,
                 elevations_deg: tuple[float, float] = BLENDER_ELEVATIONS) -> Tensor:
    """Views uniform over the band of the sphere between two elevations -> (N, 4, 4)."""
    low, high = np.sin(np.radians(elevations_deg))
    elevation = np.degrees(np.arcsin(rng.uniform(low, high, size=count)))  # uniform z is uniform area
    return orbit_poses(rng.uniform(0.0, 360.0, size=count), elevation, radius)


def zero123pp_poses() -> Tensor:
    """The six Zero123++ views -> (6, 4, 4)."""
    return orbit_poses(ZERO123PP_AZIMUTHS, ZERO123PP_ELEVATIONS, ZERO123PP_RADIUS)


# Writing the layouts --------------------------------------------------------------------------------------

CAMERA_STREAM = 1  # random views of object `seed` come from default_rng([CAMERA_STREAM, seed])


def default_views(layout: Layout) -> int:
    """Views per object when none are asked for: the reference's 32, the six Zero123++ views, 100 (blender
    train views, as NeRF-synthetic; colmap alike) or 64 (dtu: the most views of a DTU scan)."""
    return {"training": 32, "zero123pp": NUM_VIEWS, "blender": 100, "dtu": 64, "colmap": 100}[layout]


def write_object(mesh: Mesh, output: str | os.PathLike, name: str, layout: Layout, num_views: int, resolution: int,
                 seed: int, source: str, source_to_model: np.ndarray | None = None,
                 zero123pp_inputs: bool = False, occupancy: bool = True) -> Path:
    """Render `mesh` (model frame) and write it, its ground truth and metadata in `layout` under `output`.

    dtu and colmap draw their views first from the camera stream, as blender draws its train views, and their
    world frame from WORLD_STREAM. `num_views` is ignored by the zero123pp layout (always its six views). With
    `zero123pp_inputs` the training layout's first six views are the Zero123++ views (radius 4, fov 30: what
    `lrmesh reconstruct` is given) and the rest random; their fov goes in cameras.npz under `fov` (the reference
    loader ignores it). `occupancy` (training layout): also write OCCUPANCY_FILE. Returns the object's folder.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if num_views < 1 or resolution < 1:
        raise ValueError(f"need at least one view of at least one pixel, got {num_views} views of {resolution} px")
    output = Path(output)
    rng = np.random.default_rng([CAMERA_STREAM, seed])
    extra = {}  # layout-specific meta.json entries
    if layout == "training":
        folder = output / TRAINING_IMAGE_DIR / name
        c2w = training_poses(rng, num_views)
        fov = torch.full((num_views,), TRAINING_FOV)
        if zero123pp_inputs:
            if num_views <= NUM_VIEWS:
                raise ValueError(f"zero123pp_inputs needs more than {NUM_VIEWS} views, got {num_views}")
            c2w[:NUM_VIEWS], fov[:NUM_VIEWS] = zero123pp_poses(), ZERO123PP_FOV
        depth_scale = _write_training(mesh, folder, c2w, fov, resolution)
        if occupancy:
            points, inside = occupancy_samples(mesh, OCCUPANCY_POINTS, seed)
            np.savez(folder / OCCUPANCY_FILE, points=points.numpy().astype(np.float16), inside=inside.numpy())
    elif layout == "zero123pp":
        folder = output / name
        depth_scale = _write_zero123pp(mesh, folder, resolution)
    elif layout == "blender":
        folder = output / name
        depth_scale = _write_blender(mesh, folder, rng, num_views, resolution)
    else:
        folder = output / name
        c2w = sphere_poses(rng, num_views, ZERO123PP_RADIUS)  # the blender layout's train views
        model_to_world = random_similarity(np.random.default_rng([WORLD_STREAM, seed]))
        renders = render_views(mesh, c2w, ZERO123PP_FOV, resolution)
        if layout == "dtu":
            _write_dtu(mesh, folder, renders, model_to_world)
        else:
            _write_colmap(mesh, folder, renders, model_to_world, seed)
        depth_scale, extra = None, {"model_to_world": model_to_world.tolist(), "background": "white"}
    save_mesh(mesh.to("cpu"), folder / GT_MESH)
    transform = np.eye(4) if source_to_model is None else source_to_model
    _write_json(folder / META, {
        "name": name, "layout": layout, "source": source, "seed": seed, "gt_mesh": GT_MESH,
        "source_to_model": transform.tolist(), "depth_levels_per_unit": depth_scale,
        **extra,
    })
    if layout == "training":
        _register_training_object(output, name)
    return folder


def occupancy_samples(mesh: Mesh, count: int, seed: int) -> tuple[Tensor, Tensor]:
    """`count` points for the occupancy loss and whether each lies inside `mesh` -> (count, 3) float32, (count,)
    bool; see OCCUPANCY_FILE. The same seed gives the same points."""
    rng = np.random.default_rng([OCCUPANCY_STREAM, seed])
    uniform = rng.uniform(-OCCUPANCY_HALF_SIDE, OCCUPANCY_HALF_SIDE, (count // 2, 3))
    near = count - count // 2
    surface = metrics.sample_surface(mesh, near, seed=int(rng.integers(2**31))).double().numpy()
    sigma = rng.choice(OCCUPANCY_NOISE, size=(near, 1))
    jittered = surface + rng.normal(size=(near, 3)) * sigma
    points = torch.from_numpy(np.concatenate([uniform, jittered]).astype(np.float32))
    return points, metrics.inside(mesh.to("cpu"), points)


def _write_training(mesh: Mesh, folder: Path, c2w: Tensor, fov: Tensor, resolution: int) -> float:
    """`%03d.png`, `%03d_normal.png`, `%03d_depth.png`, `cameras.npz` (+ `fov` when any view's differs from
    TRAINING_FOV); returns depth PNG levels per unit."""
    folder.mkdir(parents=True, exist_ok=True)
    levels_per_unit = UINT8_MAX / TRAINING_DEPTH_SCALE
    for value in torch.unique(fov).tolist():
        index = torch.nonzero(fov == value)[:, 0]
        renders = render_views(mesh, c2w[index], value, resolution)
        rgba, normal, depth = _png_arrays(renders, levels_per_unit, np.uint8)
        for k, i in enumerate(index.tolist()):
            _save_png(rgba[k], folder / f"{i:03d}.png")
            _save_png(normal[k], folder / f"{i:03d}_normal.png")
            _save_png(depth[k], folder / f"{i:03d}_depth.png")
    w2c = torch.linalg.inv(c2w.double().cpu())[:, :3, :].float().numpy()  # (N, 3, 4)
    arrays = {TRAINING_POSES_KEY: w2c}
    if bool((fov != TRAINING_FOV).any()):
        arrays[TRAINING_FOV_KEY] = fov.numpy().astype(np.float32)
    np.savez(folder / TRAINING_CAMERAS, **arrays)
    return levels_per_unit


def _write_zero123pp(mesh: Mesh, folder: Path, resolution: int) -> float:
    """`grid.png`, `normal.png`, `depth.png` (each 2 x 3 views) and `cameras.json`; returns DEPTH16_SCALE."""
    folder.mkdir(parents=True, exist_ok=True)
    renders = render_views(mesh, zero123pp_poses(), ZERO123PP_FOV, resolution)
    images = dict(zip((GRID_IMAGE, GRID_NORMAL, GRID_DEPTH), _png_arrays(renders, DEPTH16_SCALE, np.uint16)))
    for file_name, views in images.items():
        _save_png(rearrange(views, "(r k) h w ... -> (r h) (k w) ...", r=GRID_ROWS, k=GRID_COLS), folder / file_name)
    _write_json(folder / GRID_CAMERAS, encoder_cameras(renders.c2w.cpu(), ZERO123PP_FOV).tolist())
    return DEPTH16_SCALE


def _write_blender(mesh: Mesh, folder: Path, rng: np.random.Generator, num_views: int, resolution: int) -> float:
    """`transforms_{split}.json` and `{split}/r_{i}.png` (+ `_depth`, `_normal`); returns DEPTH16_SCALE."""
    held_out = max(1, num_views // BLENDER_HELD_OUT_FRACTION)
    splits = {
        "train": sphere_poses(rng, num_views, ZERO123PP_RADIUS),
        "val": sphere_poses(rng, held_out, ZERO123PP_RADIUS),
        "test": turntable_poses(held_out, ZERO123PP_RADIUS, BLENDER_TEST_ELEVATION),
    }
    for split, c2w in splits.items():
        (folder / split).mkdir(parents=True, exist_ok=True)
        renders = render_views(mesh, c2w, ZERO123PP_FOV, resolution)
        rgba, normal, depth = _png_arrays(renders, DEPTH16_SCALE, np.uint16)
        frames = []
        for i in range(c2w.shape[0]):
            stem = f"{split}/r_{i}"
            _save_png(rgba[i], folder / f"{stem}.png")
            _save_png(depth[i], folder / f"{stem}_depth.png")
            _save_png(normal[i], folder / f"{stem}_normal.png")
            frames.append({"file_path": f"./{stem}", "transform_matrix": renders.c2w[i].cpu().tolist()})
        _write_json(folder / f"transforms_{split}.json",
                    {"camera_angle_x": math.radians(ZERO123PP_FOV), "frames": frames})
    return DEPTH16_SCALE


def random_similarity(rng: np.random.Generator) -> np.ndarray:
    """A random world frame (4, 4) = [[s R, t], [0, 1]]: R uniform over rotations (a normalised Gaussian
    quaternion), s log-uniform in WORLD_SCALE, t Gaussian with standard deviation WORLD_OFFSET * s."""
    quaternion = rng.normal(size=4)
    scale = math.exp(rng.uniform(*np.log(WORLD_SCALE)))
    similarity = np.eye(4)
    similarity[:3, :3] = scale * Rotation.from_quat(quaternion / np.linalg.norm(quaternion)).as_matrix()
    similarity[:3, 3] = rng.normal(scale=WORLD_OFFSET * scale, size=3)
    return similarity


def _write_dtu(mesh: Mesh, folder: Path, renders: Renders, model_to_world: np.ndarray) -> None:
    """`image/%06d.png`, `mask/%03d.png` and `cameras_sphere.npz` (see the module docstring)."""
    rgb, alpha = _photo_arrays(renders)
    for directory in (DTU_IMAGES, DTU_MASKS):
        (folder / directory).mkdir(parents=True, exist_ok=True)
    for i in range(len(rgb)):
        _save_png(rgb[i], folder / DTU_IMAGES / f"{i:06d}.png")
        _save_png(alpha[i], folder / DTU_MASKS / f"{i:03d}.png")
    resolution = rgb.shape[1]
    intrinsics = np.eye(4)
    intrinsics[0, 0] = intrinsics[1, 1] = resolution * focal_from_fov(renders.fov_deg)
    intrinsics[0, 2] = intrinsics[1, 2] = (resolution - 1) / 2  # OpenCV: pixel centres on integers
    w2c = np.linalg.inv(_opencv_poses(renders, model_to_world))
    vertices = mesh.vertices.detach().cpu().double().numpy()
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    sphere = np.diag([1.0, 1.0, 1.0, 1.0])
    sphere[:3, :3] *= np.linalg.norm(vertices - centre, axis=1).max()
    sphere[:3, 3] = centre
    scale_mat = model_to_world @ sphere  # a similarity maps the bounding sphere to the world's bounding sphere
    cameras = {}
    for i in range(len(w2c)):
        cameras[f"world_mat_{i}"], cameras[f"scale_mat_{i}"] = intrinsics @ w2c[i], scale_mat
    np.savez(folder / DTU_CAMERAS, **cameras)


def _write_colmap(mesh: Mesh, folder: Path, renders: Renders, model_to_world: np.ndarray, seed: int) -> None:
    """`images/%04d.png`, `masks/%04d.png` and the binary sparse model in `sparse/0/` (see the module docstring)."""
    rgb, alpha = _photo_arrays(renders)
    for directory in (COLMAP_IMAGES, COLMAP_MASKS):
        (folder / directory).mkdir(parents=True, exist_ok=True)
    names = [f"{i:04d}.png" for i in range(len(rgb))]
    for i, name in enumerate(names):
        _save_png(rgb[i], folder / COLMAP_IMAGES / name)
        _save_png(alpha[i], folder / COLMAP_MASKS / name)
    resolution = rgb.shape[1]
    focal = resolution * focal_from_fov(renders.fov_deg)
    centre = resolution / 2  # COLMAP: the top-left image corner is (0, 0)
    camera = colmap.Camera(1, "PINHOLE", resolution, resolution, np.array([focal, focal, centre, centre]))
    surface = trimesh.Trimesh(mesh.vertices.detach().cpu().numpy(), mesh.faces.cpu().numpy(), process=False)
    samples = trimesh.sample.sample_surface(surface, COLMAP_POINTS, seed=seed)[0]  # (P, 3) model frame
    pixels, seen = _observations(samples, renders, focal)  # (N, P, 2), (N, P)
    kept = np.nonzero(seen.sum(axis=0) >= MIN_TRACK)[0]
    first_view = seen[:, kept].argmax(axis=0)
    columns, rows = np.floor(pixels[first_view, kept]).astype(int).T
    colours = rgb[first_view, rows, columns]  # (K, 3) uint8, from the first view that sees the point
    world = trimesh.transform_points(samples[kept], model_to_world)
    images, tracks = {}, {int(k): ([], []) for k in range(len(kept))}
    w2c = np.linalg.inv(_opencv_poses(renders, model_to_world))
    for i, name in enumerate(names):
        in_view = np.nonzero(seen[i, kept])[0]  # indices into kept = point ids - 1
        for index, point in enumerate(in_view):
            tracks[int(point)][0].append(i + 1)
            tracks[int(point)][1].append(index)
        images[i + 1] = colmap.Image(i + 1, colmap.matrix_to_quaternion(w2c[i, :3, :3]), w2c[i, :3, 3], camera.id,
                                     name, pixels[i, kept[in_view]], in_view.astype(np.int64) + 1)
    points = {k + 1: colmap.Point3D(k + 1, world[k], colours[k], 0.0, np.array(tracks[k][0]), np.array(tracks[k][1]))
              for k in range(len(kept))}  # exact projections: no reprojection error
    colmap.write_model(colmap.Model({camera.id: camera}, images, points), folder / COLMAP_SPARSE_DIR)


def _opencv_poses(renders: Renders, model_to_world: np.ndarray) -> np.ndarray:
    """The renders' cameras in the world frame as OpenCV camera-to-world (N, 4, 4) float64."""
    return transform_poses(model_to_world, renders.c2w.detach().cpu().double().numpy()) @ OPENGL_FROM_OPENCV


def _observations(points: np.ndarray, renders: Renders, focal: float) -> tuple[np.ndarray, np.ndarray]:
    """Where model-frame points (P, 3) fall in each view -> pixel coordinates (N, P, 2) with the top-left corner
    at (0, 0), and whether the view sees them (N, P): inside the image, on a fully covered pixel, and within
    VISIBLE_DEPTH_PIXELS pixel footprints of the rendered depth there (not hidden behind other surface)."""
    w2c = np.linalg.inv(renders.c2w.detach().cpu().double().numpy() @ OPENGL_FROM_OPENCV)  # (N, 4, 4)
    camera = np.einsum("nij,pj->npi", w2c[:, :3, :3], points) + w2c[:, None, :3, 3]  # (N, P, 3) OpenCV
    depth = camera[..., 2]
    resolution = renders.alpha.shape[-1]
    pixels = focal * camera[..., :2] / np.maximum(depth, 1e-9)[..., None] + resolution / 2
    inside = (depth > 0) & np.all((pixels >= 0) & (pixels < resolution), axis=-1)
    columns, rows = np.clip(np.floor(pixels), 0, resolution - 1).astype(int).transpose(2, 0, 1)
    views = np.arange(len(w2c))[:, None]
    alpha = renders.alpha.cpu().numpy()[views, rows, columns]
    rendered = renders.depth.cpu().numpy()[views, rows, columns]
    seen = inside & (alpha == 1) & (np.abs(depth - rendered) < VISIBLE_DEPTH_PIXELS * depth / focal)
    return pixels, seen


def _photo_arrays(renders: Renders) -> tuple[np.ndarray, np.ndarray]:
    """Renders -> photos: RGB composited on white (N, H, W, 3) uint8 and coverage (N, H, W) uint8."""
    alpha = renders.alpha[..., None]
    rgb = (renders.rgb * alpha + (1.0 - alpha)).clamp(0, 1) * UINT8_MAX
    coverage = renders.alpha.clamp(0, 1) * UINT8_MAX
    return rgb.round().to(torch.uint8).cpu().numpy(), coverage.round().to(torch.uint8).cpu().numpy()


def _register_training_object(output: Path, name: str) -> None:
    """Add `name` to the loader's list of objects (`valid_paths.json`), keeping the names already there."""
    meta = output / TRAINING_META
    names = set(json.loads(meta.read_text())[TRAINING_META_KEY]) if meta.is_file() else set()
    _write_json(meta, {TRAINING_META_KEY: sorted(names | {name})})


def _png_arrays(renders: Renders, depth_levels_per_unit: float,
                depth_dtype: type[np.uint8] | type[np.uint16]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renders -> PNG pixels: colour RGBA (N, H, W, 4) uint8, normals (n + 1) / 2 as RGBA (N, H, W, 4) uint8
    (black where alpha = 0), depth * levels (N, H, W) of `depth_dtype`, each rounded and clamped to its range."""
    normal_colors = torch.where(renders.alpha[..., None] > 0, (renders.normals + 1) / 2, 0.0)
    rgba, normal = (torch.cat([colors, renders.alpha[..., None]], dim=-1).clamp(0, 1) * UINT8_MAX
                    for colors in (renders.rgb, normal_colors))
    max_level = np.iinfo(depth_dtype).max
    depth = (renders.depth * depth_levels_per_unit).round().clamp(0, max_level)
    return (rgba.round().to(torch.uint8).cpu().numpy(), normal.round().to(torch.uint8).cpu().numpy(),
            depth.cpu().numpy().astype(depth_dtype))


def _save_png(pixels: np.ndarray, path: Path) -> None:
    """(H, W, 4) uint8 RGBA, (H, W) uint8 grey or (H, W) uint16 grey -> PNG."""
    Image.fromarray(np.ascontiguousarray(pixels)).save(path, format="PNG")


def _write_json(path: Path, data: object) -> None:
    """Write JSON under a temporary name and rename it into place, so readers never see half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)
