"""The `lrmesh` command."""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

import torch

from lrmesh.app import add_app_parser
from lrmesh.batch import add_batch_options, cmd_batch
from lrmesh.cameras import SV3D_FRAMES, SV3D_P_ELEVATION
from lrmesh.errors import LrmeshError
from lrmesh.options import (
    SEED_MAX,
    Parser,
    float_in,
    int_at_least,
    positive_float,
    positive_int,
    seed_int,
    writable_file,
    writable_folder,
)
from lrmesh.zero123pp.command import add_photo_options, add_views_parser

ASSETS = resources.files("lrmesh") / "assets"
EXAMPLE_VIEWS = "example_views.png"
# The default checkpoint: the small model trained on the synthetic data engine (README, under "Training").
DEFAULT_CHECKPOINT = "lrmesh-small.safetensors"
VIDEO_RADIUS = 4.5  # the reference CLI's turntable distance
VIDEO_ELEVATION = 20.0
VIDEO_FRAMES, VIDEO_RESOLUTION = 120, 512
# `lrmesh synth` view size per layout: the reference trains on 512 px renders, Zero123++ views are 320 px, and
# 400 px is NeRF-synthetic's usual half resolution.
SYNTH_RESOLUTION = {"training": 512, "zero123pp": 320, "blender": 400, "dtu": 400, "colmap": 400}


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LrmeshError("--device cuda: no CUDA device is available to PyTorch here")
    return torch.device(name)


def _add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="six views (or a Zero123++ grid) -> textured mesh",
                       description="Reconstruct a mesh from a Zero123++ view grid (640x960), a folder of six views, "
                                   "or six image files; from one photo (made into six views first, see `lrmesh "
                                   "views`); from an SV3D orbit (a video, or 21 frames with --orbit sv3d); or from "
                                   "your own photos with --cameras transforms.json. Without arguments: the bundled "
                                   "example.")
    p.add_argument("views", nargs="*", help="grid image, folder, or view files (default: bundled example); or one "
                                           "photo, made into six views first (see `lrmesh views`)")
    p.add_argument("-c", "--checkpoint", help="official InstantMesh .ckpt or lrmesh .safetensors "
                                              "(default: the bundled small lrmesh model)")
    p.add_argument("--config", help="reference-format YAML for the checkpoint (default: inferred from it)")
    p.add_argument("-o", "--output", help="mesh file: .obj, .glb or .ply (default: outputs/<input name>.obj)")
    p.add_argument("--texture", action="store_true", help="bake a UV texture map instead of vertex colours")
    p.add_argument("--texture-resolution", type=positive_int, default=1024, help="texture map side in pixels")
    p.add_argument("--video", nargs="?", const="", default=None, metavar="MP4",
                   help="also render a turntable video (default path: beside the mesh)")
    p.add_argument("--video-frames", type=positive_int, default=None, help="default 120 (OpenLRM models: its 160)")
    p.add_argument("--video-resolution", type=positive_int, default=None,
                   help="default 512 (OpenLRM models: the release's render size)")
    p.add_argument("--views", dest="num_views", type=int, choices=(4, 6), default=6,
                   help="use all six views or the reference's four-view subset (0, 2, 4, 5)")
    p.add_argument("--scale", type=positive_float, default=1.0,
                   help="camera radius factor (radius 4.0 x scale), as run.py")
    _add_posed_inputs(p)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="encoder and transformer precision (InstantMesh and OpenLRM models): fp32 (reference parity), bf16 (CPU with "
                        "AVX512-BF16, or GPU), fp16 (CUDA only); the mesh extraction is fp32 always")
    p.add_argument("--seed", type=seed_int, default=42)
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for PyTorch (default: its own choice)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    add_photo_options(p, with_seed=False)
    openlrm = p.add_argument_group("OpenLRM checkpoints (one photo: -c a v1.1 folder or a v1.0 model.pth; "
                                   "--no-rembg then feeds the photo exactly as OpenLRM's inference does)")
    openlrm.add_argument("--mesh-resolution", type=int_at_least(2), default=None,
                         help="marching-cubes grid side (default 384)")
    openlrm.add_argument("--mesh-threshold", type=positive_float, default=None, help="density iso-level (default 3.0)")
    openlrm.add_argument("--source-size", type=positive_int, default=None,
                         help="encoder input size, for a model that is no released preset (224/336/448 released)")
    openlrm.add_argument("--encoder-heads", type=positive_int, default=None,
                         help="encoder attention heads, for a v1.0 model whose ViT is not 768 wide")
    add_batch_options(p)
    p.set_defaults(func=cmd_reconstruct)


