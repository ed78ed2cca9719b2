"""Per-scene datasets for NeuS / NeRF fitting: posed images of one scene in the NeRF-synthetic ("blender"), NeuS DTU
("dtu") or COLMAP ("colmap") layout, loaded into one `Scene` with one set of conventions, as instant-nsr-pl's
`datasets/{blender,dtu,colmap}.py` load them.

Conventions of a `Scene`:

- Poses are OpenGL camera-to-world matrices (camera x right, y up, looking down -z), as in `lrmesh.cameras`.
- Intrinsics are pixels of the loaded images with the top-left image corner at (0, 0), so pixel (row r, column c)
  has its centre at (c + 0.5, r + 0.5) and a centred principal point is (W / 2, H / 2): COLMAP's convention and
  instant-nsr-pl's (`get_ray_directions` with pixel centres). OpenCV puts pixel centres on integers, so the DTU
  loader adds half a pixel to the principal point of its matrices (NeuS casts rays through integer pixel
  coordinates with them).
- Coordinates are normalised so that the object lies inside the sphere of radius `Scene.radius` about the origin,
  z up where the layout leaves the up direction open; `Scene.to_world` takes them back to the dataset's frame:
  - blender: the NeRF-synthetic frame as it is (z up, cameras about 4 units out); `radius` = BLENDER_RADIUS, 1.5
    as instant-nsr-pl's NeRF-synthetic configs: those objects reach about 1.5 from the origin, and the objects
    `lrmesh synth` writes reach 0.9 (`lrmesh.data.synthetic.OBJECT_RADIUS`), so both fit with room.
  - dtu: `scale_mat_i` (NeuS: maps the unit sphere to the region of interest) then a rotation about the origin
    turning the mean camera up vector to +z (photos are taken upright); radius 1.
  - colmap: centred on the point nearest all optical axes (the look-at point of an object-centric capture;
    failing that, the median sparse point), rotated so the mean camera up vector is +z, and scaled so that the
    farthest foreground sparse point lies at POINTS_FILL = 0.8, leaving room for surface the sparse points
    missed; radius 1. Foreground: nearer than the nearest camera (the object the cameras ring), less outliers
    beyond Tukey's far-out fence (Q3 + 3 IQR of the distances). A cloud holding background inside the ring
    (a table) only makes the object smaller. Without enough foreground points the nearest camera is put
    CAMERA_FALLBACK_DISTANCE away, with a warning. Meant for object-centric captures, not forward-facing ones.
- Splits: blender's come from its three transforms files; dtu and colmap hold out every HOLD_OUT_EVERY-th view
  (0, 8, 16, ... in image order: DTU's index, COLMAP's sorted file names) as "test", which "val" shares, as the
  LLFF / mip-NeRF 360 convention; "train" is the rest; "all" is every view. Normalisation always uses every view,
  so all splits share one frame.
- Images with alpha are composited onto the asked background; their alpha is the mask. DTU and COLMAP photos
  have none: they are returned as they are and their masks come from `mask/` or `masks/` (compositing with the
  mask is then the consumer's business, as in instant-nsr-pl's systems).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.spatial.transform import Rotation
from torch import Tensor

from lrmesh.cameras import axes_meeting_point
from lrmesh.data import colmap
from lrmesh.errors import InputError

Kind = Literal["auto", "blender", "dtu", "colmap"]
Split = Literal["train", "val", "test", "all"]
KINDS = ("blender", "dtu", "colmap")
SPLITS = ("train", "val", "test", "all")

BLENDER_RADIUS = 1.5  # see the module docstring
BLENDER_SPLITS = ("train", "val", "test")
NORMALISED_RADIUS = 1.0  # dtu, colmap: the object lies in the unit sphere, as NeuS assumes
HOLD_OUT_EVERY = 8  # dtu, colmap: views 0, 8, 16, ... are the test (and val) split
POINTS_FILL = 0.8  # colmap: where the farthest foreground point lands
OUTLIER_FENCE = 3.0  # colmap: distances beyond Q3 + this * IQR are outliers (Tukey's "far out")
MIN_POINTS = 10  # colmap: fewer foreground points than this and the scale comes from the cameras
CAMERA_FALLBACK_DISTANCE = 3.0  # colmap without points: nearest camera distance, about NeRF-synthetic's 4 / 1.3
MIN_AXIS_SPREAD = 0.01  # colmap: smallest eigenvalue of mean(I - d d^T); below it the optical axes are parallel
MIN_NEAR = 0.01  # near plane floor, normalised units, for cameras inside the bounding sphere
UINT8_MAX = 255

# File names of the layouts (also what `lrmesh.data.multiview` writes).
DTU_CAMERAS, DTU_IMAGES, DTU_MASKS = "cameras_sphere.npz", "image", "mask"
COLMAP_IMAGES, COLMAP_MASKS, COLMAP_SPARSE = "images", "masks", ("sparse/0", "sparse")

OPENGL_FROM_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # flips camera y and z: c2w_gl = c2w_cv @ this


@dataclass
class Scene:
    """The posed images of one split of a scene, in the conventions of the module docstring."""

    images: Tensor  # (N, H, W, 3) float32 in [0, 1]
    masks: Tensor | None  # (N, H, W) float32 foreground coverage in [0, 1]; None when not asked for or absent
    c2w: Tensor  # (N, 4, 4) float32 OpenGL camera-to-world, normalised coordinates
    intrinsics: Tensor  # (N, 4) float32 fx, fy, cx, cy per view, pixels of `images`, corner at (0, 0)
    width: int
    height: int
    radius: float  # the object lies in the sphere of this radius about the origin
    near: float  # ray start and end for the cameras of this split: the bounding sphere seen from them
    far: float
    names: list[str]  # (N,) image files, relative to the scene folder
    to_world: Tensor  # (4, 4) float64 similarity: normalised -> the dataset's own world coordinates
    kind: str  # the layout read: blender, dtu or colmap

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class _Views:
    """What a layout's cameras say, before any image is read; all float64 numpy, every view of the split."""

    image_paths: list[Path]
    mask_paths: list[Path] | None  # None: masks from alpha (blender) or none
    c2w: np.ndarray  # (N, 4, 4) OpenGL, normalised
    intrinsics: np.ndarray  # (N, 4) fx, fy, cx, cy at the files' resolution
    sizes: list[tuple[int, int] | None]  # (N,) (width, height) the cameras expect, None where they do not say
    source: Path  # the camera file, for messages
    to_world: np.ndarray  # (4, 4)
    radius: float


