"""Typed training configuration: data sampling, losses, optimisation, run. YAML files under `lrmesh/configs/`
hold one per preset; `key.sub=value` overrides on the command line are checked against these dataclasses, so
an unknown key is an error, never a silent no-op.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lrmesh.config import OPENLRM_PRESETS, ModelConfig, SingleViewConfig, build_config, openlrm_preset, preset
from lrmesh.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class DataConfig:
    """Which views of an object go in and which supervise (the reference's `ObjaverseData` sampling)."""

    root: str = ""  # a folder in the training layout (`lrmesh synth --layout training`)
    num_input_views: int = 6  # 6, or 3 with zoom-and-crop augmentation (MindSpore port)
    input_view_ids: list[int] | None = None  # fixed input view indices (e.g. [0..5] for --zero123pp-inputs data)
    # Random input views, so the model learns to take any views (not in the reference, whose count is fixed):
    # [low, high] draws each step's input count uniformly in that range (one count per batch, so samples stack)
    # and that many of the object's views at random; null keeps num_input_views. Validation keeps the fixed
    # inputs (input_view_ids or the first num_input_views of a random order).
    random_input_views: tuple[int, int] | None = None
    # With random_input_views and input_view_ids (the Zero123++ views of --zero123pp-inputs data): the fraction of
    # steps that take those fixed views instead, so the Zero123++ grids the model serves stay in training.
    fixed_input_fraction: float = 0.0
    num_target_views: int = 4  # extra supervision views besides the inputs
    input_size: int = 320  # input views are resized to this side
    input_zoom: tuple[float, float] = (1.0, 1.0)  # random zoom-in factor range of input views (crop + resize)
    render_size: int = 192  # side of the supervised crop
    render_zoom: tuple[int, int] = (192, 512)  # targets are resized to a random side in this range, then cropped
    camera_noise: float = 0.02  # uniform noise on the input camera vector, +-this (reference: 0.02)
    normalize_rotation: bool = False  # rotate the world about z so the first input view sits at azimuth 0
    occupancy_points: int = 0  # points per object drawn from its occupancy.npz for the occupancy loss (0: none)
    # OpenLRM: rotate the world about the origin so the (single) input view sits at the canonical source pose
    # (cameras.openlrm_source_camera at the view's own distance), as its camera_normalization_objaverse does
    canonical_source: bool = False
    # OpenLRM: the supervision views are composited on a grey level drawn per view from these (its [0, 0.5, 1]),
    # and rendered on the same; the input stays on white. Empty: everything on white (InstantMesh)
    background_levels: list[float] = field(default_factory=list)
    validation_fraction: float = 0.02  # objects held out for validation images (at least one)
    num_workers: int = 2


POINT_LOSSES = ("occupancy", "point_color")  # the loss terms computed at points, without rendering
PLANE_LOSSES = ("tv",)  # computed on the triplanes themselves


@dataclass
class LossConfig:
    """Loss weights (reference values). Colours are compared in [-1, 1] as the reference does."""

    mse: float = 1.0
    lpips: float = 2.0  # used when LPIPS backbone weights are present locally
    mask: float = 1.0
    depth: float = 0.5  # stage 2: L1 on covered pixels
    normal: float = 0.2  # stage 2: 1 - |cos| on covered pixels
    sdf_entropy: float = 0.01  # stage 2: sign-flip cross-entropy on grid edges
    surface: float = 0.5  # stage 2: FlexiCubes dual-vertex deviation
    weights: float = 0.1  # stage 2: FlexiCubes weight magnitude
    # Not in the reference: binary cross-entropy of inside / outside at points with known occupancy (objects from
    # `lrmesh synth --layout training`, which writes occupancy.npz): logit = -sdf (stage 2) or density - the
    # stage-1 iso-level (stage 1). A dense 3-D signal that makes small models learn shape on a CPU budget.
    occupancy: float = 0.0
    # Not in the reference: colour MSE ([-1, 1], as `mse`) at the surface points the supervision views see, their
    # foreground pixels lifted with the stored depth, against the pixels' colours. Every view's colours reach the
    # colour head directly at every step, with nothing rendered.
    point_color: float = 0.0
    # OpenLRM: total variation of the triplanes (losses.plane_tv; its train-sample config: 5e-4)
    tv: float = 0.0

    @property
    def needs_renders(self) -> bool:
        """Whether any rendering loss is on (all off: a step renders nothing; only the point losses train)."""
        return any(getattr(self, f.name) > 0 for f in dataclasses.fields(self)
                   if f.name not in POINT_LOSSES + PLANE_LOSSES)


@dataclass
class OptimConfig:
    lr: float = 4e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    restart_steps: int = 3000  # cosine annealing with warm restarts period (reference: 3000)
    min_lr_ratio: float = 0.1  # eta_min = lr * this
    gradient_clip: float = 1.0  # 0 disables


@dataclass
class TrainConfig:
    stage: Literal[1, 2] = 1  # 1: NeRF synthesizer; 2: mesh synthesizer (FlexiCubes)
    # lrmesh.config preset for a fresh model: an InstantMesh one, or an OpenLRM single-image one (`openlrm-*`,
    # stage 1 only: its model is a NeRF)
    model_preset: str = "instant-nerf-large"
    model: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's fields, nested
    init: str = ""  # stage-1 checkpoint for stage 2, or any checkpoint to fine-tune; "" starts from scratch
    encoder_weights: str = ""  # Hugging Face DINO ViT weights for a fresh encoder (optional)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    max_steps: int = 100000
    max_minutes: float = 0.0  # stop after this much training time as well (0: no limit)
    batch_size: int = 1  # objects per step per device
    accumulate: int = 1  # gradient accumulation
    precision: str = "32-true"  # Lightning precision: "32-true", "bf16-mixed", "16-mixed"
    gradient_checkpointing: bool = True  # transformer blocks and per-view rendering
    devices: int | str = "auto"
    num_nodes: int = 1
    accelerator: str = "auto"
    checkpoint_every: int = 1000  # steps
    validate_every: int = 1000  # steps; validation images as grids
    log_every: int = 10
    seed: int = 42
    output: str = "runs/train"

    @property
    def single_image(self) -> bool:
        """An OpenLRM single-image model (one input view, ModLN transformer) rather than InstantMesh."""
        return self.model_preset in OPENLRM_PRESETS

    def model_config(self) -> ModelConfig | SingleViewConfig:
        if self.single_image:
            return SingleViewConfig.from_dict(_merge(openlrm_preset(self.model_preset).to_dict(), self.model, "model"))
        base = preset(self.model_preset).to_dict()
        kind = "nerf" if self.stage == 1 else "mesh"
        merged = _merge(base, self.model, "model")
        merged["synthesizer"]["kind"] = kind
        return ModelConfig.from_dict(merged)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _merge(base: dict, override: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key not in out:
            raise ConfigError(f"{where}: unknown key {key!r}; allowed: {sorted(out)}")
        out[key] = _merge(out[key], value, f"{where}.{key}") if isinstance(value, dict) else value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=1e-4' -> (['optim', 'lr'], 0.0001); the value is read as YAML (numbers, lists, booleans)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value")
    key, value = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    parsed = yaml.safe_load(value) if value else ""
    if isinstance(parsed, str):
        try:  # YAML 1.1 reads 1e-5 (no dot) as a string
            parsed = float(parsed)
        except ValueError:
            pass
    return key.split("."), parsed


def apply_overrides(data: dict, overrides: list[str]) -> None:
    """Set each 'key.sub=value' of `overrides` in the nested dict `data` (unknown keys are caught later, by
    `build_config`)."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {k!r} is not a section")
        node[keys[-1]] = value


def _check_random_inputs(data: DataConfig) -> None:
    if data.random_input_views is not None:
        low, high = data.random_input_views
        if not 1 <= low <= high:
            raise ConfigError(f"data.random_input_views must be [low, high] with 1 <= low <= high, got "
                              f"{list(data.random_input_views)}")
    if not 0 <= data.fixed_input_fraction <= 1:
        raise ConfigError(f"data.fixed_input_fraction must be in [0, 1], got {data.fixed_input_fraction}")
    if data.fixed_input_fraction > 0 and (data.random_input_views is None or data.input_view_ids is None):
        raise ConfigError("data.fixed_input_fraction needs data.random_input_views and data.input_view_ids")


def load_train_config(source: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """A YAML file, or the name of one under lrmesh/configs/ (without .yaml), plus key=value overrides."""
    path = Path(source)
    if not path.is_file():
        named = CONFIG_DIR / f"{source}.yaml"
        if not named.is_file():
            known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
            raise ConfigError(f"no training config {str(source)!r}: not a file, nor one of {known}")
        path = named
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot read {path}: {err}") from err
    apply_overrides(data, overrides)
    cfg = build_config(TrainConfig, data, "train")
    if cfg.stage not in (1, 2):
        raise ConfigError(f"train.stage must be 1 or 2, got {cfg.stage!r}")
    if cfg.data.num_input_views < 1:
        raise ConfigError("data.num_input_views must be at least 1")
    _check_random_inputs(cfg.data)
    negative = [f"loss.{f.name}={getattr(cfg.loss, f.name)}" for f in dataclasses.fields(cfg.loss)
                if getattr(cfg.loss, f.name) < 0]
    if negative:
        raise ConfigError(f"loss weights must be 0 (off) or more, got {', '.join(negative)}")
    if cfg.loss.occupancy > 0 and cfg.data.occupancy_points < 1:
        raise ConfigError("loss.occupancy needs points: set data.occupancy_points (e.g. 4096)")
    if not cfg.loss.needs_renders and all(getattr(cfg.loss, name) <= 0 for name in POINT_LOSSES):
        raise ConfigError("every loss weight is zero: nothing to train")
    if cfg.single_image and (cfg.stage != 1 or cfg.data.num_input_views != 1):
        raise ConfigError(f"{cfg.model_preset} is a single-image NeRF model: it needs stage 1 and "
                          f"data.num_input_views 1 (got stage {cfg.stage}, {cfg.data.num_input_views} views)")
    if cfg.single_image and cfg.data.input_size != cfg.model_config().source_size:
        raise ConfigError(f"data.input_size {cfg.data.input_size} must be the model's source_size "
                          f"{cfg.model_config().source_size} (the size it reconstructs from)")
    if cfg.data.canonical_source and cfg.data.num_input_views != 1:
        raise ConfigError("data.canonical_source re-poses the world for one input view: set data.num_input_views 1")
    if any(not 0 <= level <= 1 for level in cfg.data.background_levels):
        raise ConfigError(f"data.background_levels must lie in [0, 1], got {cfg.data.background_levels}")
    cfg.model_config()  # model overrides are checked now, not at the first step
    return cfg
