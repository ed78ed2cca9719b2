"""OpenLRM's released weight files, read as they are, into `SingleViewLRM`.

- v1.1 (`zxhezexin/openlrm-{obj,mix}-{small,base,large}-1.1`): a folder with `config.json` (the model's 12
  constructor arguments) and `model.safetensors` (every parameter under the module's own name).
- v1.0 (`zxhezexin/openlrm-{small,base,large}-obj-1.0`): `model.pth`, a torch file holding
  {"weights": state dict, "kwargs": {"model": constructor arguments, "infer": {"source_size", "render_size"}}},
  read with torch.load(weights_only=True) only.

Loading is strict (OpenLRM's own v1.1 loader is not, which hides broken files): the file's keys and shapes are
compared with the ones its configuration implies (`release_shapes`, in the release's names), and any missing,
unexpected or misshapen key is named. The weights are CC BY-NC 4.0; `load_openlrm` says so once when asked.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lrmesh.checkpoints import CheckpointError, fit_problems, read_tensors, rename_official_key
from lrmesh.config import (DINOV2_HEAD_WIDTH, OPENLRM_NORM_EPS, OPENLRM_PRESETS, EncoderConfig, SingleViewConfig,
                           TransformerConfig, dino_vitb16_encoder, dinov2_encoder, openlrm_synthesizer)
from lrmesh.model.single_view import CAMERA_DIM, SingleViewLRM

V11_CONFIG, V11_WEIGHTS, V10_WEIGHTS = "config.json", "model.safetensors", "model.pth"
# The constructor arguments a release config gives (v1.0's kwargs["model"] has all but encoder_type).
RELEASE_ARGS = ("camera_embed_dim", "encoder_feat_dim", "encoder_freeze", "encoder_model_name", "encoder_type",
                "rendering_samples_per_ray", "transformer_dim", "transformer_heads", "transformer_layers",
                "triplane_dim", "triplane_high_res", "triplane_low_res")
LICENCE_NOTICE = ("lrmesh: note: OpenLRM weights are licensed CC BY-NC 4.0 (non-commercial use only; "
                  "https://creativecommons.org/licenses/by-nc/4.0/)")
DINO_VITB16 = "facebook/dino-vitb16"
DINO_VITB16_WIDTH, DINO_VITB16_HEADS = 768, 12
DECODER_LAYERS = (0, 2, 4, 6)  # nn.Sequential indices of the NeRF decoder's linear layers (ReLU between)
_notice_shown = False


# --------------------------------------------------------------------------------------- recognising
def openlrm_files(path: str | Path) -> tuple[str, Path, Path | None] | None:
    """(version, weights, config) when `path` is an OpenLRM release (a v1.1 folder, its config.json or
    model.safetensors, or a v1.0 model.pth), else None. A .pth counts only if it holds 'weights' and 'kwargs'."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if (folder / V11_CONFIG).is_file() and (folder / V11_WEIGHTS).is_file() and \
            (path.is_dir() or path.name in (V11_CONFIG, V11_WEIGHTS)):
        return "1.1", folder / V11_WEIGHTS, folder / V11_CONFIG
    pth = folder / V10_WEIGHTS if path.is_dir() else path
    if pth.suffix == ".pth" and pth.is_file() and _is_v10_file(pth):
        return "1.0", pth, None
    return None


def _is_v10_file(path: Path) -> bool:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mapped, not read
    except Exception:  # any unreadable file is simply not an OpenLRM v1.0 release; read_release says why
        return False
    return isinstance(obj, dict) and "weights" in obj and "kwargs" in obj


