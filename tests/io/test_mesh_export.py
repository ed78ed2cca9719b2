"""Mesh export: the reference's OBJ byte for byte, textured OBJ, GLB structure and orientation, PLY, loading."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pygltflib
import pytest
import torch
import trimesh
from PIL import Image

from lrmesh.errors import LrmeshError
from lrmesh.geometry.mesh import Mesh
from lrmesh.io import mesh as mesh_io
from lrmesh.io.mesh import GLB_FRAME, load_mesh, save_mesh


@pytest.fixture(scope="module")
def reference_mesh(expected) -> Mesh:
    """The fixture's extracted mesh. Colours (k + 0.5) / 255 truncate back to the reference's uint8 k."""
    colors = (torch.from_numpy(expected["mesh_vertex_colors"]).float() + 0.5) / 255
    return Mesh(torch.from_numpy(expected["mesh_vertices"]), torch.from_numpy(expected["mesh_faces"]),
                vertex_colors=colors)


def textured_quad_mesh() -> Mesh:
    """Two triangles with a seam (vertex 0 has two UVs) and a 4x4 texture whose top row is red."""
    vertices = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uvs = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.1, 0.05]])
    uv_faces = torch.tensor([[0, 1, 2], [4, 2, 3]])
    texture = torch.full((4, 4, 3), 0.5)
    texture[0] = torch.tensor([1.0, 0.0, 0.0])
    return Mesh(vertices, faces, uvs=uvs, uv_faces=uv_faces, texture=texture)


def test_obj_is_byte_identical_to_the_reference(tmp_path, fixture_dir, reference_mesh):
    written = save_mesh(reference_mesh, tmp_path / "mesh.obj")
    assert written == [tmp_path / "mesh.obj"]
    assert written[0].read_bytes() == (fixture_dir / "mesh_reference.obj").read_bytes()


def test_obj_round_trip_and_rewrite(tmp_path, reference_mesh):
    first = save_mesh(reference_mesh, tmp_path / "a.obj")[0]
    loaded = load_mesh(first)
    torch.testing.assert_close(loaded.vertices, reference_mesh.vertices, atol=1e-8, rtol=0)  # 8 decimals
    assert torch.equal(loaded.faces, reference_mesh.faces)
    assert torch.equal(loaded.colors_uint8(), reference_mesh.colors_uint8())
    second = save_mesh(loaded, tmp_path / "b.obj")[0]
    assert second.read_bytes() == first.read_bytes()


def test_obj_and_ply_mirror_z_and_keep_outward_winding(tmp_path, reference_mesh):
    for name in ("m.obj", "m.ply"):
        written = trimesh.load(save_mesh(reference_mesh, tmp_path / name)[0], process=False, force="mesh")
        np.testing.assert_allclose(written.vertices, reference_mesh.vertices.numpy() * [1, 1, -1], atol=5e-9)
        np.testing.assert_array_equal(written.faces, reference_mesh.faces.numpy()[:, ::-1])
        assert written.is_watertight and written.volume > 0  # faces still point outward after the mirror


def test_ply_is_binary_with_uint8_colours_and_round_trips(tmp_path, reference_mesh):
    path = save_mesh(reference_mesh, tmp_path / "mesh.ply")[0]
    header = path.read_bytes().split(b"end_header")[0]
    assert b"format binary_little_endian 1.0" in header
    assert all(f"property uchar {c}".encode() in header for c in ("red", "green", "blue"))
    loaded = load_mesh(path)
    assert torch.equal(loaded.vertices, reference_mesh.vertices) and torch.equal(loaded.faces, reference_mesh.faces)
    assert torch.equal(loaded.colors_uint8(), reference_mesh.colors_uint8())


def read_gltf_positions(gltf: pygltflib.GLTF2, accessor_index: int) -> np.ndarray:
    accessor = gltf.accessors[accessor_index]
    view = gltf.bufferViews[accessor.bufferView]
    start = view.byteOffset + accessor.byteOffset
    return np.frombuffer(gltf.binary_blob(), np.float32, accessor.count * 3, start).reshape(-1, 3)


def test_glb_structure_and_round_trip(tmp_path, reference_mesh):
    path = save_mesh(reference_mesh, tmp_path / "mesh.glb")[0]
    gltf = pygltflib.GLTF2.load(path)
    primitive = gltf.meshes[0].primitives[0]
    positions = read_gltf_positions(gltf, primitive.attributes.POSITION)
    position_accessor = gltf.accessors[primitive.attributes.POSITION]
    np.testing.assert_array_equal(position_accessor.min, positions.min(0))
    np.testing.assert_array_equal(position_accessor.max, positions.max(0))
    index_accessor = gltf.accessors[primitive.indices]
    assert index_accessor.count == 3 * reference_mesh.num_faces
    assert all(view.byteOffset % 4 == 0 for view in gltf.bufferViews)
    assert gltf.materials[primitive.material].pbrMetallicRoughness.metallicFactor == 0.0

    loaded = load_mesh(path)
    assert torch.equal(loaded.vertices, reference_mesh.vertices) and torch.equal(loaded.faces, reference_mesh.faces)
    torch.testing.assert_close(loaded.vertex_colors, reference_mesh.vertex_colors, atol=1e-5, rtol=0)

    by_trimesh = trimesh.load(path, process=False, force="mesh")
    assert by_trimesh.vertices.shape == (reference_mesh.num_vertices, 3)
    assert by_trimesh.faces.shape == (reference_mesh.num_faces, 3)
    assert int(by_trimesh.faces.max()) < reference_mesh.num_vertices
    assert by_trimesh.is_watertight and by_trimesh.volume > 0  # a rotation keeps the faces outward


def test_glb_stands_upright_and_faces_the_viewer(tmp_path):
    # Model frame z up, azimuth-0 camera on +x  ->  glTF y up, default viewer on +z.
    vertices = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    path = save_mesh(Mesh(vertices, torch.tensor([[0, 1, 2]])), tmp_path / "axes.glb")[0]
    gltf = pygltflib.GLTF2.load(path)
    positions = read_gltf_positions(gltf, gltf.meshes[0].primitives[0].attributes.POSITION)
    np.testing.assert_array_equal(positions, [[0, 1, 0], [0, 0, 1], [1, 0, 0]])
    assert np.linalg.det(np.array(GLB_FRAME.matrix)) == pytest.approx(1.0)


def test_glb_vertex_colours_are_linear(tmp_path):
    vertices = torch.eye(3)
    colors = torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 0.2], [0.04, 0.3, 0.9]])
    path = save_mesh(Mesh(vertices, torch.tensor([[0, 1, 2]]), vertex_colors=colors), tmp_path / "c.glb")[0]
    gltf = pygltflib.GLTF2.load(path)
    stored = read_gltf_positions(gltf, gltf.meshes[0].primitives[0].attributes.COLOR_0)
    assert stored[0, 0] == pytest.approx(0.21404, abs=1e-5)  # sRGB 0.5 is linear 0.214
    torch.testing.assert_close(load_mesh(path).vertex_colors, colors, atol=1e-6, rtol=0)


def test_textured_glb_round_trip(tmp_path):
    mesh = textured_quad_mesh()
    path = save_mesh(mesh, tmp_path / "tex.glb")[0]
    gltf = pygltflib.GLTF2.load(path)
    assert gltf.accessors[gltf.meshes[0].primitives[0].attributes.POSITION].count == 5  # split at the seam
    loaded = load_mesh(path)
    assert torch.equal(loaded.vertices, mesh.vertices) and torch.equal(loaded.faces, mesh.faces)
    torch.testing.assert_close(loaded.uvs[loaded.uv_faces], mesh.uvs[mesh.uv_faces])
    assert torch.equal((loaded.texture * 255).round(), (mesh.texture * 255).floor())
    by_trimesh = trimesh.load(path, process=False, force="mesh")
    assert by_trimesh.faces.shape == (2, 3)
    # trimesh flips glTF's top-left UV origin back to OBJ's bottom-left one.
    np.testing.assert_allclose(by_trimesh.visual.uv[by_trimesh.faces].reshape(-1, 2),
                               mesh.uvs[mesh.uv_faces].reshape(-1, 2).numpy(), atol=1e-6)


def test_textured_obj_writes_obj_mtl_png(tmp_path):
    mesh = textured_quad_mesh()
    written = save_mesh(mesh, tmp_path / "model.obj")
    assert written == [tmp_path / "model.obj", tmp_path / "model.mtl", tmp_path / "model.png"]
    text = written[0].read_text()
    assert text.startswith("mtllib model.mtl\n") and "usemtl material_0\n" in text
    assert "f 3/3 2/2 1/1\n" in text  # corners reversed with the z mirror, 1-based v/vt pairs
    assert "map_Kd model.png" in written[1].read_text()
    png = np.asarray(Image.open(written[2]))
    assert png.shape == (4, 4, 3) and (png[0] == [255, 0, 0]).all() and (png[1] == 127).all()  # row 0 on top
    by_trimesh = trimesh.load(written[0], process=False, force="mesh")
    assert by_trimesh.faces.shape == (2, 3)
    loaded = load_mesh(written[0])
    torch.testing.assert_close(loaded.vertices, mesh.vertices)
    assert torch.equal(loaded.faces, mesh.faces) and torch.equal(loaded.uv_faces, mesh.uv_faces)
    torch.testing.assert_close(loaded.uvs, mesh.uvs)


def test_unwritable_requests_are_refused_clearly(tmp_path, reference_mesh):
    with pytest.raises(LrmeshError, match=r"\.obj, \.glb, \.ply"):
        save_mesh(reference_mesh, tmp_path / "mesh.stl")
    with pytest.raises(LrmeshError, match=r"\.obj, \.glb, \.ply"):
        load_mesh(tmp_path / "mesh.fbx")
    with pytest.raises(LrmeshError, match="PLY stores vertex colours only"):
        save_mesh(textured_quad_mesh(), tmp_path / "mesh.ply")
    with pytest.raises(LrmeshError, match="no faces"):
        save_mesh(Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.int64)), tmp_path / "empty.glb")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_partial_files(tmp_path, monkeypatch, reference_mesh):
    target = tmp_path / "model.obj"
    target.write_text("previous")

    def broken_png(texture: torch.Tensor) -> bytes:
        raise OSError("disk full")

    monkeypatch.setattr(mesh_io, "_texture_png", broken_png)
    with pytest.raises(OSError, match="disk full"):
        save_mesh(textured_quad_mesh(), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.obj"] and target.read_text() == "previous"

    real_replace = os.replace

    def failing_replace(source, destination):
        if str(destination).endswith(".glb"):
            raise OSError("rename failed")
        real_replace(source, destination)

    monkeypatch.setattr(mesh_io.os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_mesh(reference_mesh, tmp_path / "mesh.glb")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.obj"]


def gltf_validator_command() -> list[str] | None:
    """`node <script>` validating a .glb with the npm package gltf-validator, or None when unavailable.

    Node finds the package through NODE_PATH or the global npm root (npm install -g gltf-validator).
    """
    node = shutil.which("node")
    if node is None:
        return None
    env = _node_env()
    probe = subprocess.run([node, "-e", "require.resolve('gltf-validator')"], env=env, capture_output=True)
    return [node, "-e", VALIDATE_SCRIPT] if probe.returncode == 0 else None


def _node_env() -> dict[str, str]:
    env = dict(os.environ)
    npm = shutil.which("npm")
    if npm is not None:
        root = subprocess.run([npm, "root", "-g"], capture_output=True, text=True).stdout.strip()
        env["NODE_PATH"] = os.pathsep.join(p for p in (env.get("NODE_PATH", ""), root) if p)
    return env


VALIDATE_SCRIPT = """
const validator = require('gltf-validator');
const data = new Uint8Array(require('fs').readFileSync(process.argv[1]));
validator.validateBytes(data).then((report) => console.log(JSON.stringify(report.issues)))
  .catch((error) => { console.error(String(error)); process.exit(2); });
