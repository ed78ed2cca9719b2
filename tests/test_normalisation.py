"""The encoder's input statistics per family (lrmesh/normalisation.py): released checkpoints see x * 2 - 1."""

from __future__ import annotations

import re
import warnings
from importlib import resources

import pytest
import torch

from lrmesh.cameras import zero123pp_cameras
from lrmesh.checkpoints import load_hf_vit, load_model, official_to_lrmesh
from lrmesh.cli import ASSETS, DEFAULT_CHECKPOINT
from lrmesh.config import PRESETS, load_reference_yaml, preset
from lrmesh.errors import LrmeshError
from lrmesh.model.lrm import LRM
from lrmesh.normalisation import DINO_PROCESSOR, IMAGENET

_LAYER = re.compile(r"(encoder\.model\.encoder\.layer|transformer\.layers)\.\d+\.")


def official_layout(name: str, tiny_official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A released-size checkpoint in the official key layout, every tensor a zero-strided view of one value.

    The key names are the tiny fixture's (made by the reference), repeated over the preset's layers; the
    cross-attention is stored as separate q/k/v projections where the image and plane tokens differ in width,
    as nn.MultiheadAttention does. Shapes come from our model of the preset; the file stays a few kilobytes.
    """
    cfg = preset(name)
    with torch.device("meta"):
        ours = LRM(cfg).state_dict()
    separate = cfg.encoder.hidden_size != cfg.transformer.dim
    out = {}
    for key in tiny_official:
        layer = _LAYER.search(key)
        if layer and not re.search(r"\.0\.", key[layer.start():layer.end()]):
            continue  # layer 0 stands for every layer
        depth = (cfg.encoder.num_layers if "encoder" in (layer.group(1) if layer else "")
                 else cfg.transformer.num_layers) if layer else 1
        for i in range(depth):
            k = _LAYER.sub(lambda m: f"{m.group(1)}.{i}.", key, count=1) if layer else key
            if separate and k.endswith("cross_attn.in_proj_weight"):
                names = [k.replace("in_proj_weight", f"{p}_proj_weight") for p in "qkv"]
            else:
                names = [k]
            for official in names:
                renamed = official_to_lrmesh({official: torch.empty(3, 1)})
                shapes = [ours[r].shape for r in renamed]
                shape = (sum(s[0] for s in shapes), *shapes[0][1:]) if len(shapes) == 3 else shapes[0]
                out[official] = torch.full((), 0.01).expand(shape)
    return out


@pytest.fixture(scope="module")
def tiny_official(fixture_dir):
    state = torch.load(fixture_dir / "instant_mesh_tiny.ckpt", weights_only=True)["state_dict"]
    return {k.removeprefix("lrm_generator."): v for k, v in state.items()}


def encoder_input(model: LRM, images: torch.Tensor) -> torch.Tensor:
    """What the ViT receives for `images` (B, V, 3, H, W) in [0, 1]."""
    seen = []
    hook = model.encoder.vit.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    cameras = zero123pp_cameras()[: images.shape[1]][None]
    with torch.no_grad():
        model.encoder(images, cameras)
    hook.remove()
    return seen[0]


def test_released_large_checkpoint_without_config_sees_twice_x_minus_one(tiny_official, tmp_path):
    path = tmp_path / "instant_mesh_large.ckpt"
    torch.save({"state_dict": {"lrm_generator." + k: v for k, v in official_layout(
        "instant-mesh-large", tiny_official).items()}}, path)
    assert path.stat().st_size < 2_000_000  # zero-strided tensors: the layout, not 1.2 GB of weights
    model = load_model(path)  # no config: the preset is recognised from the shapes
    assert model.cfg == PRESETS["instant-mesh-large"]
    images = torch.rand(1, 2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    seen = encoder_input(model, images)
    assert torch.equal(seen, images[0] * 2 - 1)  # exactly: (x - 0.5) / 0.5 is exact in float32


@pytest.mark.parametrize("name", ["instant-mesh-large", "instant-mesh-base", "instant-nerf-large",
                                  "instant-nerf-base", "tiny", "tiny-nerf"])
def test_instantmesh_presets_use_the_dino_processor(name):
    enc = preset(name).encoder
    assert (enc.image_mean, enc.image_std) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def test_reference_yaml_encoder_block_keeps_its_statistics(fixture_dir, mesh_model, tmp_path):
    # the tiny fixture was made with an ImageNet-normalising processor, which its config.yaml records
    cfg = load_reference_yaml(fixture_dir / "config.yaml", "mesh")
    assert (cfg.encoder.image_mean, cfg.encoder.image_std) == (IMAGENET.mean, IMAGENET.std)
    assert torch.allclose(mesh_model.encoder.mean.flatten(), torch.tensor(IMAGENET.mean))
    # a reference config without the block is a released model: the hub processor's statistics
    plain = tmp_path / "instant-mesh-large.yaml"
    plain.write_text("model_config:\n  target: src.models.lrm_mesh.InstantMesh\n  params:\n"
                     "    encoder_model_name: facebook/dino-vitb16\n")
    cfg = load_reference_yaml(plain, "mesh")
    assert (cfg.encoder.image_mean, cfg.encoder.image_std) == (DINO_PROCESSOR.mean, DINO_PROCESSOR.std)


def test_bundled_small_model_keeps_the_statistics_it_was_trained_with():
    with resources.as_file(ASSETS / DEFAULT_CHECKPOINT) as path:
        model = load_model(path)
    assert model.cfg.encoder.image_mean == IMAGENET.mean and model.cfg.encoder.image_std == IMAGENET.std
    assert preset("small").encoder.image_mean == IMAGENET.mean  # retraining by the recipe keeps them too
    images = torch.rand(1, 1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    expected = (images[0] - torch.tensor(IMAGENET.mean).view(1, 3, 1, 1)) / torch.tensor(IMAGENET.std).view(1, 3, 1, 1)
    assert torch.allclose(encoder_input(model, images), expected, atol=1e-6)


def test_dino_weights_on_an_imagenet_encoder_are_warned_about(tiny_official, tmp_path):
    from safetensors.torch import save_file

    prefix = "encoder.model."
    hf = {k[len(prefix):]: v.clone() for k, v in tiny_official.items() if k.startswith(prefix) and "adaLN" not in k}
    save_file(hf, str(tmp_path / "dino.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_hf_vit(LRM(preset("tiny")), tmp_path / "dino.safetensors")  # default statistics: no warning
    cfg = preset("tiny")
    cfg.encoder.image_mean, cfg.encoder.image_std = IMAGENET.mean, IMAGENET.std
    with pytest.warns(UserWarning, match="mean = std = 0.5"):
        load_hf_vit(LRM(cfg), tmp_path / "dino.safetensors")


def test_fine_tuning_with_other_statistics_is_an_error(tmp_path):
    from lrmesh.checkpoints import save_model
    from lrmesh.train.config import TrainConfig
    from lrmesh.train.module import build_model

    source = preset("tiny-nerf")
    source.encoder.image_mean, source.encoder.image_std = IMAGENET.mean, IMAGENET.std
    init = save_model(LRM(source), tmp_path / "imagenet-tiny")  # the statistics are recorded in the file
    with pytest.raises(LrmeshError, match="trained with input mean"):
        build_model(TrainConfig(stage=1, model_preset="tiny-nerf", init=str(init)))
    same = {"encoder": {"image_mean": list(IMAGENET.mean), "image_std": list(IMAGENET.std)}}
    model = build_model(TrainConfig(stage=1, model_preset="tiny-nerf", init=str(init), model=same))
    assert model.cfg.encoder.image_mean == IMAGENET.mean
