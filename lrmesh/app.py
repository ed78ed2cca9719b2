"""`lrmesh app`: a local web page (gradio) around the same jobs as the CLI (lrmesh.jobs).

One page: an image (a Zero123++ grid, or a photo when a multi-view model is configured) or files (six views, an
orbit video), seed / diffusion steps / model choice, the stages as they run, then the views the mesh was made
from, a 3D viewer, GLB / OBJ / PLY downloads and the turntable video when asked. Bad input shows the CLI's
one-line `lrmesh: error: ...` text in the `error` element and the server goes on. One job runs at a time (a
gradio queue with concurrency 1), so only one model is in memory and two visitors cannot exhaust it.

Everything is local: no share link, no analytics, the front end's assets are served from the installed package.
Components carry stable elem_ids (ELEM_IDS) for scripts and tests; the generate event is the `/generate` API
endpoint for gradio_client.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from lrmesh.errors import LrmeshError
from lrmesh.jobs import JobOptions, JobResult, Reconstructor
from lrmesh.options import int_at_least
from lrmesh.photo.recentre import FOREGROUND_RATIO
from lrmesh.progress import Stages

GRADIO_EXTRA = "pip install 'lrmesh[app]'"
BUNDLED_LABEL = "lrmesh-small (bundled)"
CHECKPOINT_SUFFIXES = (".ckpt", ".safetensors")
ELEM_IDS = ("input-image", "input-files", "generate", "result-model", "result-glb", "result-obj", "result-ply",
            "views-gallery", "error")
# How far along the job is when each stage starts (lrmesh.jobs / lrmesh.reconstruct stage names).
STAGE_PROGRESS = {"views": 0.0, "encode": 0.1, "transformer": 0.2, "grid query": 0.4, "marching cubes": 0.6,
                  "flexicubes": 0.6, "colours": 0.7, "texture": 0.7, "write": 0.8}
CACHE_LIFETIME = (3600, 3600)  # gradio's copies of uploads and results: checked hourly, removed after an hour
VIEWER_BACKGROUND = (1.0, 1.0, 1.0, 1.0)  # RGBA clear colour of the 3D viewer


def model_choices(checkpoint: str | Path | None, models: str | Path | None) -> dict[str, Path | None]:
    """Dropdown label -> checkpoint path (None: the bundled model): -c first (the default), then the bundled
    model, then every checkpoint file and folder in `models` by name."""
    choices: dict[str, Path | None] = {}
    if checkpoint:
        choices[Path(checkpoint).name] = Path(checkpoint)
    choices[BUNDLED_LABEL] = None
    if models:
        folder = Path(models)
        if not folder.is_dir():
            raise LrmeshError(f"--models {folder}: not a folder")
        for entry in sorted(folder.iterdir()):
            if not entry.name.startswith(".") and (entry.is_dir() or entry.suffix.lower() in CHECKPOINT_SUFFIXES):
                choices.setdefault(entry.name, entry)
    return choices


@dataclass
class Engine:
    """The loaded model of the last job (one at a time, so one in memory) and the folder jobs write into."""

    choices: dict[str, Path | None]
    config: str | None = None
    device: str = "auto"
    mv_model: str | None = None
    mv_unet: str | None = None  # InstantMesh's white-background UNet for the multi-view model
    rembg_model: str | None = None  # rembg's u2net.onnx; default: $U2NET_HOME, ~/.u2net (lrmesh.photo)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lrmesh-app-")))
    _loaded: tuple[str, Reconstructor] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _jobs: int = 0

    def reconstructor(self, label: str) -> Reconstructor:
        if label not in self.choices:
            raise LrmeshError(f"unknown model {label!r}; the choices are {', '.join(self.choices)}")
        if self._loaded is None or self._loaded[0] != label:
            self._loaded = None  # drop the previous model before loading the next
            self._loaded = (label, Reconstructor(self.choices[label], self.config, self.device, self.mv_model,
                                                 mv_unet=self.mv_unet, rembg_model=self.rembg_model))
        return self._loaded[1]

    def job_folder(self) -> Path:
        with self._lock:
            self._jobs += 1
            folder = self.root / f"job{self._jobs:05d}"
        folder.mkdir(parents=True)
        return folder


@dataclass
class PageResult:
    """What the page shows after a job: everything None / empty but `error` when it failed."""

    views: list[tuple[str, str]] = field(default_factory=list)  # (PNG path, caption) per input view
    glb: str | None = None
    obj: str | None = None  # the .obj, or a zip of OBJ + MTL + PNG when textured
    ply: str | None = None  # vertex colours only, so none for a textured mesh
    video: str | None = None
    stages: str = ""  # one line of stage timings
    error: str = ""  # the CLI's one-line message

    def values(self) -> tuple:
        """In the order of the page's outputs (build_app)."""
        return (self.views, self.glb, self.glb, self.obj, self.ply, self.video, self.stages, self.error)


