"""Posed inputs: views that come with cameras of their own (your photos and a NeRF-synthetic transforms.json),
normalised into the model's input convention, and the way back to the cameras' world for the mesh.

The model's convention (`lrmesh.cameras`): z up, the object at the origin, OpenGL camera-to-world poses, square
views with normalised intrinsics. A capture's cameras are brought there by one similarity (`normalise_cameras`):

- centre: the point nearest all optical axes (`lrmesh.cameras.axes_meeting_point`), the point an object-centric
  capture looks at, goes to the origin. Every camera must see it (within its half field of view); otherwise, or
  when the axes are parallel or meet behind the cameras, the cameras share no object and that is an error;
- rotation: the mean camera up vector becomes +z (`lrmesh.data.scenes.upright_rotation`, photos are taken
  upright), then a turn about z puts the first frame's camera at azimuth 0 (the +x side, where the Zero123++
  input photo and SV3D's frame 0 are), so the normalisation does not depend on how the world was turned;
- scale: the median camera distance d to the centre becomes r_model = 4 * tan(15 deg) / tan(fov / 2) (x --scale):
  at that distance the camera's square view spans at the origin what a Zero123++ view (radius 4, fov 30) spans,
  so an object framed like the Zero123++ views lands in the model's box, whatever the lens. (fov 30: distance 4.)
- intrinsics: fx = fy = f / S, cx = cy = 0.5, where f = W / (2 tan(camera_angle_x / 2)) pixels and S = min(W, H):
  photos that are not square are cropped to their centre square (the principal point is taken at the centre).

`PosedViews.to_world` is that similarity's inverse: the model frame -> the cameras' world, in its units, which
`save_world_mesh` applies before writing (OBJ / PLY coordinates in that frame, GLB turned to glTF's y up), as
`lrmesh fit` writes meshes.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lrmesh.cameras import ZERO123PP_FOV, ZERO123PP_RADIUS, axes_meeting_point, encoder_cameras
from lrmesh.data.scenes import transform_poses, upright_rotation
from lrmesh.errors import InputError
from lrmesh.geometry.mesh import Mesh, transform_similarity
from lrmesh.io.mesh import save_mesh
from lrmesh.io.views import read_image, to_view_size

MIN_AXIS_SPREAD = 1e-3  # smallest eigenvalue of mean(I - d d^T) for axes that meet (0: all parallel)
PNG_SUFFIX = ".png"  # NeRF-synthetic file paths carry no extension; their images are PNGs


@dataclass
class PosedViews:
    """Views with encoder cameras in the model frame, and the similarity back to the input's world frame."""

    images: Tensor  # (V, 3, 320, 320) float32 RGB in [0, 1] on white
    cameras: Tensor  # (V, 16) encoder cameras, model frame (z up, object at the origin), same order as images
    to_world: Tensor  # (4, 4) float64 similarity: model frame -> the cameras' own world (identity: none)


@dataclass
class _Frames:
    """What a transforms.json says: image paths, OpenGL camera-to-world poses in its world, horizontal fov."""

    paths: list[Path]
    c2w: np.ndarray  # (N, 4, 4) float64
    angle_x: float  # radians
    size: tuple[int, int] | None  # (width, height) when the file gives w and h


