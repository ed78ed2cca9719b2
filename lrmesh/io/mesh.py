"""Mesh files: write a `Mesh` as OBJ (vertex colours, or OBJ + MTL + PNG with a texture), GLB or PLY, and read
back what we write.

Each format has one fixed change of frame from our model frame (z up, see `Mesh`), kept as a constant below:

- OBJ and PLY use the reference CLI's (InstantMesh run.py -> save_obj): z negated, (x, y, z) -> (x, y, -z),
  and every face's corners reversed, because the mirror alone would turn the faces inside out. Matching it
  means our files open exactly like the reference's; with vertex colours the OBJ is written by trimesh, as the
  reference does, so it is byte for byte the reference's file. (The reference's textured OBJ writer skips the
  mirror; we apply it to every OBJ so the two kinds open the same way.)
- GLB follows the glTF frame (y up, right-handed, the default viewer at +z looking down -z) with the proper
  rotation (x, y, z) -> (y, z, x): our up axis z becomes glTF's up axis y, so the object stands upright in
  Blender or three.js, and our +x, where the azimuth-0 camera sits (the input view's side, the first frame of
  the turntable video), becomes +z, so viewers open on the object's front. A rotation keeps the winding.
  The reference's save_glb applies (x, y, z) -> (-x, y, -z), a rotation about y that leaves the object lying
  on its back in a y-up viewer; we deliberately do not copy it.

GLB details: vertex colours go to COLOR_0, which glTF defines as linear, so our (sRGB-like) colours are
converted sRGB -> linear on write and back on read; a texture becomes the PNG baseColorTexture (glTF samples it
in sRGB), with TEXCOORD_0 t = 1 - v because glTF puts the UV origin at the image's top-left. glTF has one index
per vertex, so a textured mesh's vertices are split at UV seams (`load_mesh` merges them again).

Files appear whole or not at all: everything is encoded in memory, written under temporary names in the
target folder and renamed into place.
"""

from __future__ import annotations

import io
import os
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import trimesh
from PIL import Image
from torch import Tensor

from lrmesh.errors import LrmeshError
from lrmesh.geometry.mesh import Mesh

if TYPE_CHECKING:
    import pygltflib


@dataclass(frozen=True)
class FileFrame:
    """A change of frame from the model frame to a file's: file_point = matrix @ model_point."""

    matrix: tuple[tuple[float, float, float], ...]

    @property
    def flips_winding(self) -> bool:
        """A mirror (det < 0) turns faces inside out, so their corners are reversed to keep them outward."""
        return bool(np.linalg.det(np.array(self.matrix)) < 0)


# The reference CLI's OBJ frame (mesh_util.save_obj): z mirrored, corners reversed.
OBJ_FRAME = FileFrame(((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, -1.0)))
# PLY opens like the OBJ.
PLY_FRAME = OBJ_FRAME
# glTF, y up and front towards +z: x_gltf = y, y_gltf = z, z_gltf = x (a proper rotation).
GLB_FRAME = FileFrame(((0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 0.0, 0.0)))

MESH_FORMATS = (".obj", ".glb", ".ply")
MATERIAL_NAME = "material_0"
# The reference's MTL material (mesh_util.save_obj_with_mtl): white diffuse modulated by the texture.
MTL_TEMPLATE = "newmtl {name}\nKd 1 1 1\nKa 0 0 0\nKs 0.4 0.4 0.4\nNs 10\nillum 2\nmap_Kd {texture}\n"
FLOAT_FORMAT = "%.8f"  # the decimals trimesh writes on OBJ `v` lines
LINE_CHUNK = 2**14  # OBJ lines per formatting operation
OBJ_HEADER = "# https://github.com/mikedh/trimesh"  # the first line of trimesh's (so the reference's) OBJ files
UINT8_LEVELS = 255