def job_inputs(image: str | None, files: list[str] | None) -> list[Path]:
    """The paths a job reads: the image, or the files (six views, one grid, or one video), not both."""
    files = [Path(f) for f in files or []]
    if image and files:
        raise LrmeshError("give either one image or the files, not both (clear one of them)")
    if image:
        return [Path(image)]
    if not files:
        raise LrmeshError("no input: upload a view grid (or a photo) as the image, or six views as files")
    return files


def photo_preview(engine: Engine, image: str | None, remove: bool = True,
                  ratio: float = FOREGROUND_RATIO) -> tuple[Image.Image | None, str]:
    """The photo as a job hands it to the multi-view model (background removed, recentred to `ratio`) and a line
    with its foreground share; (None, "") for no image or a view grid, (None, the error line) when it fails."""
    from lrmesh.photo import default_u2net, prepare_photo, read_photo
    from lrmesh.zero123pp.command import is_single_photo

    try:
        if not image or not is_single_photo([Path(image)]):
            return None, ""
        u2net = default_u2net(engine.rembg_model) if remove else None
        prepared = prepare_photo(read_photo(image), remove, ratio, u2net)
    except LrmeshError as err:
        return None, f"lrmesh: error: {err}"
    if prepared.mode != "RGBA":
        return prepared, "foreground: the whole image (no background removed)"
    alpha = np.array(prepared.getchannel("A")) > 0
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    side = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 if rows.size else 0
    return prepared, (f"foreground: {alpha.mean():.0%} of the pixels; object side {side / max(alpha.shape):.2f} of "
                      f"the image (foreground ratio {ratio:.2f})")


def run_job(engine: Engine, image: str | None, files: list[str] | None, model: str, seed: float, steps: float,
            texture: bool, video: bool, remove_background: bool = True, foreground_ratio: float = FOREGROUND_RATIO,
            report=None) -> PageResult:
    """One click of generate. `report(fraction, stage)` hears each stage as it starts. Never raises: a bad input
    or a failed model load becomes the CLI's one-line message in `error`."""
    try:
        sources = job_inputs(image, files)
        if not 0 < float(foreground_ratio) <= 1:
            raise LrmeshError(f"the foreground ratio must be above 0 and at most 1, got {foreground_ratio}")
        options = JobOptions(texture=bool(texture), seed=int(seed), steps=int(steps),
                             remove_background=bool(remove_background), foreground_ratio=float(foreground_ratio))
        reconstructor = engine.reconstructor(model)
        folder = engine.job_folder()
        stem = sources[0].stem if len(sources) == 1 else "views"
        outputs = [folder / f"{stem}.glb", folder / f"{stem}.obj"]
        if not texture:  # PLY holds vertex colours only
            outputs.append(folder / f"{stem}.ply")
        stages = _ReportingStages(reconstructor.device, report)
        result = reconstructor.run(sources, outputs + ([folder / f"{stem}.mp4"] if video else []), options, stages)
        return _page_result(result, folder)
    except LrmeshError as err:
        return PageResult(error=f"lrmesh: error: {err}")
    except Exception as err:  # a bug, not bad input: one line on the page, the traceback in the server log
        traceback.print_exc(file=sys.stderr)
        return PageResult(error=f"lrmesh: error: internal error ({type(err).__name__}: {err}); see the server log")


