"""Loading and saving weights: official InstantMesh checkpoints, Hugging Face ViT (DINO) weights, our own.

- Official files (`instant_mesh_large.ckpt`, ...) are Lightning checkpoints: {'state_dict': {'lrm_generator.'
  + name: tensor, 'lpips.' + ...: the training loss network, sometimes 'source_camera'}}. They are pickles,
  so they are opened with torch.load(weights_only=True) only: a file that needs code to unpickle is refused.
- Names are mapped from the official layout (which embeds Hugging Face ViTModel names) onto ours by one rule
  table, `OFFICIAL_RENAMES`; nn.MultiheadAttention's packed `in_proj_weight` is split into q, k, v.
- Without a config, the preset is recognised from tensor shapes.
- Our own checkpoints are safetensors with the model config as JSON in the file's metadata (and beside it).
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from lrmesh.config import PRESETS, ModelConfig, load_reference_yaml, preset
from lrmesh.errors import LrmeshError
from lrmesh.model.lrm import LRM
from lrmesh.normalisation import DINO_PROCESSOR

GENERATOR_PREFIX = "lrm_generator."
# Keys of the released files that are not the generator's: the LPIPS loss network kept by Lightning and, in
# some files, the training camera. Skipped by name, as the reference's run.py does by prefix.
SKIPPED_PREFIXES = ("lpips.", "source_camera")
CONFIG_METADATA_KEY = "lrmesh_config"

_ATTN = r"transformer\.layers\.(\d+)\.(cross_attn|self_attn)"
_VIT = r"encoder\.model\.encoder\.layer\.(\d+)"
# (official pattern, our name): applied to the whole key, first match wins.
OFFICIAL_RENAMES: tuple[tuple[str, str], ...] = (
    (r"encoder\.model\.embeddings\.cls_token", r"encoder.vit.cls_token"),
    (r"encoder\.model\.embeddings\.position_embeddings", r"encoder.vit.pos_embed"),
    (r"encoder\.model\.embeddings\.patch_embeddings\.projection\.(\w+)", r"encoder.vit.patch_embed.\1"),
    (_VIT + r"\.attention\.attention\.query\.(\w+)", r"encoder.vit.blocks.\1.attn.q.\2"),
    (_VIT + r"\.attention\.attention\.key\.(\w+)", r"encoder.vit.blocks.\1.attn.k.\2"),
    (_VIT + r"\.attention\.attention\.value\.(\w+)", r"encoder.vit.blocks.\1.attn.v.\2"),
    (_VIT + r"\.attention\.output\.dense\.(\w+)", r"encoder.vit.blocks.\1.attn.out.\2"),
    (_VIT + r"\.intermediate\.dense\.(\w+)", r"encoder.vit.blocks.\1.mlp.fc1.\2"),
    (_VIT + r"\.output\.dense\.(\w+)", r"encoder.vit.blocks.\1.mlp.fc2.\2"),
    (_VIT + r"\.layernorm_before\.(\w+)", r"encoder.vit.blocks.\1.norm1.\2"),
    (_VIT + r"\.layernorm_after\.(\w+)", r"encoder.vit.blocks.\1.norm2.\2"),
    (_VIT + r"\.adaLN_modulation\.1\.(\w+)", r"encoder.vit.blocks.\1.adaln.1.\2"),
    (r"encoder\.model\.layernorm\.(\w+)", r"encoder.vit.norm.\1"),
    (_ATTN + r"\.q_proj_weight", r"transformer.blocks.\1.\2.q.weight"),
    (_ATTN + r"\.k_proj_weight", r"transformer.blocks.\1.\2.k.weight"),
    (_ATTN + r"\.v_proj_weight", r"transformer.blocks.\1.\2.v.weight"),
    (_ATTN + r"\.out_proj\.weight", r"transformer.blocks.\1.\2.out.weight"),
    (r"transformer\.layers\.(\d+)\.mlp\.0\.(\w+)", r"transformer.blocks.\1.mlp.fc1.\2"),
    (r"transformer\.layers\.(\d+)\.mlp\.3\.(\w+)", r"transformer.blocks.\1.mlp.fc2.\2"),
    (r"transformer\.layers\.(\d+)\.(norm[123])\.(\w+)", r"transformer.blocks.\1.\2.\3"),
)
_PACKED_IN_PROJ = re.compile(_ATTN + r"\.in_proj_weight")
_COMPILED = tuple((re.compile(p), r) for p, r in OFFICIAL_RENAMES)


class CheckpointError(LrmeshError):
    """A checkpoint that cannot be used, with the reason in one line."""


# ------------------------------------------------------------------------------------------------ reading
def read_tensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors of a .safetensors or torch file (safe loading only) and the safetensors metadata."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            return load_file(str(path)), metadata
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    obj = safe_torch_load(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (or a Lightning file with 'state_dict')")
    return obj, {}


def safe_torch_load(path: Path) -> object:
    """torch.load(weights_only=True) of a file on the CPU, its failures as one-line CheckpointErrors.

    Files in the zip format are memory-mapped (mmap=True): tensors are paged in from the file as they are
    used, so loading needs no second copy of the weights in memory.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unpickling failed"
        raise CheckpointError(f"{path}: refused, the file needs code beyond plain tensors to load "
                              f"(weights_only=True): {first}") from err
    except Exception as err:  # torch.load fails in many ways on foreign bytes (KeyError, EOFError, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or another format): "
                              f"{first}") from err


