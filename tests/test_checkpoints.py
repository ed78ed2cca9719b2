"""Loading official checkpoints (both attention layouts), our safetensors, HF ViT weights; clear refusals."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from lrmesh.checkpoints import (CheckpointError, infer_config, load_hf_vit, load_model, lrmesh_to_official,
                                official_to_lrmesh, read_tensors, save_model)
from lrmesh.config import PRESETS, preset
from lrmesh.model.lrm import LRM


@pytest.fixture(scope="module")
def official(fixture_dir):
    return torch.load(fixture_dir / "instant_mesh_tiny.ckpt", weights_only=True)["state_dict"]


def _planes(model, views, cameras):
    with torch.no_grad():
        return model.forward_planes(views[None], cameras[None])


def test_preset_is_recognised_from_shapes(fixture_dir):
    model = load_model(fixture_dir / "instant_mesh_tiny.ckpt")  # no config: inferred
    assert model.cfg == PRESETS["tiny"]
    nerf = load_model(fixture_dir / "instant_nerf_tiny.ckpt")
    assert nerf.kind == "nerf" and nerf.cfg.encoder.hidden_size == 64


@pytest.mark.parametrize("name", ["instant-mesh-large", "instant-mesh-base", "instant-nerf-large",
                                  "instant-nerf-base", "small", "small-nerf"])
def test_released_presets_are_recognised(name):
    with torch.device("meta"):
        state = LRM(preset(name)).state_dict()
    assert infer_config(state)[0] == name


def test_large_cross_attention_layout_has_separate_projections():
    # The released large models project 768-wide image tokens into 1024-wide queries: nn.MultiheadAttention
    # stores q_proj_weight / k_proj_weight / v_proj_weight then; each maps onto our q, k, v.
    with torch.device("meta"):
        model = LRM(preset("instant-mesh-large"))
    block = "lrm_generator.transformer.layers.0.cross_attn."
    state = {block + "q_proj_weight": torch.zeros(1024, 1024), block + "k_proj_weight": torch.zeros(1024, 768),
             block + "v_proj_weight": torch.zeros(1024, 768), block + "out_proj.weight": torch.zeros(1024, 1024)}
    ours = official_to_lrmesh(state)
    expected = model.state_dict()
    for key, value in ours.items():
        assert expected[key].shape == value.shape, key


def test_separate_and_packed_layouts_give_the_same_model(official, mesh_model, fixture_dir, fixture_views,
                                                         fixture_cameras, tmp_path):
    separate = {}
    for key, value in official.items():
        if key.endswith("cross_attn.in_proj_weight"):
            base = key.removesuffix("in_proj_weight")
            for name, part in zip(("q", "k", "v"), value.chunk(3)):
                separate[f"{base}{name}_proj_weight"] = part.clone()
        else:
            separate[key] = value
    path = tmp_path / "separate.ckpt"
    torch.save({"state_dict": separate}, path)
    model = load_model(path, fixture_dir / "config.yaml")  # the fixture's input statistics, as mesh_model's
    assert torch.equal(_planes(model, fixture_views, fixture_cameras),
                       _planes(mesh_model, fixture_views, fixture_cameras))


def test_loss_network_and_camera_keys_are_skipped(official, tmp_path):
    state = dict(official)
    state["lpips.net.slice1.0.weight"] = torch.zeros(64, 3, 3, 3)
    state["source_camera"] = torch.zeros(1, 16)
    path = tmp_path / "with_lpips.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    assert load_model(path).kind == "mesh"


def test_foreign_key_is_an_error(official, tmp_path):
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {**official, "discriminator.w": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="unexpected keys outside the generator: discriminator.w"):
        load_model(path)


def test_missing_key_and_shape_are_named(official, fixture_dir, tmp_path):
    state = {k: v for k, v in official.items() if "net_rgb.6.bias" not in k}
    state["lrm_generator.transformer.deconv.bias"] = torch.zeros(9)
    path = tmp_path / "broken.ckpt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError) as err:
        load_model(path, fixture_dir / "config.yaml")
    message = str(err.value)
    assert "missing keys: synthesizer.decoder.net_rgb.6.bias" in message
    assert "transformer.deconv.bias: checkpoint (9,), model expects (8,)" in message


def test_unknown_shapes_without_config(official, tmp_path):
    state = {k: v for k, v in official.items() if ".layers.1." not in k}  # one transformer layer: no preset
    path = tmp_path / "odd.ckpt"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match="match no preset"):
        load_model(path)


def test_truncated_file(fixture_dir, tmp_path):
    data = (fixture_dir / "instant_mesh_tiny.ckpt").read_bytes()
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_model(path)


class Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_pickle_that_needs_code_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        read_tensors(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("hello")
    with pytest.raises(CheckpointError):
        load_model(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "absent.ckpt")


def test_safetensors_round_trip(mesh_model, fixture_views, fixture_cameras, tmp_path):
    path = save_model(mesh_model, tmp_path / "model")
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    path.with_suffix(".json").unlink()  # the config also travels inside the file
    again = load_model(path)
    assert again.cfg == mesh_model.cfg
    assert torch.equal(_planes(again, fixture_views, fixture_cameras),
                       _planes(mesh_model, fixture_views, fixture_cameras))


def test_half_precision_file_loads_as_a_float32_model(mesh_model, tmp_path):
    full = save_model(mesh_model, tmp_path / "full")
    half = save_model(mesh_model, tmp_path / "half", dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    again = load_model(half)
    for key, value in mesh_model.state_dict().items():
        loaded = again.state_dict()[key]
        assert loaded.dtype == value.dtype
        assert torch.equal(loaded, value.half().to(value.dtype) if value.is_floating_point() else value)
    with pytest.raises(ValueError, match="floating-point"):
        save_model(mesh_model, tmp_path / "int", dtype=torch.int8)


def test_hf_vit_weights_initialise_the_encoder(official, mesh_model, tmp_path):
    from safetensors.torch import save_file

    prefix = "lrm_generator.encoder.model."
    hf = {"vit." + k[len(prefix):]: v.clone() for k, v in official.items()
          if k.startswith(prefix) and "adaLN" not in k}
    hf["vit.pooler.dense.weight"] = torch.zeros(64, 64)
    path = tmp_path / "dino.safetensors"
    save_file(hf, str(path))
    model = LRM(PRESETS["tiny"])
    load_hf_vit(model, path)
    ours, ref = model.state_dict(), mesh_model.state_dict()
    vit_keys = [k for k in ref if k.startswith("encoder.vit.") and ".adaln." not in k]
    assert vit_keys and all(torch.equal(ours[k], ref[k]) for k in vit_keys)
    assert all((ours[k] == 0).all() for k in ours if ".adaln.1." in k)  # plain ViT until trained

    del hf["vit.layernorm.weight"]
    save_file(hf, str(path))
    with pytest.raises(CheckpointError, match="missing keys: encoder.vit.norm.weight"):
        load_hf_vit(LRM(PRESETS["tiny"]), path)


def test_our_names_back_to_the_official_layout(official, tmp_path):
    generator = {k: v for k, v in official.items() if k.startswith("lrm_generator.")}
    back = lrmesh_to_official(official_to_lrmesh(official))
    assert back.keys() == generator.keys() and all(torch.equal(back[k], v) for k, v in generator.items())
    # A cross-attention whose keys are narrower than its queries keeps q, k, v apart, as the large files do.
    tiny = preset("tiny")
    cfg = dataclasses.replace(tiny, encoder=dataclasses.replace(tiny.encoder, hidden_size=48))
    model = LRM(cfg).eval()
    state = lrmesh_to_official(model.state_dict())
    assert "lrm_generator.transformer.layers.0.cross_attn.k_proj_weight" in state
    assert "lrm_generator.transformer.layers.0.self_attn.in_proj_weight" in state
    torch.save({"state_dict": state}, tmp_path / "official.ckpt")
    loaded = load_model(tmp_path / "official.ckpt", cfg)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