def load_posed_photos(folder: str | os.PathLike, transforms: str | os.PathLike,
                      radius: float = ZERO123PP_RADIUS) -> PosedViews:
    """Photos in `folder` and their cameras in `transforms` (NeRF-synthetic: camera_angle_x, frames with file_path
    and an OpenGL camera-to-world transform_matrix, in any world frame and units) -> PosedViews in the model
    frame (see the module docstring), the cameras at about `radius` for a 30 degree lens.

    A frame's file_path is looked up under `folder` as given, then by its file name, then beside the JSON file,
    with ".png" added when it has no extension. Raises InputError: a frame whose image is missing or unreadable,
    images of different sizes or of another size than w / h say, cameras that share no object.
    """
    folder, transforms = Path(folder), Path(transforms)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder of photos (--cameras takes the photos' folder)")
    frames = _read_transforms(transforms, folder)
    images = [read_image(p) for p in frames.paths]  # (3, H, W) each, on white
    sizes = {(img.shape[2], img.shape[1]) for img in images}
    if len(sizes) > 1:
        raise InputError(f"{transforms}: one camera_angle_x needs photos of one size, got "
                         + ", ".join(f"{p.name} {img.shape[2]}x{img.shape[1]}" for p, img in zip(frames.paths, images)))
    (width, height), = sizes
    if frames.size is not None and frames.size != (width, height):
        raise InputError(f"{transforms} says its photos are {frames.size[0]}x{frames.size[1]}, but "
                         f"{frames.paths[0].name} is {width}x{height}")
    side = min(width, height)
    focal = width / (2 * math.tan(frames.angle_x / 2))  # pixels
    fov = math.degrees(2 * math.atan(side / (2 * focal)))  # of the centre square, horizontal = vertical
    top, left = (height - side) // 2, (width - side) // 2
    squares = torch.stack([img[:, top:top + side, left:left + side] for img in images])
    cameras, to_world = posed_cameras(frames.c2w, fov, radius, [p.name for p in frames.paths])
    return PosedViews(to_view_size(squares, frames.paths), cameras, to_world)


def posed_cameras(c2w: np.ndarray, fov_deg: float, radius: float = ZERO123PP_RADIUS,
                  names: list[str] | None = None) -> tuple[Tensor, Tensor]:
    """OpenGL poses (N, 4, 4) float64 in any world frame, square views of `fov_deg` -> their encoder cameras in
    the model frame (N, 16) and the similarity model frame -> world (4, 4) float64 (`normalise_cameras`)."""
    to_world = normalise_cameras(c2w, fov_deg, radius, names)
    model_c2w = transform_poses(np.linalg.inv(to_world), c2w)
    return encoder_cameras(torch.from_numpy(model_c2w).float(), fov_deg), torch.from_numpy(to_world)


def normalise_cameras(c2w: np.ndarray, fov_deg: float, radius: float = ZERO123PP_RADIUS,
                      names: list[str] | None = None) -> np.ndarray:
    """The similarity (4, 4) float64 model frame -> world for OpenGL poses (N, 4, 4) in a world frame, by the rule
    of the module docstring: world = s R^T model + c. Raises InputError when the cameras share no object."""
    names = names or [f"frame {i}" for i in range(len(c2w))]
    centre = axes_meeting_point(c2w, MIN_AXIS_SPREAD)
    if centre is None:
        raise InputError("the cameras do not look at a common object: their optical axes are parallel or meet "
                         "behind them")
    offsets = centre - c2w[:, :3, 3]
    distance = np.linalg.norm(offsets, axis=1)  # (N,)
    off_axis = np.degrees(np.arccos(np.clip(np.einsum("nk,nk->n", offsets, -c2w[:, :3, 2]) / distance, -1, 1)))
    away = [f"{name} ({angle:.0f} deg)" for name, angle in zip(names, off_axis) if angle > fov_deg / 2]
    if away:
        raise InputError(f"the cameras do not look at a common object: the point the others look at is outside "
                         f"the {fov_deg:.0f} degree view of {', '.join(away)}")
    model_distance = radius * math.tan(math.radians(ZERO123PP_FOV / 2)) / math.tan(math.radians(fov_deg / 2))
    scale = float(np.median(distance)) / model_distance
    upright = upright_rotation(c2w)[:3, :3]
    first = upright @ (c2w[0, :3, 3] - centre)
    rotation = _z_rotation(-math.atan2(first[1], first[0])) @ upright  # world -> model, first camera at azimuth 0
    to_world = np.eye(4)
    to_world[:3, :3] = scale * rotation.T
    to_world[:3, 3] = centre
    return to_world


def _z_rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def save_world_mesh(mesh: Mesh, to_world: Tensor, path: str | os.PathLike) -> list[Path]:
    """Write a model-frame mesh in the input's world frame: OBJ / PLY coordinates as they are in that frame, GLB
    turned to glTF's y up (`save_mesh(keep_coordinates=True)`, as `lrmesh fit` writes). Returns the files."""
    return save_mesh(transform_similarity(mesh, to_world), path, keep_coordinates=True)


def _read_transforms(path: Path, folder: Path) -> _Frames:
    if not path.is_file():
        raise InputError(f"camera file not found: {path}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        angle_x = float(meta["camera_angle_x"])
        frames = [(str(f["file_path"]), np.array(f["transform_matrix"], np.float64)) for f in meta["frames"]]
        size = (int(meta["w"]), int(meta["h"])) if "w" in meta and "h" in meta else None
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise InputError(f"{path}: not a NeRF-synthetic transforms file (camera_angle_x, frames[].file_path, "
                         f"frames[].transform_matrix): {type(err).__name__}: {err}") from err
    if not frames:
        raise InputError(f"{path}: no frames")
    if not 0 < angle_x < math.pi:
        raise InputError(f"{path}: camera_angle_x must be between 0 and pi radians, got {angle_x}")
    paths = []
    for file_path, matrix in frames:
        if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
            raise InputError(f"{path}: the transform_matrix of {file_path!r} is not a finite 4x4 matrix")
        paths.append(_frame_image(file_path, folder, path))
    return _Frames(paths, np.stack([m for _, m in frames]), angle_x, size)


def _frame_image(file_path: str, folder: Path, transforms: Path) -> Path:
    """The image a frame names (see `load_posed_photos` for where it is looked for)."""
    candidates = [folder / file_path, folder / Path(file_path).name, transforms.parent / file_path]
    for candidate in candidates:
        for option in (candidate, candidate.with_name(candidate.name + PNG_SUFFIX)):
            if option.is_file():
                return option
    raise InputError(f"{transforms}: frame {file_path!r} has no image in {folder} (looked for "
                     f"{candidates[0].name} and {candidates[0].name}{PNG_SUFFIX})")