def check_resume_checkpoint(path: Path, state_keys: set[str]) -> None:
    """Check, before Lightning runs, that `path` is a Lightning checkpoint of a module with these state keys.

    It is opened with weights_only=True (CheckpointError for a truncated file, one that needs code to unpickle,
    or another format) and must hold a `state_dict` with exactly `state_keys` and a `global_step`.
    """
    obj = safe_torch_load(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict) or "global_step" not in obj:
        raise CheckpointError(f"{path}: not a Lightning training checkpoint (no state_dict and global_step)")
    missing, unexpected = state_keys - set(obj["state_dict"]), set(obj["state_dict"]) - state_keys
    if missing or unexpected:
        problems = [f"{what} {listing(sorted(keys))}" for what, keys in (("missing", missing),
                                                                          ("unexpected", unexpected)) if keys]
        raise CheckpointError(f"{path}: a checkpoint of another model or configuration ({'; '.join(problems)})")


def official_to_lrmesh(state: dict[str, Tensor], source: str = "checkpoint") -> dict[str, Tensor]:
    """Official names (with or without the 'lrm_generator.' prefix) -> our names.

    Keys of the training-loss network are dropped; any other key outside the generator is an error.
    """
    has_prefix = any(k.startswith(GENERATOR_PREFIX) for k in state)
    foreign = [k for k in state if has_prefix and not k.startswith(GENERATOR_PREFIX)
               and not k.startswith(SKIPPED_PREFIXES)]
    if foreign:
        raise CheckpointError(f"{source}: unexpected keys outside the generator: {listing(foreign)}")
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if has_prefix:
            if not key.startswith(GENERATOR_PREFIX):
                continue
            key = key[len(GENERATOR_PREFIX):]
        packed = _PACKED_IN_PROJ.fullmatch(key)
        if packed:
            base = f"transformer.blocks.{packed.group(1)}.{packed.group(2)}"
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{base}.{name}.weight"] = part
            continue
        out[rename_official_key(key)] = value
    return out


def lrmesh_to_official(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our names -> the released files' layout ('lrm_generator.' + the reference's names); official_to_lrmesh
    undone. An attention's q, k, v are packed into `in_proj_weight` when they have one shape, as
    nn.MultiheadAttention stores them when kdim == embed_dim, and kept as q/k/v_proj_weight otherwise."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        qkv = re.fullmatch(r"(transformer\.blocks\.\d+\.(?:cross_attn|self_attn))\.([qkv])\.weight", key)
        if qkv and qkv.group(2) != "q":
            continue  # packed or renamed with its q below
        if qkv:
            parts = [state[f"{qkv.group(1)}.{name}.weight"] for name in "qkv"]
            base = GENERATOR_PREFIX + _official_name(qkv.group(1) + ".out.weight").removesuffix("out_proj.weight")
            if len({p.shape for p in parts}) == 1:
                out[base + "in_proj_weight"] = torch.cat(parts)
            else:
                out.update({f"{base}{name}_proj_weight": p for name, p in zip("qkv", parts)})
            continue
        out[GENERATOR_PREFIX + _official_name(key)] = value
    return out


