"""The `lrmesh` command."""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

import torch

from lrmesh.cameras import FOUR_VIEW_SUBSET, ZERO123PP_RADIUS, zero123pp_cameras
from lrmesh.errors import LrmeshError

ASSETS = resources.files("lrmesh") / "assets"
EXAMPLE_VIEWS = "example_views.png"
# Until a trained model ships, the default checkpoint is the parity-test model: right shapes, random weights.
DEFAULT_CHECKPOINT = "tiny-random.safetensors"
VIDEO_RADIUS = 4.5  # the reference CLI's turntable distance
VIDEO_ELEVATION = 20.0


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LrmeshError("--device cuda: no CUDA device is available to PyTorch here")
    return torch.device(name)


def _add_reconstruct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reconstruct", help="six views (or a Zero123++ grid) -> textured mesh",
                       description="Reconstruct a mesh from a Zero123++ view grid (640x960), a folder of six views, "
                                   "or six image files. Without arguments: the bundled example.")
    p.add_argument("views", nargs="*", help="grid image, folder, or view files (default: bundled example)")
    p.add_argument("-c", "--checkpoint", help="official InstantMesh .ckpt or lrmesh .safetensors "
                                              "(default: bundled tiny model with RANDOM weights)")
    p.add_argument("--config", help="reference-format YAML for the checkpoint (default: inferred from it)")
    p.add_argument("-o", "--output", help="mesh file: .obj, .glb or .ply (default: outputs/<input name>.obj)")
    p.add_argument("--texture", action="store_true", help="bake a UV texture map instead of vertex colours")
    p.add_argument("--texture-resolution", type=int, default=1024, help="texture map side in pixels")
    p.add_argument("--video", nargs="?", const="", default=None, metavar="MP4",
                   help="also render a turntable video (default path: beside the mesh)")
    p.add_argument("--video-frames", type=int, default=120)
    p.add_argument("--video-resolution", type=int, default=512)
    p.add_argument("--views", dest="num_views", type=int, choices=(4, 6), default=6,
                   help="use all six views or the reference's four-view subset (0, 2, 4, 5)")
    p.add_argument("--scale", type=float, default=1.0, help="camera radius factor (radius 4.0 x scale), as run.py")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: its own choice)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_reconstruct)


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from lrmesh.checkpoints import load_model
    from lrmesh.io.mesh import MESH_FORMATS, save_mesh
    from lrmesh.io.views import load_views
    from lrmesh.progress import Stages
    from lrmesh.reconstruct import reconstruct

    output = Path(args.output) if args.output else None
    if output is not None and output.suffix.lower() not in MESH_FORMATS:
        raise LrmeshError(f"cannot write {output.name!r}: the mesh file must end in one of {', '.join(MESH_FORMATS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = _resolve_device(args.device)
    say = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))

    with resources.as_file(ASSETS) as assets:
        view_sources = args.views or [assets / EXAMPLE_VIEWS]
        checkpoint = Path(args.checkpoint) if args.checkpoint else assets / DEFAULT_CHECKPOINT
        if not args.checkpoint:
            say("lrmesh: no --checkpoint given: using the bundled tiny model, whose weights are RANDOM "
                "(a parity-test model). Its mesh shows the pipeline works, not what the object looks like.")
        views = load_views(view_sources if len(view_sources) > 1 else view_sources[0], args.num_views)
        say(f"lrmesh: loading {checkpoint}")
        model = load_model(checkpoint, args.config).to(device)
    subset = FOUR_VIEW_SUBSET if args.num_views == 4 else None
    cameras = zero123pp_cameras(radius=ZERO123PP_RADIUS * args.scale, views=subset)

    output = output or Path("outputs") / f"{Path(view_sources[0]).stem}.obj"
    output.parent.mkdir(parents=True, exist_ok=True)
    say(f"lrmesh: reconstructing on {device} ({model.kind} model, {views.shape[0]} views)")
    stages = Stages(device, show=not args.quiet)
    result = reconstruct(model, views.to(device), cameras.to(device), texture=args.texture,
                         texture_resolution=args.texture_resolution, stages=stages)
    mesh = result.mesh.to("cpu")
    if mesh.num_faces == 0:
        raise LrmeshError("the model found no surface in these views (empty mesh); nothing written")
    written = save_mesh(mesh, output)
    say(f"lrmesh: {mesh.num_vertices} vertices, {mesh.num_faces} faces in {stages.total_seconds:.1f} s")
    if args.video is not None:
        written += _write_video(mesh, args, output, say)
    for path in written:
        print(path)
    return 0


def _write_video(mesh, args: argparse.Namespace, output: Path, say) -> list[Path]:
    from lrmesh.io.video import render_turntable, write_video

    path = Path(args.video) if args.video else output.with_suffix(".mp4")
    say(f"lrmesh: rendering {args.video_frames} turntable frames")
    frames = render_turntable(mesh, num_frames=args.video_frames, radius=VIDEO_RADIUS * args.scale,
                              elevation_deg=VIDEO_ELEVATION, resolution=args.video_resolution,
                              progress=not args.quiet)
    write_video(frames, path)
    return [path]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lrmesh", description="A few images of an object in, a 3D mesh out.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)
    _add_reconstruct(sub)
    return parser


def _version() -> str:
    from lrmesh import __version__

    return f"lrmesh {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except LrmeshError as err:
        print(f"lrmesh: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
