"""Input views: grid vs files, compositing, the four-view subset, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lrmesh.errors import InputError
from lrmesh.io.views import load_views


def _save(path, array):
    Image.fromarray(array).save(path)
    return path


def test_grid_folder_and_files_agree(fixture_dir, tmp_path):
    files = [fixture_dir / f"view_{i}.png" for i in range(6)]
    for f in files:
        (tmp_path / f.name).write_bytes(f.read_bytes())
    grid = load_views(fixture_dir / "views_grid.png")
    assert grid.shape == (6, 3, 320, 320) and grid.dtype == torch.float32
    assert torch.equal(grid, load_views(files))
    assert torch.equal(grid, load_views(tmp_path))
    # exactly float32(png) / 255, as the reference feeds the model
    raw = np.asarray(Image.open(files[3]), dtype=np.float32) / np.float32(255)
    assert torch.equal(grid[3], torch.from_numpy(raw).permute(2, 0, 1))


def test_four_view_subset(fixture_dir):
    six = load_views(fixture_dir / "views_grid.png")
    four = load_views(fixture_dir / "views_grid.png", num_views=4)
    assert torch.equal(four, six[[0, 2, 4, 5]])
    given_four = load_views([fixture_dir / f"view_{i}.png" for i in (0, 2, 4, 5)], num_views=4)
    assert torch.equal(given_four, four)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((320, 320, 4), np.uint8)
    rgba[..., 0] = 255  # red
    rgba[:160, :, 3] = 255  # opaque top half, transparent bottom half
    rgba[160:170, :, 3] = 51  # 20 % coverage
    paths = [_save(tmp_path / f"v{i}.png", rgba) for i in range(6)]
    views = load_views(paths)
    assert torch.allclose(views[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(views[0, :, 300, 0], torch.ones(3))
    assert torch.allclose(views[0, :, 165, 0], torch.tensor([1.0, 0.8, 0.8]), atol=1e-6)


def test_other_square_sizes_are_resized(tmp_path):
    paths = [_save(tmp_path / f"v{i}.png", np.full((512, 512, 3), 200, np.uint8)) for i in range(6)]
    views = load_views(paths)
    assert views.shape == (6, 3, 320, 320)
    assert torch.allclose(views, torch.full_like(views, 200 / 255), atol=1e-5)


def test_wrong_count(fixture_dir):
    with pytest.raises(InputError, match="expected 6 views .* got 3"):
        load_views([fixture_dir / f"view_{i}.png" for i in range(3)])


def test_folder_with_extra_images_is_a_count_error(fixture_dir):
    with pytest.raises(InputError, match="expected 6 views"):
        load_views(fixture_dir)


def test_not_an_image(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    with pytest.raises(InputError, match="cannot read image .*notes.png"):
        load_views(bad)


def test_wrong_grid_shape(tmp_path):
    path = _save(tmp_path / "wide.png", np.zeros((320, 640, 3), np.uint8))
    with pytest.raises(InputError, match="2 views wide and 3 high"):
        load_views(path)


def test_non_square_views(tmp_path):
    paths = [_save(tmp_path / f"v{i}.png", np.zeros((320, 300, 3), np.uint8)) for i in range(6)]
    with pytest.raises(InputError, match="square"):
        load_views(paths)


def test_missing_input(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_views(tmp_path / "nothing.png")
