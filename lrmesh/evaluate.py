"""Evaluate a reconstruction model on held-out objects with known ground truth (`lrmesh evaluate`).

Input: a folder written by `lrmesh synth --layout zero123pp` (see `lrmesh.data.multiview`): one sub-folder per
object holding `grid.png` (the six input views), `cameras.json` (their (6, 16) encoder cameras; the Zero123++
cameras when absent) and `gt.glb` (the ground truth, in the model frame).

The model reconstructs each object from one of three inputs (`InputViews`): the grid as written ("grid"), or
views rendered from the ground truth as the other inputs of `lrmesh reconstruct` would bring them: an SV3D orbit
("sv3d") or random posed views ("random") whose cameras go through the posed-photo normalisation, the mesh
carried back to the ground truth's frame before it is scored.

Per object and method, the metrics of `lrmesh.metrics` (the InstantMesh protocol):

- geometry against the ground truth (its outer surface by default, `GeometryProtocol.gt_surface`): Chamfer
  distance, F-scores, volume IoU;
- novel views: the predicted and the ground-truth mesh rendered by `lrmesh.render.shaded.render_views` from the
  same cameras (`NovelViews`: a turntable at an elevation none of the inputs has), composited on white like the
  inputs, compared by PSNR, SSIM and LPIPS (when its weights are on disk, see `lrmesh.metrics.load_lpips`).

Methods: "model", the reconstruction; and "sphere", an oracle baseline: the sphere least-squares-fitted to points
sampled on the ground-truth surface, coloured with the ground truth's mean colour. It knows the answer's position,
size and average colour, so a model that does not beat it has learned no shape at all.

Outputs in the output folder: `metrics.csv` (one row per object and method, written as objects finish) and
`summary.json` (settings, skipped objects, per-method means); `format_table` shows the means.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import warnings
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from lrmesh.cameras import (SV3D_FOV, ZERO123PP_FOV, ZERO123PP_RADIUS, sv3d_cameras, sv3d_poses, turntable_poses,
                            zero123pp_cameras)
from lrmesh.data.multiview import GRID_CAMERAS, GRID_IMAGE, GT_MESH, TRAINING_FOV, training_poses
from lrmesh.errors import LrmeshError
from lrmesh.geometry.mesh import Mesh, transform_similarity
from lrmesh.io.mesh import load_mesh
from lrmesh.io.posed import posed_cameras
from lrmesh.io.views import load_views
from lrmesh.metrics import (
    GeometryProtocol,
    fit_sphere,
    fscore_key,
    geometry_metrics,
    gt_surface_points,
    load_lpips,
    prepare_ground_truth,
    psnr,
    sphere_mesh,
    ssim,
)
from lrmesh.model.lrm import LRM
from lrmesh.reconstruct import reconstruct
from lrmesh.render.shaded import render_views

METHODS = ("model", "sphere")
CSV_NAME, SUMMARY_NAME = "metrics.csv", "summary.json"
IMAGE_METRICS = ("psnr", "ssim", "lpips")
LOWER_IS_BETTER = ("chamfer", "lpips")
LPIPS_NET = "vgg"  # the backbone the reference trains with, so one weight file serves training and evaluation


@dataclass
class NovelViews:
    """The cameras novel views are rendered from: a turntable looking at the origin.

    The inputs sit at elevations 20 and -10 degrees, azimuths 30, 90, ..., 330; the default ring at elevation 0
    starting at azimuth 0 shares no camera with them. (InstantMesh renders 21 views at elevations 30, 0 and -30
    degrees of its test sets; one ring keeps a CPU evaluation affordable.)
    """

    count: int = 8  # views, evenly spaced in azimuth from 0 degrees
    elevation_deg: float = 0.0
    radius: float = ZERO123PP_RADIUS  # the input cameras' distance, so the object fills the frame alike
    fov_deg: float = ZERO123PP_FOV
    resolution: int = 256  # pixels per side

    def poses(self) -> Tensor:
        """(count, 4, 4) OpenGL camera-to-world poses."""
        return turntable_poses(self.count, self.radius, self.elevation_deg)


INPUT_KINDS = ("grid", "sv3d", "random")
RANDOM_INPUTS_STREAM = 4  # random input poses of object <name> come from default_rng([4, seed, crc32(name)])


@dataclass
class InputViews:
    """What the model reconstructs each object from.

    - "grid": the object's grid.png with its cameras.json, the Zero123++ views `lrmesh synth` rendered;
    - "sv3d": the ground truth rendered at the 21 SV3D_u orbit poses (`lrmesh.cameras.sv3d_poses`: frame 0 at
      azimuth 0, elevation 0, radius 4, fov 30) with the cameras `lrmesh reconstruct orbit.mp4` gives them (the
      frames go in as rendered, without a video codec's loss);
    - "random": `count` views at the data engine's random training poses (`lrmesh.data.multiview.training_poses`:
      fov 50, distance 2 - 3.5, any azimuth), drawn per object, whose cameras are normalised as posed photos'
      are (`lrmesh.io.posed.posed_cameras`: centred on where the axes meet, turned, scaled); the mesh is carried
      back by that normalisation's similarity, as `lrmesh reconstruct DIR --cameras` writes it.

    Rendered inputs are `resolution` px, composited on white like the grids.
    """

    kind: str = "grid"
    count: int = 6  # views, "random" only
    resolution: int = 320

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise LrmeshError(f"inputs must be one of {', '.join(INPUT_KINDS)}, got {self.kind!r}")
        if self.count < 1:
            raise LrmeshError(f"the number of random views must be at least 1, got {self.count}")


@dataclass
class EvalObject:
    """One object's inputs and ground truth, read from its folder."""

    name: str
    views: Tensor  # (6, 3, 320, 320) in [0, 1]
    cameras: Tensor  # (6, 16) encoder cameras
    gt: Mesh  # model frame, on the CPU
    to_gt: Tensor | None = None  # (4, 4) similarity from the cameras' model frame to the gt's; None: the same


