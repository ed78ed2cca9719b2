"""Training samples from the reference's training layout (`lrmesh synth --layout training`, or Objaverse renders).

A sample is one object: `num_input_views` input views with their encoder cameras, and the supervision views
(the inputs first, then `num_target_views` others, as the reference supervises both) as random crops of a
randomly zoomed image, with the crop's camera. A crop of a zoomed image is itself a pinhole camera (see
`crop_intrinsics`), so renderers need no crop logic.

Determinism: sample i draws its object and all its randomness from `numpy.random.default_rng([seed, i])`, and
`StepSampler` hands out i = step * batch * world + ...; the render draws of sample i (NeRF ray jitter) come from
(seed, i) as well (`ReconstructionModule.sample_generators`). So a run resumed at step s sees exactly the samples
an uninterrupted run would have seen, whatever the data-loader workers did before the interruption, and a step on
N devices with batch b each sees the samples and draws of a step on one device with batch N * b.

A corrupt or missing object is skipped with a warning that names it (once per object), and the next object
takes its place.
"""

from __future__ import annotations

import json
import math
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from lrmesh.cameras import intrinsics_matrix, openlrm_source_camera
from lrmesh.data.multiview import (
    OCCUPANCY_FILE,
    TRAINING_CAMERAS,
    TRAINING_DEPTH_SCALE,
    TRAINING_FOV,
    TRAINING_FOV_KEY,
    TRAINING_IMAGE_DIR,
    TRAINING_META,
    TRAINING_META_KEY,
    TRAINING_POSES_KEY,
)
from lrmesh.errors import InputError
from lrmesh.train.config import DataConfig

INPUT_PLAN_STREAM = 4  # each batch's input view count comes from default_rng([seed, INPUT_PLAN_STREAM, batch])
SAMPLE_ERRORS = (OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile, UnidentifiedImageError)
MAX_SKIPS = 50  # consecutive bad objects before giving up: the folder is broken, not one sample


def list_objects(root: str | Path) -> list[str]:
    """Object names of a training-layout folder (its valid_paths.json), sorted."""
    meta = Path(root) / TRAINING_META
    if not meta.is_file():
        raise InputError(f"{root} is not a training-layout folder: no {TRAINING_META} (make one with "
                         "`lrmesh synth --layout training`)")
    try:
        names = json.loads(meta.read_text())[TRAINING_META_KEY]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise InputError(f"{meta}: expected {{\"{TRAINING_META_KEY}\": [names]}}: {err}") from err
    if not names:
        raise InputError(f"{meta} lists no objects")
    return sorted(names)


def split_objects(names: list[str], validation_fraction: float) -> tuple[list[str], list[str]]:
    """The last max(1, fraction * N) names (sorted) are held out for validation, when there are two or more."""
    if len(names) < 2:
        return names, names
    held = max(1, round(len(names) * validation_fraction))
    return names[:-held], names[-held:]


def crop_intrinsics(k: Tensor, x0: float, y0: float, width: float) -> Tensor:
    """Normalised intrinsics (3, 3) of the square window [x0, x0 + width] x [y0, y0 + width] of an image (all
    in that image's normalised units): u' = (u - x0) / width, so fx' = fx / width, cx' = (cx - x0) / width."""
    out = k.clone()
    out[0, 0], out[1, 1] = k[0, 0] / width, k[1, 1] / width
    out[0, 2], out[1, 2] = (k[0, 2] - x0) / width, (k[1, 2] - y0) / width
    return out


def encoder_camera(c2w: Tensor, k: Tensor) -> Tensor:
    """(4, 4) pose and (3, 3) normalised intrinsics -> the 16-d encoder camera (12 pose numbers, fx fy cx cy)."""
    return torch.cat([c2w[:3].reshape(12), torch.stack([k[0, 0], k[1, 1], k[0, 2], k[1, 2]])])


