"""One photo in: background removal and recentring, shared by every single-image front end.

    from lrmesh.photo import read_photo, remove_background, recentre
    rgba = remove_background(read_photo("chair.jpg"))   # RGBA, alpha = the object
    square = recentre(rgba, ratio=0.85)                 # object centred, 85 % of the side

Background removal, as InstantMesh decides it (src/utils/infer_util.py `remove_background`):

1. an image that already has transparency (RGBA with some alpha below 255) is used as it is;
2. otherwise rembg's U2-Net (`u2net.onnx` from $U2NET_HOME or ~/.u2net, or a file given explicitly) runs
   through onnxruntime (lrmesh.photo.u2net);
3. without that model, a photo on a plain, near-uniform background is matted by a non-learned method
   (lrmesh.photo.plain), and anything else is refused with an error naming the model to download.

`prepare_photo` is the whole front of InstantMesh's run.py: removal then recentring, or, with
`remove=False` (its --no_rembg), the image exactly as given.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from lrmesh.errors import InputError
from lrmesh.photo.plain import BackgroundError, plain_background_cutout
from lrmesh.photo.recentre import FOREGROUND_RATIO, foreground_box, recentre
from lrmesh.photo.u2net import U2NET_FILE, U2NET_URL, U2NetMatte, find_u2net, u2net_home

__all__ = ["BackgroundError", "FOREGROUND_RATIO", "U2NetMatte", "default_u2net", "find_u2net", "foreground_box",
           "has_transparency", "prepare_photo", "read_photo", "recentre", "remove_background", "u2net_home"]

DOWNLOAD_HINT = (f"; download rembg's U2-Net model {U2NET_FILE} ({U2NET_URL}) into $U2NET_HOME or ~/.u2net "
                 "(or pass its path with --rembg-model), or give a photo whose background is already transparent")


def read_photo(path: str | Path) -> Image.Image:
    """Image file -> PIL image in RGBA (when it carries transparency) or RGB, turned upright by its EXIF tag."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"cannot read image {path}: {err}") from err
    transparent = upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info
    return upright.convert("RGBA" if transparent else "RGB")


def has_transparency(image: Image.Image) -> bool:
    """True for an RGBA image with some alpha below 255 (InstantMesh then skips background removal)."""
    return image.mode == "RGBA" and image.getextrema()[3][0] < 255


def remove_background(image: Image.Image, u2net: U2NetMatte | None = None) -> Image.Image:
    """Photo -> RGBA cut-out: its own alpha if it has transparency, else U2-Net, else the plain-background matte.

    Raises BackgroundError when neither model nor plain background is there.
    """
    if has_transparency(image):
        return image
    if u2net is not None:
        return u2net(image)
    return plain_background_cutout(image, refusal_hint=DOWNLOAD_HINT)


def prepare_photo(image: Image.Image, remove: bool = True, ratio: float = FOREGROUND_RATIO,
                  u2net: U2NetMatte | None = None) -> Image.Image:
    """InstantMesh's input step: remove the background and recentre (remove=True), or keep the image as given."""
    if not remove:
        return image
    return recentre(remove_background(image, u2net), ratio)


def default_u2net(explicit: str | Path | None = None) -> U2NetMatte | None:
    """The U2-Net found by `find_u2net` (explicit file, $U2NET_HOME, ~/.u2net) loaded, or None when there is none."""
    path = find_u2net(explicit)
    return U2NetMatte(path) if path is not None else None