class _ReportingStages(Stages):
    """Stages that also tell the page which one is running."""

    def __init__(self, device, report):
        super().__init__(device, show=False)
        self.report = report

    def __call__(self, name: str) -> None:
        super().__call__(name)
        if self.report is not None:
            self.report(STAGE_PROGRESS.get(name, 0.9), name)


def _page_result(result: JobResult, folder: Path) -> PageResult:
    by_suffix: dict[str, list[Path]] = {}
    for path in result.files:
        by_suffix.setdefault(path.suffix.lower(), []).append(path)
    obj = by_suffix[".obj"][0]
    if result.mesh.texture is not None:  # OBJ + MTL + PNG travel together
        obj = _zip([obj, *by_suffix.get(".mtl", []), *by_suffix.get(".png", [])], obj.with_name(obj.stem + "_obj.zip"))
    views = []
    for i, view in enumerate(result.views):  # (3, 320, 320) in [0, 1]
        path = folder / f"view_{i}.png"
        Image.fromarray((view.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)).save(path)
        views.append((str(path), f"view {i + 1}"))
    timings = " · ".join(f"{r.name} {r.seconds:.2f} s" for r in result.stages)
    video = by_suffix.get(".mp4", [None])[0]
    ply = by_suffix.get(".ply", [None])[0]
    return PageResult(views=views, glb=str(by_suffix[".glb"][0]), obj=str(obj), ply=str(ply) if ply else None,
                      video=str(video) if video else None, stages=timings)


