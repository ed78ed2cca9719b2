"""OpenLRM release files: recognition, the release's key names and shapes for every preset, strict loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lrmesh.checkpoints import CheckpointError
from lrmesh.config import OPENLRM_PRESETS, openlrm_preset
from lrmesh.model.single_view import SingleViewLRM
from lrmesh.openlrm import (LICENCE_NOTICE, check_release, load_openlrm, openlrm_files, read_release, release_args,
                            release_config, release_shapes, release_to_lrmesh)

FIXTURE = Path(__file__).parent / "fixtures" / "openlrm-tiny"
# The published config.json of zxhezexin/openlrm-{obj,mix}-{small,base,large}-1.1 (Hugging Face), verbatim values.
PUBLISHED_V11 = {
    "openlrm-small-1.1": {"camera_embed_dim": 1024, "rendering_samples_per_ray": 96, "transformer_dim": 512,
                          "transformer_layers": 12, "transformer_heads": 8, "triplane_low_res": 32,
                          "triplane_high_res": 64, "triplane_dim": 32, "encoder_type": "dinov2",
                          "encoder_model_name": "dinov2_vits14_reg", "encoder_feat_dim": 384, "encoder_freeze": False},
    "openlrm-base-1.1": {"camera_embed_dim": 1024, "rendering_samples_per_ray": 96, "transformer_dim": 768,
                         "transformer_layers": 12, "transformer_heads": 12, "triplane_low_res": 32,
                         "triplane_high_res": 64, "triplane_dim": 48, "encoder_type": "dinov2",
                         "encoder_model_name": "dinov2_vitb14_reg", "encoder_feat_dim": 768, "encoder_freeze": False},
    "openlrm-large-1.1": {"camera_embed_dim": 1024, "rendering_samples_per_ray": 128, "transformer_dim": 1024,
                          "transformer_layers": 16, "transformer_heads": 16, "triplane_low_res": 32,
                          "triplane_high_res": 64, "triplane_dim": 80, "encoder_type": "dinov2",
                          "encoder_model_name": "dinov2_vitb14_reg", "encoder_feat_dim": 768, "encoder_freeze": False},
}


def _meta_state(cfg) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in release_shapes(cfg).items()}


@pytest.mark.parametrize("name,extra", [("v11-sep", {"source_size": 224}), ("v11-packed", {"source_size": 336}),
                                        ("v10", {"encoder_heads": 2})])
def test_release_shapes_are_exactly_the_fixture_files(name, extra):
    path = FIXTURE / name / ("model.pth" if name == "v10" else "")
    version, args, state, infer = read_release(path)
    cfg = release_config(version, args, state, infer, **extra)
    shapes = release_shapes(cfg)
    assert shapes == {k: tuple(v.shape) for k, v in state.items()}
    if version == "1.0":  # torch.save keeps the module's order (fixture Appendix C)
        assert list(shapes) == list(state)
    packed = any(k.endswith("cross_attn.in_proj_weight") for k in state)
    assert packed == (name != "v11-sep")


@pytest.mark.parametrize("name", sorted(OPENLRM_PRESETS))
def test_every_preset_in_the_release_layout_maps_onto_the_model(name):
    cfg = openlrm_preset(name)
    with torch.device("meta"):
        model = SingleViewLRM(cfg)
    state = _meta_state(cfg)
    check_release(cfg, state)
    mapped = release_to_lrmesh(state, cfg.version)
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in model.state_dict().items()}
    # the release arguments and tensors are recognised as this preset, source and render sizes included
    assert release_config(cfg.version, release_args(cfg), state, {}) == cfg
    if name in PUBLISHED_V11:
        assert release_args(cfg) == PUBLISHED_V11[name]
    # packed cross-attention exactly when the encoder and transformer widths are equal (base 1.1 only)
    packed = any(k.endswith("cross_attn.in_proj_weight") for k in state)
    assert packed == (cfg.encoder.hidden_size == cfg.transformer.dim)


def _tiny(version: str, encoder_width: int):
    cfg = openlrm_preset("openlrm-base-1.1" if version == "1.1" else "openlrm-base-obj-1.0")
    cfg.encoder.hidden_size, cfg.encoder.num_layers, cfg.encoder.intermediate_size = encoder_width, 1, 2 * encoder_width
    cfg.encoder.num_heads = 1 if version == "1.1" else 2
    cfg.camera_embed_dim = cfg.transformer.modulation_dim = 16
    cfg.transformer.dim, cfg.transformer.num_layers, cfg.transformer.num_heads = 64, 1, 2
    cfg.transformer.low_res, cfg.transformer.triplane_dim = 4, 4
    cfg.synthesizer.samples_per_ray = 8
    return cfg


def _write_release(cfg, folder: Path, state: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if cfg.version == "1.1":
        (folder / "config.json").write_text(json.dumps(release_args(cfg)))
        save_file(state, str(folder / "model.safetensors"))
        return folder
    kwargs = {"model": release_args(cfg), "infer": {"source_size": cfg.source_size, "render_size": cfg.render_size}}
    torch.save({"weights": state, "kwargs": kwargs}, folder / "model.pth")
    return folder / "model.pth"


@pytest.mark.parametrize("version,width", [("1.1", 64), ("1.1", 128), ("1.0", 64)])
def test_random_release_file_loads_each_tensor_where_it_belongs(tmp_path, version, width):
    cfg = _tiny(version, width)
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=gen) for k, s in release_shapes(cfg).items()}
    path = _write_release(cfg, tmp_path / "model", state)
    assert openlrm_files(path) is not None
    model = load_openlrm(path, source_size=cfg.source_size, encoder_heads=cfg.encoder.num_heads)
    block = model.transformer.blocks[0].cross_attn
    if width == cfg.transformer.dim:  # packed [Wq; Wk; Wv]
        torch.testing.assert_close(block.k.weight, state["transformer.layers.0.cross_attn.in_proj_weight"][64:128])
    else:
        torch.testing.assert_close(block.v.weight, state["transformer.layers.0.cross_attn.v_proj_weight"])
    norm = model.transformer.blocks[0].norm2.mlp[1].bias
    torch.testing.assert_close(norm, state["transformer.layers.0.norm2.mlp.1.bias"])
    queries = state["pos_embed" if version == "1.1" else "transformer.pos_embed"]
    torch.testing.assert_close(model.transformer.pos_embed, queries)
    if version == "1.1":
        qkv = state["encoder.model.blocks.0.attn.qkv.bias"]
        torch.testing.assert_close(model.encoder.blocks[0].attn.v.bias, qkv[2 * width:])
        torch.testing.assert_close(model.encoder.blocks[0].ls2.gamma, state["encoder.model.blocks.0.ls2.gamma"])
    else:
        torch.testing.assert_close(model.encoder.blocks[0].mlp.fc2.weight,
                                   state["encoder.model.encoder.layer.0.output.dense.weight"])
    assert model.cfg.encoder.num_heads == cfg.encoder.num_heads


def _edited_v11(tmp_path: Path, edit) -> Path:
    folder = tmp_path / "edited"
    shutil.copytree(FIXTURE / "v11-sep", folder)
    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"))
    return folder


KEY = "transformer.layers.1.norm3.mlp.1.weight"


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.__setitem__("transformer.layers.1.norm3.mlp.1.weights", s.pop(KEY)),
     f"missing keys: {KEY} [128, 32]; unexpected keys: transformer.layers.1.norm3.mlp.1.weights"),
    (lambda s: s.pop(KEY), f"missing keys: {KEY} [128, 32]"),
    (lambda s: s.__setitem__("extra.bias", torch.zeros(3)), "unexpected keys: extra.bias"),
    (lambda s: s.__setitem__(KEY, torch.zeros(128, 16)), f"{KEY}: checkpoint (128, 16), model expects (128, 32)"),
])
def test_broken_v11_files_fail_naming_the_key(tmp_path, edit, message):
    with pytest.raises(CheckpointError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        load_openlrm(_edited_v11(tmp_path, edit), source_size=224)


def test_broken_v10_file_fails_naming_the_key(tmp_path):
    obj = torch.load(FIXTURE / "v10" / "model.pth", weights_only=True)
    obj["weights"].pop("transformer.deconv.bias")
    torch.save(obj, tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: transformer.deconv.bias \[8\]"):
        load_openlrm(tmp_path / "model.pth", encoder_heads=2)


def test_what_the_files_cannot_say_is_asked_for():
    with pytest.raises(CheckpointError, match="matches no released OpenLRM preset.*--source-size"):
        load_openlrm(FIXTURE / "v11-sep")
    with pytest.raises(CheckpointError, match="64 wide.*--encoder-heads"):
        load_openlrm(FIXTURE / "v10" / "model.pth")


def test_recognition_of_release_files(tmp_path):
    assert openlrm_files(FIXTURE / "v11-sep")[0] == "1.1"
    assert openlrm_files(FIXTURE / "v11-sep" / "config.json")[0] == "1.1"
    assert openlrm_files(FIXTURE / "v10")[0] == "1.0"
    assert openlrm_files(FIXTURE / "v10" / "model.pth")[0] == "1.0"
    assert openlrm_files(Path(__file__).parent / "fixtures" / "instantmesh-tiny" / "instant_mesh_tiny.ckpt") is None
    torch.save({"state_dict": {}}, tmp_path / "model.pth")
    assert openlrm_files(tmp_path / "model.pth") is None
    (tmp_path / "config.json").write_text("{}")  # a config.json without weights is no release
    assert openlrm_files(tmp_path / "config.json") is None


def test_bad_config_json_is_named(tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(FIXTURE / "v11-sep", folder)
    args = json.loads((folder / "config.json").read_text())
    args["transformer_depth"] = args.pop("transformer_layers")
    (folder / "config.json").write_text(json.dumps(args))
    with pytest.raises(CheckpointError, match=r"unknown \['transformer_depth'\], missing \['transformer_layers'\]"):
        load_openlrm(folder, source_size=224)


def test_licence_notice_once_when_asked(monkeypatch):
    import lrmesh.openlrm as openlrm

    monkeypatch.setattr(openlrm, "_notice_shown", False)
    lines: list[str] = []
    load_openlrm(FIXTURE / "v11-packed", source_size=336)  # the API is silent unless given a printer
    load_openlrm(FIXTURE / "v11-packed", source_size=336, notice=lines.append)
    load_openlrm(FIXTURE / "v11-packed", source_size=336, notice=lines.append)
    assert lines == [LICENCE_NOTICE]
    assert "CC BY-NC 4.0" in LICENCE_NOTICE


@pytest.mark.parametrize("name", [n for n in sorted(OPENLRM_PRESETS) if n.endswith("-1.0")])
def test_real_size_v10_files_load(tmp_path, name):
    """A model.pth of the preset's real key names and shapes, kept small on disk by stride-0 tensors (torch.save
    stores one number per tensor); the loader reads it as a released file."""
    cfg = openlrm_preset(name)
    state = {k: torch.full((1,), 0.01 * (i % 7)).expand(s) for i, (k, s) in enumerate(release_shapes(cfg).items())}
    path = _write_release(cfg, tmp_path, state)
    assert path.stat().st_size < 2**20
    model = load_openlrm(path)
    assert model.cfg == cfg
    first = next(iter(state))
    assert float(model.transformer.pos_embed.detach()[0, 0, 0]) == float(state["transformer.pos_embed"][0, 0, 0])
    assert first.startswith("encoder.model.embeddings")


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_encoder_input_is_normalised_as_each_release(version):
    """v1.0: the facebook/dino-vitb16 processor's mean = std = 0.5, so x * 2 - 1; v1.1: the [0, 1] image as is."""
    model = SingleViewLRM(_tiny(version, 64))
    seen = []
    model.encoder.forward = lambda x: seen.append(x) or torch.zeros(1)
    image = torch.rand(1, 3, 28, 28)
    model.encode(image)
    torch.testing.assert_close(seen[0], image * 2 - 1 if version == "1.0" else image, rtol=0, atol=0)