def read_release(path: str | Path) -> tuple[str, dict[str, Any], dict[str, Tensor], dict[str, Any]]:
    """-> (version, constructor arguments, state dict in release names, infer settings {} or v1.0's)."""
    found = openlrm_files(path)
    if found is None:
        raise CheckpointError(f"{path}: not an OpenLRM release (a folder with {V11_CONFIG} + {V11_WEIGHTS}, "
                              f"or a v1.0 {V10_WEIGHTS} holding 'weights' and 'kwargs')")
    version, weights, config = found
    if version == "1.1":
        try:
            args = json.loads(config.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{config}: not readable JSON ({err})") from err
        state, _ = read_tensors(weights)
        return version, _checked_args(args, str(config), version), state, {}
    try:
        obj = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{weights}: not readable with torch.load(weights_only=True): {err}") from err
    kwargs = obj["kwargs"]
    if not isinstance(kwargs, dict) or not isinstance(kwargs.get("model"), dict) or \
            not isinstance(obj["weights"], dict) or not all(isinstance(v, Tensor) for v in obj["weights"].values()):
        raise CheckpointError(f"{weights}: expected {{'weights': state dict, "
                              "'kwargs': {'model': ..., 'infer': ...}}")
    return version, _checked_args(kwargs["model"], str(weights), version), obj["weights"], kwargs.get("infer") or {}


def _checked_args(args: Any, source: str, version: str) -> dict[str, Any]:
    if not isinstance(args, dict):
        raise CheckpointError(f"{source}: expected a mapping of the model's constructor arguments")
    args = dict(args)
    args.setdefault("encoder_type", "dinov2" if version == "1.1" else "dino")
    unknown = sorted(set(args) - set(RELEASE_ARGS))
    missing = sorted(set(RELEASE_ARGS) - set(args) - {"encoder_freeze", "encoder_model_name"})
    if unknown or missing:
        raise CheckpointError(f"{source}: model arguments do not match OpenLRM {version}: "
                              f"unknown {unknown}, missing {missing}")
    if args["encoder_type"] != ("dinov2" if version == "1.1" else "dino"):
        raise CheckpointError(f"{source}: encoder_type {args['encoder_type']!r} is not supported for OpenLRM {version}")
    if args["triplane_high_res"] != 2 * args["triplane_low_res"]:
        raise CheckpointError(f"{source}: triplane_high_res must be 2 x triplane_low_res (one stride-2 upsampler)")
    return args


# ------------------------------------------------------------------------------------------ configuring
def release_config(version: str, args: dict[str, Any], state: dict[str, Tensor], infer: dict[str, Any],
                   source_size: int | None = None, encoder_heads: int | None = None,
                   source: str = "checkpoint") -> SingleViewConfig:
    """The model a release describes. The encoder's width, depth and MLP width come from its tensors (the
    releases name a backbone, which a fine-tuned or tiny file need not be); its heads are width / 64 for DINOv2
    (true of ViT-S/14 and ViT-B/14) and 12 for a 768-wide DINO ViT-B/16, else `encoder_heads` must say.
    The source size comes from `source_size`, v1.0's infer settings, or the released preset the file matches."""
    encoder = _encoder_from_tensors(version, state, encoder_heads, source)
    if args["encoder_feat_dim"] != encoder.hidden_size:
        raise CheckpointError(f"{source}: encoder_feat_dim {args['encoder_feat_dim']} does not match the "
                              f"encoder's weights ({encoder.hidden_size} wide)")
    transformer = TransformerConfig(
        dim=args["transformer_dim"], num_layers=args["transformer_layers"], num_heads=args["transformer_heads"],
        low_res=args["triplane_low_res"], triplane_dim=args["triplane_dim"], block_norm_eps=OPENLRM_NORM_EPS,
        modulation_dim=args["camera_embed_dim"])
    cfg = SingleViewConfig(version=version, encoder=encoder, camera_embed_dim=args["camera_embed_dim"],
                           transformer=transformer,
                           synthesizer=openlrm_synthesizer(version, args["rendering_samples_per_ray"]))
    released = next((p for p in OPENLRM_PRESETS.values() if _same_model(p, cfg)), None)
    size = source_size or infer.get("source_size") or (released.source_size if released else None)
    if not size:
        raise CheckpointError(f"{source} matches no released OpenLRM preset, so its input size is unknown: pass "
                              "--source-size (OpenLRM's infer configs: 224 small, 336 base, 448 large)")
    cfg.source_size = int(size)
    cfg.render_size = int(infer.get("render_size") or (released.render_size if released else cfg.source_size))
    return cfg


def _same_model(a: SingleViewConfig, b: SingleViewConfig) -> bool:
    return (a.version, a.encoder, a.camera_embed_dim, a.transformer, a.synthesizer) == \
        (b.version, b.encoder, b.camera_embed_dim, b.transformer, b.synthesizer)


def _encoder_from_tensors(version: str, state: dict[str, Tensor], heads: int | None, source: str) -> EncoderConfig:
    """The encoder's dimensions read off its tensors (width, depth, MLP width, patch, stored position grid)."""
    prefix = "encoder.model."
    if version == "1.1":
        width_key, mlp_key, patch_key = "cls_token", "blocks.0.mlp.fc1.weight", "patch_embed.proj.weight"
        pos_key, depth_re = "pos_embed", r"blocks\.(\d+)\."
    else:
        width_key, mlp_key = "embeddings.cls_token", "encoder.layer.0.intermediate.dense.weight"
        patch_key, pos_key = "embeddings.patch_embeddings.projection.weight", "embeddings.position_embeddings"
        depth_re = r"encoder\.layer\.(\d+)\."
    needed = [prefix + k for k in (width_key, mlp_key, patch_key, pos_key)]
    absent = [k for k in needed if k not in state]
    if absent:
        raise CheckpointError(f"{source}: missing keys: {', '.join(absent)} (not an OpenLRM {version} encoder)")
    width = int(state[prefix + width_key].shape[-1])
    depth = len({m.group(1) for k in state if (m := re.match(re.escape(prefix) + depth_re, k))})
    patch = int(state[prefix + patch_key].shape[-1])
    grid = math.isqrt(int(state[prefix + pos_key].shape[1]) - 1)
    mlp = int(state[prefix + mlp_key].shape[0])
    if version == "1.1":
        enc = dinov2_encoder(width, depth)
        registers = state.get(prefix + "register_tokens")
        enc.num_registers = int(registers.shape[1]) if registers is not None else 0
        enc.num_heads = heads or width // DINOV2_HEAD_WIDTH
    else:
        enc = dino_vitb16_encoder()
        enc.hidden_size, enc.num_layers = width, depth
        if heads is None and width != DINO_VITB16_WIDTH:
            raise CheckpointError(f"{source}: its DINO encoder is {width} wide, not the {DINO_VITB16_WIDTH} of "
                                  f"{DINO_VITB16}, so its attention heads are unknown: pass --encoder-heads")
        enc.num_heads = heads or DINO_VITB16_HEADS
    enc.intermediate_size, enc.patch_size, enc.image_size = mlp, patch, grid * patch
    if width % enc.num_heads:
        raise CheckpointError(f"{source}: encoder width {width} is not divisible by {enc.num_heads} heads")
    return enc


# ------------------------------------------------------------------------------------ the release's names
def release_shapes(cfg: SingleViewConfig) -> dict[str, tuple[int, ...]]:
    """Every key of the release's state dict and its shape, in the module's order (fixture Appendix A / C)."""
    e, t, ce = cfg.encoder, cfg.transformer, cfg.camera_embed_dim
    de, dt, td = e.hidden_size, t.dim, t.triplane_dim
    queries = {("pos_embed" if cfg.version == "1.1" else "transformer.pos_embed"): (1, 3 * t.low_res**2, dt)}
    shapes: dict[str, tuple[int, ...]] = dict(queries) if cfg.version == "1.1" else {}
    shapes.update(_encoder_shapes(cfg))
    shapes.update({"camera_embedder.mlp.0.weight": (ce, CAMERA_DIM), "camera_embedder.mlp.0.bias": (ce,),
                   "camera_embedder.mlp.2.weight": (ce, ce), "camera_embedder.mlp.2.bias": (ce,)})
    if cfg.version == "1.0":
        shapes.update(queries)
    hidden = int(dt * t.mlp_ratio)
    for i in range(t.num_layers):
        layer = f"transformer.layers.{i}"

        def modln(n: int) -> dict[str, tuple[int, ...]]:
            return {f"{layer}.norm{n}.norm.weight": (dt,), f"{layer}.norm{n}.norm.bias": (dt,),
                    f"{layer}.norm{n}.mlp.1.weight": (2 * dt, ce), f"{layer}.norm{n}.mlp.1.bias": (2 * dt,)}

        shapes.update(modln(1))
        # nn.MultiheadAttention packs q/k/v only when the key/value width equals the query width
        if de == dt:
            shapes[f"{layer}.cross_attn.in_proj_weight"] = (3 * dt, dt)
        else:
            shapes.update({f"{layer}.cross_attn.q_proj_weight": (dt, dt), f"{layer}.cross_attn.k_proj_weight": (dt, de),
                           f"{layer}.cross_attn.v_proj_weight": (dt, de)})
        shapes[f"{layer}.cross_attn.out_proj.weight"] = (dt, dt)
        shapes.update(modln(2))
        shapes.update({f"{layer}.self_attn.in_proj_weight": (3 * dt, dt),
                       f"{layer}.self_attn.out_proj.weight": (dt, dt)})
        shapes.update(modln(3))
        shapes.update({f"{layer}.mlp.0.weight": (hidden, dt), f"{layer}.mlp.0.bias": (hidden,),
                       f"{layer}.mlp.3.weight": (dt, hidden), f"{layer}.mlp.3.bias": (dt,)})
    shapes.update({"transformer.norm.weight": (dt,), "transformer.norm.bias": (dt,)})
    upsampler = "upsampler" if cfg.version == "1.1" else "transformer.deconv"
    shapes.update({f"{upsampler}.weight": (dt, td, 2, 2), f"{upsampler}.bias": (td,)})
    h = cfg.synthesizer.hidden_dim
    dims = [3 * td] + [h] * (len(DECODER_LAYERS) - 1) + [4]
    for index, (a, b) in zip(DECODER_LAYERS, zip(dims[:-1], dims[1:])):
        shapes.update({f"synthesizer.decoder.net.{index}.weight": (b, a),
                       f"synthesizer.decoder.net.{index}.bias": (b,)})
    return shapes


def _encoder_shapes(cfg: SingleViewConfig) -> dict[str, tuple[int, ...]]:
    e = cfg.encoder
    d, h, p = e.hidden_size, e.intermediate_size, e.patch_size
    positions = 1 + (e.image_size // p) ** 2
    out: dict[str, tuple[int, ...]] = {}
    if cfg.version == "1.1":
        m = "encoder.model"
        out.update({f"{m}.cls_token": (1, 1, d), f"{m}.pos_embed": (1, positions, d),
                    f"{m}.register_tokens": (1, e.num_registers, d), f"{m}.patch_embed.proj.weight": (d, 3, p, p),
                    f"{m}.patch_embed.proj.bias": (d,)})
        for i in range(e.num_layers):
            b = f"{m}.blocks.{i}"
            out.update({f"{b}.norm1.weight": (d,), f"{b}.norm1.bias": (d,), f"{b}.attn.qkv.weight": (3 * d, d),
                        f"{b}.attn.qkv.bias": (3 * d,), f"{b}.attn.proj.weight": (d, d), f"{b}.attn.proj.bias": (d,),
                        f"{b}.ls1.gamma": (d,), f"{b}.norm2.weight": (d,), f"{b}.norm2.bias": (d,),
                        f"{b}.mlp.fc1.weight": (h, d), f"{b}.mlp.fc1.bias": (h,), f"{b}.mlp.fc2.weight": (d, h),
                        f"{b}.mlp.fc2.bias": (d,), f"{b}.ls2.gamma": (d,)})
        out.update({f"{m}.norm.weight": (d,), f"{m}.norm.bias": (d,)})
        return out
    m = "encoder.model"
    out.update({f"{m}.embeddings.cls_token": (1, 1, d), f"{m}.embeddings.position_embeddings": (1, positions, d),
                f"{m}.embeddings.patch_embeddings.projection.weight": (d, 3, p, p),
                f"{m}.embeddings.patch_embeddings.projection.bias": (d,)})
    for i in range(e.num_layers):
        b = f"{m}.encoder.layer.{i}"
        for name in ("query", "key", "value"):
            out.update({f"{b}.attention.attention.{name}.weight": (d, d), f"{b}.attention.attention.{name}.bias": (d,)})
        out.update({f"{b}.attention.output.dense.weight": (d, d), f"{b}.attention.output.dense.bias": (d,),
                    f"{b}.intermediate.dense.weight": (h, d), f"{b}.intermediate.dense.bias": (h,),
                    f"{b}.output.dense.weight": (d, h), f"{b}.output.dense.bias": (d,),
                    f"{b}.layernorm_before.weight": (d,), f"{b}.layernorm_before.bias": (d,),
                    f"{b}.layernorm_after.weight": (d,), f"{b}.layernorm_after.bias": (d,)})
    out.update({f"{m}.layernorm.weight": (d,), f"{m}.layernorm.bias": (d,)})
    return out


_PACKED = re.compile(r"(transformer\.layers\.\d+\.(?:cross_attn|self_attn))\.in_proj_weight")
_DINOV2_QKV = re.compile(r"encoder\.model\.(blocks\.\d+\.attn)\.qkv\.(weight|bias)")
# (release pattern, our name), first match wins; the rest goes through the InstantMesh rules (shared names).
RELEASE_RENAMES: tuple[tuple[re.Pattern, str], ...] = tuple((re.compile(p), r) for p, r in (
    (r"pos_embed", r"transformer.pos_embed"),
    (r"upsampler\.(\w+)", r"transformer.deconv.\1"),
    (r"camera_embedder\.mlp\.(\d+)\.(\w+)", r"camera_embedder.\1.\2"),
    (r"transformer\.layers\.(\d+)\.(norm[123])\.(norm|mlp)\.(.+)", r"transformer.blocks.\1.\2.\3.\4"),
    (r"encoder\.model\.patch_embed\.proj\.(\w+)", r"encoder.patch_embed.\1"),
    (r"encoder\.model\.(blocks\.\d+\.attn)\.proj\.(\w+)", r"encoder.\1.out.\2"),
))


def release_to_lrmesh(state: dict[str, Tensor], version: str) -> dict[str, Tensor]:
    """Release names -> `SingleViewLRM` names; packed q/k/v projections are split (rows q, k, v)."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        packed = _PACKED.fullmatch(key)
        qkv = _DINOV2_QKV.fullmatch(key) if version == "1.1" else None
        if packed or qkv:
            base = (packed.group(1).replace("layers", "blocks"), "weight") if packed else \
                (f"encoder.{qkv.group(1)}", qkv.group(2))
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{base[0]}.{name}.{base[1]}"] = part
            continue
        out[_rename(key, version)] = value
    return out


def _rename(key: str, version: str) -> str:
    for pattern, replacement in RELEASE_RENAMES:
        if pattern.fullmatch(key):
            return pattern.sub(replacement, key)
    if version == "1.1" and key.startswith("encoder.model."):
        return "encoder." + key.removeprefix("encoder.model.")
    renamed = rename_official_key(key)  # HF ViT encoder (v1.0) and the transformer blocks, as InstantMesh
    return "encoder." + renamed.removeprefix("encoder.vit.") if renamed.startswith("encoder.vit.") else renamed


# ------------------------------------------------------------------------------------------------ loading
def check_release(cfg: SingleViewConfig, state: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Strict check of a release state dict against the keys and shapes `cfg` implies, naming every problem."""
    expected = {k: torch.empty(s, device="meta") for k, s in release_shapes(cfg).items()}
    problems = fit_problems(state, expected)
    if problems:
        raise CheckpointError(f"{source} does not fit OpenLRM {cfg.version} as its configuration describes it: "
                              + "; ".join(problems))


def release_args(cfg: SingleViewConfig) -> dict[str, Any]:
    """The release's constructor arguments for `cfg` (v1.1's config.json; v1.0's kwargs["model"] without
    encoder_type). The encoder's name is the released backbone's for its width."""
    t, e = cfg.transformer, cfg.encoder
    names = {384: "dinov2_vits14_reg", 768: "dinov2_vitb14_reg"} if cfg.version == "1.1" else {768: DINO_VITB16}
    args = {"camera_embed_dim": cfg.camera_embed_dim, "rendering_samples_per_ray": cfg.synthesizer.samples_per_ray,
            "transformer_dim": t.dim, "transformer_layers": t.num_layers, "transformer_heads": t.num_heads,
            "triplane_low_res": t.low_res, "triplane_high_res": t.high_res, "triplane_dim": t.triplane_dim,
            "encoder_type": "dinov2", "encoder_model_name": names.get(e.hidden_size, f"width-{e.hidden_size}"),
            "encoder_feat_dim": e.hidden_size, "encoder_freeze": False}
    if cfg.version == "1.0":
        del args["encoder_type"]
    return args


def load_openlrm(path: str | Path, source_size: int | None = None, encoder_heads: int | None = None,
                 notice: Callable[[str], None] | None = None) -> SingleViewLRM:
    """Build and strictly load an OpenLRM release (CPU, eval mode). `notice` receives the licence line, once
    per process (the CLI passes its stderr printer; the API is silent unless given one)."""
    global _notice_shown
    version, args, state, infer = read_release(path)
    cfg = release_config(version, args, state, infer, source_size, encoder_heads, source=str(path))
    check_release(cfg, state, str(path))
    with torch.device("meta"):  # no random initialisation of weights about to be overwritten
        model = SingleViewLRM(cfg)
    model = model.to_empty(device="cpu")
    model.load_state_dict(release_to_lrmesh(state, version), strict=True)
    if notice is not None and not _notice_shown:
        notice(LICENCE_NOTICE)
        _notice_shown = True
    return model.eval()


def save_release(model: SingleViewLRM, path: str | Path) -> Path:
    """Write `model` in its release layout, loadable by `load_openlrm` and by OpenLRM itself: v1.1 a folder with
    config.json + model.safetensors, v1.0 a model.pth {"weights", "kwargs": {"model", "infer"}}. Returns the
    path to give `-c`. (A v1.1 folder does not record the source size: for a model that is no released preset,
    pass --source-size when loading it.)"""
    from safetensors.torch import save_file

    cfg, ours = model.cfg, {k: v.detach().cpu() for k, v in model.state_dict().items()}
    state = {}
    for key in release_shapes(cfg):
        packed = _PACKED.fullmatch(key)
        qkv = _DINOV2_QKV.fullmatch(key) if cfg.version == "1.1" else None
        if packed or qkv:
            base, leaf = (packed.group(1).replace("layers", "blocks"), "weight") if packed else \
                (f"encoder.{qkv.group(1)}", qkv.group(2))
            state[key] = torch.cat([ours[f"{base}.{name}.{leaf}"] for name in "qkv"])
        else:
            state[key] = ours[_rename(key, cfg.version)]
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if cfg.version == "1.1":
        (path / V11_CONFIG).write_text(json.dumps(release_args(cfg)))
        save_file({k: v.contiguous() for k, v in state.items()}, str(path / V11_WEIGHTS))
        return path
    infer = {"source_size": cfg.source_size, "render_size": cfg.render_size}
    torch.save({"weights": state, "kwargs": {"model": release_args(cfg), "infer": infer}}, path / V10_WEIGHTS)
    return path / V10_WEIGHTS