def _zip(files: list[Path], path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in files:
            archive.write(file, file.name)
    return path


def _gradio():
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported: no usage reports, no version check
    try:
        import gradio
    except ImportError as err:
        raise LrmeshError(f"the web app needs gradio: {GRADIO_EXTRA} ({err})") from err
    return gradio


def build_app(engine: Engine):
    """The page's gr.Blocks, with the generate event queued one job at a time."""
    gr = _gradio()
    labels = list(engine.choices)
    with gr.Blocks(title="lrmesh", delete_cache=CACHE_LIFETIME) as page:
        gr.Markdown("# lrmesh\nA Zero123++ view grid (640 x 960: 2 views wide, 3 high) or six views in, a mesh out.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="view grid (or photo)", type="filepath", image_mode=None, format="png",
                                 sources=["upload", "clipboard"], height=360, elem_id="input-image")
                files = gr.File(label="or files: six views (azimuth 30, 90, ..., 330), or an orbit video",
                                file_count="multiple", type="filepath", height=140, elem_id="input-files")
                with gr.Row():
                    model = gr.Dropdown(labels, value=labels[0], label="model", elem_id="model")
                    seed = gr.Number(42, label="seed", precision=0, minimum=0, elem_id="seed")
                    steps = gr.Slider(1, 100, value=75, step=1, label="diffusion steps (photo input)",
                                      visible=engine.mv_model is not None, elem_id="steps")
                with gr.Row():
                    rembg = gr.Checkbox(True, label="remove background (photo input)", elem_id="rembg")
                    ratio = gr.Slider(0.5, 1.0, value=FOREGROUND_RATIO, step=0.01, label="foreground ratio",
                                      elem_id="foreground-ratio")
                preview = gr.Image(label="photo as the multi-view model sees it", type="pil", interactive=False,
                                   height=200, elem_id="rembg-preview")
                preview_note = gr.Markdown(elem_id="rembg-note")
                with gr.Row():
                    texture = gr.Checkbox(label="bake a texture map", elem_id="texture")
                    video = gr.Checkbox(label="turntable video", elem_id="video")
                generate = gr.Button("Generate", variant="primary", elem_id="generate")
                error = gr.Markdown(label="error", elem_id="error")
                stages = gr.Markdown(label="stages", elem_id="stages")
            with gr.Column():
                viewer = gr.Model3D(label="mesh", clear_color=VIEWER_BACKGROUND, height=420, elem_id="result-model")
                glb = gr.File(label="GLB", elem_id="result-glb")
                obj = gr.File(label="OBJ (a zip with MTL + PNG when textured)", elem_id="result-obj")
                ply = gr.File(label="PLY (vertex colours)", elem_id="result-ply")
                gallery = gr.Gallery(label="views", columns=6, height=160, elem_id="views-gallery")
                turntable = gr.Video(label="turntable", elem_id="result-video")

        def on_generate(image_path, file_paths, model_label, seed_value, steps_value, texture_on, video_on,
                        rembg_on=True, ratio_value=FOREGROUND_RATIO, progress=gr.Progress()):
            result = run_job(engine, image_path, file_paths, model_label, seed_value, steps_value, texture_on,
                             video_on, rembg_on, ratio_value,
                             report=lambda fraction, name: progress(fraction, desc=name))
            return result.values()

        for control in (image, rembg, ratio):  # the preview follows the photo and both settings
            control.change(lambda *values: photo_preview(engine, *values), inputs=[image, rembg, ratio],
                           outputs=[preview, preview_note], api_name=False, queue=False)
        generate.click(on_generate, inputs=[image, files, model, seed, steps, texture, video, rembg, ratio],
                       outputs=[gallery, viewer, glb, obj, ply, turntable, stages, error], api_name="generate",
                       concurrency_limit=1)
    return page


def add_app_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="the web page: upload views, get a mesh (needs lrmesh[app])",
                       description="Serve a local web page (gradio) that reconstructs uploaded views with the same "
                                   "models as `lrmesh reconstruct`. Never opens a public link.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    p.add_argument("--port", type=int_at_least(1, 65535), default=7860, help="port (default: 7860)")
    p.add_argument("-c", "--checkpoint", help="default model: official .ckpt or lrmesh .safetensors "
                                              "(default: the bundled small lrmesh model)")
    p.add_argument("--config", help="reference-format YAML for the checkpoints (default: inferred from each)")
    p.add_argument("--models", metavar="DIR", help="offer every checkpoint and folder in DIR as a model choice")
    p.add_argument("--mv-model", metavar="DIR", help="multi-view model folder (Zero123++), for photo inputs")
    p.add_argument("--mv-unet", metavar="FILE", help="InstantMesh's white-background UNet for --mv-model")
    p.add_argument("--rembg-model", metavar="FILE", help="rembg's u2net.onnx for photos (default: $U2NET_HOME, "
                                                        "~/.u2net; without it only plain backgrounds are removed)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.set_defaults(func=cmd_app)


def cmd_app(args: argparse.Namespace) -> int:
    if args.mv_model is not None:  # fail before serving, with the message a photo job would give
        Reconstructor(mv_model=args.mv_model, mv_unet=args.mv_unet)
    engine = Engine(model_choices(args.checkpoint, args.models), args.config, args.device, args.mv_model,
                    args.mv_unet, args.rembg_model)
    page = build_app(engine)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a plain kill still removes the job folders
    print(f"lrmesh: serving on http://{args.host}:{args.port} (Ctrl-C stops)", file=sys.stderr)
    try:
        page.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port, share=False,
                                                       ssr_mode=False, mcp_server=False, pwa=False,
                                                       enable_monitoring=False, inbrowser=False)
    finally:
        page.close()  # stop the server thread now rather than at interpreter exit
        shutil.rmtree(engine.root, ignore_errors=True)
    return 0
