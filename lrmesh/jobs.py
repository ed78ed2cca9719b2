"""One reconstruction job, inputs and options in, files out: the seam that batch mode and the web app share.

`Reconstructor` loads a model once and runs any number of jobs with it. A job reads its input views (a Zero123++
grid image, a folder of six views or six image files, as `lrmesh.io.views.load_views` reads them), reconstructs
the mesh and writes the files asked for; one photo goes through the multi-view model first (`--mv-model`).
Input kinds it cannot serve (one photo without a multi-view model, an orbit video) fail with the same one-line
`LrmeshError` the CLI gives for them.

Files appear whole or not at all, and the first file asked for appears last: everything is written into a
hidden staging folder beside the outputs and then renamed into place, the first output after the others. So an
interrupted job leaves no half-written file, and when the first output exists the job is finished (batch mode
skips such inputs on a re-run).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from lrmesh.api import Views
from lrmesh.errors import LrmeshError
from lrmesh.geometry.mesh import Mesh
from lrmesh.photo.recentre import FOREGROUND_RATIO
from lrmesh.progress import StageRecord, Stages

VIDEO_SUFFIX = ".mp4"

Say = Callable[[str], None]


@dataclass(frozen=True)
class JobOptions:
    """What a job does besides reading views and extracting the mesh."""

    texture: bool = False  # bake a UV texture map (xatlas) instead of vertex colours
    texture_resolution: int = 1024  # texture map side in pixels
    num_views: int = 6  # 6, or the reference's four-view subset (views 0, 2, 4, 5)
    scale: float = 1.0  # camera radius factor: radius 4.0 x scale, as the reference's run.py
    seed: int = 42  # torch seed set before the job (and the multi-view model's sampler seed)
    steps: int = 75  # diffusion steps of the multi-view model, for a photo input
    remove_background: bool = True  # photo input: remove its background and recentre it (lrmesh.photo)
    foreground_ratio: float = FOREGROUND_RATIO  # photo input: object side / image side after recentring
    video_frames: int = 120  # turntable frames, when an .mp4 output is asked for
    video_resolution: int = 512  # turntable frame side in pixels


@dataclass
class JobResult:
    files: list[Path]  # everything written, in the order asked (a textured OBJ's MTL and PNG after it)
    views: Tensor  # (V, 3, 320, 320) RGB in [0, 1]: the views the mesh was made from
    mesh: Mesh  # model frame (z up), on the CPU
    stages: list[StageRecord]  # wall time and peak memory per stage


def bundled_checkpoint() -> Path:
    """The bundled small model's file (inside the installed package, which is a plain folder)."""
    from lrmesh.cli import ASSETS, DEFAULT_CHECKPOINT

    with resources.as_file(ASSETS / DEFAULT_CHECKPOINT) as path:
        return Path(path)