def _add_posed_inputs(p: argparse.ArgumentParser) -> None:
    """reconstruct's options for views with cameras other than Zero123++'s (lrmesh.io.orbit, lrmesh.io.posed)."""
    p.add_argument("--orbit", choices=("sv3d",), default=None,
                   help="the views are an SV3D orbit: a video, a folder of frames or the frame files, 21 frames, "
                        "frame i at azimuth 360/21*i (frame 0 at azimuth 0, counter-clockwise seen from above); "
                        "implied by a video file")
    p.add_argument("--elevation", type=float_in(-90, 90), default=None, metavar="DEG",
                   help="SV3D orbit elevation in degrees: 0 for SV3D_u (default), the orbit's for SV3D_p (its "
                        f"default is {SV3D_P_ELEVATION:g})")
    p.add_argument("--orbit-views", type=int_at_least(1, SV3D_FRAMES), default=None, metavar="K",
                   help="use K of the 21 orbit frames, evenly spaced from frame 0 (default: all)")
    p.add_argument("--cameras", metavar="JSON", default=None,
                   help="VIEWS is a folder of your photos and JSON their cameras (NeRF-synthetic transforms.json, "
                        "any world frame); the mesh is written in that world frame and its units")


def cmd_reconstruct(args: argparse.Namespace) -> int:
    if args.batch:  # lrmesh/batch.py
        return cmd_batch(args)
    from lrmesh.api import load_inputs
    from lrmesh.io.mesh import MESH_FORMATS
    from lrmesh.io.orbit import is_video
    from lrmesh.io.posed import save_world_mesh
    from lrmesh.openlrm import openlrm_files
    from lrmesh.precision import check_precision
    from lrmesh.progress import Stages
    from lrmesh.zero123pp.command import GRID_SUFFIX, api_from_args, is_single_photo, photo_views

    output = Path(args.output) if args.output else None
    if output is not None and output.suffix.lower() not in MESH_FORMATS:
        raise LrmeshError(f"cannot write {output.name!r}: the mesh file must end in one of {', '.join(MESH_FORMATS)}")
    if args.checkpoint and openlrm_files(args.checkpoint):
        return _reconstruct_openlrm(args, output)
    if any(v is not None for v in (args.mesh_resolution, args.mesh_threshold, args.source_size, args.encoder_heads)):
        raise LrmeshError("--mesh-resolution, --mesh-threshold, --source-size and --encoder-heads apply to OpenLRM "
                          "checkpoints only")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))

    with resources.as_file(ASSETS) as assets:
        view_sources = args.views or [assets / EXAMPLE_VIEWS]
        output = writable_file(output or Path("outputs") / f"{Path(view_sources[0]).stem}.obj", "mesh file")
        if args.video:
            writable_file(args.video, "video")
        lr = api_from_args(args, checkpoint=_checkpoint_path(args.checkpoint, assets, say), config=args.config)
        check_precision(args.precision, lr.device)
        photo = not (args.orbit or args.cameras or is_video(view_sources[0])) and is_single_photo(view_sources)
        to_world = None  # posed photos: model frame -> the cameras' world, for the written mesh
        if photo:
            lr.check_multiview()
        else:
            views, to_world = load_inputs(view_sources, args.num_views, args.scale, orbit=args.orbit,
                                          elevation=args.elevation, orbit_views=args.orbit_views,
                                          cameras=args.cameras)
            _warn_blank_views(views.images)
        stages = Stages(lr.device, show=not args.quiet)
        stages("load")
        try:
            model = lr.model  # loaded while the bundled checkpoint's folder is open
        except LrmeshError:
            stages.abort()  # the error goes on a line of its own
            raise
    stages.finish()

    written = []
    if photo:  # one photo: its six Zero123++ views first, the grid written beside the mesh
        views = photo_views(lr, args, view_sources[0], args.num_views, args.scale)
        written.append(output.with_name(output.stem + GRID_SUFFIX))
        views.grid.save(written[-1])
    say(f"lrmesh: reconstructing on {lr.device} ({model.kind} model, {views.images.shape[0]} views)")
    mesh = lr.reconstruct(views, texture=args.texture, texture_resolution=args.texture_resolution, stages=stages,
                          precision=args.precision)
    stages("write")
    mesh_files = lr.export(mesh, output) if to_world is None else save_world_mesh(mesh, to_world, output)
    written = mesh_files + written
    stages.finish()
    say(f"lrmesh: {mesh.num_vertices} vertices, {mesh.num_faces} faces; {stages.total_seconds:.1f} s from loading "
        "to the written file")
    if args.video is not None:
        written += _write_video(mesh, args, output, say)
    for path in written:
        print(path)
    return 0