def save_mesh(mesh: Mesh, path: str | os.PathLike, keep_coordinates: bool = False) -> list[Path]:
    """Write `mesh` in the format named by the suffix of `path` (.obj, .glb or .ply).

    A textured mesh saved as .obj also writes `<stem>.mtl` and `<stem>.png` beside it.
    `keep_coordinates`: OBJ and PLY get the vertex coordinates as they are, without the reference's z mirror
    (for meshes already in a dataset's own frame, as `lrmesh fit` writes); GLB still turns z up into glTF's y up.
    Returns the files written, the mesh file first.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_FORMATS:
        raise LrmeshError(f"cannot save a mesh as {path.name!r}: the suffix must be one of {', '.join(MESH_FORMATS)}")
    if mesh.num_faces == 0:
        raise LrmeshError(f"cannot save {path.name!r}: the mesh has no faces")
    mesh = mesh.detach().to("cpu")
    if keep_coordinates and suffix in (".obj", ".ply"):  # undo in advance the change of frame the writer applies
        mesh = _before_file_frame(OBJ_FRAME if suffix == ".obj" else PLY_FRAME, mesh)
    if suffix == ".obj":
        files = _obj_textured_files(mesh, path) if mesh.texture is not None else {path: _obj_bytes(mesh)}
    elif suffix == ".glb":
        files = {path: _glb_bytes(mesh)}
    else:
        files = {path: _ply_bytes(mesh)}
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_all_or_nothing(files)
    return list(files)


def load_mesh(path: str | os.PathLike) -> Mesh:
    """Read an .obj (with its MTL texture if any), .glb or .ply as written by `save_mesh`, back in the model frame.

    OBJ and PLY vertex colours are 8-bit in the file and come back as the exact float32 values k / 255.
    A textured GLB's vertices, split at UV seams on write, are merged by position (first occurrence order).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_FORMATS:
        raise LrmeshError(f"cannot load {path.name!r}: the suffix must be one of {', '.join(MESH_FORMATS)}")
    if not path.is_file():
        raise FileNotFoundError(f"no mesh file at {path}")
    if suffix == ".obj":
        return _load_obj(path)
    if suffix == ".glb":
        return _load_glb(path)
    return _load_ply(path)


