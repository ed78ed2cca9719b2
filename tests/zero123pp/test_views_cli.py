"""`lrmesh views` and `lrmesh reconstruct PHOTO` on the zero123pp-tiny fixture, and their one-line errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lrmesh.cli import main
from tests.zero123pp.helpers import assert_grid_matches

LICENCE = "CC BY-NC 4.0"


@pytest.fixture(autouse=True)
def _no_configured_models(monkeypatch, tmp_path_factory):
    monkeypatch.delenv("LRMESH_MV_MODEL", raising=False)
    monkeypatch.delenv("LRMESH_MV_UNET", raising=False)
    monkeypatch.setenv("U2NET_HOME", str(tmp_path_factory.mktemp("no_u2net")))


def model_args(z123_dir: Path) -> list[str]:
    return ["--mv-model", str(z123_dir / "zero123plus-v1.2-tiny"), "--mv-unet",
            str(z123_dir / "diffusion_pytorch_model.bin")]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lrmesh: error: "), err
    return err[0]


@pytest.mark.parametrize("image, extra", [("input_rgba.png", []), ("input_preprocessed.png", ["--no-rembg"])])
def test_views_grid_equals_the_reference(z123_dir, tmp_path, capsys, monkeypatch, image, extra):
    monkeypatch.setattr("lrmesh.zero123pp.folder._notices_shown", set())  # as in a fresh process
    out = tmp_path / "grid.png"
    code = main(["views", str(z123_dir / image), *model_args(z123_dir), "--steps", "3", "--seed", "42",
                 "--device", "cpu", "-o", str(out), *extra])
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert captured.err.count(LICENCE) == 1
    grid = np.asarray(Image.open(out))
    assert_grid_matches(grid, np.asarray(Image.open(z123_dir / "grid_reference.png")))


def test_licence_notice_is_said_once(monkeypatch):
    from lrmesh.zero123pp.folder import LICENCE_NOTICE, notice_once

    monkeypatch.setattr("lrmesh.zero123pp.folder._notices_shown", set())
    lines = []
    notice_once(lines.append)
    notice_once(lines.append)
    notice_once(None)
    assert lines == [LICENCE_NOTICE] and LICENCE in LICENCE_NOTICE


def test_missing_and_partial_model_folders(z123_dir, tmp_path, capsys):
    photo = str(z123_dir / "input_rgba.png")
    out = tmp_path / "grid.png"
    assert main(["views", photo, "--mv-model", str(tmp_path / "nowhere"), "-o", str(out)]) == 2
    assert "no such folder" in error_line(capsys)
    partial = tmp_path / "partial"
    shutil.copytree(z123_dir / "zero123plus-v1.2-tiny", partial)
    (partial / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (partial / "tokenizer" / "merges.txt").unlink()
    assert main(["views", photo, "--mv-model", str(partial), "-o", str(out)]) == 2
    line = error_line(capsys)
    assert "missing tokenizer/merges.txt, vae/diffusion_pytorch_model.safetensors" in line
    assert "sudo-ai/zero123plus-v1.2" in line and "model_index.json" in line
    assert not out.exists()


def test_hf_cache_folder_is_resolved(z123_dir, tmp_path):
    from lrmesh.zero123pp.folder import check_folder

    repo = tmp_path / "models--sudo-ai--zero123plus-v1.2"
    shutil.copytree(z123_dir / "zero123plus-v1.2-tiny", repo / "snapshots" / "abc123")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123\n")
    assert check_folder(repo) == repo / "snapshots" / "abc123"
    assert check_folder(repo / "snapshots" / "abc123") == repo / "snapshots" / "abc123"


class NeedsCode:
    """Pickled as a class instance, so weights_only loading must refuse it."""

    def __init__(self):
        self.weights = torch.zeros(2)


def test_unet_file_that_needs_code_is_refused(z123_dir, tmp_path, capsys):
    bad = tmp_path / "diffusion_pytorch_model.bin"
    torch.save({"unet": NeedsCode()}, bad)
    out = tmp_path / "grid.png"
    assert main(["views", str(z123_dir / "input_rgba.png"), "--mv-model", str(z123_dir / "zero123plus-v1.2-tiny"),
                 "--mv-unet", str(bad), "--steps", "1", "--device", "cpu", "-o", str(out), "-q"]) == 2
    line = error_line(capsys)
    assert "--mv-unet" in line and "needs code" in line and "TencentARC/InstantMesh" in line
    assert not out.exists()


def test_image_without_foreground(z123_dir, tmp_path, capsys):
    empty = tmp_path / "empty.png"
    Image.new("RGBA", (64, 64), (200, 10, 10, 0)).save(empty)
    assert main(["views", str(empty), *model_args(z123_dir), "-o", str(tmp_path / "g.png"), "-q"]) == 2
    assert "no foreground" in error_line(capsys)


def test_textured_background_without_matting_model(z123_dir, tmp_path, capsys):
    rng = np.random.default_rng(0)
    textured = tmp_path / "textured.jpg"
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(textured)
    assert main(["views", str(textured), *model_args(z123_dir), "-o", str(tmp_path / "g.png"), "-q"]) == 2
    line = error_line(capsys)
    assert "not plain" in line and "u2net.onnx" in line and "--rembg-model" in line


def test_reconstruct_photo_without_multiview_model(z123_dir, tmp_path, capsys):
    assert main(["reconstruct", str(z123_dir / "input_rgba.png"), "-o", str(tmp_path / "m.obj"), "-q"]) == 2
    line = error_line(capsys)
    assert "--mv-model" in line and "sudo-ai/zero123plus-v1.2" in line and "-c OPENLRM" in line
    assert not (tmp_path / "m.obj").exists()


def test_reconstruct_photo_writes_grid_beside_mesh(z123_dir, tmp_path, capsys):
    out = tmp_path / "object.obj"
    code = main(["reconstruct", str(z123_dir / "input_rgba.png"), *model_args(z123_dir), "--steps", "1",
                 "--device", "cpu", "-o", str(out), "-q"])
    assert code == 0
    grid = tmp_path / "object_views.png"
    assert capsys.readouterr().out.split() == [str(out), str(grid)]
    assert Image.open(grid).size == (640, 960)
    assert out.stat().st_size > 1000


def test_without_the_diffusion_extra_the_views_step_is_one_error_line(z123_dir, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "diffusers", None)  # as on an install without lrmesh[diffusion]
    monkeypatch.delitem(sys.modules, "lrmesh.zero123pp.pipeline", raising=False)
    out = tmp_path / "grid.png"
    assert main(["views", str(z123_dir / "input_rgba.png"), "--mv-model", str(z123_dir / "zero123plus-v1.2-tiny"),
                 "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lrmesh: error: the multi-view step needs diffusers") and "lrmesh[diffusion]" in err[-1]
    assert not out.exists()