def _inverse_rule(pattern: str, replacement: str) -> tuple[re.Pattern, str]:
    """(our-name regex, official template) of one OFFICIAL_RENAMES rule: its groups swap sides."""
    groups = re.findall(r"\([^()]*\)", pattern)
    pieces = re.split(r"\\(\d)", replacement)  # literal, group number, literal, ...
    regex = "".join(re.escape(p) if i % 2 == 0 else groups[int(p) - 1] for i, p in enumerate(pieces))
    template = pattern
    for k, group in enumerate(groups, start=1):
        template = template.replace(group, f"\\{k}", 1)
    return re.compile(regex), template.replace("\\.", ".")


_INVERSE = tuple(_inverse_rule(p, r) for p, r in OFFICIAL_RENAMES)


def _official_name(key: str) -> str:
    for pattern, template in _INVERSE:
        if pattern.fullmatch(key):
            return pattern.sub(template, key)
    return key


def rename_official_key(key: str) -> str:
    """One official key (InstantMesh / Hugging Face ViT names) -> ours by `OFFICIAL_RENAMES`; others unchanged."""
    for pattern, replacement in _COMPILED:
        if pattern.fullmatch(key):
            return pattern.sub(replacement, key)
    return key


def _is_official(state: dict[str, Tensor]) -> bool:
    return any(k.startswith((GENERATOR_PREFIX, "encoder.model.", "transformer.layers.")) for k in state)


# ---------------------------------------------------------------------------------------- recognising
def infer_config(state: dict[str, Tensor], source: str = "checkpoint") -> tuple[str, ModelConfig]:
    """Recognise the preset of a state dict in our names from its tensor shapes."""
    wanted = _signature_of_state(state)
    for name, cfg in PRESETS.items():
        if _signature_of_model(cfg) == wanted:
            return name, preset(name)
    raise CheckpointError(f"{source}: its tensor shapes match no preset ({_describe(wanted)}); "
                          f"pass a config (--config) that describes it. Presets: {sorted(PRESETS)}")


def _signature_of_state(state: dict[str, Tensor]) -> dict[str, Tensor | None]:
    keys = ("encoder.vit.pos_embed", "encoder.vit.patch_embed.weight", "encoder.vit.blocks.0.mlp.fc1.weight",
            "transformer.pos_embed", "transformer.deconv.weight", "synthesizer.decoder.net.6.weight",
            "synthesizer.decoder.net_sdf.0.weight", "synthesizer.decoder.net_weight.6.weight", "lifting.proj.weight")
    sig: dict = {k: tuple(state[k].shape) if k in state else None for k in keys}
    sig["vit_blocks"] = len({k.split(".")[3] for k in state if k.startswith("encoder.vit.blocks.")})
    sig["transformer_blocks"] = len({k.split(".")[2] for k in state if k.startswith("transformer.blocks.")})
    return sig


def _signature_of_model(cfg: ModelConfig) -> dict:
    with torch.device("meta"):
        model = LRM(cfg)
    return _signature_of_state(model.state_dict())


def _describe(sig: dict) -> str:
    parts = [f"{k}={v}" for k, v in sig.items() if v is not None]
    return ", ".join(parts)


def listing(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


# ------------------------------------------------------------------------------------------- loading
def fit_problems(state: dict[str, Tensor], expected: dict[str, Tensor]) -> list[str]:
    """What keeps `state` from loading strictly where `expected` is wanted: missing / unexpected / shapes."""
    missing = [f"{k} {list(expected[k].shape)}" for k in sorted(set(expected) - set(state))]
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)}, model expects {tuple(expected[k].shape)}"
             for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {listing(unexpected)}")
    if wrong:
        problems.append(f"shape mismatches: {listing(wrong, 3)}")
    return problems


def load_state(model: LRM, state: dict[str, Tensor], source: str = "checkpoint", assign: bool = False) -> None:
    """Strict load with one clear message naming missing / unexpected keys and shape mismatches.

    assign=True makes the (float32) checkpoint tensors the model's own, with no copy: for a model built on
    the meta device (`load_model`), whose weights then live in the memory-mapped file's pages.
    """
    problems = fit_problems(state, model.state_dict())
    if problems:
        raise CheckpointError(f"{source} does not fit the {model.kind} model: " + "; ".join(problems))
    if assign:
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=assign)


