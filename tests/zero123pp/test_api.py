"""lrmesh.api.LRMesh: each step on its own, loaded once, silent unless asked."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from lrmesh.api import LRMesh, Views
from lrmesh.cameras import zero123pp_cameras
from lrmesh.io.views import load_views


def test_steps_one_by_one_and_silent(z123_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    lr = LRMesh(mv_model=z123_dir / "zero123plus-v1.2-tiny", mv_unet=z123_dir / "diffusion_pytorch_model.bin",
                device="cpu")
    photo = z123_dir / "input_rgba.png"
    cut = lr.remove_background(photo)
    assert cut.mode == "RGBA" and cut.size == (320, 320)
    prepared = lr.prepare(photo)
    np.testing.assert_array_equal(np.asarray(prepared), np.asarray(Image.open(z123_dir / "input_preprocessed.png")))

    views = lr.views(photo, steps=1, seed=3)
    assert views.images.shape == (6, 3, 320, 320) and views.grid.size == (640, 960)
    torch.testing.assert_close(views.cameras, zero123pp_cameras())
    grid = torch.from_numpy(np.array(views.grid)).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(views.images[1], grid[:, :320, 320:])  # view 1: row 0, column 1
    assert lr.multiview is lr.multiview  # loaded once

    four = lr.views(prepared, steps=1, seed=3, remove=False, num_views=4)
    torch.testing.assert_close(four.images, views.images[[0, 2, 4, 5]])  # same seed, same prepared input
    torch.testing.assert_close(four.cameras, zero123pp_cameras(views=(0, 2, 4, 5)))

    mesh = lr.reconstruct(views)
    assert mesh.num_faces > 0 and mesh.vertex_colors is not None
    written = lr.export(mesh, tmp_path / "object.ply")
    assert written == [tmp_path / "object.ply"] and written[0].stat().st_size > 1000
    assert capsys.readouterr() == ("", "")  # no notices, no progress bar through the API unless asked


def test_grid_views_and_a_talking_api(z123_dir, capsys):
    views = LRMesh.grid_views(z123_dir / "grid_reference.png")
    assert isinstance(views, Views)
    torch.testing.assert_close(views.images, load_views(z123_dir / "grid_reference.png"))
    lines = []
    lr = LRMesh(mv_model=z123_dir / "zero123plus-v1.2-tiny", device="cpu", say=lines.append)
    lr.check_multiview()
    lr.multiview  # noqa: B018 - loads; the notice goes to `say` (at most once per process)
    assert any("loading Zero123++" in line for line in lines)
    assert capsys.readouterr().out == ""
