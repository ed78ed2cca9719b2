"""lrmesh.evaluate end to end on a tiny random model, and `lrmesh evaluate`'s error for a folder without objects."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import trimesh

from lrmesh.cli import main
from lrmesh.config import preset
from lrmesh.data.multiview import write_object
from lrmesh.evaluate import NovelViews, evaluate_folder, format_table
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