@dataclass
class EvalSettings:
    """Everything `evaluate_object` needs besides the model and the object."""

    novel_views: NovelViews
    geometry: GeometryProtocol
    seed: int
    device: torch.device
    lpips: torch.nn.Module | None
    inputs: InputViews = field(default_factory=InputViews)
    poses: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.poses = self.novel_views.poses()


def find_objects(folder: str | Path) -> list[Path]:
    """The object folders (those holding grid.png and gt.glb) directly inside `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LrmeshError(f"{folder} is not a folder")
    objects = sorted(p for p in folder.iterdir() if (p / GRID_IMAGE).is_file() and (p / GT_MESH).is_file())
    if not objects:
        raise LrmeshError(f"{folder}: no objects to evaluate; expected sub-folders holding {GRID_IMAGE} and "
                          f"{GT_MESH}, as `lrmesh synth --layout zero123pp -o {folder}` writes")
    return objects


def load_object(path: Path) -> EvalObject:
    """Read an object folder; raises OSError or ValueError (LrmeshError included) naming what is wrong."""
    views = load_views(path / GRID_IMAGE)
    cameras = zero123pp_cameras()
    if (path / GRID_CAMERAS).is_file():
        cameras = torch.tensor(json.loads((path / GRID_CAMERAS).read_text()), dtype=torch.float32)
        if cameras.shape != (views.shape[0], 16):
            raise ValueError(f"{path / GRID_CAMERAS}: expected {views.shape[0]} cameras of 16 numbers, "
                             f"got shape {tuple(cameras.shape)}")
    gt = load_mesh(path / GT_MESH)
    if gt.num_faces == 0:
        raise ValueError(f"{path / GT_MESH} has no faces")
    return EvalObject(path.name, views, cameras, gt)


def rendered_inputs(item: EvalObject, inputs: InputViews, seed: int, device: torch.device) -> EvalObject:
    """`item` with its views and cameras replaced by the rendered inputs `inputs` names (see `InputViews`)."""
    if inputs.kind == "grid":
        return item
    if inputs.kind == "sv3d":
        views = _on_white(item.gt, sv3d_poses(), SV3D_FOV, inputs.resolution, device)
        return EvalObject(item.name, views, sv3d_cameras(), item.gt)
    rng = np.random.default_rng([RANDOM_INPUTS_STREAM, seed, zlib.crc32(item.name.encode())])
    c2w = training_poses(rng, inputs.count)
    cameras, to_gt = posed_cameras(c2w.double().numpy(), TRAINING_FOV)
    views = _on_white(item.gt, c2w, TRAINING_FOV, inputs.resolution, device)
    return EvalObject(item.name, views, cameras, item.gt, to_gt)


def evaluate_folder(model: LRM, folder: str | Path, output_dir: str | Path, limit: int | None = None,
                    novel_views: NovelViews | None = None, geometry: GeometryProtocol | None = None,
                    device: torch.device | str | None = None, seed: int = 0, show_progress: bool = True,
                    inputs: InputViews | None = None) -> dict:
    """Reconstruct and score every object in `folder` (the first `limit` by name), writing metrics.csv and
    summary.json in `output_dir`; returns the summary (see `summarise`).

    Objects that cannot be read are skipped with a warning naming them. `device` (default: the model's) runs the
    renders and winding numbers; `seed` fixes the surface and volume samples and the random input poses;
    `inputs` (default: the grids) says what the model reconstructs from.
    """
    if limit is not None and limit < 1:
        raise LrmeshError(f"limit must be at least 1, got {limit}")
    objects = find_objects(folder)[:limit]
    device = torch.device(device) if device is not None else next(model.parameters()).device
    settings = EvalSettings(novel_views or NovelViews(), geometry or GeometryProtocol(), seed, device,
                            load_lpips(LPIPS_NET), inputs or InputViews())
    if settings.lpips is not None:
        settings.lpips = settings.lpips.to(device)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    columns = ["object", "method", "chamfer", *map(fscore_key, settings.geometry.thresholds), "volume_iou",
               *IMAGE_METRICS, "faces"]
    rows, skipped = [], []
    with open(output_dir / CSV_NAME, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        progress = tqdm(objects, desc="evaluate", unit="object", disable=not show_progress, file=sys.stderr)
        for path in progress:
            try:
                item = load_object(path)
            except (OSError, ValueError) as err:
                warnings.warn(f"skipped {path.name}: {err}", stacklevel=2)
                skipped.append({"object": path.name, "reason": str(err)})
                continue
            object_rows = evaluate_object(model, item, settings)
            for row in object_rows:
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
            handle.flush()
            rows += object_rows
            progress.set_postfix(chamfer=f"{object_rows[0]['chamfer']:.3f}")
    if not rows:
        raise LrmeshError(f"{folder}: none of the {len(objects)} objects could be read (see the warnings)")
    summary = summarise(rows, skipped, settings, folder)
    (output_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def evaluate_object(model: LRM, item: EvalObject, settings: EvalSettings) -> list[dict]:
    """Reconstruct one object and score the model and the sphere baseline -> one row per method."""
    item = rendered_inputs(item, settings.inputs, settings.seed, settings.device)
    predicted = reconstruct(model, item.views.to(settings.device), item.cameras.to(settings.device)).mesh
    if item.to_gt is not None:
        predicted = transform_similarity(predicted, item.to_gt)
    truth = prepare_ground_truth(item.gt, settings.geometry, settings.seed, settings.device)
    target = _render(item.gt, settings)
    rows = []
    for method, mesh in (("model", predicted.to("cpu")), ("sphere", _sphere_baseline(item.gt, settings))):
        row = {"object": item.name, "method": method, **geometry_metrics(mesh, truth)}
        row.update(_image_metrics(_render(mesh, settings), target, settings.lpips))
        rows.append({**row, "faces": mesh.num_faces})
    return rows


def _sphere_baseline(gt: Mesh, settings: EvalSettings) -> Mesh:
    """The sphere fitted to samples of the ground truth's surface (the one the metrics use), in its mean colour."""
    centre, radius = fit_sphere(gt_surface_points(gt, settings.geometry, settings.seed))
    sphere = sphere_mesh(centre, radius)
    colour = _mean_colour(gt)
    if colour is not None:
        sphere.vertex_colors = colour.expand(sphere.num_vertices, 3).clone()
    return sphere


def _mean_colour(mesh: Mesh) -> Tensor | None:
    """Mean vertex colour, or mean texel of a texture, or None for an uncoloured mesh -> (3,)."""
    if mesh.vertex_colors is not None:
        return mesh.vertex_colors.float().mean(dim=0).clamp(0, 1)
    if mesh.texture is not None:
        return mesh.texture.float().reshape(-1, 3).mean(dim=0)
    return None


def _render(mesh: Mesh, settings: EvalSettings) -> Tensor:
    """Novel views of `mesh` composited on white -> (N, 3, H, W) in [0, 1]."""
    views = settings.novel_views
    return _on_white(mesh, settings.poses, views.fov_deg, views.resolution, settings.device)


def _on_white(mesh: Mesh, c2w: Tensor, fov_deg: float, resolution: int, device: torch.device) -> Tensor:
    """`mesh` rendered from OpenGL poses (N, 4, 4), composited on white -> (N, 3, H, W) in [0, 1], on the CPU."""
    renders = render_views(mesh.to(device), c2w, fov_deg, resolution)
    alpha = renders.alpha[..., None]
    return (renders.rgb * alpha + (1 - alpha)).permute(0, 3, 1, 2).clamp(0, 1).cpu()


def _image_metrics(pred: Tensor, target: Tensor, lpips: torch.nn.Module | None) -> dict[str, float | None]:
    scores = {"psnr": float(psnr(pred, target)), "ssim": float(ssim(pred, target)), "lpips": None}
    if lpips is not None:
        with torch.no_grad():
            scores["lpips"] = float(lpips(pred, target))
    return scores


def summarise(rows: list[dict], skipped: list[dict], settings: EvalSettings, folder: str | Path) -> dict:
    """{"folder", "objects" (evaluated), "skipped" [{"object", "reason"}], "lpips" (backbone or None), "seed",
    "inputs", "novel_views", "geometry" (settings), "means" {method: {metric: mean over objects, None if unavailable}}}."""
    metrics = [k for k in rows[0] if k not in ("object", "method", "faces")]
    means = {}
    for method in METHODS:
        chosen = [row for row in rows if row["method"] == method]
        means[method] = {k: _mean([row[k] for row in chosen]) for k in metrics}
    return {
        "folder": str(folder),
        "objects": len({row["object"] for row in rows}),
        "skipped": skipped,
        "lpips": None if settings.lpips is None else LPIPS_NET,
        "seed": settings.seed,
        "inputs": asdict(settings.inputs),
        "novel_views": asdict(settings.novel_views),
        "geometry": asdict(settings.geometry),
        "means": means,
    }


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return math.fsum(present) / len(present) if present else None


def format_table(summary: dict) -> str:
    """The per-method means as an aligned text table; a metric without values (LPIPS offline) shows n/a."""
    means = summary["means"]
    metrics = list(next(iter(means.values())))
    header = ["method", *metrics]
    lines = [[method, *("n/a" if means[method][k] is None else f"{means[method][k]:.4f}" for k in metrics)]
             for method in means]
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    table = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in [header, *lines]]
    skipped = len(summary["skipped"])
    note = (f"{summary['objects']} objects" + (f" ({skipped} skipped)" if skipped else "")
            + f"; means; lower is better for {' and '.join(LOWER_IS_BETTER)}, higher for the rest")
    return "\n".join([note, *table])