def _warn_blank_views(views: torch.Tensor) -> bool:
    """Warn about views (V, 3, H, W) that show no object; True when none shows one."""
    from lrmesh.io.views import blank_views

    blank = blank_views(views)
    if blank:
        listed = f"view{'s' * (len(blank) > 1)} {', '.join(str(i + 1) for i in blank)} of {len(views)} " \
                 f"show{'s' * (len(blank) == 1)} no object"
        which = f"none of the {len(views)} views shows an object" if len(blank) == len(views) else listed
        print(f"lrmesh: warning: {which} (all one plain background colour)", file=sys.stderr)
    return len(blank) == len(views)


def _reconstruct_openlrm(args: argparse.Namespace, output: Path | None) -> int:
    """One photo through an OpenLRM model (the logic lives in lrmesh/single_image.py)."""
    from lrmesh.single_image import reconstruct_to_files

    if len(args.views) != 1:
        raise LrmeshError(f"an OpenLRM model reconstructs from one photo; got {len(args.views)} inputs")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    say = None if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    output = output or Path("outputs") / f"{Path(args.views[0]).stem}.obj"
    video = None if args.video is None else Path(args.video) if args.video else output.with_suffix(".mp4")
    written = reconstruct_to_files(args.views[0], args.checkpoint, output, mesh_resolution=args.mesh_resolution,
                                   mesh_threshold=args.mesh_threshold, remove_background=args.rembg, video=video,
                                   video_frames=args.video_frames, video_resolution=args.video_resolution,
                                   source_size=args.source_size, encoder_heads=args.encoder_heads,
                                   device=_resolve_device(args.device), say=say, show_progress=not args.quiet,
                                   foreground_ratio=args.foreground_ratio, rembg_model=args.rembg_model,
                                   precision=args.precision)
    for path in written:
        print(path)
    return 0


def _checkpoint_path(checkpoint: str | None, assets: Path, say) -> Path:
    """--checkpoint, or the bundled default (inside `assets`, the open ASSETS folder), said so."""
    if checkpoint:
        return Path(checkpoint)
    say("lrmesh: no --checkpoint given: using the bundled small model (2.3 M parameters, trained on synthetic "
        "objects only: coarse shapes; an official InstantMesh checkpoint gives far better meshes)")
    return assets / DEFAULT_CHECKPOINT