def load_scene(path: str | os.PathLike, kind: Kind = "auto", split: Split = "train", downscale: float = 1.0,
               use_masks: bool | None = None, white_background: bool = True) -> Scene:
    """Load one split of the scene in folder `path`.

    Args:
        kind: the layout; "auto" looks for `transforms_train.json` (blender), `cameras_sphere.npz` (dtu), then
            `sparse/0/` or `sparse/` (colmap).
        split: "train", "val", "test" or "all" (see the module docstring).
        downscale: images are shrunk by this factor (>= 1; area average) and the intrinsics with them.
        use_masks: True: masks are required (alpha for blender, `mask/` for dtu, `masks/` for colmap); False: none
            are loaded; None: loaded when present.
        white_background: composite images with alpha onto white, else black.
    Raises:
        InputError naming the file: an unknown layout, a missing or corrupt file, an image missing or of another
        size than its camera says, image and camera counts that differ, masks asked for but absent.
    """
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"scene folder not found: {root}")
    if kind == "auto":
        kind = detect_kind(root)
    if kind not in KINDS:
        raise InputError(f"{root}: unknown scene layout {kind!r}, expected auto or one of {', '.join(KINDS)}")
    if split not in SPLITS:
        raise InputError(f"{root}: unknown split {split!r}, expected one of {', '.join(SPLITS)}")
    if not downscale >= 1:
        raise InputError(f"{root}: downscale must be at least 1, got {downscale}")
    reader = {"blender": _blender_views, "dtu": _dtu_views, "colmap": _colmap_views}[kind]
    views = reader(root, split, use_masks)
    if not views.image_paths:
        raise InputError(f"{root}: the {split} split of this {kind} scene holds no views")
    return _load_images(views, root, kind, downscale, use_masks, 1.0 if white_background else 0.0)


