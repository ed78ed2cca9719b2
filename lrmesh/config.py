"""Typed model configuration, the presets, and reading the reference's YAML format.

One dataclass per component, each field documented. `ModelConfig.from_dict` rejects unknown keys, so a typo
in a YAML override is an error instead of a silent no-op.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lrmesh.errors import ConfigError
from lrmesh.normalisation import DINO_PROCESSOR, FAMILY_NORMALISATION


@dataclass
class EncoderConfig:
    """The camera-modulated ViT image encoder (DINO ViT-B/16 in the released models)."""

    hidden_size: int = 768  # token width
    num_layers: int = 12  # transformer blocks
    num_heads: int = 12  # attention heads
    intermediate_size: int = 3072  # MLP hidden width
    patch_size: int = 16  # square patches, pixels
    image_size: int = 224  # the position-embedding grid is image_size / patch_size on a side
    input_size: int = 0  # views are resized to this side before patching; 0 keeps them as given (the releases)
    layer_norm_eps: float = 1e-12  # HF ViT default, kept by the checkpoints
    qkv_bias: bool = True  # biases on the query/key/value projections
    camera_dim: int = 16  # 12 pose numbers + 4 intrinsics (see cameras.py)
    # per-channel input normalisation, (x - mean) / std; the released models' processor by default
    # (lrmesh/normalisation.py says which family uses what, and why)
    image_mean: tuple[float, float, float] = DINO_PROCESSOR.mean
    image_std: tuple[float, float, float] = DINO_PROCESSOR.std
    # "vit": the Hugging Face ViT (DINO v1); "dinov2": DINOv2 with LayerScale and register tokens (OpenLRM v1.1)
    architecture: Literal["vit", "dinov2"] = "vit"
    num_registers: int = 0  # dinov2: register tokens (4 in the released `_reg` backbones)


@dataclass
class TransformerConfig:
    """The triplane transformer: learned plane tokens attend to the image tokens."""

    dim: int = 1024  # token width
    num_layers: int = 16  # blocks of cross-attention, self-attention, MLP
    num_heads: int = 16  # attention heads
    low_res: int = 32  # tokens per plane side; the deconvolution doubles it
    triplane_dim: int = 80  # channels of each output plane
    mlp_ratio: float = 4.0  # MLP hidden width / dim
    block_norm_eps: float = 1e-5  # the blocks' LayerNorms: PyTorch's default (InstantMesh), 1e-6 in OpenLRM
    # Width of the vector that modulates every block LayerNorm (ModLN: OpenLRM's source-camera embedding);
    # 0 = plain LayerNorms (InstantMesh, whose camera enters the encoder)
    modulation_dim: int = 0
    # Optional, not in the reference (0 = off, as in the releases): plane tokens start from the image tokens
    # their line projects onto, read at this many points along the line and averaged over the views
    # (model/lifting.py)
    projected_samples: int = 0

    @property
    def high_res(self) -> int:
        """Texels per plane side after the stride-2 transposed convolution."""
        return 2 * self.low_res


@dataclass
class SynthesizerConfig:
    """How triplane features become a field: NeRF density + colour, or SDF mesh (FlexiCubes)."""

    kind: Literal["mesh", "nerf"] = "mesh"
    hidden_dim: int = 64  # width of the decoder MLPs
    num_layers: int = 4  # linear layers per decoder MLP
    samples_per_ray: int = 128  # NeRF: half coarse (stratified), half importance
    box_warp: float = 2.0  # side of the box the planes span; points are scaled by 2 / box_warp
    grid_res: int = 128  # mesh: FlexiCubes cubes per side
    grid_scale: float = 2.1  # mesh: side of the FlexiCubes grid (spans +-grid_scale / 2)
    mesh_resolution: int = 256  # nerf: marching-cubes grid points per side
    mesh_threshold: float = 10.0  # nerf: density iso-level of the extracted surface
    # nerf: samples outside the box get raw density float32-lowest / this, so softplus gives 0 and a mean with
    # an in-box neighbour stays finite (InstantMesh and OpenLRM v1.0: 3; OpenLRM v1.1: 8)
    empty_density_divisor: float = 3.0
    # nerf: depth = sum w t / sum w (OpenLRM) instead of sum w t (InstantMesh)
    normalize_depth: bool = False
    # nerf: render all cameras of a call as one batch of rays, so the miss-ray limits and the depth clamp are
    # shared by them (OpenLRM's synthesizer); otherwise one camera at a time (InstantMesh's frames)
    render_views_jointly: bool = False


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    synthesizer: SynthesizerConfig = field(default_factory=SynthesizerConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return build_config(cls, data, "model")


def build_config(cls: type, data: dict[str, Any], where: str):
    """Instantiate a (nested) config dataclass from a dict, refusing unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    values = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            values[name] = build_config(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple):
            values[name] = tuple(value)
        else:
            values[name] = value
    return cls(**values)