"""


def test_glb_passes_the_khronos_validator(tmp_path, reference_mesh):
    command = gltf_validator_command()
    if command is None:
        pytest.skip("node or the npm package gltf-validator is not installed")
    for mesh, name in ((reference_mesh, "colours.glb"), (textured_quad_mesh(), "texture.glb")):
        path = save_mesh(mesh, tmp_path / name)[0]
        result = subprocess.run(command + [str(path)], env=_node_env(), capture_output=True, text=True, check=True)
        issues = json.loads(result.stdout)
        assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, issues["messages"]


def test_load_mesh_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no mesh file"):
        load_mesh(tmp_path / "absent.obj")


def test_save_mesh_creates_the_folder_and_accepts_strings(tmp_path, reference_mesh):
    written = save_mesh(reference_mesh, str(tmp_path / "deep" / "er" / "mesh.ply"))
    assert written == [Path(tmp_path / "deep" / "er" / "mesh.ply")] and written[0].is_file()


@pytest.mark.parametrize("with_colors", [False, True])
def test_obj_writer_gives_trimesh_bytes(with_colors):
    """Our OBJ writer formats in one pass; the file must stay byte for byte what trimesh (the reference's
    writer) makes of the same mesh, negative zero and tiny values included."""
    from lrmesh.io.mesh import OBJ_FRAME, _obj_bytes, to_file_frame

    generator = torch.Generator().manual_seed(3)
    mesh = Mesh(vertices=torch.randn(500, 3, generator=generator) * 3,
                faces=torch.randint(0, 500, (900, 3), generator=generator))
    mesh.vertices[0] = torch.tensor([-0.0, 1e-9, -5e-9])
    if with_colors:
        mesh.vertex_colors = torch.rand(500, 3, generator=generator)
    vertices, faces = to_file_frame(OBJ_FRAME, mesh.vertices.numpy(), mesh.faces.numpy())
    colors = mesh.colors_uint8()
    expected = trimesh.Trimesh(vertices=vertices, faces=faces, process=False,
                               vertex_colors=None if colors is None else colors.numpy()).export(file_type="obj")
    assert _obj_bytes(mesh) == expected.encode("utf-8")
