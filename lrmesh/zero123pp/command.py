"""`lrmesh views` and the single-photo branch of `lrmesh reconstruct`: the command-line side of the photo path.

Both go through lrmesh.api.LRMesh. The multi-view model is given with --mv-model / --mv-unet or, for
every command, the environment variables LRMESH_MV_MODEL / LRMESH_MV_UNET.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from lrmesh.errors import InputError, LrmeshError
from lrmesh.options import fraction, positive_float, positive_int, seed_int, writable_file
from lrmesh.photo.recentre import FOREGROUND_RATIO

ENV_MODEL, ENV_UNET = "LRMESH_MV_MODEL", "LRMESH_MV_UNET"
GRID_SUFFIX = "_views.png"  # the grid written beside a mesh (or the default `lrmesh views` output)


def add_photo_options(p: argparse.ArgumentParser, with_seed: bool = True) -> None:
    """The options of the photo -> views step (shared by `views` and `reconstruct`)."""
    g = p.add_argument_group("one photo -> six views (Zero123++ v1.2)")
    g.add_argument("--mv-model", default=os.environ.get(ENV_MODEL), metavar="DIR",
                   help=f"local copy of the Hugging Face model sudo-ai/zero123plus-v1.2 (plain folder or cache "
                        f"snapshot; default ${ENV_MODEL})")
    g.add_argument("--mv-unet", default=os.environ.get(ENV_UNET), metavar="FILE",
                   help=f"InstantMesh's white-background UNet diffusion_pytorch_model.bin (default ${ENV_UNET})")
    g.add_argument("--steps", type=positive_int, default=75, help="diffusion steps (default 75, as InstantMesh)")
    g.add_argument("--guidance", type=positive_float, default=4.0, help="classifier-free guidance scale (1: none)")
    if with_seed:
        g.add_argument("--seed", type=seed_int, default=42, help="fixes every random draw")
    g.add_argument("--no-rembg", dest="rembg", action="store_false",
                   help="use the image as given: no background removal, no recentring (InstantMesh's --no_rembg; "
                        "with an OpenLRM model, OpenLRM's own preparation: composite on white, resize)")
    g.add_argument("--rembg-model", metavar="FILE",
                   help="rembg's u2net.onnx (default: $U2NET_HOME/u2net.onnx or ~/.u2net/u2net.onnx; without it "
                        "only plain backgrounds are removed)")
    g.add_argument("--foreground-ratio", type=fraction, default=FOREGROUND_RATIO,
                   help="side of the object / side of the recentred image (default 0.85)")


def add_views_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("views", help="one photo -> the 640x960 grid of six Zero123++ views",
                       description="Remove the background, recentre, and run Zero123++ v1.2 (with InstantMesh's "
                                   "white-background UNet) to make the six views `lrmesh reconstruct` takes.")
    p.add_argument("image", help="photo (an image with transparency keeps its alpha)")
    add_photo_options(p)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: CUDA (half precision) when available, else CPU (float32)")
    p.add_argument("-o", "--output", metavar="GRID.png", help=f"default: outputs/<image name>{GRID_SUFFIX}")
    p.add_argument("-q", "--quiet", action="store_true", help="no notices, no progress bar")
    p.set_defaults(func=cmd_views)


def _say(args: argparse.Namespace):
    return None if args.quiet else (lambda message: print(message, file=sys.stderr))


def api_from_args(args: argparse.Namespace, **model_args):
    from lrmesh.api import LRMesh

    return LRMesh(mv_model=args.mv_model, mv_unet=args.mv_unet, rembg_model=args.rembg_model, device=args.device,
                  say=_say(args), progress=not args.quiet, **model_args)


def photo_views(lr, args: argparse.Namespace, image: str | Path, num_views: int = 6, scale: float = 1.0):
    """Checked options -> Views of the photo (the multi-view folder is checked before any work)."""
    lr.check_multiview()
    return lr.views(image, steps=args.steps, guidance=args.guidance, seed=args.seed, remove=args.rembg,
                    foreground_ratio=args.foreground_ratio, num_views=num_views, scale=scale)


def cmd_views(args: argparse.Namespace) -> int:
    output = Path(args.output) if args.output else Path("outputs") / f"{Path(args.image).stem}{GRID_SUFFIX}"
    if output.suffix.lower() != ".png":
        raise LrmeshError(f"cannot write {output.name!r}: the grid is written as .png")
    writable_file(output, "grid image")  # before the diffusion model runs
    views = photo_views(api_from_args(args), args, args.image)
    views.grid.save(output)
    print(output)
    return 0


def is_single_photo(sources: list) -> bool:
    """One image file that is not a view grid (2 views wide, 3 high, e.g. 640 x 960): a photo."""
    if len(sources) != 1 or not Path(sources[0]).is_file():
        return False
    try:
        with Image.open(sources[0]) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"cannot read image {sources[0]}: {err}") from err
    return not (width * 3 == height * 2 and height % 3 == 0)
