"""The condition image's pixels: composite onto white, then the two CLIP-style preprocessors of the folder.

Written from the folders' preprocessor_config.json (transformers' CLIPImageProcessor semantics: resize the
shortest edge with the given PIL filter, centre crop, rescale, normalise), so the result does not depend on
which image backend the installed transformers picks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lrmesh.errors import InputError


def on_white(image: Image.Image) -> Image.Image:
    """RGB as is; RGBA pasted through its own alpha onto a 255-white canvas (InstantMesh's Zero123++ copy).

    Per channel, out = round((255 (255 - a) + c a) / 255), Pillow's paste with a mask.
    """
    if image.mode == "RGB":
        return image
    if image.mode != "RGBA":
        raise InputError(f"the condition image must be RGB or RGBA, got mode {image.mode}")
    canvas = Image.new("RGB", image.size, (255, 255, 255))
    canvas.paste(image, mask=image.getchannel("A"))
    return canvas


def _pair(value, name: str) -> tuple[int, int]:
    """A size entry (int, {"height", "width"} or {"shortest_edge"}) -> (height, width) or (edge, edge)."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, dict) and "height" in value and "width" in value:
        return int(value["height"]), int(value["width"])
    if isinstance(value, dict) and "shortest_edge" in value:
        return int(value["shortest_edge"]), int(value["shortest_edge"])
    raise InputError(f"preprocessor config: cannot read {name} = {value!r}")


def _triple(value) -> tuple[float, float, float]:
    """A mean / std entry: three numbers, or one scalar for all channels (the VAE branch's 0.5 and 0.8)."""
    values = value if isinstance(value, list) else [value] * 3
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class PixelConfig:
    """One feature extractor of the folder (feature_extractor_clip or feature_extractor_vae)."""

    shortest_edge: int  # resize so that the shorter side has this many pixels
    crop: tuple[int, int]  # (height, width) of the centre crop
    resample: int  # PIL filter: 2 bilinear (VAE branch), 3 bicubic (CLIP branch)
    rescale: float  # 1/255
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_json(cls, cfg: dict) -> PixelConfig:
        return cls(shortest_edge=_pair(cfg["size"], "size")[0], crop=_pair(cfg["crop_size"], "crop_size"),
                   resample=int(cfg.get("resample", 3)), rescale=float(cfg.get("rescale_factor", 1 / 255)),
                   mean=_triple(cfg["image_mean"]), std=_triple(cfg["image_std"]))


def preprocess(image: Image.Image, cfg: PixelConfig) -> Tensor:
    """RGB image -> (1, 3, crop_h, crop_w) float32: shortest edge to cfg.shortest_edge (longer side truncated),
    centre crop (offsets floor((size - crop) / 2)), x * rescale (in float64, then float32), (x - mean) / std."""
    width, height = image.size
    short, long = sorted((width, height))
    new_long = int(cfg.shortest_edge * long / short)
    size = (cfg.shortest_edge, new_long) if width <= height else (new_long, cfg.shortest_edge)
    resized = np.asarray(image.convert("RGB").resize(size, resample=cfg.resample, reducing_gap=None))
    crop_h, crop_w = cfg.crop
    top, left = (resized.shape[0] - crop_h) // 2, (resized.shape[1] - crop_w) // 2
    if top < 0 or left < 0:
        raise InputError(f"the condition image is smaller than the {crop_w} x {crop_h} crop after resizing")
    pixels = resized[top:top + crop_h, left:left + crop_w].astype(np.float64) * cfg.rescale
    pixels = pixels.astype(np.float32)
    pixels = (pixels - np.array(cfg.mean, np.float32)) / np.array(cfg.std, np.float32)  # (h, w, 3)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None]