class Reconstructor:
    """A loaded reconstruction model (through the Python API, `lrmesh.api.LRMesh`) and the jobs run with it.
    Nothing is printed unless `say` is given."""

    def __init__(self, checkpoint: str | Path | None = None, config: str | Path | None = None,
                 device: str | torch.device = "auto", mv_model: str | Path | None = None, say: Say | None = None,
                 mv_unet: str | Path | None = None, rembg_model: str | Path | None = None, **openlrm_sizes):
        from lrmesh.api import LRMesh

        self.checkpoint = Path(checkpoint) if checkpoint else bundled_checkpoint()
        self.api = LRMesh(self.checkpoint, config, mv_model=mv_model, mv_unet=mv_unet, rembg_model=rembg_model,
                          device=device, say=say, **openlrm_sizes)  # source_size / encoder_heads (LRMesh)
        if mv_model is not None:
            self.api.check_multiview()  # a missing or partial folder fails here, before any job
        self.device = self.api.device
        self.model = self.api.model

    def read_views(self, sources: str | Path | Sequence[str | Path], options: JobOptions) -> Views:
        """Input views (V, 3, 320, 320) with their encoder cameras (V, 16), z-up model frame: a grid, six views,
        an SV3D orbit video, or one photo through the multi-view model (its background removed and recentred)."""
        from lrmesh.api import load_inputs
        from lrmesh.io.orbit import is_video
        from lrmesh.zero123pp.command import is_single_photo

        paths = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(s) for s in sources]
        if not is_video(paths[0]) and is_single_photo(paths):
            self.api.check_multiview()
            return self.api.views(paths[0], steps=options.steps, seed=options.seed, remove=options.remove_background,
                                  foreground_ratio=options.foreground_ratio, num_views=options.num_views,
                                  scale=options.scale)
        return load_inputs(paths, options.num_views, options.scale)[0]  # an SV3D orbit video, a grid, six views

    def run(self, sources: str | Path | Sequence[str | Path], outputs: Sequence[str | Path],
            options: JobOptions = JobOptions(), stages: Stages | None = None) -> JobResult:
        """Reconstruct one object and write `outputs`: mesh files (.obj, .glb, .ply) and optionally one .mp4
        turntable. The mesh (model frame, z up) goes to every mesh file in that format's frame (lrmesh.io.mesh)."""
        from lrmesh.io.mesh import MESH_FORMATS

        outputs = [Path(p) for p in outputs]
        for path in outputs:
            if path.suffix.lower() not in (*MESH_FORMATS, VIDEO_SUFFIX):
                raise LrmeshError(f"cannot write {path.name!r}: the output must end in one of "
                                  f"{', '.join((*MESH_FORMATS, VIDEO_SUFFIX))}")
        torch.manual_seed(options.seed)
        stages = stages or Stages(self.device, show=False)
        stages("views")
        if self.api.single_view:  # an OpenLRM model: one photo, its mesh kept in OpenLRM's coordinates
            paths = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(s) for s in sources]
            if len(paths) != 1 or paths[0].is_dir():
                raise LrmeshError(f"an OpenLRM model reconstructs from one photo; got {len(paths)} inputs")
            mesh, images = self.api.photo_mesh(paths[0], options.remove_background, options.foreground_ratio,
                                               stages=stages)
        else:
            views = self.read_views(sources, options)
            mesh = self.api.reconstruct(views, texture=options.texture, texture_resolution=options.texture_resolution,
                                        stages=stages)
            images = views.images
        stages("write")
        files = write_outputs(mesh, outputs, options, keep_coordinates=self.api.single_view)
        stages.finish()
        return JobResult(files=files, views=images, mesh=mesh, stages=list(stages.records))


def write_outputs(mesh: Mesh, outputs: Sequence[Path], options: JobOptions,
                  keep_coordinates: bool = False) -> list[Path]:
    """Write the mesh (model frame) to each path (all in one folder), staged in a hidden folder there, the first
    output renamed into place last. `keep_coordinates`: OBJ / PLY without the reference's z mirror (OpenLRM)."""
    from lrmesh.io.mesh import save_mesh

    folder = outputs[0].parent
    if any(path.parent != folder for path in outputs):
        raise ValueError(f"a job's outputs share one folder, got {', '.join(map(str, outputs))}")
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".lrmesh-staging-", dir=folder))
    try:
        staged: list[tuple[Path, Path]] = []  # (staged file, final path)
        for index, path in enumerate(outputs):
            where = staging / str(index)
            where.mkdir()
            if path.suffix.lower() == VIDEO_SUFFIX:
                written = [_write_turntable(mesh, where / path.name, options)]
            else:
                written = save_mesh(mesh, where / path.name, keep_coordinates=keep_coordinates)
            staged += [(file, path.with_name(file.name)) for file in written]
        first = [pair for pair in staged if pair[1] == outputs[0]]
        for file, final in [pair for pair in staged if pair[1] != outputs[0]] + first:
            os.replace(file, final)
        return [final for _, final in staged]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_turntable(mesh: Mesh, path: Path, options: JobOptions) -> Path:
    from lrmesh.cli import VIDEO_ELEVATION, VIDEO_RADIUS
    from lrmesh.io.video import render_turntable, write_video

    frames = render_turntable(mesh, num_frames=options.video_frames, radius=VIDEO_RADIUS * options.scale,
                              elevation_deg=VIDEO_ELEVATION, resolution=options.video_resolution, progress=False)
    return write_video(frames, path)