def checkpoint_kind(state: dict[str, Tensor]) -> str:
    """'mesh' or 'nerf', from the synthesizer's keys (our names)."""
    if any(k.startswith("synthesizer.decoder.net_sdf.") for k in state):
        return "mesh"
    if any(k.startswith("synthesizer.decoder.net.") for k in state):
        return "nerf"
    raise CheckpointError("no synthesizer weights found: not an InstantMesh / InstantNeRF checkpoint")


def load_model(path: str | Path, config: ModelConfig | str | Path | None = None) -> LRM:
    """Build the model a checkpoint describes and load it (CPU, eval mode).

    The config comes from, in order: the argument (a ModelConfig, or a reference-format YAML whose section
    for this checkpoint's variant is used), the checkpoint's own metadata (our safetensors), a JSON file
    beside it, or recognition of the preset from tensor shapes.
    """
    path = Path(path)
    state, metadata = read_tensors(path)
    if _is_official(state):
        state = official_to_lrmesh(state, source=str(path))
    if isinstance(config, (str, Path)):
        try:
            kind = checkpoint_kind(state)
        except CheckpointError as err:
            raise CheckpointError(f"{path}: {err}") from None
        config = load_reference_yaml(config, kind)
    if config is None and CONFIG_METADATA_KEY in metadata:
        config = ModelConfig.from_dict(json.loads(metadata[CONFIG_METADATA_KEY]))
    if config is None and path.with_suffix(".json").is_file():
        config = ModelConfig.from_dict(json.loads(path.with_suffix(".json").read_text()))
    if config is None:
        config = infer_config(state, source=str(path))[1]
    with torch.device("meta"):  # no memory and no random initialisation for weights the file replaces
        model = LRM(config)
    load_state(model, state, source=str(path), assign=True)
    return model.eval()


def save_model(model: LRM, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write our checkpoint: safetensors (config JSON in its metadata) plus the same JSON beside it.

    `dtype` (e.g. torch.float16, half the file) stores the floating-point tensors in that type; `load_model`
    builds a float32 model whatever the file holds.
    """
    if dtype is not None and not dtype.is_floating_point:
        raise ValueError(f"save_model: dtype must be a floating-point type, got {dtype}")
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    config_json = json.dumps(model.cfg.to_dict())
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(path), metadata={CONFIG_METADATA_KEY: config_json})
    path.with_suffix(".json").write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
    return path


# ------------------------------------------------------------------------------------- Hugging Face ViT
def hf_vit_to_lrmesh(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face ViTModel weights (DINO ViT-B/16: keys 'embeddings.*', 'encoder.layer.*', 'layernorm.*',
    optionally under 'vit.') -> our encoder names. The pooler is dropped; adaLN heads are not in such files."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("vit.")
        if key.startswith(("pooler.", "classifier.")) or key == "embeddings.mask_token":
            continue
        renamed = rename_official_key("encoder.model." + key)
        if not renamed.startswith("encoder.vit."):
            raise CheckpointError(f"not a ViT weight: {key}")
        out[renamed] = value
    return out


def load_hf_vit(model: LRM, path: str | Path) -> None:
    """Initialise the encoder's ViT from Hugging Face ViTModel weights (for training from DINO).

    Every ViT weight must be present and fit; the camera embedder and adaLN heads keep their initialisation
    (adaLN at zero, so the encoder starts as the plain ViT). The DINO weights come with the processor config
    mean = std = 0.5 (lrmesh/normalisation.py); an encoder configured otherwise is warned about, since it would
    start from features computed on inputs the ViT never saw.
    """
    enc = model.cfg.encoder
    if (tuple(enc.image_mean), tuple(enc.image_std)) != (DINO_PROCESSOR.mean, DINO_PROCESSOR.std):
        warnings.warn(f"the encoder normalises with mean {list(enc.image_mean)} / std {list(enc.image_std)}, "
                      f"but DINO ViT weights expect mean = std = 0.5 ({DINO_PROCESSOR.source})", stacklevel=2)
    state, _ = read_tensors(path)
    vit_state = hf_vit_to_lrmesh(state)
    expected = {k: v for k, v in model.state_dict().items() if k.startswith("encoder.vit.") and ".adaln." not in k}
    problems = fit_problems(vit_state, expected)
    if problems:
        raise CheckpointError(f"{path}: ViT weights do not fit the encoder: " + "; ".join(problems))
    model.load_state_dict(vit_state, strict=False)
