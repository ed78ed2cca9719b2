"""Posed photos: transforms.json cameras normalised into the model's convention, and one-line errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from lrmesh.cameras import orbit_poses, turntable_poses
from lrmesh.cli import main
from lrmesh.data.multiview import random_similarity
from lrmesh.data.scenes import transform_poses
from lrmesh.errors import InputError
from lrmesh.geometry.mesh import Mesh, transform_similarity
from lrmesh.io.posed import load_posed_photos, normalise_cameras


def test_a_symmetric_orbit_at_the_model_distance_is_already_normalised():
    c2w = turntable_poses(8, 4.0, 20.0).double().numpy()
    np.testing.assert_allclose(normalise_cameras(c2w, 30.0), np.eye(4), atol=1e-6)  # float32 poses
    # a wider lens: the view spans at the centre what a 30 degree view spans at radius 4 when the camera is nearer
    near = 4.0 * math.tan(math.radians(15)) / math.tan(math.radians(25))
    np.testing.assert_allclose(normalise_cameras(turntable_poses(8, near, 20.0).double().numpy(), 50.0), np.eye(4),
                               atol=1e-6)
    # --scale 1.5: the cameras at 6 units, so the object comes out two thirds the size
    np.testing.assert_allclose(normalise_cameras(c2w, 30.0, radius=6.0)[:3, :3], np.eye(3) * 4 / 6, atol=1e-6)


def test_normalisation_follows_a_moved_and_scaled_world():
    rng = np.random.default_rng(3)
    c2w = orbit_poses(rng.uniform(0, 360, 7), rng.uniform(-30, 60, 7), 4.0).double().numpy()
    moved_world = random_similarity(np.random.default_rng(11))
    to_world = normalise_cameras(transform_poses(moved_world, c2w), 30.0)
    # the same normalisation, carried by the similarity: world = M model, so to_world = M @ normalise(model)
    np.testing.assert_allclose(to_world, moved_world @ normalise_cameras(c2w, 30.0), rtol=1e-9, atol=1e-9)


def test_the_mesh_goes_back_by_the_similarity_keeping_its_winding():
    mesh = Mesh(torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]), torch.tensor([[0, 1, 2]]),
                vertex_colors=torch.rand(3, 3))
    similarity = torch.from_numpy(random_similarity(np.random.default_rng(5)))
    moved = transform_similarity(mesh, similarity)
    expected = mesh.vertices.double() @ similarity[:3, :3].T + similarity[:3, 3]
    torch.testing.assert_close(moved.vertices.double(), expected, rtol=1e-6, atol=1e-5)
    assert torch.equal(moved.faces, mesh.faces) and torch.equal(moved.vertex_colors, mesh.vertex_colors)
    mirror = torch.diag(torch.tensor([-2.0, 2.0, 2.0, 1.0], dtype=torch.float64))
    assert torch.equal(transform_similarity(mesh, mirror).faces, torch.tensor([[2, 1, 0]]))


def write_capture(folder, c2w, size=(48, 32), angle_x=math.radians(40), extra=None):
    """Plain photos (white with a grey centre) and their transforms.json in `folder`."""
    frames = []
    for i, pose in enumerate(c2w):
        image = Image.new("RGB", size, "white")
        image.paste((90, 90, 90), (size[0] // 3, size[1] // 3, 2 * size[0] // 3, 2 * size[1] // 3))
        image.save(folder / f"photo_{i}.png")
        frames.append({"file_path": f"./photo_{i}", "transform_matrix": np.asarray(pose).tolist()})
    path = folder / "transforms.json"
    path.write_text(json.dumps({"camera_angle_x": angle_x, "frames": frames, **(extra or {})}))
    return path


def test_photos_are_cropped_to_their_centre_square_with_its_field_of_view(tmp_path):
    c2w = turntable_poses(5, 3.0, 10.0).double().numpy()
    transforms = write_capture(tmp_path, c2w, size=(48, 32))
    posed = load_posed_photos(tmp_path, transforms)
    assert posed.images.shape == (5, 3, 320, 320)
    focal = 48 / (2 * math.tan(math.radians(20)))  # pixels; the square is 32 wide
    np.testing.assert_allclose(posed.cameras[:, 12:].numpy(), [[focal / 32, focal / 32, 0.5, 0.5]] * 5, rtol=1e-6)
    assert float(posed.images[:, :, 160, 160].mean()) < 0.5  # the grey centre stays in the middle
    # the normalised cameras look at the origin from the distance the similarity says
    model_c2w = posed.cameras[:, :12].reshape(5, 3, 4).double()
    scale = float(torch.linalg.det(posed.to_world[:3, :3])) ** (1 / 3)
    np.testing.assert_allclose(model_c2w[:, :, 3].norm(dim=-1).numpy(), 3.0 / scale, rtol=1e-5)
    np.testing.assert_allclose((model_c2w[:, :, 3] / model_c2w[:, :, 3].norm(dim=-1, keepdim=True)).numpy(),
                               model_c2w[:, :, 2].numpy(), atol=1e-5)  # +z_cam points away from the origin


def looking_away(c2w):
    """Camera 2 turned by 90 degrees about z, looking past the object."""
    turned = c2w.copy()
    quarter = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    turned[2, :3, :3] = quarter @ turned[2, :3, :3]
    return turned


@pytest.mark.parametrize("case, message", [
    ("missing image", "frame './photo_2' has no image in"),
    ("other size", "says its photos are 64x64, but photo_0.png is 48x32"),
    ("mixed sizes", "one camera_angle_x needs photos of one size"),
    ("outward cameras", "the cameras do not look at a common object: their optical axes"),
    ("one looks away", "outside the 27 degree view of photo_2.png ("),
    ("not transforms", "not a NeRF-synthetic transforms file"),
    ("no json", "camera file not found"),
])
def test_cameras_that_do_not_fit_the_photos_are_one_line_errors(tmp_path, capsys, case, message):
    c2w = turntable_poses(8, 3.0, 10.0).double().numpy()
    extra = {"w": 64, "h": 64} if case == "other size" else None
    if case == "outward cameras":
        c2w[:, :3, :3] = -c2w[:, :3, :3]
    if case == "one looks away":
        c2w = looking_away(c2w)
    transforms = write_capture(tmp_path, c2w, extra=extra)
    if case == "missing image":
        (tmp_path / "photo_2.png").unlink()
    if case == "mixed sizes":
        Image.new("RGB", (40, 40), "white").save(tmp_path / "photo_1.png")
    if case == "not transforms":
        transforms.write_text(json.dumps({"frames": []}))
    if case == "no json":
        transforms.unlink()
    out = tmp_path / "out" / "mesh.obj"
    assert main(["reconstruct", str(tmp_path), "--cameras", str(transforms), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lrmesh: error: ") and message in err[0], err
    assert not out.exists()


def test_load_errors_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not a folder of photos"):
        load_posed_photos(tmp_path / "nowhere", tmp_path / "transforms.json")
