"""COLMAP sparse models: read and write `cameras`, `images` and `points3D`, binary (.bin) or text (.txt).

The formats are COLMAP's own (its `src/colmap/scene/reconstruction_io.cc`; the layouts below were read from the
reader that instant-nsr-pl ships as `datasets/colmap_utils.py`). All binary numbers are little-endian.

- cameras.bin: uint64 count; per camera int32 id, int32 model id, uint64 width, uint64 height, float64 params
  (as many as the model has, `CAMERA_MODELS`).
- images.bin: uint64 count; per image int32 id, float64 qw qx qy qz, float64 tx ty tz, int32 camera id, the file
  name as bytes ending in NUL, uint64 number of 2-D points, then per point float64 x, float64 y, int64 3-D
  point id (-1: not triangulated).
- points3D.bin: uint64 count; per point uint64 id, float64 x y z, uint8 r g b, float64 reprojection error,
  uint64 track length, then per track element int32 image id, int32 index of the 2-D point in that image.
- The text twins hold one record a line (images: two lines, the second being its 2-D points, maybe empty);
  lines starting with `#` are comments.

Poses are world-to-camera: x_cam = R(q) x_world + t, camera axes OpenCV's (x right, y down, z forward), q a
unit Hamilton quaternion (w first). Pixel coordinates put the top-left image corner at (0, 0), so the centre
of the top-left pixel is (0.5, 0.5) and a centred principal point is (W / 2, H / 2).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from scipy.spatial.transform import Rotation

from lrmesh.errors import InputError

# COLMAP's camera models (src/colmap/sensor/models.h): id -> (name, number of parameters).
CAMERA_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3),  # f, cx, cy
    1: ("PINHOLE", 4),  # fx, fy, cx, cy
    2: ("SIMPLE_RADIAL", 4),  # f, cx, cy, k
    3: ("RADIAL", 5),  # f, cx, cy, k1, k2
    4: ("OPENCV", 8),  # fx, fy, cx, cy, k1, k2, p1, p2
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
}
MODEL_IDS = {name: model_id for model_id, (name, _) in CAMERA_MODELS.items()}
NO_POINT = -1  # 3-D point id of an untriangulated 2-D point
MODEL_FILES = ("cameras", "images", "points3D")


@dataclass
class Camera:
    id: int
    model: str  # a name of CAMERA_MODELS, e.g. "PINHOLE"
    width: int
    height: int
    params: np.ndarray  # (P,) float64, in the model's order


@dataclass
class Image:
    id: int
    qvec: np.ndarray  # (4,) world-to-camera rotation as a quaternion w, x, y, z
    tvec: np.ndarray  # (3,) world-to-camera translation
    camera_id: int
    name: str  # path relative to the image folder
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (K, 2) 2-D points, pixels
    point3d_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (K,) or NO_POINT

    def world_to_camera(self) -> np.ndarray:
        """(4, 4) OpenCV world-to-camera matrix."""
        w2c = np.eye(4)
        w2c[:3, :3] = quaternion_to_matrix(self.qvec)
        w2c[:3, 3] = self.tvec
        return w2c


@dataclass
class Point3D:
    id: int
    xyz: np.ndarray  # (3,) float64
    rgb: np.ndarray  # (3,) uint8
    error: float  # mean reprojection error, pixels
    image_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (T,) track: images ...
    point2d_idxs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (T,) ... and their 2-D points


@dataclass
class Model:
    """A sparse reconstruction, each record under its id."""

    cameras: dict[int, Camera]
    images: dict[int, Image]
    points: dict[int, Point3D]


# Rotations -----------------------------------------------------------------------------------------------


def quaternion_to_matrix(qvec: np.ndarray) -> np.ndarray:
    """(w, x, y, z) -> (3, 3); the quaternion is normalised first, as COLMAP does when it reads one."""
    w, x, y, z = np.asarray(qvec, np.float64)
    return Rotation.from_quat([x, y, z, w]).as_matrix()  # scipy puts w last


def matrix_to_quaternion(matrix: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> (w, x, y, z) with w >= 0, COLMAP's sign choice."""
    x, y, z, w = Rotation.from_matrix(matrix).as_quat()
    q = np.array([w, x, y, z])
    return -q if w < 0 else q


# Reading -------------------------------------------------------------------------------------------------


def find_model(folder: str | os.PathLike) -> tuple[Path, str] | None:
    """The model in `folder`: (folder, ".bin") when its three binary files are there, else (folder, ".txt")
    for the text ones, else None."""
    folder = Path(folder)
    for ext in (".bin", ".txt"):
        if all((folder / f"{name}{ext}").is_file() for name in MODEL_FILES):
            return folder, ext
    return None


