"""SV3D orbit inputs: videos and frame folders in, 21 views and the SV3D cameras out; one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lrmesh.cameras import sv3d_cameras
from lrmesh.cli import main
from lrmesh.errors import InputError
from lrmesh.io.orbit import load_sv3d_orbit, read_video
from lrmesh.io.video import write_video

SIZE = 64  # small frames: the reader resizes any square size to 320


def orbit_frames(count: int) -> torch.Tensor:
    """(T, H, W, 3) smooth frames, each a different flat grey level with a bright square: easy on H.264."""
    frames = torch.ones(count, SIZE, SIZE, 3)
    for i in range(count):
        frames[i] = 0.2 + 0.6 * i / max(count - 1, 1)
        frames[i, 16:48, 16:48] = 1.0
    return frames


def test_a_video_gives_21_views_with_the_sv3d_cameras(tmp_path):
    frames = orbit_frames(21)
    path = write_video(frames, tmp_path / "orbit.mp4", fps=10)
    read = read_video(path)
    assert read.shape == (21, 3, SIZE, SIZE)
    assert (read.permute(0, 2, 3, 1) - frames).abs().mean() < 0.02  # H.264 round trip, frames in order
    posed = load_sv3d_orbit(path, elevation_deg=10.0, radius=8.0)
    assert posed.images.shape == (21, 3, 320, 320)
    assert torch.equal(posed.cameras, sv3d_cameras(10.0, 8.0))
    assert torch.equal(posed.to_world, torch.eye(4, dtype=torch.float64))


def test_a_frame_folder_and_an_evenly_spaced_subset(tmp_path):
    frames = orbit_frames(21)
    for i, frame in enumerate(frames):
        Image.fromarray((frame.numpy() * 255).round().astype(np.uint8)).save(tmp_path / f"frame_{i:02d}.png")
    posed = load_sv3d_orbit(tmp_path, num_views=7)
    picked = [0, 3, 6, 9, 12, 15, 18]
    assert torch.equal(posed.cameras, sv3d_cameras()[picked])
    levels = posed.images[:, :, 2, 2]  # the flat corner of each frame: its grey level tells which frame it is
    np.testing.assert_allclose(levels[:, 0].numpy(), frames[picked, 0, 0, 0].numpy(), atol=2 / 255)


@pytest.mark.parametrize("case, message", [
    ("20 frames", "orbit.mp4: an SV3D orbit has 21 frames, got 20"),
    ("not a video", "cannot read video"),
    ("empty file", "cannot read video"),
    ("folder of 5", "5 files: an SV3D orbit has 21 frames, got 5"),
    ("one image", "an SV3D orbit is a video"),
    ("too many views", "argument --orbit-views: must be from 1 to 21, got 22"),
    ("elevation on a grid", "--elevation and --orbit-views are for SV3D orbits"),
    ("four-view mode", "--views 4 is for Zero123++ views"),
])
def test_bad_orbits_are_one_line_errors(tmp_path, capsys, case, message):
    path = tmp_path / "orbit.mp4"
    extra = []
    if case == "20 frames":
        write_video(orbit_frames(20), path)
    elif case == "not a video":
        path.write_bytes(b"this is not a video\n" * 50)
    elif case == "empty file":
        path.write_bytes(b"")
    elif case == "folder of 5":
        path = tmp_path / "frames"
        path.mkdir()
        for i in range(5):
            Image.new("RGB", (SIZE, SIZE), "white").save(path / f"{i}.png")
        extra = ["--orbit", "sv3d"]
    elif case == "one image":
        path = tmp_path / "frame.png"
        Image.new("RGB", (SIZE, SIZE), "white").save(path)
        extra = ["--orbit", "sv3d"]
    elif case == "too many views":
        write_video(orbit_frames(21), path)
        extra = ["--orbit-views", "22"]
    elif case == "elevation on a grid":
        path = tmp_path / "grid.png"
        Image.new("RGB", (640, 960), "white").save(path)
        extra = ["--elevation", "10"]
    else:
        write_video(orbit_frames(21), path)
        extra = ["--views", "4"]
    out = tmp_path / "out" / "mesh.obj"
    assert main(["reconstruct", str(path), *extra, "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lrmesh: error: ") and message in err[0], err
    assert not out.exists()


def test_load_errors_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="input not found"):
        load_sv3d_orbit(tmp_path / "missing.mp4")
