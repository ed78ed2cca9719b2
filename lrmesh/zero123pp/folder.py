"""The Zero123++ v1.2 model folder and InstantMesh's white-background UNet: find, check, load.

Local files only. The folder is a copy of the Hugging Face model `sudo-ai/zero123plus-v1.2` (a plain folder, a
snapshot folder of the Hugging Face cache, or the cache's `models--sudo-ai--zero123plus-v1.2` folder itself);
the UNet file is InstantMesh's `diffusion_pytorch_model.bin` (model `TencentARC/InstantMesh`), a plain state
dict that replaces the folder's UNet weights. Both are CC BY-NC 4.0.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lrmesh.checkpoints import CheckpointError, fit_problems, read_tensors
from lrmesh.errors import LrmeshError

MODEL_REPO = "sudo-ai/zero123plus-v1.2"
UNET_REPO, UNET_FILE = "TencentARC/InstantMesh", "diffusion_pytorch_model.bin"
# Every file of the model repository that loading reads (the repository holds no pipeline code we would need).
EXPECTED_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "feature_extractor_clip/preprocessor_config.json",
    "feature_extractor_vae/preprocessor_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "vision_encoder/config.json",
    "vision_encoder/model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)
LICENCE_NOTICE = ("lrmesh: note: the Zero123++ v1.2 weights and InstantMesh's white-background UNet are licensed "
                  "CC BY-NC 4.0 (non-commercial use only)")
_notices_shown: set[str] = set()


class ModelFolderError(LrmeshError):
    """A multi-view model folder or UNet file that cannot be used."""


def notice_once(say: Callable[[str], None] | None, message: str = LICENCE_NOTICE) -> None:
    """Say `message` through `say` the first time in this process (nothing when `say` is None)."""
    if say is not None and message not in _notices_shown:
        _notices_shown.add(message)
        say(message)


def stderr_say(message: str) -> None:
    print(message, file=sys.stderr)


@contextmanager
def quiet_libraries():
    """diffusers and transformers without their info lines, warnings about optional packages and load bars."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    before = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(before[0])
        transformers_logging.set_verbosity(before[1])
        if bars:
            transformers_logging.enable_progress_bar()


def resolve_folder(path: str | Path) -> Path:
    """A model folder path -> the folder holding model_index.json (a cache repo folder -> its snapshot)."""
    path = Path(path).expanduser()
    snapshots = path / "snapshots"
    if not (path / "model_index.json").exists() and snapshots.is_dir():
        ref = path / "refs" / "main"
        if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
            return snapshots / ref.read_text().strip()
        candidates = sorted(p for p in snapshots.iterdir() if (p / "model_index.json").exists())
        if len(candidates) == 1:
            return candidates[0]
    return path


def check_folder(path: str | Path) -> Path:
    """The resolved folder, or one ModelFolderError listing every expected file that is missing."""
    folder = resolve_folder(path)
    if not folder.is_dir():
        raise ModelFolderError(f"--mv-model {path}: no such folder. " + _where_from())
    missing = [name for name in EXPECTED_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelFolderError(f"--mv-model {path}: not a complete {MODEL_REPO} folder, missing "
                               f"{', '.join(missing)}. " + _where_from())
    return folder


def _where_from() -> str:
    return (f"Expected a local copy of the Hugging Face model {MODEL_REPO} with the files "
            f"{', '.join(EXPECTED_FILES)} (download them yourself, e.g. with `huggingface-cli download {MODEL_REPO}`, "
            f"and give the folder; lrmesh never downloads)")


def ramping_coefficients(folder: Path) -> Tensor:
    """(77,) float32: model_index.json's `ramping_coefficients`, the per-token weight of the image embedding."""
    index = _json(folder, "model_index.json")
    values = index.get("ramping_coefficients")
    if not isinstance(values, list) or not values:
        raise ModelFolderError(f"{folder / 'model_index.json'}: no ramping_coefficients list (not a Zero123++ "
                               f"v1.2 model index)")
    return torch.tensor(values, dtype=torch.float32)


def load_white_unet(unet: torch.nn.Module, path: str | Path) -> None:
    """Load InstantMesh's white-background UNet state dict (weights_only) strictly into `unet`."""
    try:
        state, _ = read_tensors(path)
    except CheckpointError as err:
        raise ModelFolderError(f"--mv-unet: {err}. Expected {UNET_FILE} from the Hugging Face model "
                               f"{UNET_REPO}") from err
    problems = fit_problems(state, unet.state_dict())
    if problems:
        raise ModelFolderError(f"--mv-unet {path} does not fit the folder's UNet: " + "; ".join(problems))
    unet.load_state_dict(state, strict=True)


@dataclass
class Components:
    """The loaded parts of Zero123++ v1.2, float32 on the CPU until `Zero123pp` moves them."""

    unet: torch.nn.Module  # diffusers UNet2DConditionModel (v-prediction, 4 -> 4 channels)
    vae: torch.nn.Module  # diffusers AutoencoderKL
    text_encoder: torch.nn.Module  # transformers CLIPTextModel
    vision_encoder: torch.nn.Module  # transformers CLIPVisionModelWithProjection
    tokenizer: object  # transformers CLIPTokenizer
    scheduler_config: dict  # EulerAncestralDiscreteScheduler config as stored (timestep spacing overridden later)
    clip_config: dict  # feature_extractor_clip/preprocessor_config.json
    vae_config: dict  # feature_extractor_vae/preprocessor_config.json
    ramping: Tensor  # (77,) per-token weights of the global image embedding


def load_components(path: str | Path, unet_file: str | Path | None = None,
                    say: Callable[[str], None] | None = None) -> Components:
    """Load every component from a checked local folder; `unet_file` replaces the UNet's weights.

    The CLIP towers are stored in float16; they are cast to float32 here (exact), whatever the installed
    transformers would default to.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

    folder = check_folder(path)
    notice_once(say)
    local = str(folder)
    try:
        with quiet_libraries():
            unet = UNet2DConditionModel.from_pretrained(local, subfolder="unet", local_files_only=True)
            vae = AutoencoderKL.from_pretrained(local, subfolder="vae", local_files_only=True)
            text_encoder = CLIPTextModel.from_pretrained(local, subfolder="text_encoder", local_files_only=True)
            vision_encoder = CLIPVisionModelWithProjection.from_pretrained(local, subfolder="vision_encoder",
                                                                           local_files_only=True)
            tokenizer = CLIPTokenizer.from_pretrained(local, subfolder="tokenizer", local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelFolderError(f"--mv-model {path}: a component does not load ({first})") from err
    if unet_file is not None:
        load_white_unet(unet, unet_file)
    with quiet_libraries():
        for module in (unet, vae, text_encoder, vision_encoder):
            module.to(torch.float32).eval().requires_grad_(False)
    return Components(unet=unet, vae=vae, text_encoder=text_encoder, vision_encoder=vision_encoder,
                      tokenizer=tokenizer, scheduler_config=_json(folder, "scheduler/scheduler_config.json"),
                      clip_config=_json(folder, "feature_extractor_clip/preprocessor_config.json"),
                      vae_config=_json(folder, "feature_extractor_vae/preprocessor_config.json"),
                      ramping=ramping_coefficients(folder))


def _json(folder: Path, name: str) -> dict:
    try:
        return json.loads((folder / name).read_text())
    except json.JSONDecodeError as err:
        raise ModelFolderError(f"{folder / name}: not valid JSON ({err})") from err
