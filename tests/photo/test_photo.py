"""Background removal (given alpha, U2-Net through onnxruntime, plain-background matte) and recentring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lrmesh.errors import InputError
from lrmesh.photo import (BackgroundError, U2NetMatte, find_u2net, has_transparency, prepare_photo, read_photo,
                          recentre, remove_background)

FIXTURE = Path(__file__).parents[1] / "fixtures" / "zero123pp-tiny"


# ------------------------------------------------------------------------------------------------ recentring
def test_recentring_is_the_references():
    source = Image.open(FIXTURE / "input_rgba.png")
    expected = np.asarray(Image.open(FIXTURE / "input_preprocessed.png"))
    result = np.asarray(recentre(source, 0.85))
    assert result.shape == expected.shape == (251, 251, 4)
    np.testing.assert_array_equal(result, expected)


def test_recentring_by_hand():
    # alpha > 0 rows 2..5, columns 3..4: the crop keeps rows 2..4 and column 3 (the reference drops the last row
    # and column), 3 x 1 -> padded to 3 x 3 (1 column left, 1 right) -> int(3 / 0.5) = 6, 1 before and 2 after.
    pixels = np.zeros((8, 8, 4), np.uint8)
    pixels[2:6, 3:5] = [10, 20, 30, 255]
    out = np.asarray(recentre(Image.fromarray(pixels, "RGBA"), 0.5))
    assert out.shape == (6, 6, 4)
    alpha = out[..., 3]
    expected = np.zeros((6, 6), np.uint8)
    expected[1:4, 2] = 255
    np.testing.assert_array_equal(alpha, expected)


def test_recentring_errors():
    with pytest.raises(InputError, match="no foreground"):
        recentre(Image.new("RGBA", (16, 16), (255, 255, 255, 0)))
    with pytest.raises(InputError, match="RGBA"):
        recentre(Image.new("RGB", (16, 16)))


def test_given_alpha_is_used_as_is():
    source = Image.open(FIXTURE / "input_rgba.png")
    assert has_transparency(source)
    assert remove_background(source) is source
    assert prepare_photo(source, remove=False) is source


# ------------------------------------------------------------------------------------------------ synthetic photos
def object_mask(height: int, width: int, supersample: int = 4) -> np.ndarray:
    """(H, W) coverage in [0, 1] of an ellipse joined to a box with a hole-free white window, box-filtered."""
    h, w = height * supersample, width * supersample
    y, x = np.mgrid[0:h, 0:w] / supersample
    ellipse = ((x - 0.4 * width) / (0.22 * width)) ** 2 + ((y - 0.5 * height) / (0.3 * height)) ** 2 <= 1
    box = (abs(x - 0.62 * width) < 0.15 * width) & (abs(y - 0.55 * height) < 0.2 * height)
    fine = (ellipse | box).astype(np.float64)
    return fine.reshape(height, supersample, width, supersample).mean(axis=(1, 3))


def photo_on(background: np.ndarray, coverage: np.ndarray, seed: int = 0) -> Image.Image:
    """Composite a two-coloured object (with a background-coloured window inside it) onto `background`."""
    height, width = coverage.shape
    rng = np.random.default_rng(seed)
    colour = np.where((np.arange(width) < 0.5 * width)[None, :, None], [0.85, 0.35, 0.1], [0.1, 0.3, 0.8])
    colour = np.broadcast_to(colour, (height, width, 3)).copy()
    window = (slice(int(0.5 * height), int(0.6 * height)), slice(int(0.6 * width), int(0.68 * width)))
    colour[window] = background[window]  # enclosed, background-coloured: must stay opaque
    a = coverage[..., None]
    rgb = a * colour + (1 - a) * background + rng.normal(0, 0.006, background.shape)
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), "RGB")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("colour", [(1.0, 1.0, 1.0), (0.55, 0.6, 0.5), (0.05, 0.05, 0.08)])
def test_plain_background_matte_finds_the_object(colour):
    coverage = object_mask(180, 240)
    photo = photo_on(np.broadcast_to(colour, (180, 240, 3)), coverage)
    cut = remove_background(photo)
    alpha = np.asarray(cut)[..., 3] / 255
    assert iou(alpha > 0.5, coverage > 0.5) > 0.98
    assert np.abs(alpha - coverage).mean() < 0.01
    # the background-coloured window enclosed by the object stays opaque
    assert alpha[int(0.52 * 180):int(0.58 * 180), int(0.61 * 240):int(0.67 * 240)].min() == 1
    # recentring sees only the object: the bounding box is the drawn one, no speck of noise stretches it
    y, x = np.nonzero(alpha > 0)
    ty, tx = np.nonzero(coverage > 0)
    assert abs(y.min() - ty.min()) <= 2 and abs(x.max() - tx.max()) <= 2


def test_textured_background_is_refused():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:180, 0:240]
    checker = (((yy // 12) + (xx // 12)) % 2)[..., None] * np.array([0.5, 0.4, 0.3]) + 0.2
    textured = np.clip(checker + rng.normal(0, 0.05, (180, 240, 3)), 0, 1)
    with pytest.raises(BackgroundError, match=r"not plain.*u2net\.onnx"):
        remove_background(photo_on(textured, object_mask(180, 240)))


# ------------------------------------------------------------------------------------------------ U2-Net via ONNX
def tiny_u2net(path: Path) -> Path:
    """An ONNX model with U2-Net's signature: input "input.1" (1, 3, 320, 320), seven (1, 1, 320, 320) outputs.

    Its first output is the normalised red channel minus the blue one (through a 1x1 convolution), so a red
    object on a blue background comes out as the object, exactly where it is.
    """
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [1, 3, 1, 1], [1.0, 0.0, -1.0])
    nodes = [helper.make_node("Conv", ["input.1", "w"], ["d0"])]
    nodes += [helper.make_node("Sigmoid", ["d0"], [f"side{i}"]) for i in range(1, 7)]
    shape = [1, 1, 320, 320]
    graph = helper.make_graph(nodes, "tiny_u2net", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT,
                                                                                  [1, 3, 320, 320])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
                               for name in ["d0"] + [f"side{i}" for i in range(1, 7)]], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_u2net_matte_on_a_tiny_model(tmp_path):
    height, width = 210, 300  # not square, not 320: the mask must come back in place
    coverage = object_mask(height, width)
    a = coverage[..., None]
    rgb = a * np.array([0.9, 0.1, 0.1]) + (1 - a) * np.array([0.1, 0.1, 0.9])
    photo = Image.fromarray((rgb * 255).round().astype(np.uint8), "RGB")
    matte = U2NetMatte(tiny_u2net(tmp_path / "u2net.onnx"))
    cut = remove_background(photo, matte)
    assert cut.mode == "RGBA" and cut.size == photo.size
    pixels = np.asarray(cut).astype(np.int32)
    alpha = pixels[..., 3]
    assert iou(alpha > 127, coverage > 0.5) > 0.95
    # rembg's naive cut-out: colour scaled by the mask as well
    expected_red = (np.asarray(photo)[..., 0].astype(np.int32) * alpha + 127) // 255
    assert np.abs(pixels[..., 0] - expected_red).max() <= 1
    # recentring a U2-Net cut-out works like any RGBA image
    assert recentre(cut).size[0] == int(max(np.ptp(np.nonzero(alpha)[0]), np.ptp(np.nonzero(alpha)[1])) / 0.85)


def test_u2net_model_is_found_in_u2net_home(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path))
    assert find_u2net() is None
    tiny_u2net(tmp_path / "u2net.onnx")
    assert find_u2net() == tmp_path / "u2net.onnx"
    with pytest.raises(InputError, match="--rembg-model.*not found"):
        find_u2net(tmp_path / "missing.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    with pytest.raises(InputError, match="not a readable ONNX model"):
        U2NetMatte(tmp_path / "broken.onnx")


def test_read_photo_modes(tmp_path):
    Image.new("LA", (8, 8), (100, 128)).save(tmp_path / "la.png")
    Image.new("L", (8, 8), 100).save(tmp_path / "l.png")
    assert read_photo(tmp_path / "la.png").mode == "RGBA"
    assert read_photo(tmp_path / "l.png").mode == "RGB"
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(InputError, match="cannot read image"):
        read_photo(tmp_path / "bad.png")