def _write_video(mesh, args: argparse.Namespace, output: Path, say) -> list[Path]:
    from lrmesh.io.video import render_turntable, write_video

    path = Path(args.video) if args.video else output.with_suffix(".mp4")
    say(f"lrmesh: rendering {args.video_frames or VIDEO_FRAMES} turntable frames")
    frames = render_turntable(mesh, num_frames=args.video_frames or VIDEO_FRAMES, radius=VIDEO_RADIUS * args.scale,
                              elevation_deg=VIDEO_ELEVATION, resolution=args.video_resolution or VIDEO_RESOLUTION,
                              progress=not args.quiet)
    write_video(frames, path)
    return [path]


def _add_synth(sub: argparse._SubParsersAction) -> None:
    from lrmesh.data import LAYOUTS

    p = sub.add_parser("synth", help="render procedural objects or your meshes into multi-view datasets",
                       description="Render procedural objects (--count) or mesh files (--mesh: OBJ, GLB, PLY) with "
                                   "their ground-truth meshes in the reference's training layout, as Zero123++ grids "
                                   "for `lrmesh reconstruct`, or in the NeRF-synthetic (blender) layout.")
    p.add_argument("-o", "--output", required=True, help="output folder (created; objects are added to it)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--count", type=positive_int, help="this many procedural objects, seeds S, S+1, ...")
    source.add_argument("--mesh", nargs="+", metavar="FILE", help="mesh files to render")
    p.add_argument("--layout", choices=LAYOUTS, default="training",
                   help="training: InstantMesh's training data (rendering_random_32views/, valid_paths.json); "
                        "zero123pp: a 640x960 view grid per object; blender: NeRF-synthetic transforms_*.json; "
                        "dtu: NeuS's DTU layout (cameras_sphere.npz, image/, mask/); colmap: images/ + sparse/0 "
                        "in a random similarity frame")
    p.add_argument("--views", type=positive_int, default=None,
                   help="views per object (default: 32 training, 100 blender train views, 64 dtu, 100 colmap; "
                        "zero123pp is always 6)")
    p.add_argument("--resolution", type=positive_int, default=None,
                   help=f"view size in pixels (default: {', '.join(f'{k} {v}' for k, v in SYNTH_RESOLUTION.items())})")
    p.add_argument("--zero123pp-inputs", action="store_true",
                   help="training layout: make the first six views the Zero123++ views (radius 4, fov 30), the "
                        "views `lrmesh reconstruct` is given, and the rest random")
    p.add_argument("--no-occupancy", dest="occupancy", action="store_false",
                   help="training layout: skip occupancy.npz (16k labelled points per object for the occupancy "
                        "loss; about 2 s an object on a CPU)")
    p.add_argument("--seed", type=seed_int, default=0,
                   help="object i gets seed S + i for its shape (procedural) and its random cameras")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from lrmesh.data.multiview import default_views, load_source_mesh, write_object
    from lrmesh.data.synthetic import random_object

    views = args.views if args.views is not None else default_views(args.layout)
    resolution = args.resolution if args.resolution is not None else SYNTH_RESOLUTION[args.layout]
    last_seed = args.seed + (args.count if args.count is not None else len(args.mesh)) - 1
    if last_seed > SEED_MAX:
        raise LrmeshError(f"--seed {args.seed}: the objects' seeds would pass {SEED_MAX} (numpy seeds are 32-bit)")
    if args.zero123pp_inputs and (args.layout != "training" or views <= 6):
        raise LrmeshError("--zero123pp-inputs needs --layout training and more than 6 --views")
    if args.layout == "zero123pp" and args.views not in (None, default_views("zero123pp")):
        print(f"lrmesh: note: the zero123pp layout always has its 6 views; --views {args.views} is ignored",
              file=sys.stderr)
    device = _resolve_device(args.device)
    writable_folder(args.output)
    jobs = _synth_jobs(args)
    failed = []
    for name, seed, path in tqdm(jobs, desc="synth", unit="object", disable=args.quiet, file=sys.stderr):
        try:
            if path is None:
                mesh, source, to_model = random_object(seed), f"procedural seed {seed}", None
            else:
                (mesh, to_model), source = load_source_mesh(path), str(path)
            folder = write_object(mesh.to(device), args.output, name, args.layout, views, resolution, seed, source,
                                  to_model, zero123pp_inputs=args.zero123pp_inputs, occupancy=args.occupancy)
        except LrmeshError as err:
            tqdm.write(f"lrmesh: warning: skipped: {err}", file=sys.stderr)
            failed.append(str(path))
            continue
        print(folder)
    if failed:
        raise LrmeshError(f"{len(failed)} of {len(jobs)} meshes could not be used: {', '.join(failed)}")
    return 0