def detect_kind(root: Path) -> str:
    """The layout of a scene folder; raises InputError when it is none of them."""
    if (root / "transforms_train.json").is_file():
        return "blender"
    if (root / DTU_CAMERAS).is_file():
        return "dtu"
    if any(colmap.find_model(root / sub) for sub in COLMAP_SPARSE):
        return "colmap"
    raise InputError(f"{root}: not a scene folder: found no transforms_train.json (blender), {DTU_CAMERAS} (dtu) "
                     f"or sparse/0/cameras.bin (colmap)")


# Pose helpers --------------------------------------------------------------------------------------------


def similarity_scale(similarity: np.ndarray) -> float:
    """The uniform scale s of a similarity [[s R, t], [0, 1]]."""
    return float(np.cbrt(np.linalg.det(similarity[:3, :3])))


def transform_poses(similarity: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """Camera-to-world poses (N, 4, 4) carried by a similarity: centres mapped, axes rotated, kept unit length."""
    out = similarity @ c2w
    out[:, :3, :3] /= similarity_scale(similarity)
    return out


def decompose_projection(projection: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P = K [R | t] (3, 4), any non-zero scale -> K (3, 3) with K[2, 2] = 1 and positive focal lengths, and the
    OpenCV camera-to-world (4, 4), by RQ decomposition of the left 3x3 block (Hartley & Zisserman: K R = M)."""
    p = np.asarray(projection, np.float64)
    if abs(np.linalg.det(p[:, :3])) < 1e-12 * max(np.abs(p[:, :3]).max(), 1e-300) ** 3:
        raise ValueError("singular projection matrix")
    if np.linalg.det(p[:, :3]) < 0:
        p = -p  # P is projective: choose the sign that makes R a rotation
    k, r = scipy.linalg.rq(p[:, :3])
    signs = np.sign(np.diag(k))
    k, r = k * signs, signs[:, None] * r  # K D, D R with D = diag(signs), D D = I: positive diagonal
    t = np.linalg.solve(k, p[:, 3])
    c2w = np.eye(4)
    c2w[:3, :3], c2w[:3, 3] = r.T, -r.T @ t
    return k / k[2, 2], c2w


def upright_rotation(c2w: np.ndarray) -> np.ndarray:
    """(4, 4) rotation turning the mean camera up vector (OpenGL y) of (N, 4, 4) poses to +z."""
    up = c2w[:, :3, 1].mean(axis=0)
    out = np.eye(4)
    if np.linalg.norm(up) < 1e-6:
        return out
    up /= np.linalg.norm(up)
    axis = np.cross(up, [0.0, 0.0, 1.0])
    sine, cosine = np.linalg.norm(axis), up[2]
    if sine < 1e-9:
        out[:3, :3] = np.eye(3) if cosine > 0 else np.diag([1.0, -1.0, -1.0])
    else:
        out[:3, :3] = Rotation.from_rotvec(axis / sine * math.atan2(sine, cosine)).as_matrix()
    return out


def _split_indices(count: int, split: str) -> list[int]:
    if split == "all":
        return list(range(count))
    held_out = split in ("val", "test")
    return [i for i in range(count) if (i % HOLD_OUT_EVERY == 0) == held_out]


# Blender -------------------------------------------------------------------------------------------------


def _blender_views(root: Path, split: str, use_masks: bool | None) -> _Views:
    paths, c2w, intrinsics, sizes = [], [], [], []
    source = root / "transforms_train.json"
    for name in BLENDER_SPLITS if split == "all" else (split,):
        source = root / f"transforms_{name}.json"
        meta = _read_json(source)
        try:
            angle_x = float(meta["camera_angle_x"])
            frames = [(str(f["file_path"]), np.array(f["transform_matrix"], np.float64)) for f in meta["frames"]]
            size = (int(meta["w"]), int(meta["h"])) if "w" in meta and "h" in meta else None
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"corrupt {source}: {type(err).__name__}: {err}") from err
        for file_path, matrix in frames:
            if matrix.shape != (4, 4):
                raise InputError(f"corrupt {source}: transform_matrix of {file_path} is not 4x4")
            image = root / file_path
            image = image if image.suffix and image.is_file() else image.with_name(image.name + ".png")
            if not image.is_file():
                raise InputError(f"image {file_path!r} named in {source} not found: {image}")
            paths.append(image)
            c2w.append(matrix)
            width, height = size or _image_size(image)
            focal = 0.5 * width / math.tan(0.5 * angle_x)
            intrinsics.append([focal, focal, width / 2, height / 2])
            sizes.append(size)
    return _Views(paths, None, np.array(c2w).reshape(-1, 4, 4), np.array(intrinsics).reshape(-1, 4), sizes, source,
                  np.eye(4), BLENDER_RADIUS)


# DTU (NeuS) ----------------------------------------------------------------------------------------------


def _dtu_views(root: Path, split: str, use_masks: bool | None) -> _Views:
    source = root / DTU_CAMERAS
    try:
        with np.load(source) as cameras:
            arrays = {key: cameras[key] for key in cameras.files}
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"corrupt camera file {source}: {type(err).__name__}: {err}") from err
    count = sum(1 for key in arrays if re.fullmatch(r"world_mat_\d+", key))
    images = sorted((root / DTU_IMAGES).glob("*.png"))  # NeuS: image i is the i-th in name order
    if len(images) != count:
        raise InputError(f"{root / DTU_IMAGES}: {len(images)} images, but {source} holds {count} cameras")
    c2w, intrinsics = np.zeros((count, 4, 4)), np.zeros((count, 4))
    scale_mat = None
    for i in range(count):
        try:
            world_mat, this_scale = arrays[f"world_mat_{i}"], arrays[f"scale_mat_{i}"].astype(np.float64)
            k, c2w_cv = decompose_projection((world_mat @ this_scale)[:3, :4])
        except (KeyError, ValueError) as err:
            raise InputError(f"corrupt camera file {source}: view {i}: {type(err).__name__}: {err}") from err
        if scale_mat is None:
            scale_mat = this_scale
        elif not np.allclose(this_scale, scale_mat, rtol=1e-6, atol=0):
            raise InputError(f"{source}: scale_mat_{i} differs from scale_mat_0; one normalisation is needed")
        if abs(k[0, 1]) > 1e-3 * k[0, 0]:
            warnings.warn(f"{source}: view {i} has skew {k[0, 1]:.3g}; it is ignored", stacklevel=3)
        c2w[i] = c2w_cv @ OPENGL_FROM_OPENCV
        intrinsics[i] = k[0, 0], k[1, 1], k[0, 2] + 0.5, k[1, 2] + 0.5  # OpenCV pixel centres -> corner origin
    upright = upright_rotation(c2w)
    c2w = upright @ c2w
    to_world = (scale_mat if scale_mat is not None else np.eye(4)) @ upright.T
    # instant-nsr-pl opens mask/%03d.png (the released scans' names); NeuS takes the folder in name order.
    masks = _mask_paths(root / DTU_MASKS, [image.name for image in images], use_masks,
                        lambda i, name: [f"{i:03d}.png", f"{i:06d}.png", name])
    keep = _split_indices(count, split)
    return _Views([images[i] for i in keep], None if masks is None else [masks[i] for i in keep], c2w[keep],
                  intrinsics[keep], [None] * len(keep), source, to_world, NORMALISED_RADIUS)


def _mask_paths(folder: Path, names: list[str], use_masks: bool | None, candidates) -> list[Path] | None:
    """The mask of each image, named relative to its folder: the first of `candidates(index, name)` in `folder`
    that exists; None when masks are not used."""
    if use_masks is False or (use_masks is None and not folder.is_dir()):
        return None
    if not folder.is_dir():
        raise InputError(f"masks were asked for, but the mask folder is missing: {folder}")
    paths = []
    for i, name in enumerate(names):
        tried = candidates(i, name)
        found = [folder / mask for mask in tried if (folder / mask).is_file()]
        if not found:
            raise InputError(f"mask of image {name} not found: {folder / tried[0]}")
        paths.append(found[0])
    return paths


# COLMAP --------------------------------------------------------------------------------------------------


def _colmap_views(root: Path, split: str, use_masks: bool | None) -> _Views:
    found = next(filter(None, (colmap.find_model(root / sub) for sub in COLMAP_SPARSE)), None)
    if found is None:
        raise InputError(f"{root}: no COLMAP model in sparse/0/ or sparse/ (cameras, images, points3D .bin or .txt)")
    folder, ext = found
    model = colmap.read_model(folder, ext)
    source = folder / f"images{ext}"
    records = sorted(model.images.values(), key=lambda im: im.name)
    if not records:
        raise InputError(f"{source}: no registered images")
    images = [root / COLMAP_IMAGES / im.name for im in records]
    intrinsics, sizes, distorted = [], [], set()
    for im in records:
        camera = model.cameras.get(im.camera_id)
        if camera is None:
            raise InputError(f"corrupt {source}: image {im.name} uses camera {im.camera_id}, not in cameras{ext}")
        values, has_distortion = _pinhole(camera, folder / f"cameras{ext}")
        if has_distortion:
            distorted.add(camera.model)
        intrinsics.append(values)
        sizes.append((camera.width, camera.height))
    if distorted:
        warnings.warn(f"{folder}: lens distortion of {', '.join(sorted(distorted))} cameras is ignored; undistort "
                      f"the images first (colmap image_undistorter) for exact rays", stacklevel=3)
    c2w = np.stack([np.linalg.inv(im.world_to_camera()) @ OPENGL_FROM_OPENCV for im in records])
    points = np.array([p.xyz for p in model.points.values()]).reshape(-1, 3)
    to_world = _colmap_normalisation(c2w, points, folder)
    c2w = transform_poses(np.linalg.inv(to_world), c2w)
    # The image's own name (instant-nsr-pl), with .png for its suffix, or with .png added (COLMAP's mask_path).
    masks = _mask_paths(root / COLMAP_MASKS, [im.name for im in records], use_masks,
                        lambda i, name: [name, str(Path(name).with_suffix(".png")), name + ".png"])
    keep = _split_indices(len(records), split)
    return _Views([images[i] for i in keep], None if masks is None else [masks[i] for i in keep], c2w[keep],
                  np.array(intrinsics)[keep], [sizes[i] for i in keep], source, to_world, NORMALISED_RADIUS)


def _pinhole(camera: colmap.Camera, source: Path) -> tuple[list[float], bool]:
    """fx, fy, cx, cy of a pinhole-like camera and whether it has non-zero distortion."""
    p = camera.params
    if camera.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        return [p[0], p[0], p[1], p[2]], bool(np.any(p[3:] != 0))
    if camera.model in ("PINHOLE", "OPENCV"):
        return [p[0], p[1], p[2], p[3]], bool(np.any(p[4:] != 0))
    raise InputError(f"{source}: camera {camera.id} is {camera.model}; supported: SIMPLE_PINHOLE, PINHOLE, "
                     f"SIMPLE_RADIAL, RADIAL, OPENCV (undistort the images with COLMAP first)")


def _colmap_normalisation(c2w: np.ndarray, points: np.ndarray, folder: Path) -> np.ndarray:
    """to_world (4, 4) for the rule of the module docstring, from OpenGL poses and sparse points in COLMAP's
    world."""
    origins = c2w[:, :3, 3]
    centre = axes_meeting_point(c2w, MIN_AXIS_SPREAD)
    if centre is None:
        centre = np.median(points, axis=0) if len(points) else origins.mean(axis=0)
    upright = upright_rotation(c2w)
    camera_distance = np.linalg.norm(origins - centre, axis=1).min()
    distance = np.linalg.norm(points - centre, axis=1)
    foreground = distance[distance < camera_distance]
    if len(foreground) >= MIN_POINTS:
        q1, q3 = np.quantile(foreground, [0.25, 0.75])
        scale = foreground[foreground <= q3 + OUTLIER_FENCE * (q3 - q1)].max() / POINTS_FILL
    else:
        warnings.warn(f"{folder}: {len(foreground)} sparse points lie inside the ring of cameras; the scene scale "
                      f"comes from the cameras alone", stacklevel=4)
        scale = camera_distance / CAMERA_FALLBACK_DISTANCE
    to_world = np.eye(4)
    to_world[:3, :3] = scale * upright[:3, :3].T
    to_world[:3, 3] = centre
    return to_world


# Images --------------------------------------------------------------------------------------------------


def _load_images(views: _Views, root: Path, kind: str, downscale: float, use_masks: bool | None,
                 background: float) -> Scene:
    """Read the images (and masks) of `views`, check them against the cameras, composite, downscale."""
    images, masks = [], []
    width = height = None
    for i, path in enumerate(views.image_paths):
        if not path.is_file():
            raise InputError(f"image not found: {path} (named in {views.source})")
        pixels = _read_image(path)  # (H, W, 3 or 4)
        h, w = pixels.shape[:2]
        expected = views.sizes[i]
        if expected is not None and expected != (w, h):
            raise InputError(f"image {path} is {w}x{h}, but its camera in {views.source} is {expected[0]}x"
                             f"{expected[1]}")
        if width is None:
            width, height = w, h
        elif (w, h) != (width, height):
            raise InputError(f"image {path} is {w}x{h}, unlike the {width}x{height} of {views.image_paths[0]}")
        cx, cy = views.intrinsics[i, 2:]
        if not (0 < cx < w and 0 < cy < h):
            raise InputError(f"image {path} is {w}x{h}, but its camera in {views.source} has its principal point at "
                             f"({cx:.1f}, {cy:.1f}), outside it: were the images resized without the cameras?")
        if views.mask_paths is not None:
            mask = _read_mask(views.mask_paths[i])
            if mask.shape != (h, w):
                raise InputError(f"mask {views.mask_paths[i]} is {mask.shape[1]}x{mask.shape[0]}, its image {w}x{h}")
            masks.append(mask)
        elif kind == "blender" and use_masks is not False:
            if pixels.shape[-1] != 4:
                if use_masks:
                    raise InputError(f"masks were asked for, but image {path} has no alpha channel")
            else:
                masks.append(pixels[..., 3])
        if pixels.shape[-1] == 4:
            pixels = pixels[..., :3] * pixels[..., 3:] + background * (1.0 - pixels[..., 3:])  # straight alpha
        images.append(pixels)
    if masks and len(masks) != len(images):
        raise InputError(f"{root}: some images have alpha and some not; masks need all or none")
    image_tensor = torch.from_numpy(np.stack(images)).float()
    mask_tensor = torch.from_numpy(np.stack(masks)).float() if masks else None
    intrinsics = torch.from_numpy(views.intrinsics).float()
    if downscale > 1:
        new_w, new_h = max(1, round(width / downscale)), max(1, round(height / downscale))
        image_tensor = _shrink(image_tensor.permute(0, 3, 1, 2), new_h, new_w).permute(0, 2, 3, 1)
        mask_tensor = None if mask_tensor is None else _shrink(mask_tensor[:, None], new_h, new_w)[:, 0]
        intrinsics = intrinsics * torch.tensor([new_w / width, new_h / height] * 2)
        width, height = new_w, new_h
    distance = np.linalg.norm(views.c2w[:, :3, 3], axis=1)
    return Scene(images=image_tensor.clamp(0, 1).contiguous(), masks=mask_tensor,
                 c2w=torch.from_numpy(views.c2w).float(),
                 intrinsics=intrinsics, width=width, height=height, radius=views.radius,
                 near=float(max(distance.min() - views.radius, MIN_NEAR)), far=float(distance.max() + views.radius),
                 names=[p.relative_to(root).as_posix() for p in views.image_paths],
                 to_world=torch.from_numpy(views.to_world).double(), kind=kind)


def _shrink(batch: Tensor, height: int, width: int) -> Tensor:
    """(N, C, H, W) -> (N, C, height, width), each output pixel the mean of the input pixels it covers."""
    return F.interpolate(batch, size=(height, width), mode="area")


def _read_image(path: Path) -> np.ndarray:
    """An image file -> (H, W, 3) RGB or (H, W, 4) straight-alpha RGBA, float32 in [0, 1]."""
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            pixels = np.asarray(image.convert("RGBA" if has_alpha else "RGB"), dtype=np.float32)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read image {path}: {type(err).__name__}: {err}") from err
    return pixels / UINT8_MAX


def _read_mask(path: Path) -> np.ndarray:
    """A mask file -> (H, W) float32 in [0, 1] (its grey level; colour masks are turned grey)."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"), dtype=np.float32) / UINT8_MAX
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read mask {path}: {type(err).__name__}: {err}") from err


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read image {path}: {type(err).__name__}: {err}") from err


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"camera file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"corrupt camera file {path}: {err}") from err
    if not isinstance(data, dict):
        raise InputError(f"corrupt camera file {path}: expected a JSON object")
    return data
