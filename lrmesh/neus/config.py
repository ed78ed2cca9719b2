"""Typed configuration of a per-scene fit (`lrmesh fit`): the scene, the fields, ray marching, losses, optimiser,
mesh export. One YAML preset per method lives in `lrmesh/configs/fit/` (neus.yaml, nerf.yaml); `key.sub=value`
overrides are checked against these dataclasses like the training configs' (an unknown key is an error).

Defaults follow instant-nsr-pl's neus-blender / nerf-blender configs where a CPU can afford them; the presets
say where they depart (fewer samples per ray, a coarser occupancy grid, a smaller ray budget).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lrmesh.config import build_config
from lrmesh.errors import ConfigError
from lrmesh.neus.encoding import HashGridConfig
from lrmesh.neus.fields import ColorFieldConfig, DensityFieldConfig, SDFFieldConfig
from lrmesh.train.config import apply_overrides

FIT_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "fit"
METHODS = ("neus", "nerf")
MESH_SUFFIXES = (".obj", ".glb", ".ply")


@dataclass
class SceneConfig:
    kind: Literal["auto", "blender", "dtu", "colmap"] = "auto"
    downscale: float = 1.0  # images shrunk by this factor (area average) before fitting
    use_masks: bool | None = None  # None: when the layout has them; True: required (error if absent)
    background: Literal["white", "black", "random"] = "random"  # training background behind masked images
    test_views: int = 0  # test-split views scored at the end (0: all of them)


@dataclass
class RenderConfig:
    num_samples_per_ray: int = 512  # step size = sqrt(3) * 2 radius / this (instant-nsr-pl: 1024)
    bound: Literal["cube", "sphere"] = "cube"  # where rays start and stop
    occupancy_resolution: int = 64  # cells per side of the occupancy grid (instant-nsr-pl: 128)
    occupancy_every: int = 16  # steps between occupancy updates
    occupancy_threshold: float = 0.01  # alpha (NeuS) or sigma * step (NeRF) below which a cell is empty
    occupancy_warmup: int = 256  # steps during which every cell is evaluated at each update
    rays_initial: int = 256  # rays of the first step
    rays_max: int = 4096  # the dynamic batch never exceeds this
    target_samples: int = 32768  # the dynamic batch aims at this many samples per step
    chunk_rays: int = 4096  # rays per chunk when rendering whole images
    background_model: bool = False  # unbounded scenes: a NeRF of what lies beyond the box (contracted space)
    background_samples: int = 32  # samples per ray behind the box, uniform in disparity
    background_far: float = 1000.0  # the background is sampled out to this many scene radii


@dataclass
class NeusConfig:
    init_variance: float = 0.3  # inv_s = exp(10 v); 0.3 -> inv_s ~ 20 at the start
    cos_anneal_steps: int = 2000  # cos_anneal_ratio grows linearly 0 -> 1 over these steps (0: always 1)


@dataclass
class LossConfig:
    rgb_mse: float = 10.0
    rgb_l1: float = 0.0
    eikonal: float = 0.1
    mask: float = 0.1  # used when the scene has masks
    opaque: float = 0.0
    sparsity: float = 0.01
    sparsity_scale: float = 100.0
    distortion: float = 0.0


@dataclass
class OptimConfig:
    lr: float = 0.01  # fields (hash grid and MLPs)
    lr_variance: float = 0.001
    warmup_steps: int = 500  # linear warm-up from 1% of lr
    final_lr_ratio: float = 0.1  # exponential decay after warm-up reaches lr * this at the last step
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-15


@dataclass
class MeshConfig:
    resolution: int = 192  # marching-cubes grid points per side, coarse pass and fine pass alike
    threshold: float | None = None  # iso-level: sdf 0 (NeuS), density 10 (NeRF) when None
    fine_pass: bool = True  # a second pass on the bounding box of the coarse mesh, 5% padded
    format: str = ".obj"  # .obj, .glb or .ply


@dataclass
class FitConfig:
    method: Literal["neus", "nerf"] = "neus"
    steps: int = 20000
    max_minutes: float = 0.0  # stop after this wall time (0: no limit); the outputs are written all the same
    seed: int = 42
    scene: SceneConfig = field(default_factory=SceneConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    geometry: SDFFieldConfig = field(default_factory=SDFFieldConfig)  # NeuS
    density: DensityFieldConfig = field(default_factory=DensityFieldConfig)  # NeRF
    color: ColorFieldConfig = field(default_factory=ColorFieldConfig)
    neus: NeusConfig = field(default_factory=NeusConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint_every: int = 500
    validate_every: int = 1000  # steps between PSNRs of one held-out view (0: none)
    video_frames: int = 60  # test-trajectory video frames (0: no video)
    video_resolution: int = 0  # frame height and width (0: the images' size)
    log_every: int = 50
    accelerator: str = "auto"
    devices: Any = 1  # a fit runs on one device: its rays are not split across processes (fit refuses more)
    num_nodes: int = 1
    precision: str = "32-true"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_fit_config(method: str, config_file: str | Path | None = None, overrides: list[str] = ()) -> FitConfig:
    """The method's preset, then `config_file` (a YAML of the same keys), then key=value overrides."""
    if method not in METHODS:
        raise ConfigError(f"unknown fit method {method!r}; expected one of {', '.join(METHODS)}")
    data = _read_yaml(FIT_CONFIG_DIR / f"{method}.yaml")
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"fit config not found: {path}")
        data = _deep_update(data, _read_yaml(path))
    apply_overrides(data, overrides)
    data["method"] = method
    cfg = build_config(FitConfig, data, "fit")
    _check(cfg)
    return cfg


def _read_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot read {path}: {err}") from err


def _deep_update(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _deep_update(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def _check(cfg: FitConfig) -> None:
    if cfg.steps < 1:
        raise ConfigError(f"fit.steps must be at least 1, got {cfg.steps}")
    if cfg.mesh.format not in MESH_SUFFIXES:
        raise ConfigError(f"fit.mesh.format must be one of {', '.join(MESH_SUFFIXES)}, got {cfg.mesh.format!r}")
    if cfg.render.rays_initial < 1 or cfg.render.rays_max < cfg.render.rays_initial:
        raise ConfigError("fit.render: need 1 <= rays_initial <= rays_max")
    if cfg.mesh.resolution < 8:
        raise ConfigError(f"fit.mesh.resolution must be at least 8, got {cfg.mesh.resolution}")


def grid_config(cfg: FitConfig) -> HashGridConfig:
    """The hash grid of the method's geometry field."""
    return cfg.geometry.grid if cfg.method == "neus" else cfg.density.grid
