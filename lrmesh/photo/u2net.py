"""rembg's U2-Net salient-object matte, run through onnxruntime on a model file the user downloaded.

Behaviour re-implemented from rembg (danielgatis/rembg: sessions/base.py `normalize`, sessions/u2net.py
`predict`, bg.py `naive_cutout`) so that lrmesh gives rembg's cut-out without depending on the package (which
downloads its model at run time):

- input: the photo as RGB, resized to 320 x 320 with Lanczos, divided by its own maximum value, normalised
  with the ImageNet mean / std, (1, 3, 320, 320) float32, fed to the model's first input;
- output: channel 0 of the model's first output, min-max normalised to [0, 1], times 255 truncated to uint8,
  resized back to the photo's size with Lanczos: the alpha mask;
- cut-out: the photo composited over transparent black with that mask, so colour and alpha are both scaled
  by the mask (rembg's default "naive" cut-out).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from lrmesh.errors import InputError

U2NET_FILE = "u2net.onnx"
U2NET_URL = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/u2net.onnx"  # rembg's release asset
U2NET_SIZE = (320, 320)  # the network's input size (rembg: U2netSession.predict)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def u2net_home() -> Path:
    """Where rembg keeps its models: $U2NET_HOME, else $XDG_DATA_HOME/.u2net, else ~/.u2net."""
    default = Path(os.environ.get("XDG_DATA_HOME", "~")) / ".u2net"
    return Path(os.environ.get("U2NET_HOME", default)).expanduser()


def find_u2net(explicit: str | Path | None = None) -> Path | None:
    """The U2-Net model to use: `explicit` (which must exist), else u2net.onnx in rembg's folder, else None."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise InputError(f"--rembg-model: {path} not found (expected rembg's {U2NET_FILE}, from {U2NET_URL})")
        return path
    path = u2net_home() / U2NET_FILE
    return path if path.is_file() else None


def u2net_input(image: Image.Image) -> np.ndarray:
    """Photo -> (1, 3, 320, 320) float32 network input, rembg's normalisation."""
    small = np.asarray(image.convert("RGB").resize(U2NET_SIZE, Image.Resampling.LANCZOS), dtype=np.float64)
    small = small / max(small.max(), 1e-6)
    normalised = (small - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)  # (320, 320, 3)
    return normalised.transpose(2, 0, 1)[None].astype(np.float32)


def prediction_to_mask(prediction: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """(1, 1, h, w) network output -> "L" mask of `size` (width, height): min-max to [0, 255], Lanczos resize."""
    pred = prediction[:, 0].astype(np.float32)
    low, high = pred.min(), pred.max()
    pred = np.squeeze((pred - low) / (high - low)) if high > low else np.zeros(pred.shape[1:], np.float32)
    mask = Image.fromarray((pred.clip(0, 1) * 255).astype(np.uint8), "L")
    return mask.resize(size, Image.Resampling.LANCZOS)


def cut_out(image: Image.Image, mask: Image.Image) -> Image.Image:
    """rembg's naive cut-out: the photo over transparent black through `mask` (colour and alpha scaled by it)."""
    return Image.composite(image.convert("RGBA"), Image.new("RGBA", image.size, 0), mask)


class U2NetMatte:
    """A loaded U2-Net: call it on a photo to get its RGBA cut-out. Load once, use for many photos."""

    def __init__(self, path: str | Path):
        import onnxruntime

        self.path = Path(path)
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for unreadable models
            raise InputError(f"{self.path}: not a readable ONNX model ({str(err).strip().splitlines()[0]})") from err
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise InputError(f"{self.path}: not a U2-Net model (expected one (1, 3, 320, 320) input)")
        self.input_name = inputs[0].name

    def mask(self, image: Image.Image) -> Image.Image:
        """Photo -> its "L" alpha mask, same size."""
        outputs = self.session.run(None, {self.input_name: u2net_input(image)})
        return prediction_to_mask(outputs[0], image.size)

    def __call__(self, image: Image.Image) -> Image.Image:
        return cut_out(image, self.mask(image))
