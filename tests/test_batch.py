"""`lrmesh reconstruct --batch`: one mesh per input, a bad input reported and passed over, finished ones skipped."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lrmesh.checkpoints
import lrmesh.jobs
from lrmesh.cli import ASSETS, EXAMPLE_VIEWS, main
from lrmesh.io.mesh import load_mesh

GRID = ASSETS / EXAMPLE_VIEWS


@pytest.fixture
def batch_folder(tmp_path):
    """a.png, b.png: the example grid; c.png: not an image; d/: the example's six views; notes.txt: ignored."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(GRID, folder / "a.png")
    Image.open(GRID).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "b.png")
    (folder / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    views = folder / "d"
    views.mkdir()
    grid = Image.open(GRID)
    side = grid.width // 2
    for i in range(6):
        row, col = divmod(i, 2)
        grid.crop((col * side, row * side, (col + 1) * side, (row + 1) * side)).save(views / f"{i}.png")
    (folder / "notes.txt").write_text("not an input")
    return folder


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_batch_finishes_the_rest_reports_the_bad_one_and_skips_on_rerun(batch_folder, tmp_path, capsys,
                                                                         monkeypatch):
    loads = []
    real_load = lrmesh.checkpoints.load_model
    monkeypatch.setattr(lrmesh.checkpoints, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    out = tmp_path / "out"
    assert main(["reconstruct", "--batch", str(batch_folder), "-o", str(out), "-q"]) == 1
    captured = capsys.readouterr()
    assert len(loads) == 1  # the model is loaded once for all inputs
    assert sorted(p.name for p in out.iterdir()) == ["a.obj", "b.obj", "d.obj"]
    assert lines(captured.out) == [str(out / "a.obj"), str(out / "b.obj"), str(out / "d.obj")]
    errors = lines(captured.err)
    assert errors[0].startswith("lrmesh: failed: c.png: cannot read image ")
    assert errors[1:] == ["lrmesh: batch: 3 done, 1 failed, 0 skipped"]

    # each mesh is the one the single-input command writes for that input
    single = tmp_path / "single.obj"
    assert main(["reconstruct", str(batch_folder / "a.png"), "-o", str(single), "-q"]) == 0
    assert (out / "a.obj").read_bytes() == single.read_bytes()
    assert (out / "d.obj").read_bytes() == single.read_bytes()  # the same views, from a folder
    assert (out / "b.obj").read_bytes() != single.read_bytes()
    capsys.readouterr()

    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["reconstruct", "--batch", str(batch_folder), "-o", str(out), "-q"]) == 1
    captured = capsys.readouterr()
    assert lines(captured.out) == []
    assert lines(captured.err)[1:] == ["lrmesh: batch: 0 done, 1 failed, 3 skipped"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    (batch_folder / "c.png").unlink()
    (out / "b.obj").unlink()
    assert main(["reconstruct", "--batch", str(batch_folder), "-o", str(out), "-q", "--format", "glb"]) == 0
    captured = capsys.readouterr()
    assert lines(captured.err) == ["lrmesh: batch: 3 done, 0 failed, 0 skipped"]
    glb, obj = load_mesh(out / "a.glb"), load_mesh(out / "a.obj")
    np.testing.assert_allclose(glb.vertices.numpy(), obj.vertices.numpy(), atol=1e-6)
    np.testing.assert_array_equal(glb.faces.numpy(), obj.faces.numpy())


def test_inputs_this_build_cannot_serve_fail_with_the_cli_line(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (500, 400), (200, 30, 30)).save(folder / "photo.jpg")
    (folder / "orbit.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    out = tmp_path / "out"
    assert main(["reconstruct", "--batch", str(folder), "-o", str(out), "-q"]) == 1
    batch_errors = lines(capsys.readouterr().err)
    for name in ("orbit.mp4", "photo.jpg"):
        assert main(["reconstruct", str(folder / name), "-o", str(tmp_path / "x.obj"), "-q"]) == 2
        (single_error,) = lines(capsys.readouterr().err)
        assert f"lrmesh: failed: {name}: {single_error.removeprefix('lrmesh: error: ')}" in batch_errors
    assert batch_errors[-1] == "lrmesh: batch: 0 done, 2 failed, 0 skipped"
    assert not out.exists() or not any(out.iterdir())


def test_the_first_output_is_renamed_into_place_last(tmp_path, monkeypatch):
    """An interrupted job never leaves the file that marks an input finished."""
    reconstructor = lrmesh.jobs.Reconstructor()
    real_replace, calls = lrmesh.jobs.os.replace, []

    def replace_then_die(src, dst):  # os.replace, killed at the second rename into the output folder
        if Path(dst).parent == tmp_path:
            calls.append(dst)
            if len(calls) == 2:
                raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        reconstructor.run(GRID, [tmp_path / "m.glb", tmp_path / "m.ply"])
    assert [p.name for p in tmp_path.iterdir()] == ["m.ply"]  # no m.glb, no staging folder left


@pytest.mark.parametrize("argv, message", [
    (["a.png", "--batch", "IN", "-o", "OUT"], "give either input VIEWS or --batch IN_DIR, not both"),
    (["--batch", "IN"], "--batch needs -o OUT_DIR"),
    (["--batch", "IN", "-o", "OUT/m.obj"], "must be a folder"),
    (["--batch", "EMPTY", "-o", "OUT"], "no image files, videos or folders of views in it"),
    (["--batch", "MISSING", "-o", "OUT"], "not a folder"),
])
def test_batch_usage_errors(tmp_path, capsys, argv, message):
    (tmp_path / "IN").mkdir()
    (tmp_path / "EMPTY").mkdir()
    shutil.copy(GRID, tmp_path / "IN" / "a.png")
    argv = [str(tmp_path / a) if a.isupper() or "/" in a else a for a in argv]
    assert main(["reconstruct", *argv, "-q"]) == 2
    (error,) = lines(capsys.readouterr().err)
    assert error.startswith("lrmesh: error: ") and message in error