def _synth_jobs(args: argparse.Namespace) -> list[tuple[str, int, Path | None]]:
    """(object name, seed, mesh file or None for a procedural object) per object, seeds counting up from --seed.

    Procedural objects are named synth_<seed>; mesh files by their stem, made unique with _2, _3, ...
    """
    if args.count is not None:
        return [(f"synth_{args.seed + i:06d}", args.seed + i, None) for i in range(args.count)]
    jobs, used = [], set()
    for i, path in enumerate(map(Path, args.mesh)):
        name, copy = path.stem, 1
        while name in used:
            copy += 1
            name = f"{path.stem}_{copy}"
        used.add(name)
        jobs.append((name, args.seed + i, path))
    return jobs


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the reconstruction model (stage 1 NeRF, stage 2 mesh)",
                       description="Train a stage from a YAML config (a file, or a name under lrmesh/configs: "
                                   "instant-nerf-large, instant-mesh-large, small-geometry, small-color, "
                                   "small-stage2, tiny-stage1, tiny-stage2, openlrm-small-1.1, "
                                   "openlrm-tiny), with key=value overrides checked "
                                   "against the config, e.g. data.root=data/objaverse optim.lr=1e-4 devices=8.")
    p.add_argument("config", help="YAML file or config name")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (values read as YAML)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUTPUT/checkpoints/last.ckpt (same steps and samples as without a stop)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from lrmesh.train.config import load_train_config
    from lrmesh.train.run import train

    cfg = load_train_config(args.config, args.overrides)
    writable_folder(cfg.output)
    train(cfg, resume=args.resume, progress=not args.quiet)
    return 0