def _preset(kind: str, layers: int, triplane_dim: int, samples: int) -> ModelConfig:
    return ModelConfig(
        transformer=TransformerConfig(num_layers=layers, triplane_dim=triplane_dim),
        synthesizer=SynthesizerConfig(kind=kind, samples_per_ray=samples),
    )


def _tiny(kind: str) -> ModelConfig:
    """The dimensions of the parity fixture (tests/fixtures/instantmesh-tiny): runs in a second on a CPU."""
    return ModelConfig(
        encoder=EncoderConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128),
        transformer=TransformerConfig(dim=64, num_layers=2, num_heads=4, low_res=8, triplane_dim=8),
        synthesizer=SynthesizerConfig(kind=kind, samples_per_ray=16, grid_res=32),
    )


def _small(kind: str) -> ModelConfig:
    stats = FAMILY_NORMALISATION["lrmesh-small"]  # what the bundled model was trained with
    return ModelConfig(
        encoder=EncoderConfig(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=256, input_size=128,
                              image_mean=stats.mean, image_std=stats.std),
        transformer=TransformerConfig(dim=128, num_layers=4, num_heads=4, low_res=16, triplane_dim=16,
                                      projected_samples=8),
        synthesizer=SynthesizerConfig(kind=kind, hidden_dim=64, samples_per_ray=48, grid_res=32,
                                      mesh_resolution=96, mesh_threshold=5.0),
    )


PRESETS: dict[str, ModelConfig] = {
    # The official InstantMesh releases (configs/*.yaml of the reference).
    "instant-mesh-large": _preset("mesh", 16, 80, 128),
    "instant-mesh-base": _preset("mesh", 12, 40, 96),
    "instant-nerf-large": _preset("nerf", 16, 80, 128),
    "instant-nerf-base": _preset("nerf", 12, 40, 96),
    "tiny": _tiny("mesh"),
    "tiny-nerf": _tiny("nerf"),
    # The model lrmesh trains and ships (2.3 M parameters): views resized to 128 px (64 tokens each), a 32^2
    # triplane whose tokens start from the image tokens they project onto (model/lifting.py), a 32^3
    # FlexiCubes grid. Trained on this project's synthetic objects by configs/small-geometry.yaml, then
    # small-color.yaml, then small-stage2.yaml; see the README.
    "small": _small("mesh"),
    "small-nerf": _small("nerf"),
}


# ---------------------------------------------------------------------------------------------------------
# OpenLRM's single-image models (model/single_view.py): v1.0 (`openlrm-{small,base,large}-obj-1.0`,
# model.pth) and v1.1 (`openlrm-{obj,mix}-{small,base,large}-1.1`, config.json + model.safetensors).

# DINOv2 `_reg` backbones: position grid stored for 518 px images (37 x 37 patches of 14), 4 registers,
# LayerNorm eps 1e-6, head width 64 (ViT-S/14: 384 / 6, ViT-B/14: 768 / 12).
DINOV2_IMAGE_SIZE, DINOV2_PATCH, DINOV2_REGISTERS, DINOV2_HEAD_WIDTH = 518, 14, 4, 64
# Every released OpenLRM config: camera_embed_dim 1024, 32 x 32 query tokens per plane, LayerNorm eps 1e-6.
OPENLRM_CAMERA_EMBED, OPENLRM_LOW_RES, OPENLRM_NORM_EPS = 1024, 32, 1e-6


@dataclass
class SingleViewConfig:
    """OpenLRM's single-image LRM: a plain image encoder, the source camera's embedding modulating every
    LayerNorm of the triplane transformer (ModLN), a triplane NeRF."""

    version: Literal["1.0", "1.1"] = "1.1"  # release layout: key names, out-of-box density, video orbit
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # ViT (1.0) or DINOv2 with registers (1.1)
    camera_embed_dim: int = 1024  # width of the source camera's embedding (Linear -> SiLU -> Linear)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)  # modulation_dim = camera_embed_dim
    synthesizer: SynthesizerConfig = field(default_factory=SynthesizerConfig)  # kind "nerf"
    source_size: int = 336  # the photo is resized to this square for the encoder (OpenLRM's infer config)
    source_distance: float = 2.0  # the canonical source camera's distance to the origin (all released configs)
    render_size: int = 288  # side of the turntable video's frames (OpenLRM's infer config)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SingleViewConfig:
        return build_config(cls, data, "openlrm")