def to_file_frame(frame: FileFrame, vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Model-frame (V, 3) vertices and (F, 3) faces -> the file's frame (float32 vertices, int64 faces)."""
    matrix = np.array(frame.matrix, dtype=np.float32)
    faces = faces[:, ::-1] if frame.flips_winding else faces
    return (vertices.astype(np.float32) @ matrix.T), np.ascontiguousarray(faces, dtype=np.int64)


def from_file_frame(frame: FileFrame, vertices: np.ndarray, faces: np.ndarray) -> tuple[Tensor, Tensor]:
    """Inverse of `to_file_frame` (the matrices are orthogonal, so the inverse is the transpose) -> tensors."""
    matrix = np.array(frame.matrix, dtype=np.float32)
    faces = faces[:, ::-1] if frame.flips_winding else faces
    model = vertices.astype(np.float32) @ matrix
    return torch.from_numpy(np.ascontiguousarray(model)), torch.from_numpy(np.ascontiguousarray(faces, dtype=np.int64))


def _before_file_frame(frame: FileFrame, mesh: Mesh) -> Mesh:
    """The mesh whose image under `frame` is `mesh` (uv faces follow the winding of the faces)."""
    vertices, faces = from_file_frame(frame, mesh.vertices.numpy(), mesh.faces.numpy())
    uv_faces = mesh.uv_faces
    if uv_faces is not None and frame.flips_winding:
        uv_faces = uv_faces.flip(-1)
    return replace(mesh, vertices=vertices, faces=faces, uv_faces=uv_faces)


def _write_all_or_nothing(files: dict[Path, bytes]) -> None:
    """Write each file under a temporary name in its folder, then rename them all into place."""
    written: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            written.append((temporary, path))
            with open(temporary, "xb") as handle:
                handle.write(data)
        for temporary, path in written:
            os.replace(temporary, path)
    finally:
        for temporary, _ in written:
            temporary.unlink(missing_ok=True)


def _levels_to_unit(levels: np.ndarray) -> Tensor:
    """8-bit colour levels -> float32 k / 255, which `Mesh.colors_uint8` maps back to k exactly."""
    return torch.from_numpy(levels.astype(np.float32)) / UINT8_LEVELS


def _texture_png(texture: Tensor) -> bytes:
    """(H, W, 3) in [0, 1], row 0 on top -> PNG bytes; 8-bit by truncation, as the reference's texture maps."""
    pixels = (texture.clamp(0, 1) * UINT8_LEVELS).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _png_texture(data: bytes) -> Tensor:
    """PNG bytes -> (H, W, 3) float32 in [0, 1], row 0 on top."""
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return _levels_to_unit(pixels)


# OBJ ------------------------------------------------------------------------------------------------------


def _obj_bytes(mesh: Mesh) -> bytes:
    """Positions and optional 8-bit vertex colours, byte for byte the file trimesh writes for the reference
    (its header line, `v x y z [r g b]` with 8 decimals, colours as c / 255, `f i j k` 1-based, a blank last
    line), formatted in one %-operation over Python numbers: trimesh's str.format over numpy scalars took
    about 3x longer on a million vertices. A colour channel has 256 values, so its text is looked up in a table
    of their formatted strings instead (0.6 s less on the 1.1 M-vertex stress mesh)."""
    vertices, faces = to_file_frame(OBJ_FRAME, mesh.vertices.numpy(), mesh.faces.numpy())
    colors = mesh.colors_uint8()
    if not len(vertices) or not len(faces):  # trimesh's own layout of degenerate files
        tri = trimesh.Trimesh(vertices=vertices, faces=faces, process=False,
                              vertex_colors=None if colors is None else colors.numpy())
        return tri.export(file_type="obj").encode("utf-8")
    if colors is None:
        rows, line = vertices.astype(np.float64), f"v {FLOAT_FORMAT} {FLOAT_FORMAT} {FLOAT_FORMAT}\n"
    else:  # (V, 6) Python objects: float positions, then each channel's text, c / 255 formatted as trimesh does
        channel_text = np.array([FLOAT_FORMAT % (level / 255.0) for level in range(256)], dtype=object)
        rows = np.empty((len(vertices), 6), dtype=object)
        rows[:, :3] = vertices.astype(np.float64)
        rows[:, 3:] = channel_text[colors.numpy()[:, :3]]
        line = f"v {FLOAT_FORMAT} {FLOAT_FORMAT} {FLOAT_FORMAT} %s %s %s\n"
    return b"".join([f"{OBJ_HEADER}\n".encode(), *_formatted_lines(line, rows),
                     *_formatted_lines("f %d %d %d\n", faces.astype(np.int64) + 1), b"\n"])


def _formatted_lines(line: str, rows: np.ndarray) -> list[bytes]:
    """`line` %-formatted with each row of rows (N, k), as ASCII, LINE_CHUNK rows per %-operation: the template,
    argument tuple and text of each stay a few MiB, where one operation over millions of rows made temporaries
    of hundreds of MiB (and their page faults)."""
    return [(line * len(part) % tuple(part.ravel().tolist())).encode("ascii")
            for part in (rows[start:start + LINE_CHUNK] for start in range(0, len(rows), LINE_CHUNK))]


def _obj_textured_files(mesh: Mesh, path: Path) -> dict[Path, bytes]:
    """OBJ (v, vt, f v/vt) + MTL + PNG, the PNG and MTL named after the OBJ."""
    vertices, faces = to_file_frame(OBJ_FRAME, mesh.vertices.numpy(), mesh.faces.numpy())
    uv_faces = mesh.uv_faces.numpy()[:, ::-1] if OBJ_FRAME.flips_winding else mesh.uv_faces.numpy()
    mtl_path, png_path = path.with_suffix(".mtl"), path.with_suffix(".png")
    corners = np.stack([faces + 1, uv_faces + 1], axis=-1).reshape(-1, 6)  # 1-based v/vt pairs
    obj = b"".join([
        f"mtllib {mtl_path.name}\n".encode(),
        *_formatted_lines(f"v {FLOAT_FORMAT} {FLOAT_FORMAT} {FLOAT_FORMAT}\n", vertices.astype(np.float64)),
        *_formatted_lines(f"vt {FLOAT_FORMAT} {FLOAT_FORMAT}\n", mesh.uvs.numpy().astype(np.float64)),  # v up
        f"usemtl {MATERIAL_NAME}\n".encode(),
        *_formatted_lines("f %d/%d %d/%d %d/%d\n", corners.astype(np.int64))])
    mtl = MTL_TEMPLATE.format(name=MATERIAL_NAME, texture=png_path.name)
    return {path: obj, mtl_path: mtl.encode("utf-8"), png_path: _texture_png(mesh.texture)}


def _load_obj(path: Path) -> Mesh:
    """Parse v (optionally with colour), vt, f (v, v/vt, v/vt/vn, v//vn; polygons fanned) and map_Kd."""
    positions, colors, uvs, faces, uv_faces = [], [], [], [], []
    mtl_name = None
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            positions.append([float(x) for x in parts[1:4]])
            colors.append([float(x) for x in parts[4:7]])
        elif parts[0] == "vt":
            uvs.append([float(x) for x in parts[1:3]])
        elif parts[0] == "f":
            corners = [corner.split("/") for corner in parts[1:]]
            for i in range(1, len(corners) - 1):  # fan triangulation
                triangle = [corners[0], corners[i], corners[i + 1]]
                faces.append([int(c[0]) - 1 for c in triangle])
                uv_faces.append([int(c[1]) - 1 if len(c) > 1 and c[1] else -1 for c in triangle])
        elif parts[0] == "mtllib":
            mtl_name = line.split(maxsplit=1)[1].strip()
    vertices, face_tensor = from_file_frame(OBJ_FRAME, np.array(positions, np.float32).reshape(-1, 3),
                                            np.array(faces, np.int64).reshape(-1, 3))
    vertex_colors = None
    if colors and all(len(c) == 3 for c in colors):
        vertex_colors = _levels_to_unit(np.round(np.array(colors, np.float64) * UINT8_LEVELS))
    texture_path = _obj_texture_path(path, mtl_name)
    if texture_path is None:
        return Mesh(vertices, face_tensor, vertex_colors=vertex_colors)
    uv_index = np.array(uv_faces, np.int64).reshape(-1, 3)
    if (uv_index < 0).any() or not uvs:
        raise ValueError(f"{path} has a texture but some faces lack texture coordinates")
    uv_index = uv_index[:, ::-1] if OBJ_FRAME.flips_winding else uv_index
    return Mesh(vertices, face_tensor, uvs=torch.tensor(uvs, dtype=torch.float32),
                uv_faces=torch.from_numpy(np.ascontiguousarray(uv_index)),
                texture=_png_texture(texture_path.read_bytes()))


def _obj_texture_path(path: Path, mtl_name: str | None) -> Path | None:
    """The map_Kd image of the OBJ's material library, if it names one."""
    if mtl_name is None or not (path.parent / mtl_name).is_file():
        return None
    for line in (path.parent / mtl_name).read_text().splitlines():
        parts = line.split(maxsplit=1)
        if len(parts) == 2 and parts[0] == "map_Kd":
            return path.parent / parts[1].strip()
    return None


# PLY ------------------------------------------------------------------------------------------------------


def _ply_bytes(mesh: Mesh) -> bytes:
    """Binary little-endian PLY via trimesh: float32 positions, uint8 RGBA vertex colours (alpha 255)."""
    if mesh.texture is not None:
        raise LrmeshError("PLY stores vertex colours only; save a textured mesh as .obj or .glb")
    vertices, faces = to_file_frame(PLY_FRAME, mesh.vertices.numpy(), mesh.faces.numpy())
    colors = mesh.colors_uint8()
    tri = trimesh.Trimesh(vertices=vertices, faces=faces, process=False,
                          vertex_colors=None if colors is None else colors.numpy())
    return tri.export(file_type="ply", encoding="binary")


def _load_ply(path: Path) -> Mesh:
    tri = trimesh.load(path, process=False, force="mesh")
    vertices, faces = from_file_frame(PLY_FRAME, np.asarray(tri.vertices), np.asarray(tri.faces))
    vertex_colors = None
    if tri.visual.kind == "vertex":
        vertex_colors = _levels_to_unit(np.asarray(tri.visual.vertex_colors)[:, :3])
    return Mesh(vertices, faces, vertex_colors=vertex_colors)


# GLB ------------------------------------------------------------------------------------------------------

GLTF_FLOAT, GLTF_UNSIGNED_INT = 5126, 5125  # accessor component types
GLTF_COMPONENT_DTYPES = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32,
                         5126: np.float32}
