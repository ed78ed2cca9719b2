"""Turntable rendering and mp4 writing."""

import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh

from lrmesh.geometry.mesh import Mesh
from lrmesh.geometry.texture import bake_texture
from lrmesh.io.video import render_turntable, write_video
from lrmesh.render.shaded import AMBIENT, HEADLIGHT

RESOLUTION = 64


def coloured_sphere() -> Mesh:
    sphere = trimesh.creation.icosphere(subdivisions=3)
    vertices = torch.tensor(sphere.vertices, dtype=torch.float32)
    return Mesh(vertices, torch.tensor(sphere.faces, dtype=torch.int64), vertex_colors=(vertices + 1) / 2)


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    return render_turntable(coloured_sphere(), num_frames=4, resolution=RESOLUTION)


def test_turntable_frames(frames):
    assert frames.shape == (4, RESOLUTION, RESOLUTION, 3)
    assert float(frames.min()) >= 0.0 and float(frames.max()) <= 1.0
    centre = frames[:, RESOLUTION // 2, RESOLUTION // 2]
    assert bool((centre < 0.99).any(dim=-1).all())  # the object, not the white background
    assert bool((frames[:, 0, 0] == 1.0).all()) and bool((frames[:, -1, -1] == 1.0).all())
    assert not torch.equal(frames[0], frames[1])  # the camera moves


def test_first_frame_looks_from_plus_x_with_z_up(frames):
    # Frame 0 sits at azimuth 0, elevation 20: the centre pixel shows the point p = (cos 20, 0, sin 20) facing
    # the camera, colour (p + 1) / 2 at full shading (AMBIENT + HEADLIGHT |n.v|, n.v ~ 1); +z (blue) is at the
    # top of the image, +y (green) on the right.
    first = frames[0]
    mid = RESOLUTION // 2
    facing = torch.tensor([np.cos(np.radians(20.0)), 0.0, np.sin(np.radians(20.0))], dtype=torch.float32)
    shade = AMBIENT + HEADLIGHT
    torch.testing.assert_close(first[mid - 1:mid + 1, mid - 1:mid + 1].mean((0, 1)), shade * (facing + 1) / 2,
                               atol=0.03, rtol=0)
    assert float(first[mid - 10, mid, 2]) > float(first[mid + 10, mid, 2]) + 0.2
    assert float(first[mid, mid + 10, 1]) > float(first[mid, mid - 10, 1]) + 0.2


def test_textured_mesh_renders_its_texture():
    sphere = trimesh.creation.icosphere(subdivisions=2)
    mesh = Mesh(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces, dtype=torch.int64))
    colour = torch.tensor([0.2, 0.6, 0.9])
    textured = bake_texture(mesh, lambda p: colour.expand(p.shape[0], 3), resolution=64)
    frame = render_turntable(textured, num_frames=1, resolution=RESOLUTION, background=0.0)[0]
    centre = frame[RESOLUTION // 2, RESOLUTION // 2]
    torch.testing.assert_close(centre / centre.max(), colour / colour.max(), atol=0.02, rtol=0)
    assert float(frame[0, 0].abs().sum()) == 0.0


def test_uncoloured_mesh_renders_grey():
    sphere = trimesh.creation.icosphere(subdivisions=1)
    mesh = Mesh(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces, dtype=torch.int64))
    centre = render_turntable(mesh, num_frames=1, resolution=32)[0, 16, 16]
    assert float(centre[0]) == float(centre[1]) == float(centre[2]) < 1.0


def test_write_video_makes_a_readable_mp4(tmp_path, frames):
    path = write_video(frames, tmp_path / "turntable.mp4", fps=30)
    assert path == tmp_path / "turntable.mp4"
    video = iio.imread(path, plugin="FFMPEG", index=None)
    assert video.shape == (4, RESOLUTION, RESOLUTION, 3)
    expected = (frames.numpy() * 255).round()
    assert np.abs(video.astype(np.float64) - expected).mean() < 8  # lossy H.264, 4:2:0 chroma
    assert sorted(p.name for p in tmp_path.iterdir()) == ["turntable.mp4"]


def test_write_video_accepts_uint8(tmp_path):
    frames = torch.zeros(2, 16, 16, 3, dtype=torch.uint8)
    video = iio.imread(write_video(frames, tmp_path / "black.mp4"), plugin="FFMPEG", index=None)
    assert video.shape == (2, 16, 16, 3) and int(video.max()) < 8


def test_write_video_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        write_video(torch.zeros(2, 16, 16), tmp_path / "bad.mp4")
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # makes `import imageio_ffmpeg` fail
    with pytest.raises(RuntimeError, match="pip install imageio imageio-ffmpeg"):
        write_video(torch.zeros(2, 16, 16, 3), tmp_path / "none.mp4")
    assert list(tmp_path.iterdir()) == []


def test_progress_bar_goes_to_stderr(capsys):
    render_turntable(coloured_sphere(), num_frames=2, resolution=16, progress=True)
    assert "turntable" in capsys.readouterr().err
