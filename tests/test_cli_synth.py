"""`lrmesh synth`: procedural objects and user meshes in each layout; a broken file is reported and skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from lrmesh.cli import main

LAYOUTS = ("training", "zero123pp", "blender")


def object_files(folder: Path, layout: str) -> list[Path]:
    """The images a consumer of `layout` opens first."""
    if layout == "training":
        return [folder / "000.png", folder / "cameras.npz"]
    if layout == "zero123pp":
        return [folder / "grid.png", folder / "cameras.json"]
    return [folder / "transforms_train.json", folder / "train" / "r_0.png"]


@pytest.fixture()
def user_glb(tmp_path) -> Path:
    """A two-part, vertex-coloured scene saved by trimesh as a user would."""
    box = trimesh.creation.box(extents=[1.0, 0.5, 0.3])
    box.visual.vertex_colors = [200, 40, 40, 255]
    ball = trimesh.creation.icosphere(subdivisions=2, radius=0.3)
    ball.apply_translation([0.0, 0.4, 0.0])
    path = tmp_path / "user.glb"
    trimesh.Scene([box, ball]).export(path)
    return path


@pytest.mark.parametrize("layout", LAYOUTS)
def test_procedural_smoke(layout, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["synth", "-o", str(out), "--count", "2", "--views", "4", "--resolution", "64", "--layout", layout,
                 "--seed", "7", "-q", "--device", "cpu"])
    assert code == 0
    folders = [Path(line) for line in capsys.readouterr().out.split()]
    assert [f.name for f in folders] == ["synth_000007", "synth_000008"]
    for folder in folders:
        assert (folder / "gt.glb").is_file()
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["seed"] == int(folder.name[-2:]) and meta["layout"] == layout
        for path in object_files(folder, layout):
            assert path.is_file(), path
    if layout == "zero123pp":
        assert Image.open(folders[0] / "grid.png").size == (128, 192)  # 2 x 3 views of 64 px
    if layout == "training":
        assert all((folder / "occupancy.npz").is_file() for folder in folders)
        assert main(["synth", "-o", str(tmp_path / "bare"), "--count", "1", "--views", "2", "--resolution", "16",
                     "--no-occupancy", "-q", "--device", "cpu"]) == 0
        bare = Path(capsys.readouterr().out.split()[0])
        assert (bare / "cameras.npz").is_file() and not (bare / "occupancy.npz").exists()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_users_glb_renders_in_every_layout(layout, user_glb, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["synth", "-o", str(out), "--mesh", str(user_glb), "--views", "3", "--resolution", "48",
                 "--layout", layout, "-q", "--device", "cpu"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert folder.name == "user"
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["source"] == str(user_glb)
    assert np.array(meta["source_to_model"]).shape == (4, 4)
    for path in object_files(folder, layout):
        assert path.is_file(), path


def test_a_broken_file_is_named_and_the_batch_goes_on(user_glb, tmp_path, capsys):
    broken = tmp_path / "broken.glb"
    broken.write_bytes(b"glTF this is not")
    out = tmp_path / "out"
    code = main(["synth", "-o", str(out), "--mesh", str(broken), str(user_glb), "--layout", "zero123pp",
                 "--resolution", "32", "-q", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 2
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(broken) in warnings[0]
    errors = [line for line in captured.err.splitlines() if line.startswith("lrmesh: error:")]
    assert len(errors) == 1 and "1 of 2" in errors[0] and str(broken) in errors[0]
    assert (out / "user" / "grid.png").is_file()  # the good mesh after the broken one was still written
    assert not (out / "broken").exists()


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["synth", "-o", str(tmp_path), "--count", "0"]) == 2
    assert "--count" in capsys.readouterr().err
    assert main(["synth", "-o", str(tmp_path), "--count", "1", "--resolution", "0"]) == 2
    assert "--resolution" in capsys.readouterr().err
    assert main(["synth", "-o", str(tmp_path), "--count", "1", "--seed", "-1"]) == 2
    assert "--seed" in capsys.readouterr().err
    assert main(["synth", "-o", str(tmp_path), "--count", "1", "--layout", "zero123pp", "--zero123pp-inputs"]) == 2
    assert "--zero123pp-inputs needs --layout training" in capsys.readouterr().err


def test_files_with_the_same_stem_get_distinct_folders(user_glb, tmp_path, capsys):
    other = tmp_path / "elsewhere" / "user.glb"
    other.parent.mkdir()
    other.write_bytes(user_glb.read_bytes())
    assert main(["synth", "-o", str(tmp_path / "out"), "--mesh", str(user_glb), str(other), "--layout", "zero123pp",
                 "--resolution", "32", "-q", "--device", "cpu"]) == 0
    assert [Path(line).name for line in capsys.readouterr().out.split()] == ["user", "user_2"]