def dinov2_encoder(width: int, depth: int) -> EncoderConfig:
    """A DINOv2 `_reg` backbone of this width and depth (MLP ratio 4, heads of width 64)."""
    return EncoderConfig(hidden_size=width, num_layers=depth, num_heads=width // DINOV2_HEAD_WIDTH,
                         intermediate_size=4 * width, patch_size=DINOV2_PATCH, image_size=DINOV2_IMAGE_SIZE,
                         layer_norm_eps=1e-6, image_mean=FAMILY_NORMALISATION["openlrm-v1.1"].mean,
                         image_std=FAMILY_NORMALISATION["openlrm-v1.1"].std,
                         architecture="dinov2", num_registers=DINOV2_REGISTERS)


def dino_vitb16_encoder() -> EncoderConfig:
    """facebook/dino-vitb16 with its hub processor's normalisation (OpenLRM v1.0's encoder)."""
    stats = FAMILY_NORMALISATION["openlrm-v1.0"]  # x * 2 - 1, see lrmesh/normalisation.py
    return EncoderConfig(image_mean=stats.mean, image_std=stats.std)  # the HF ViT-B/16 defaults otherwise


def openlrm_synthesizer(version: str, samples_per_ray: int) -> SynthesizerConfig:
    """OpenLRM's renderer: 4-layer decoder of width 64, box [-1, 1]^3, mesh at 384^3 and density 3.0 (its infer
    configs), out-of-box density lowest / 8 (v1.1) or / 3 (v1.0), normalised depth, views rendered together."""
    return SynthesizerConfig(kind="nerf", hidden_dim=64, num_layers=4, samples_per_ray=samples_per_ray,
                             box_warp=2.0, mesh_resolution=384, mesh_threshold=3.0,
                             empty_density_divisor=8.0 if version == "1.1" else 3.0, normalize_depth=True,
                             render_views_jointly=True)


def _openlrm(version: str, encoder: EncoderConfig, dim: int, layers: int, heads: int, triplane_dim: int,
             samples: int, source_size: int, render_size: int) -> SingleViewConfig:
    return SingleViewConfig(
        version=version, encoder=encoder, camera_embed_dim=OPENLRM_CAMERA_EMBED,
        transformer=TransformerConfig(dim=dim, num_layers=layers, num_heads=heads, low_res=OPENLRM_LOW_RES,
                                      triplane_dim=triplane_dim, block_norm_eps=OPENLRM_NORM_EPS,
                                      modulation_dim=OPENLRM_CAMERA_EMBED),
        synthesizer=openlrm_synthesizer(version, samples), source_size=source_size, render_size=render_size)


OPENLRM_PRESETS: dict[str, SingleViewConfig] = {
    # v1.1: the config.json of zxhezexin/openlrm-{obj,mix}-*-1.1 (both data mixes share the architecture), source
    # and render sizes from OpenLRM's configs/infer-{s,b,l}.yaml.
    "openlrm-small-1.1": _openlrm("1.1", dinov2_encoder(384, 12), 512, 12, 8, 32, 96, 224, 192),
    "openlrm-base-1.1": _openlrm("1.1", dinov2_encoder(768, 12), 768, 12, 12, 48, 96, 336, 288),
    "openlrm-large-1.1": _openlrm("1.1", dinov2_encoder(768, 12), 1024, 16, 16, 80, 128, 448, 384),
    # v1.0: layers, width and triplane channels from OpenLRM v1.0's model card; the released model.pth files carry
    # their own kwargs, which win over these. Assumed here (not published outside the files): 64-wide heads, a
    # 1024 camera embedding, 128 samples per ray, source size 336.
    "openlrm-small-obj-1.0": _openlrm("1.0", dino_vitb16_encoder(), 768, 12, 12, 32, 128, 336, 192),
    "openlrm-base-obj-1.0": _openlrm("1.0", dino_vitb16_encoder(), 1024, 12, 16, 40, 128, 336, 192),
    "openlrm-large-obj-1.0": _openlrm("1.0", dino_vitb16_encoder(), 1024, 16, 16, 80, 128, 336, 384),
}