GLTF_TYPE_SIZES = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}
GLTF_ARRAY_BUFFER, GLTF_ELEMENT_ARRAY_BUFFER = 34962, 34963  # buffer-view targets
GLTF_LINEAR, GLTF_LINEAR_MIPMAP_LINEAR, GLTF_CLAMP_TO_EDGE = 9729, 9987, 33071  # sampler settings
GLTF_ALIGNMENT = 4  # glTF wants every buffer view to start on a 4-byte boundary
GENERATOR = "lrmesh"


def _pygltflib():
    """pygltflib, imported on first use so that OBJ / PLY work without it."""
    try:
        import pygltflib
    except ImportError as error:
        raise ImportError("writing or reading .glb needs pygltflib: pip install pygltflib") from error
    return pygltflib


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """The sRGB transfer function's inverse (IEC 61966-2-1), for glTF's linear COLOR_0."""
    c = np.clip(c.astype(np.float64), 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(c.astype(np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)


def _add_view(gltf: pygltflib.GLTF2, blob: bytearray, data: bytes, target: int | None) -> int:
    """Append `data` to the binary chunk as a new (aligned) buffer view; returns its index."""
    pygltflib = _pygltflib()
    blob.extend(b"\0" * (-len(blob) % GLTF_ALIGNMENT))
    gltf.bufferViews.append(pygltflib.BufferView(buffer=0, byteOffset=len(blob), byteLength=len(data), target=target))
    blob.extend(data)
    return len(gltf.bufferViews) - 1


def _add_accessor(gltf: pygltflib.GLTF2, blob: bytearray, array: np.ndarray, kind: str, target: int) -> int:
    """Append a float32 (or uint32 index) array as an accessor, with the min / max glTF requires for POSITION."""
    pygltflib = _pygltflib()
    component = GLTF_UNSIGNED_INT if array.dtype == np.uint32 else GLTF_FLOAT
    view = _add_view(gltf, blob, np.ascontiguousarray(array).tobytes(), target)
    bounds = {}
    if kind != "SCALAR":
        bounds = {"min": array.min(axis=0).tolist(), "max": array.max(axis=0).tolist()}
    gltf.accessors.append(pygltflib.Accessor(bufferView=view, componentType=component, count=len(array),
                                             type=kind, **bounds))
    return len(gltf.accessors) - 1


def _glb_bytes(mesh: Mesh) -> bytes:
    """One node, one triangle primitive, a matte material (metallic 0, roughness 1)."""
    pygltflib = _pygltflib()
    vertices, faces = mesh.vertices.numpy(), mesh.faces.numpy()
    if mesh.texture is not None:  # one index per vertex in glTF: split vertices at UV seams
        corners = np.stack([faces.reshape(-1), mesh.uv_faces.numpy().reshape(-1)], axis=1)  # (3F, 2)
        pairs, inverse = np.unique(corners, axis=0, return_inverse=True)
        vertices, faces = vertices[pairs[:, 0]], inverse.reshape(-1, 3)
        uv = mesh.uvs.numpy()[pairs[:, 1]]
    positions, faces = to_file_frame(GLB_FRAME, vertices, faces)
    gltf, blob = pygltflib.GLTF2(asset=pygltflib.Asset(generator=GENERATOR)), bytearray()
    attributes = pygltflib.Attributes(POSITION=_add_accessor(gltf, blob, positions, "VEC3", GLTF_ARRAY_BUFFER))
    pbr = pygltflib.PbrMetallicRoughness(baseColorFactor=[1.0, 1.0, 1.0, 1.0], metallicFactor=0.0,
                                         roughnessFactor=1.0)
    if mesh.vertex_colors is not None:
        linear = _srgb_to_linear(mesh.vertex_colors.numpy()).astype(np.float32)
        attributes.COLOR_0 = _add_accessor(gltf, blob, linear, "VEC3", GLTF_ARRAY_BUFFER)
    if mesh.texture is not None:
        texcoord = np.stack([uv[:, 0], 1 - uv[:, 1]], axis=1).astype(np.float32)  # glTF: origin top-left
        attributes.TEXCOORD_0 = _add_accessor(gltf, blob, texcoord, "VEC2", GLTF_ARRAY_BUFFER)
        png_view = _add_view(gltf, blob, _texture_png(mesh.texture), None)
        gltf.images.append(pygltflib.Image(bufferView=png_view, mimeType="image/png"))
        gltf.samplers.append(pygltflib.Sampler(magFilter=GLTF_LINEAR, minFilter=GLTF_LINEAR_MIPMAP_LINEAR,
                                               wrapS=GLTF_CLAMP_TO_EDGE, wrapT=GLTF_CLAMP_TO_EDGE))
        gltf.textures.append(pygltflib.Texture(sampler=0, source=0))
        pbr.baseColorTexture = pygltflib.TextureInfo(index=0)
    indices = _add_accessor(gltf, blob, faces.reshape(-1).astype(np.uint32), "SCALAR", GLTF_ELEMENT_ARRAY_BUFFER)
    gltf.materials.append(pygltflib.Material(pbrMetallicRoughness=pbr, name=MATERIAL_NAME))
    gltf.meshes.append(pygltflib.Mesh(primitives=[pygltflib.Primitive(attributes=attributes, indices=indices,
                                                                      material=0)]))
    gltf.nodes.append(pygltflib.Node(mesh=0))
    gltf.scenes.append(pygltflib.Scene(nodes=[0]))
    gltf.scene = 0
    gltf.buffers.append(pygltflib.Buffer(byteLength=len(blob)))
    gltf.set_binary_blob(bytes(blob))
    return b"".join(gltf.save_to_bytes())


def _read_accessor(gltf: pygltflib.GLTF2, blob: bytes, index: int) -> np.ndarray:
    """An accessor's data -> (count, components); normalised integers become floats in [0, 1]."""
    accessor = gltf.accessors[index]
    view = gltf.bufferViews[accessor.bufferView]
    dtype = np.dtype(GLTF_COMPONENT_DTYPES[accessor.componentType])
    width = GLTF_TYPE_SIZES[accessor.type]
    start = (view.byteOffset or 0) + (accessor.byteOffset or 0)
    stride = view.byteStride or dtype.itemsize * width
    raw = np.frombuffer(blob, dtype=np.uint8)[start:]
    rows = np.lib.stride_tricks.as_strided(raw, shape=(accessor.count, dtype.itemsize * width), strides=(stride, 1))
    values = np.ascontiguousarray(rows).view(dtype).reshape(accessor.count, width)
    if accessor.normalized and dtype.kind in "iu":
        return values.astype(np.float32) / np.iinfo(dtype).max
    return values


def _load_glb(path: Path) -> Mesh:
    pygltflib = _pygltflib()
    gltf = pygltflib.GLTF2.load_from_bytes(path.read_bytes())
    blob = gltf.binary_blob()
    primitives = [p for m in gltf.meshes for p in m.primitives]
    if len(primitives) != 1 or primitives[0].indices is None:
        raise ValueError(f"{path} holds {len(primitives)} primitives; load_mesh reads one indexed triangle primitive")
    primitive = primitives[0]
    positions = _read_accessor(gltf, blob, primitive.attributes.POSITION)
    faces = _read_accessor(gltf, blob, primitive.indices).astype(np.int64).reshape(-1, 3)
    vertices, face_tensor = from_file_frame(GLB_FRAME, positions, faces)
    vertex_colors = None
    if primitive.attributes.COLOR_0 is not None:
        linear = _read_accessor(gltf, blob, primitive.attributes.COLOR_0)[:, :3]
        vertex_colors = torch.from_numpy(_linear_to_srgb(linear).astype(np.float32))
    if primitive.attributes.TEXCOORD_0 is None:
        return Mesh(vertices, face_tensor, vertex_colors=vertex_colors)
    texcoord = _read_accessor(gltf, blob, primitive.attributes.TEXCOORD_0)
    uvs = torch.from_numpy(np.stack([texcoord[:, 0], 1 - texcoord[:, 1]], axis=1).astype(np.float32))
    material = gltf.materials[primitive.material]
    image = gltf.images[gltf.textures[material.pbrMetallicRoughness.baseColorTexture.index].source]
    view = gltf.bufferViews[image.bufferView]
    texture = _png_texture(blob[view.byteOffset:view.byteOffset + view.byteLength])
    # Merge the seam-split vertices again: one vertex per distinct position, in first-occurrence order.
    _, first, inverse = np.unique(vertices.numpy(), axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    merged_faces = torch.from_numpy(rank[inverse.reshape(-1)][face_tensor.numpy()])
    return Mesh(vertices[first[order]], merged_faces, uvs=uvs, uv_faces=face_tensor, texture=texture)