def canonical_source_transform(source_c2w: Tensor) -> Tensor:
    """The world transform (4, 4) that takes an OpenGL pose looking at the origin to OpenLRM's canonical
    source pose at the same distance (cameras.openlrm_source_camera): canonical @ inverse(source). It fixes the
    origin, so it is a rotation; apply it to every pose, normal and point of the object."""
    distance = float(source_c2w[:3, 3].norm())
    canonical = torch.eye(4)
    canonical[:3] = openlrm_source_camera(distance)[0, :12].reshape(3, 4)
    return canonical @ torch.linalg.inv(source_c2w)


def z_rotation(angle: float) -> Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.float32)


@dataclass
class ObjectViews:
    """All views of one object, as stored: rgb on white (N, 3, H, W), alpha (N, 1, H, W), depth (N, 1, H, W),
    world normals in [-1, 1] (N, 3, H, W), OpenGL c2w (N, 4, 4), fov (N,) degrees."""

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    normal: Tensor
    c2w: Tensor
    fov: Tensor


def read_object(folder: Path, views: list[int] | None = None) -> ObjectViews:
    """Read (some of) an object's views from a training-layout folder; raises on anything missing or corrupt."""
    cameras = np.load(folder / TRAINING_CAMERAS)
    w2c = torch.from_numpy(np.asarray(cameras[TRAINING_POSES_KEY], dtype=np.float32))  # (N, 3, 4)
    count = w2c.shape[0]
    fov = (torch.from_numpy(np.asarray(cameras[TRAINING_FOV_KEY], dtype=np.float32))
           if TRAINING_FOV_KEY in cameras.files else torch.full((count,), TRAINING_FOV))
    views = list(range(count)) if views is None else views
    if max(views) >= count:
        raise IndexError(f"view {max(views)} asked for, {TRAINING_CAMERAS} has {count}")
    bottom = torch.tensor([[[0.0, 0.0, 0.0, 1.0]]]).expand(count, 1, 4)
    c2w = torch.linalg.inv(torch.cat([w2c, bottom], dim=1))
    rgba = torch.stack([_read_png(folder / f"{i:03d}.png", 4) for i in views])
    normal_png = torch.stack([_read_png(folder / f"{i:03d}_normal.png", 4) for i in views])
    depth = torch.stack([_read_png(folder / f"{i:03d}_depth.png", 1) for i in views]) * TRAINING_DEPTH_SCALE
    alpha = rgba[:, 3:]
    rgb = rgba[:, :3] * alpha + (1 - alpha)  # composite on white
    normal = torch.where(normal_png[:, 3:] > 0, normal_png[:, :3] * 2 - 1, 0.0)
    return ObjectViews(rgb, alpha, depth, normal, c2w[views], fov[views])


def _read_png(path: Path, channels: int) -> Tensor:
    with Image.open(path) as image:
        image = image.convert("RGBA" if channels == 4 else "L")
        array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array.copy())
    return tensor.permute(2, 0, 1) if channels == 4 else tensor[None]