def openlrm_preset(name: str) -> SingleViewConfig:
    if name not in OPENLRM_PRESETS:
        raise ConfigError(f"unknown OpenLRM preset {name!r}; choose one of {sorted(OPENLRM_PRESETS)}")
    return copy.deepcopy(OPENLRM_PRESETS[name])


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])  # callers may edit it; the table stays as it is


# ---------------------------------------------------------------------------------------------------------
# The reference's YAML format: `model_config: {target, params}` (+ `infer_config`), optionally one section
# per variant, and (our fixtures) an `encoder:` block giving a non-default ViT's dimensions.

_REFERENCE_TARGETS = {"src.models.lrm_mesh.InstantMesh": "mesh", "src.models.lrm.InstantNeRF": "nerf"}
_DINO_VITB16 = "facebook/dino-vitb16"


def load_reference_yaml(path: str | Path, kind: Literal["mesh", "nerf"] | None = None) -> ModelConfig:
    """Read a reference-format config; with several variant sections, take the one of `kind`."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from err
    if not isinstance(doc, dict):
        raise ConfigError(f"config {path}: expected a mapping at the top level")
    sections = {"": doc} if "model_config" in doc else {
        name: sec for name, sec in doc.items() if isinstance(sec, dict) and "model_config" in sec}
    if not sections:
        raise ConfigError(f"config {path}: no `model_config` section found")
    candidates = {name: sec for name, sec in sections.items() if kind is None or _target_kind(sec, path) == kind}
    if len(candidates) != 1:
        found = {name or "<top>": _target_kind(sec, path) for name, sec in sections.items()}
        raise ConfigError(f"config {path}: need exactly one section for a {kind or 'any'} model, found {found}")
    section = next(iter(candidates.values()))
    return _from_reference_section(section, doc.get("encoder"), path)


def _target_kind(section: dict, path: Path) -> str:
    target = section["model_config"].get("target")
    if target not in _REFERENCE_TARGETS:
        raise ConfigError(f"config {path}: unknown model target {target!r}; known: {sorted(_REFERENCE_TARGETS)}")
    return _REFERENCE_TARGETS[target]


def _from_reference_section(section: dict, encoder_block: dict | None, path: Path) -> ModelConfig:
    params = dict(section["model_config"].get("params", {}))
    infer = section.get("infer_config") or {}
    kind = _target_kind(section, path)
    encoder = EncoderConfig()
    if encoder_block is not None:
        encoder = EncoderConfig(
            hidden_size=encoder_block["hidden_size"], num_layers=encoder_block["num_hidden_layers"],
            num_heads=encoder_block["num_attention_heads"], intermediate_size=encoder_block["intermediate_size"],
            patch_size=encoder_block.get("patch_size", 16), image_size=encoder_block.get("image_size", 224),
            layer_norm_eps=encoder_block.get("layer_norm_eps", 1e-12), qkv_bias=encoder_block.get("qkv_bias", True),
            image_mean=tuple(encoder_block.get("image_mean", DINO_PROCESSOR.mean)),
            image_std=tuple(encoder_block.get("image_std", DINO_PROCESSOR.std)))
    elif params.get("encoder_model_name", _DINO_VITB16) != _DINO_VITB16:
        raise ConfigError(f"config {path}: encoder {params['encoder_model_name']!r} is not facebook/dino-vitb16 "
                         "and no `encoder:` block gives its dimensions")
    if params.get("encoder_feat_dim", encoder.hidden_size) != encoder.hidden_size:
        raise ConfigError(f"config {path}: encoder_feat_dim {params['encoder_feat_dim']} does not match the "
                         f"encoder width {encoder.hidden_size}")
    low, high = params.get("triplane_low_res", 32), params.get("triplane_high_res", 64)
    if high != 2 * low:
        raise ConfigError(f"config {path}: triplane_high_res must be 2 x triplane_low_res, got {low} -> {high}")
    transformer = TransformerConfig(
        dim=params.get("transformer_dim", 1024), num_layers=params.get("transformer_layers", 16),
        num_heads=params.get("transformer_heads", 16), low_res=low, triplane_dim=params.get("triplane_dim", 80))
    synth = SynthesizerConfig(kind=kind, samples_per_ray=params.get("rendering_samples_per_ray", 128),
                              grid_res=params.get("grid_res", 128), grid_scale=params.get("grid_scale", 2.0),
                              mesh_resolution=infer.get("mesh_resolution", 256),
                              mesh_threshold=float(infer.get("mesh_threshold", 10.0)))
    return ModelConfig(encoder=encoder, transformer=transformer, synthesizer=synth)
