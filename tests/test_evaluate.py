"""lrmesh.evaluate end to end on a tiny random model, and `lrmesh evaluate`'s error for a folder without objects."""

from __future__ import annotations

import csv
import json
import math
import zlib

import numpy as np
import pytest
import torch
import trimesh

from lrmesh.cli import main
from lrmesh.config import preset
from lrmesh.data.multiview import write_object
from lrmesh.cameras import sv3d_cameras
from lrmesh.data.multiview import TRAINING_FOV, training_poses
from lrmesh.evaluate import (RANDOM_INPUTS_STREAM, EvalObject, InputViews, NovelViews, evaluate_folder,
                             format_table, rendered_inputs)
from lrmesh.render.shaded import render_views
from lrmesh.geometry.mesh import Mesh
from lrmesh.metrics import GeometryProtocol
from lrmesh.model.lrm import LRM


def ground_truth() -> Mesh:
    """Two overlapping coloured closed parts, like a procedural object (kept small so the test is quick)."""
    ball = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    block = trimesh.creation.box(extents=[0.6, 0.4, 0.8])
    block.apply_translation([0.4, 0.0, 0.0])
    vertices = torch.from_numpy(np.concatenate([ball.vertices, block.vertices]).astype(np.float32))
    faces = torch.from_numpy(np.concatenate([ball.faces, block.faces + len(ball.vertices)]).astype(np.int64))
    colors = torch.tensor([[0.8, 0.3, 0.2]] * len(ball.vertices) + [[0.2, 0.4, 0.9]] * len(block.vertices))
    return Mesh(vertices, faces, vertex_colors=colors)


def test_evaluate_folder_writes_rows_per_object_and_method(tmp_path):
    data = tmp_path / "objects"
    write_object(ground_truth(), data, "good", "zero123pp", 6, 64, 0, "test")
    broken = data / "broken"
    broken.mkdir()
    (broken / "grid.png").write_bytes(b"not a png")
    (broken / "gt.glb").write_bytes(b"not a glb")
    torch.manual_seed(0)
    model = LRM(preset("tiny")).eval()

    with pytest.warns(UserWarning, match="skipped broken"):
        summary = evaluate_folder(model, data, tmp_path / "out", novel_views=NovelViews(count=1, resolution=32),
                                  geometry=GeometryProtocol(surface_points=500, volume_points=500),
                                  show_progress=False)

    with open(tmp_path / "out" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["object", "method", "chamfer", "fscore@0.1", "fscore@0.2", "volume_iou", "psnr",
                             "ssim", "lpips", "faces"]
    assert [(r["object"], r["method"]) for r in rows] == [("good", "model"), ("good", "sphere")]
    sphere = rows[1]
    for key in ("chamfer", "fscore@0.1", "fscore@0.2", "volume_iou", "psnr", "ssim"):
        assert math.isfinite(float(sphere[key])), key
    assert 0 < float(sphere["volume_iou"]) < 1 and int(sphere["faces"]) == 1280
    assert summary["objects"] == 1 and [s["object"] for s in summary["skipped"]] == ["broken"]
    assert summary["geometry"]["gt_surface"] == "outer"  # the default, recorded with the numbers
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["means"] == summary["means"]
    table = format_table(summary)
    assert "model" in table and "sphere" in table and "1 skipped" in table
    if summary["lpips"] is None:  # no torchvision / ImageNet weights here: the column says so
        assert rows[0]["lpips"] == "" and "n/a" in table


def test_cli_folder_without_objects_is_an_error(tmp_path, capsys):
    (tmp_path / "empty" / "not_an_object").mkdir(parents=True)
    assert main(["evaluate", str(tmp_path / "empty"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lrmesh: error:") and "no objects to evaluate" in err[0]


def test_sv3d_inputs_are_the_orbit_renders_with_the_orbit_cameras():
    gt = ground_truth()
    item = EvalObject("object", torch.zeros(6, 3, 320, 320), torch.zeros(6, 16), gt)
    sv3d = rendered_inputs(item, InputViews("sv3d", resolution=48), 0, torch.device("cpu"))
    assert sv3d.views.shape == (21, 3, 48, 48) and sv3d.to_gt is None
    assert torch.equal(sv3d.cameras, sv3d_cameras())
    # Frame 0 looks from +x: the block (x in 0.1 - 0.7, blue) faces it, so the centre pixel is blue.
    assert sv3d.views[0, 2, 24, 24] > 0.5 > sv3d.views[0, 0, 24, 24]
    assert torch.allclose(sv3d.views[:, :, 0, 0], torch.ones(21, 3))  # white background


def test_random_inputs_carry_their_normalisation_back_to_the_ground_truth():
    """The random views are renders at the drawn training poses, and the similarity to_gt maps the normalised
    encoder cameras back onto those poses: what the mesh is carried by before scoring."""
    gt = ground_truth()
    item = EvalObject("object", torch.zeros(6, 3, 320, 320), torch.zeros(6, 16), gt)
    posed = rendered_inputs(item, InputViews("random", count=5, resolution=48), 3, torch.device("cpu"))
    poses = training_poses(np.random.default_rng([RANDOM_INPUTS_STREAM, 3, zlib.crc32(b"object")]), 5)
    assert posed.views.shape == (5, 3, 48, 48)
    renders = render_views(gt, poses, TRAINING_FOV, 48)
    assert torch.allclose(posed.views, (renders.rgb * renders.alpha[..., None] + 1 - renders.alpha[..., None])
                          .permute(0, 3, 1, 2).clamp(0, 1), atol=1e-6)
    model_c2w = torch.cat([posed.cameras[:, :12].reshape(5, 3, 4).double(),
                           torch.tensor([0.0, 0, 0, 1], dtype=torch.float64).expand(5, 1, 4)], dim=1)
    back = posed.to_gt @ model_c2w  # positions mapped; rotations scaled by the similarity's scale
    scale = torch.linalg.det(posed.to_gt[:3, :3]) ** (1 / 3)
    assert not torch.allclose(posed.to_gt, torch.eye(4, dtype=torch.float64), atol=1e-2)  # a real normalisation
    assert torch.allclose(back[:, :3, 3], poses[:, :3, 3].double(), atol=1e-4)
    assert torch.allclose(back[:, :3, :3] / scale, poses[:, :3, :3].double(), atol=1e-4)
    # Normalised intrinsics of the 50 degree views: fx = 0.5 / tan(25 deg).
    assert torch.allclose(posed.cameras[:, 12], torch.full((5,), 0.5 / math.tan(math.radians(25))), atol=1e-5)


@pytest.mark.parametrize("inputs", ["sv3d", "random"])
def test_evaluate_on_rendered_inputs_records_them(tmp_path, inputs):
    data = tmp_path / "objects"
    write_object(ground_truth(), data, "good", "zero123pp", 6, 64, 0, "test")
    torch.manual_seed(0)
    model = LRM(preset("tiny")).eval()
    summary = evaluate_folder(model, data, tmp_path / "out", novel_views=NovelViews(count=1, resolution=32),
                              geometry=GeometryProtocol(surface_points=500, volume_points=500),
                              show_progress=False, inputs=InputViews(inputs, count=2, resolution=64))
    assert summary["inputs"] == {"kind": inputs, "count": 2, "resolution": 64}
    assert summary["objects"] == 1 and math.isfinite(summary["means"]["sphere"]["chamfer"])


def test_cli_evaluate_refuses_unknown_inputs(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path), "--inputs", "video", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--inputs" in err[0] and "invalid choice" in err[0]