def _resize(x: Tensor, size: int, smooth: bool) -> Tensor:
    """(N, C, H, W) -> (N, C, size, size): antialiased bicubic for colours, nearest for masks / depth /
    normals (the reference's interpolation choices)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    if smooth:
        return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    return F.interpolate(x, size=(size, size), mode="nearest-exact")


class MultiviewDataset(Dataset):
    """Map-style: sample i -> dict of tensors (see the module docstring, and `sample_index`: i). Any integer i is
    valid."""

    def __init__(self, cfg: DataConfig, names: list[str], seed: int, train: bool = True, batch_size: int = 1):
        self.cfg, self.names, self.seed, self.train = cfg, names, seed, train
        self.batch_size = batch_size  # samples i // batch_size share their input plan (`input_plan`)
        self.root = Path(cfg.root) / TRAINING_IMAGE_DIR
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.names)

    def object_index(self, i: int) -> int:
        """Objects in a fresh seeded permutation every pass (epoch = i // N)."""
        n = len(self.names)
        if not self.train:
            return i % n
        return int(np.random.default_rng([self.seed, i // n]).permutation(n)[i % n])

    def input_plan(self, i: int) -> tuple[int, bool]:
        """(how many input views, whether they are `input_view_ids`) for sample i. With random_input_views one
        draw per batch (`StepSampler` gives batch b of a step indices b * batch_size ...), so its samples stack."""
        cfg = self.cfg
        fixed = cfg.input_view_ids is not None
        if cfg.random_input_views is None or not self.train:
            return cfg.num_input_views, fixed
        rng = np.random.default_rng([self.seed, INPUT_PLAN_STREAM, i // self.batch_size])
        if fixed and rng.random() < cfg.fixed_input_fraction:
            return cfg.num_input_views, True
        low, high = cfg.random_input_views
        return int(rng.integers(low, high + 1)), False

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        first = self.object_index(i)
        plan = self.input_plan(i)
        for attempt in range(min(MAX_SKIPS, len(self.names))):
            name = self.names[(first + attempt) % len(self.names)]
            try:
                sample = self.sample(name, np.random.default_rng([self.seed, i, attempt]), plan)
                return {**sample, "sample_index": torch.tensor(i)}  # () int64: seeds the sample's render draws
            except SAMPLE_ERRORS as err:
                if name not in self._warned:
                    self._warned.add(name)
                    warnings.warn(f"skipping training object {name!r} ({self.root / name}): "
                                  f"{type(err).__name__}: {err}", stacklevel=2)
        raise InputError(f"{min(MAX_SKIPS, len(self.names))} objects in a row could not be read under {self.root}; "
                         "see the warnings above")

    def sample(self, name: str, rng: np.random.Generator, plan: tuple[int, bool] | None = None) -> dict[str, Tensor]:
        """One object's sample; `plan` is `input_plan`'s (count, fixed), by default the fixed config's."""
        cfg = self.cfg
        count, fixed = plan or (cfg.num_input_views, cfg.input_view_ids is not None)
        folder = self.root / name
        total = np.load(folder / TRAINING_CAMERAS)[TRAINING_POSES_KEY].shape[0]
        if fixed:
            inputs = list(cfg.input_view_ids)[:count]
            rest = [v for v in range(total) if v not in cfg.input_view_ids]
        else:
            order = rng.permutation(total).tolist()
            inputs, rest = order[:count], order[count:]
        if self.train:
            targets = rng.permutation(rest)[:cfg.num_target_views].tolist()
        else:
            targets = rest[:cfg.num_target_views]
        if len(inputs) < count or len(targets) < cfg.num_target_views:
            raise IndexError(f"{total} views, need {count} inputs + {cfg.num_target_views} targets")
        views = read_object(folder, inputs + targets)
        rotation = None  # the world transform applied to the views, for the occupancy points
        if cfg.normalize_rotation:
            eye = views.c2w[0, :3, 3]
            rotation = z_rotation(-math.atan2(float(eye[1]), float(eye[0])))
            views.c2w = rotation @ views.c2w
            views.normal = torch.einsum("ij,njhw->nihw", rotation[:3, :3], views.normal)
        if cfg.canonical_source:
            repose = canonical_source_transform(views.c2w[0])
            views.c2w = repose @ views.c2w
            views.normal = torch.einsum("ij,njhw->nihw", repose[:3, :3], views.normal)
            rotation = repose if rotation is None else repose @ rotation
        n_in = len(inputs)
        k = torch.stack([intrinsics_matrix(float(f)) for f in views.fov])  # (N, 3, 3)

        # Inputs: optional random zoom-in (crop a window, resize back), the crop's camera, camera noise.
        input_k = k[:n_in].clone()
        images = views.rgb[:n_in]
        if self.train and cfg.input_zoom[1] > 1.0:
            cropped = []
            for v in range(n_in):
                zoom = rng.uniform(*cfg.input_zoom)
                width = 1.0 / zoom
                x0, y0 = rng.uniform(0, 1 - width, size=2)
                size = images.shape[-1]
                px, py, side = int(round(x0 * size)), int(round(y0 * size)), max(1, int(round(width * size)))
                cropped.append(images[v:v + 1, :, py:py + side, px:px + side])
                input_k[v] = crop_intrinsics(k[v], px / size, py / size, side / size)
            images = torch.cat([_resize(c, cfg.input_size, True) for c in cropped])
        else:
            images = _resize(images, cfg.input_size, True)
        cameras = torch.stack([encoder_camera(views.c2w[v], input_k[v]) for v in range(n_in)])
        if self.train and cfg.camera_noise > 0:
            cameras = cameras + torch.from_numpy(rng.uniform(-cfg.camera_noise, cfg.camera_noise, cameras.shape)).float()

        # Supervision: every view resized to a random side, then one random crop of render_size.
        c = cfg.render_size
        full = int(rng.integers(cfg.render_zoom[0], cfg.render_zoom[1] + 1)) if self.train else c
        full = max(full, c)
        px, py = (rng.integers(0, full - c + 1, size=2).tolist() if self.train else ((full - c) // 2,) * 2)

        def crop(x: Tensor, smooth: bool) -> Tensor:
            return _resize(x, full, smooth)[..., py:py + c, px:px + c]

        target_k = torch.stack([crop_intrinsics(kk, px / full, py / full, c / full) for kk in k])
        extra, target_rgb = {}, views.rgb
        if cfg.background_levels:  # OpenLRM: each supervision view on its own grey, the input on white
            levels = torch.tensor(rng.choice(cfg.background_levels, size=len(views.rgb)), dtype=torch.float32)
            background = levels[:, None, None, None]
            target_rgb = views.rgb - (1 - views.alpha) * (1 - background)  # c a + (1 - a) -> c a + bg (1 - a)
            extra["target_backgrounds"] = levels[:, None]  # (T, 1)
        if cfg.occupancy_points > 0:  # drawn last, so the draws above are the same with or without it
            extra.update(self.occupancy(folder, rng, rotation))
        return {
            "input_images": images,  # (V, 3, S, S)
            "input_cameras": cameras,  # (V, 16)
            "target_images": crop(target_rgb, True),  # (T, 3, C, C), inputs first
            "target_alphas": crop(views.alpha, False),  # (T, 1, C, C)
            "target_depths": crop(views.depth, False),  # (T, 1, C, C)
            "target_normals": crop(views.normal, False),  # (T, 3, C, C) world, [-1, 1]
            "target_c2w": views.c2w,  # (T, 4, 4)
            "target_intrinsics": target_k,  # (T, 3, 3) normalised
            **extra,
        }

    def occupancy(self, folder: Path, rng: np.random.Generator, rotation: Tensor | None) -> dict[str, Tensor]:
        """`occupancy_points` random points of the object's occupancy.npz (in the frame of its cameras)."""
        with np.load(folder / OCCUPANCY_FILE) as stored:
            points, inside = stored["points"], stored["inside"]
        if points.ndim != 2 or points.shape[1] != 3 or inside.shape != points.shape[:1]:
            raise ValueError(f"{OCCUPANCY_FILE}: points {points.shape} and inside {inside.shape} do not match")
        pick = rng.integers(0, points.shape[0], self.cfg.occupancy_points)
        selected = torch.from_numpy(points[pick].astype(np.float32))
        if rotation is not None:
            selected = selected @ rotation[:3, :3].T
        return {"occupancy_points": selected,  # (P, 3)
                "occupancy_inside": torch.from_numpy(inside[pick].astype(np.float32))}  # (P,) 1 inside


class StepSampler(Sampler[int]):
    """Endless sample indices for one rank, starting where step `start_step` begins:
    i = (step * world + rank) * batch + b. Each rank draws its own samples, and the ranks of a step together
    draw the samples one process with batch * world draws (samples step * batch * world onwards); so the
    trainer must hand it to the loader as it is (Lightning: `use_distributed_sampler=False`)."""

    def __init__(self, batch_size: int, start_step: int = 0, rank: int = 0, world_size: int = 1):
        self.batch_size, self.start_step, self.rank, self.world_size = batch_size, start_step, rank, world_size

    def __iter__(self) -> Iterator[int]:
        step = self.start_step
        while True:
            base = (step * self.world_size + self.rank) * self.batch_size
            yield from range(base, base + self.batch_size)
            step += 1

    def __len__(self) -> int:  # Lightning asks; the run is bounded by max_steps
        return 2**62