def read_model(folder: str | os.PathLike, ext: str | None = None) -> Model:
    """Read `cameras`, `images` and `points3D` in `folder`, binary unless `ext` is ".txt" (None: whichever is
    there, binary first). Raises `InputError` naming the file for a missing or corrupt one."""
    folder = Path(folder)
    if ext is None:
        found = find_model(folder)
        if found is None:
            raise InputError(f"{folder}: no COLMAP model (cameras, images, points3D as .bin or .txt)")
        ext = found[1]
    readers = {".bin": (_read_cameras_bin, _read_images_bin, _read_points_bin),
               ".txt": (_read_cameras_txt, _read_images_txt, _read_points_txt)}[ext]
    parts = [_read_file(folder / f"{name}{ext}", reader) for name, reader in zip(MODEL_FILES, readers)]
    return Model(*parts)


def _read_file(path: Path, reader):
    if not path.is_file():
        raise InputError(f"COLMAP file not found: {path}")
    try:
        if path.suffix == ".bin":
            with path.open("rb") as stream:
                records = reader(stream)
                if stream.read(1):
                    raise ValueError("unexpected bytes after the last record")
                return records
        return reader(path.read_text(encoding="utf-8").splitlines())
    except InputError:
        raise
    except (ValueError, IndexError, KeyError, struct.error, UnicodeDecodeError) as err:
        raise InputError(f"corrupt COLMAP file {path}: {type(err).__name__}: {err}") from err


def _unpack(stream: BinaryIO, fmt: str) -> tuple:
    fmt = "<" + fmt
    data = stream.read(struct.calcsize(fmt))
    return struct.unpack(fmt, data)  # struct.error on a truncated file


def _model_name(model_id: int) -> tuple[str, int]:
    if model_id not in CAMERA_MODELS:
        raise ValueError(f"unknown camera model id {model_id}")
    return CAMERA_MODELS[model_id]


def _read_cameras_bin(stream: BinaryIO) -> dict[int, Camera]:
    cameras = {}
    for _ in range(_unpack(stream, "Q")[0]):
        camera_id, model_id, width, height = _unpack(stream, "iiQQ")
        name, count = _model_name(model_id)
        cameras[camera_id] = Camera(camera_id, name, width, height, np.array(_unpack(stream, "d" * count)))
    return cameras


def _read_images_bin(stream: BinaryIO) -> dict[int, Image]:
    images = {}
    for _ in range(_unpack(stream, "Q")[0]):
        image_id, qw, qx, qy, qz, tx, ty, tz, camera_id = _unpack(stream, "idddddddi")
        name = bytearray()
        while (byte := stream.read(1)) != b"\x00":
            if not byte:
                raise ValueError("file ends inside an image name")
            name += byte
        count = _unpack(stream, "Q")[0]
        points = np.frombuffer(stream.read(24 * count), dtype=np.dtype([("xy", "<f8", 2), ("id", "<i8")]))
        if len(points) != count:
            raise ValueError("file ends inside an image's 2-D points")
        images[image_id] = Image(image_id, np.array([qw, qx, qy, qz]), np.array([tx, ty, tz]), camera_id,
                                 name.decode("utf-8"), points["xy"].astype(np.float64),
                                 points["id"].astype(np.int64))
    return images


def _read_points_bin(stream: BinaryIO) -> dict[int, Point3D]:
    points = {}
    for _ in range(_unpack(stream, "Q")[0]):
        point_id, x, y, z, r, g, b, error = _unpack(stream, "QdddBBBd")
        length = _unpack(stream, "Q")[0]
        track = np.frombuffer(stream.read(8 * length), dtype="<i4")
        if len(track) != 2 * length:
            raise ValueError("file ends inside a point's track")
        points[point_id] = Point3D(point_id, np.array([x, y, z]), np.array([r, g, b], np.uint8), error,
                                   track[0::2].astype(np.int64), track[1::2].astype(np.int64))
    return points


def _records(lines: list[str]) -> list[list[str]]:
    """Non-comment lines split into fields (blank lines kept: an image's 2-D point line may be empty)."""
    return [line.split() for line in lines if not line.lstrip().startswith("#")]


def _read_cameras_txt(lines: list[str]) -> dict[int, Camera]:
    cameras = {}
    for fields in filter(None, _records(lines)):
        camera_id, model = int(fields[0]), fields[1]
        if model not in MODEL_IDS:
            raise ValueError(f"unknown camera model {model}")
        params = np.array([float(v) for v in fields[4:]])
        if len(params) != CAMERA_MODELS[MODEL_IDS[model]][1]:
            raise ValueError(f"camera {camera_id}: {model} takes {CAMERA_MODELS[MODEL_IDS[model]][1]} parameters")
        cameras[camera_id] = Camera(camera_id, model, int(fields[2]), int(fields[3]), params)
    return cameras


