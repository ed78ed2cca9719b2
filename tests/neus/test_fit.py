"""`lrmesh fit` end to end on a tiny synthetic scene: the loss falls, a mesh in the dataset's frame comes out, an
interrupted fit resumes to the same weights, NaNs and bad input stop with clear messages."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from lightning.pytorch.callbacks import Callback

from lrmesh.cli import main
from lrmesh.errors import ConfigError, InputError
from lrmesh.geometry.mesh import Mesh
from lrmesh.io.mesh import load_mesh, save_mesh
from lrmesh.neus.config import load_fit_config
from lrmesh.neus.fit import FitDiverged, FitInterrupted, fit, image_rays, pixel_rays

TINY = [
    "geometry.grid.n_levels=4", "geometry.grid.log2_hashmap_size=12", "geometry.grid.base_resolution=8",
    "geometry.grid.start_level=4", "geometry.hidden_dim=16", "color.hidden_dim=16", "color.n_hidden_layers=1",
    "density.grid.n_levels=4", "density.grid.log2_hashmap_size=12", "density.grid.base_resolution=8",
    "density.grid.start_level=4", "density.hidden_dim=16",
    "render.num_samples_per_ray=64", "render.occupancy_resolution=16", "render.occupancy_warmup=4",
    "render.occupancy_every=4", "render.rays_initial=128", "render.rays_max=256", "render.target_samples=4096",
    "mesh.resolution=24", "video_frames=2", "video_resolution=16", "log_every=1", "optim.warmup_steps=5",
    "neus.cos_anneal_steps=10", "accelerator=cpu", "devices=1",
]


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scene")
    assert main(["synth", "-o", str(out), "--count", "1", "--layout", "blender", "--views", "12",
                 "--resolution", "32", "--seed", "3", "-q"]) == 0
    return out / "synth_000003"


def tiny(method: str = "neus", *extra: str):
    return load_fit_config(method, None, TINY + list(extra))


def logged_losses(out: Path) -> list[float]:
    """Loss by step over every run in `out` (a resumed run logs to a new version folder)."""
    by_step = {}
    for path in sorted(out.glob("logs/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
        with open(path) as f:
            by_step.update({int(row["step"]): float(row["loss"]) for row in csv.DictReader(f) if row.get("loss")})
    return [by_step[k] for k in sorted(by_step)]


def test_a_short_neus_fit_reduces_the_loss_and_exports_a_mesh_in_the_dataset_frame(scene, tmp_path):
    metrics = fit(scene, tiny("neus", "steps=40"), tmp_path / "out", progress=False)
    out = tmp_path / "out"
    losses = logged_losses(out)
    assert len(losses) == 40
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == metrics and saved["steps"] == 40 and saved["test_views"] > 0
    assert math.isfinite(saved["test_psnr"]) and saved["num_faces"] > 0
    assert (out / "video.mp4").stat().st_size > 0 and (out / "model.safetensors").is_file()
    # the OBJ holds the blender frame's coordinates as they are: near the ground truth, which is in that frame
    raw = trimesh.load(out / "mesh.obj", process=False)
    gt = load_mesh(scene / "gt.glb")
    assert raw.vertices.shape[0] == saved["num_vertices"]
    assert np.abs(raw.vertices).max() <= 1.5 + 1e-4  # inside the scene box
    centre_gap = np.linalg.norm(raw.vertices.mean(0) - gt.vertices.numpy().mean(0))
    assert centre_gap < 0.3, centre_gap
    assert raw.visual.vertex_colors.shape[0] == raw.vertices.shape[0]


def test_nerf_fits_and_writes_its_metrics(scene, tmp_path):
    metrics = fit(scene, tiny("nerf", "steps=20", "mesh.threshold=0.5"), tmp_path / "out", progress=False)
    assert metrics["method"] == "nerf" and metrics["steps"] == 20
    losses = logged_losses(tmp_path / "out")
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


class _StopAt(Callback):
    def __init__(self, step: int, error: type[BaseException]):
        self.step, self.error = step, error

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise self.error()


def test_ctrl_c_saves_a_checkpoint_and_resume_gives_the_uninterrupted_weights(scene, tmp_path):
    cfg = tiny("neus", "steps=12", "video_frames=0")
    fit(scene, cfg, tmp_path / "straight", progress=False)
    with pytest.raises(FitInterrupted, match="step 7.*--resume"):
        fit(scene, cfg, tmp_path / "stopped", progress=False, callbacks=[_StopAt(7, KeyboardInterrupt)])
    assert (tmp_path / "stopped" / "checkpoints" / "last.ckpt").is_file()
    with pytest.raises(InputError, match="already holds a fit"):
        fit(scene, cfg, tmp_path / "stopped", progress=False)
    fit(scene, cfg, tmp_path / "stopped", resume=True, progress=False)
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "stopped" / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 12
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert logged_losses(tmp_path / "stopped") == pytest.approx(logged_losses(tmp_path / "straight"), rel=1e-4)


class _Poison(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 3:
            with torch.no_grad():
                next(pl_module.model.color.parameters()).fill_(float("nan"))


def test_nan_loss_stops_with_the_step_and_the_checkpoint(scene, tmp_path):
    with pytest.raises(FitDiverged, match=r"step 3 .*rgb_mse=nan.*last\.ckpt"):
        fit(scene, tiny("neus", "steps=6"), tmp_path / "out", progress=False, callbacks=[_Poison()])


def test_missing_image_and_mismatched_cameras_are_named(scene, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(scene, broken)
    (broken / "train" / "r_3.png").unlink()
    assert main(["fit", str(broken), "-o", str(tmp_path / "o1"), "--steps", "2", "-q"]) == 2
    assert "r_3.png" in capsys.readouterr().err
    shutil.rmtree(broken)
    shutil.copytree(scene, broken)
    meta = json.loads((broken / "transforms_train.json").read_text())
    meta["frames"] = meta["frames"][:-1] + [dict(meta["frames"][-1], file_path="./train/nope")]
    (broken / "transforms_train.json").write_text(json.dumps(meta))
    assert main(["fit", str(broken), "-o", str(tmp_path / "o2"), "--steps", "2", "-q"]) == 2
    assert "nope" in capsys.readouterr().err


def test_fit_config_overrides_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        load_fit_config("neus", None, ["render.rays=3"])
    with pytest.raises(ConfigError, match="mesh.format"):
        load_fit_config("neus", None, ["mesh.format=.stl"])
    with pytest.raises(ConfigError, match="unknown fit method"):
        load_fit_config("colmap")
    assert load_fit_config("nerf", None, ["steps=5"]).steps == 5
    assert main(["fit", str(tmp_path), "-o", str(tmp_path / "o"), "render.bogus=1", "-q"]) == 2


def test_resume_needs_a_checkpoint(scene, tmp_path):
    with pytest.raises(InputError, match="nothing to resume"):
        fit(scene, tiny("neus", "steps=2"), tmp_path / "none", resume=True, progress=False)


def test_pixel_rays_go_through_pixel_centres():
    # a camera at (0, 0, 4) looking down -z (OpenGL identity rotation), 4x2 pixels, focal 2, centre (2, 1)
    c2w = torch.eye(4)
    c2w[2, 3] = 4.0
    intrinsics = torch.tensor([2.0, 2.0, 2.0, 1.0])
    origins, dirs = image_rays(c2w, intrinsics, 2, 4)
    assert torch.equal(origins, torch.tensor([[0.0, 0.0, 4.0]]).expand(8, 3))
    # pixel (row 0, col 3): centre (3.5, 0.5) -> x = 1.5 / 2, y = -(0.5 - 1) / 2 (up), z = -1
    expected = torch.nn.functional.normalize(torch.tensor([0.75, 0.25, -1.0]), dim=0)
    torch.testing.assert_close(dirs[3], expected)
    o, d = pixel_rays(c2w[None], intrinsics[None], torch.tensor([1]), torch.tensor([0]))
    torch.testing.assert_close(d[0], torch.nn.functional.normalize(torch.tensor([-0.75, -0.25, -1.0]), dim=0))


@pytest.mark.parametrize("suffix", [".obj", ".ply"])
def test_keep_coordinates_writes_vertices_and_winding_as_given(tmp_path, suffix):
    mesh = Mesh(vertices=torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.5]]),
                faces=torch.tensor([[0, 1, 2]]), vertex_colors=torch.rand(3, 3))
    path = save_mesh(mesh, tmp_path / f"m{suffix}", keep_coordinates=True)[0]
    raw = trimesh.load(path, process=False)
    np.testing.assert_allclose(raw.vertices, mesh.vertices.numpy(), atol=1e-6)
    assert raw.faces.tolist() == [[0, 1, 2]]
    default = trimesh.load(save_mesh(mesh, tmp_path / f"d{suffix}")[0], process=False)
    np.testing.assert_allclose(default.vertices[:, 2], -mesh.vertices[:, 2].numpy(), atol=1e-6)  # z mirrored


def test_contraction_keeps_the_unit_ball_and_bounds_the_rest():
    from lrmesh.neus.models import contract

    inside = torch.tensor([[0.3, -0.6, 0.9]])  # |x| / 1.5 < 1
    torch.testing.assert_close(contract(inside, 1.5), inside / 1.5)
    far = torch.tensor([[3.0, 0.0, 0.0], [0.0, -1e6, 0.0]])
    # |x| / r = 2 -> 2 - 1/2 = 1.5 along +x; very far -> almost radius 2
    torch.testing.assert_close(contract(far, 1.5), torch.tensor([[1.5, 0.0, 0.0], [0.0, -2.0, 0.0]]), atol=1e-5,
                               rtol=0)


def test_background_model_fits_with_the_foreground(scene, tmp_path):
    metrics = fit(scene, tiny("neus", "steps=12", "render.background_model=true", "render.background_samples=8",
                              "video_frames=0"), tmp_path / "out", progress=False)
    assert metrics["steps"] == 12 and math.isfinite(metrics["test_psnr"])
    state = torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert any(key.startswith("model.background.") for key in state)


def test_a_bad_last_checkpoint_is_one_error_line_naming_it(scene, tmp_path, refuses_bad_resume):
    refuses_bad_resume(["fit", str(scene), "-o", str(tmp_path / "out"), *TINY], tmp_path / "out")


def test_a_fit_on_several_devices_is_refused_in_one_line_before_anything_is_written(scene, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["fit", str(scene), "-o", str(out), *TINY, "devices=2", "-q"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lrmesh")]
    assert lines == ["lrmesh: error: lrmesh fit runs on one device; got devices=2 num_nodes=1 (2 processes): set "
                     "devices=1 num_nodes=1 (several GPUs help `lrmesh train`, not a per-scene fit)"]
    with pytest.raises(ConfigError, match=r"got devices=1 num_nodes=2 \(2 processes\)"):
        fit(scene, tiny("neus", "num_nodes=2"), out, progress=False)
    assert not out.exists()
