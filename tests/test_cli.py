"""The `lrmesh reconstruct` command end to end, and its one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lrmesh.cli import main


def parse_obj(path):
    verts, colors, faces = [], [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "v":
            verts.append([float(x) for x in parts[1:4]])
            colors.append([float(x) for x in parts[4:7]])
        elif parts and parts[0] == "f":
            faces.append([int(p.split("/")[0]) - 1 for p in parts[1:4]])
    return np.array(verts), np.array(colors), np.array(faces)


def test_reconstruct_writes_the_reference_obj(fixture_dir, tmp_path, capsys):
    out = tmp_path / "mesh.obj"
    code = main(["reconstruct", str(fixture_dir / "views_grid.png"), "--checkpoint",
                 str(fixture_dir / "instant_mesh_tiny.ckpt"), "--config", str(fixture_dir / "config.yaml"),
                 "-o", str(out), "--device", "cpu", "-q"])
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out)
    verts, colors, faces = parse_obj(out)
    ref_verts, ref_colors, ref_faces = parse_obj(fixture_dir / "mesh_reference.obj")
    assert verts.shape == ref_verts.shape and faces.shape == ref_faces.shape
    assert np.abs(verts - ref_verts).max() < 1e-4
    np.testing.assert_array_equal(faces, ref_faces)
    assert np.abs(colors - ref_colors).max() <= 1 / 255 + 1e-9


def test_folder_input_and_preset_inference(fixture_dir, tmp_path):
    views = tmp_path / "views"
    views.mkdir()
    for i in range(6):
        (views / f"view_{i}.png").write_bytes((fixture_dir / f"view_{i}.png").read_bytes())
    out = tmp_path / "mesh.ply"
    assert main(["reconstruct", str(views), "-c", str(fixture_dir / "instant_mesh_tiny.ckpt"), "-o", str(out),
                 "-q"]) == 0
    assert out.stat().st_size > 1000


def run_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "lrmesh.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("lrmesh: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture()
def ckpt(fixture_dir):
    return str(fixture_dir / "instant_mesh_tiny.ckpt")


def test_error_wrong_view_count(fixture_dir, ckpt, tmp_path):
    views = [str(fixture_dir / f"view_{i}.png") for i in range(5)]
    line = one_error_line(run_cli("reconstruct", *views, "-c", ckpt, "-o", str(tmp_path / "m.obj")))
    assert "expected 6 views" in line


def test_error_not_an_image(ckpt, tmp_path):
    bad = tmp_path / "views.png"
    bad.write_bytes(b"\x00" * 100)
    assert "cannot read image" in one_error_line(run_cli("reconstruct", str(bad), "-c", ckpt))


def test_error_truncated_checkpoint(fixture_dir, tmp_path):
    path = tmp_path / "cut.ckpt"
    path.write_bytes((fixture_dir / "instant_mesh_tiny.ckpt").read_bytes()[:4096])
    line = one_error_line(run_cli("reconstruct", str(fixture_dir / "views_grid.png"), "-c", str(path)))
    assert "not a readable PyTorch checkpoint" in line


def test_error_foreign_checkpoint(fixture_dir, tmp_path):
    path = tmp_path / "resnet.ckpt"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(8, 3, 7, 7)}}, path)
    line = one_error_line(run_cli("reconstruct", str(fixture_dir / "views_grid.png"), "-c", str(path)))
    assert "match no preset" in line


def test_error_pickle_with_code(fixture_dir, tmp_path):
    path = tmp_path / "evil.ckpt"
    code = ("import torch, os\n"
            "class P:\n    def __reduce__(self):\n        return (os.getcwd, ())\n"
            f"torch.save({{'state_dict': {{}}, 'x': P()}}, {str(path)!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    line = one_error_line(run_cli("reconstruct", str(fixture_dir / "views_grid.png"), "-c", str(path)))
    assert "refused" in line


def test_error_unknown_extension(fixture_dir, ckpt, tmp_path):
    line = one_error_line(run_cli("reconstruct", str(fixture_dir / "views_grid.png"), "-c", ckpt, "-o",
                                  str(tmp_path / "mesh.stl")))
    assert ".obj" in line and ".glb" in line


def test_default_run_uses_the_bundled_example(tmp_path):
    result = run_cli("reconstruct", "-o", str(tmp_path / "example.glb"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "bundled small model" in result.stderr
    assert (tmp_path / "example.glb").stat().st_size > 1000


def test_texture_and_video(fixture_dir, tmp_path, capsys):
    out = tmp_path / "textured.obj"
    code = main(["reconstruct", str(fixture_dir / "views_grid.png"), "-c", str(fixture_dir / "instant_mesh_tiny.ckpt"),
                 "-o", str(out), "--texture", "--texture-resolution", "128", "--video", "--video-frames", "4",
                 "--video-resolution", "64", "-q"])
    assert code == 0
    written = {p for p in capsys.readouterr().out.split()}
    for suffix in (".obj", ".mtl", ".png", ".mp4"):
        assert str(out.with_suffix(suffix)) in written
        assert out.with_suffix(suffix).stat().st_size > 0
    assert "vt " in out.read_text() and "map_Kd textured.png" in out.with_suffix(".mtl").read_text()