def _read_images_txt(lines: list[str]) -> dict[int, Image]:
    records = _records(lines)
    while records and not records[-1]:
        records.pop()  # trailing blank lines; a last image's empty 2-D point line may be among them
    images = {}
    for k in range(0, len(records), 2):
        header = records[k]
        if len(header) < 10:
            raise ValueError(f"image line {' '.join(header)!r} has fewer than 10 fields")
        points = records[k + 1] if k + 1 < len(records) else []
        if len(points) % 3:
            raise ValueError(f"image {header[0]}: 2-D points come in (x, y, point id) triples")
        image_id = int(header[0])
        images[image_id] = Image(
            image_id, np.array([float(v) for v in header[1:5]]), np.array([float(v) for v in header[5:8]]),
            int(header[8]), " ".join(header[9:]),  # a name may hold spaces
            np.array([[float(points[i]), float(points[i + 1])] for i in range(0, len(points), 3)]).reshape(-1, 2),
            np.array([int(points[i]) for i in range(2, len(points), 3)], np.int64))
    return images


def _read_points_txt(lines: list[str]) -> dict[int, Point3D]:
    points = {}
    for fields in filter(None, _records(lines)):
        track = [int(v) for v in fields[8:]]
        if len(track) % 2:
            raise ValueError(f"point {fields[0]}: its track comes in (image id, point index) pairs")
        point_id = int(fields[0])
        points[point_id] = Point3D(point_id, np.array([float(v) for v in fields[1:4]]),
                                   np.array([int(v) for v in fields[4:7]], np.uint8), float(fields[7]),
                                   np.array(track[0::2], np.int64), np.array(track[1::2], np.int64))
    return points


# Writing -------------------------------------------------------------------------------------------------


def write_model(model: Model, folder: str | os.PathLike, ext: str = ".bin") -> None:
    """Write `model` as `cameras`, `images`, `points3D` + `ext` (".bin" or ".txt") in `folder` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if ext == ".bin":
        contents = (_cameras_bin(model), _images_bin(model), _points_bin(model))
    elif ext == ".txt":
        contents = (_cameras_txt(model), _images_txt(model), _points_txt(model))
    else:
        raise ValueError(f"ext must be .bin or .txt, got {ext!r}")
    for name, data in zip(MODEL_FILES, contents):
        (folder / f"{name}{ext}").write_bytes(data)


def _cameras_bin(model: Model) -> bytes:
    out = [struct.pack("<Q", len(model.cameras))]
    for c in model.cameras.values():
        out.append(struct.pack("<iiQQ", c.id, MODEL_IDS[c.model], c.width, c.height))
        out.append(struct.pack(f"<{len(c.params)}d", *c.params))
    return b"".join(out)


def _images_bin(model: Model) -> bytes:
    out = [struct.pack("<Q", len(model.images))]
    for im in model.images.values():
        out.append(struct.pack("<idddddddi", im.id, *im.qvec, *im.tvec, im.camera_id))
        out.append(im.name.encode("utf-8") + b"\x00")
        points = np.zeros(len(im.xys), dtype=np.dtype([("xy", "<f8", 2), ("id", "<i8")]))
        points["xy"], points["id"] = im.xys, im.point3d_ids
        out.append(struct.pack("<Q", len(points)) + points.tobytes())
    return b"".join(out)


def _points_bin(model: Model) -> bytes:
    out = [struct.pack("<Q", len(model.points))]
    for p in model.points.values():
        out.append(struct.pack("<QdddBBBd", p.id, *p.xyz, *(int(v) for v in p.rgb), p.error))
        track = np.stack([p.image_ids, p.point2d_idxs], axis=-1).astype("<i4")
        out.append(struct.pack("<Q", len(track)) + track.tobytes())
    return b"".join(out)


def _number(value: float) -> str:
    return repr(float(value))  # shortest text that reads back to the same float64


def _cameras_txt(model: Model) -> bytes:
    lines = ["# Camera list with one line of data per camera:",
             "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
             f"# Number of cameras: {len(model.cameras)}"]
    lines += [" ".join([str(c.id), c.model, str(c.width), str(c.height), *map(_number, c.params)])
              for c in model.cameras.values()]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _images_txt(model: Model) -> bytes:
    lines = ["# Image list with two lines of data per image:",
             "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)",
             f"# Number of images: {len(model.images)}"]
    for im in model.images.values():
        lines.append(" ".join([str(im.id), *map(_number, im.qvec), *map(_number, im.tvec), str(im.camera_id),
                               im.name]))
        lines.append(" ".join(f"{_number(x)} {_number(y)} {int(i)}" for (x, y), i in zip(im.xys, im.point3d_ids)))
    return ("\n".join(lines) + "\n").encode("utf-8")


def _points_txt(model: Model) -> bytes:
    lines = ["# 3D point list with one line of data per point:",
             "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
             f"# Number of points: {len(model.points)}"]
    for p in model.points.values():
        track = (f"{int(i)} {int(k)}" for i, k in zip(p.image_ids, p.point2d_idxs))
        lines.append(" ".join([str(p.id), *map(_number, p.xyz), *(str(int(v)) for v in p.rgb), _number(p.error),
                               *track]))
    return ("\n".join(lines) + "\n").encode("utf-8")