def _add_fit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="fit NeuS or NeRF to many posed photos of one scene, export its mesh",
                       description="Per-scene reconstruction (instant-nsr-pl style, pure PyTorch): optimise a "
                                   "hash-grid NeuS (surface) or NeRF (appearance) on a Blender/NeRF-synthetic, DTU "
                                   "(NeuS layout) or COLMAP scene, then write OUT/mesh.obj (marching cubes, vertex "
                                   "colours, the dataset's world frame), OUT/metrics.json (test PSNR, steps, "
                                   "seconds) and OUT/video.mp4. Presets: lrmesh/configs/fit/{neus,nerf}.yaml; "
                                   "key=value overrides are checked, e.g. render.rays_max=8192 mesh.format=.ply.")
    p.add_argument("data", help="scene folder (transforms_*.json, cameras_sphere.npz, or sparse/0)")
    p.add_argument("--method", choices=("neus", "nerf"), default="neus", help="default: neus")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--steps", type=positive_int, help="optimisation steps (default: the preset's, 20000)")
    p.add_argument("--minutes", type=positive_float,
                   help="stop fitting after this many minutes; the outputs are written")
    p.add_argument("--config", help="YAML of config keys applied over the preset")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides (values read as YAML)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoints/last.ckpt")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fit)


def cmd_fit(args: argparse.Namespace) -> int:
    from lrmesh.neus.config import load_fit_config
    from lrmesh.neus.fit import FitInterrupted, check_one_device, fit

    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"steps={args.steps}")
    if args.minutes is not None:
        overrides.append(f"max_minutes={args.minutes}")
    cfg = load_fit_config(args.method, args.config, overrides)
    check_one_device(cfg)  # before the output folder is made
    writable_folder(args.output)
    try:
        metrics = fit(args.data, cfg, args.output, resume=args.resume, progress=not args.quiet)
    except FitInterrupted as stop:
        print(f"lrmesh: {stop}", file=sys.stderr)
        return 130
    if metrics:
        print(json.dumps(metrics, indent=2))
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a model on held-out objects with ground-truth meshes",
                       description="Reconstruct every object of a folder written by `lrmesh synth --layout zero123pp` "
                                   "(from its grid.png, or from renders of its ground truth at SV3D or random poses: "
                                   "--inputs) and score it against its gt.glb: Chamfer distance, F-score at 0.1 and 0.2, "
                                   "volume IoU, and novel-view PSNR / SSIM / LPIPS (LPIPS only when its weights are "
                                   "already on disk), beside an oracle sphere baseline. Writes metrics.csv and "
                                   "summary.json and prints the means.")
    p.add_argument("folder", help="folder of objects (<name>/grid.png, cameras.json, gt.glb)")
    p.add_argument("-c", "--checkpoint", help="official InstantMesh .ckpt or lrmesh .safetensors "
                                              "(default: the bundled small lrmesh model)")
    p.add_argument("--config", help="reference-format YAML for the checkpoint (default: inferred from it)")
    p.add_argument("-o", "--output", help="folder for metrics.csv and summary.json "
                                          "(default: outputs/evaluate/<folder name>)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N objects (by name)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the surface and volume samples")
    p.add_argument("--gt-surface", choices=("outer", "all"), default="outer",
                   help="ground-truth surface for Chamfer / F-score: the outer surface of its parts' union "
                        "(default), or every triangle, hidden inner surfaces included")
    p.add_argument("--inputs", choices=("grid", "sv3d", "random"), default="grid",
                   help="what the model reconstructs from: each object's grid.png (default), its ground truth "
                        "rendered at the 21 SV3D orbit poses, or rendered at --random-views random training "
                        "poses whose cameras are normalised as posed photos' are")
    p.add_argument("--random-views", type=positive_int, default=6,
                   help="views per object with --inputs random (default 6)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import warnings

    from tqdm.auto import tqdm

    from lrmesh.checkpoints import load_model
    from lrmesh.evaluate import CSV_NAME, SUMMARY_NAME, InputViews, evaluate_folder, find_objects, format_table
    from lrmesh.metrics import GeometryProtocol

    find_objects(args.folder)  # a folder without objects is an error before the model loads
    torch.manual_seed(args.seed)
    device = _resolve_device(args.device)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    output = Path(args.output) if args.output else Path("outputs") / "evaluate" / Path(args.folder).resolve().name
    writable_folder(output)
    with resources.as_file(ASSETS) as assets:
        checkpoint = _checkpoint_path(args.checkpoint, assets, say)
        say(f"lrmesh: loading {checkpoint}")
        model = load_model(checkpoint, args.config).to(device)
    with warnings.catch_warnings():  # skipped objects and LPIPS as one line each, above the progress bar
        warnings.showwarning = lambda message, *_, **__: tqdm.write(f"lrmesh: warning: {message}", file=sys.stderr)
        summary = evaluate_folder(model, args.folder, output, limit=args.limit, device=device, seed=args.seed,
                                  geometry=GeometryProtocol(gt_surface=args.gt_surface), show_progress=not args.quiet,
                                  inputs=InputViews(args.inputs, args.random_views))
    print(format_table(summary))
    say(f"lrmesh: wrote {output / CSV_NAME} and {output / SUMMARY_NAME}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lrmesh", description="A few images of an object in, a 3D mesh out.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    _add_reconstruct(sub)
    add_views_parser(sub)
    _add_synth(sub)
    _add_evaluate(sub)
    _add_train(sub)
    _add_fit(sub)
    add_app_parser(sub)  # lrmesh/app.py
    return parser


def _version() -> str:
    from lrmesh import __version__

    return f"lrmesh {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # key=value overrides may also follow options (`lrmesh fit DATA -o OUT steps=10`)
        if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return args.func(args)
    except LrmeshError as err:
        if not err.reported_elsewhere:
            print(f"lrmesh: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
