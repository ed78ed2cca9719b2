"""Training: two-step runs of both stages, resume, NaN stop, bad samples, configs, camera crops."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from lrmesh.cameras import intrinsics_matrix, orbit_poses, pixel_rays
from lrmesh.cli import main
from lrmesh.config import preset
from lrmesh.data.multiview import write_object
from lrmesh.data.synthetic import random_object
from lrmesh.errors import ConfigError, InputError
from lrmesh.model.lrm import LRM
from lrmesh.model.triplane import sample_triplanes
from lrmesh.render.raster import project_intrinsics
from lrmesh.train.config import load_train_config
from lrmesh.train.data import MultiviewDataset, crop_intrinsics, list_objects
from lrmesh.train.module import TrainingDiverged, nerf_to_mesh_state
from lrmesh.train.run import last_checkpoint, train
from tests.train.helpers import logged_losses


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-data")
    for seed in range(3):
        write_object(random_object(seed), root, f"obj{seed}", "training", 10, 32, seed, "test")
    return root


def _cfg(name, root, output, *extra):
    return load_train_config(name, [f"data.root={root}", f"output={output}", "loss.lpips=0", "log_every=1",
                                    *extra])



@pytest.mark.slow
def test_two_steps_of_each_stage_then_resume_repeats_the_same_curve(tiny_data, tmp_path):
    stage1 = train(_cfg("tiny-stage1", tiny_data, tmp_path / "s1"), progress=False)
    assert stage1.global_step == 2
    assert (tmp_path / "s1" / "stage1.safetensors").is_file()
    assert list((tmp_path / "s1" / "images").glob("val_*.png"))

    init = tmp_path / "s1" / "stage1.safetensors"
    full = train(_cfg("tiny-stage2", tiny_data, tmp_path / "full", f"init={init}", "max_steps=4"), progress=False)
    assert full.global_step == 4
    # Interrupted after two steps, resumed to four: same steps, same losses.
    train(_cfg("tiny-stage2", tiny_data, tmp_path / "cut", f"init={init}", "max_steps=2"), progress=False)
    resumed = train(_cfg("tiny-stage2", tiny_data, tmp_path / "cut", f"init={init}", "max_steps=4"), resume=True,
                    progress=False)
    assert resumed.global_step == 4
    expected, got = logged_losses(tmp_path / "full"), logged_losses(tmp_path / "cut")
    assert sorted(expected) == sorted(got) == [0, 1, 2, 3]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6)
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        # thread-order rounding only: Adam after four steps amplifies float32 noise in a few near-zero weights (2.4e-5
        # seen on 3 of 4096 since the rays are EG3D's batched product, OpenLRM's bit-exact formula)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=5e-5)


@pytest.mark.slow
def test_nan_loss_stops_with_a_message_and_keeps_the_last_checkpoint(tiny_data, tmp_path):
    train(_cfg("tiny-stage1", tiny_data, tmp_path, "max_steps=1"), progress=False)
    before = last_checkpoint(_cfg("tiny-stage1", tiny_data, tmp_path)).read_bytes()
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 1 .*last good checkpoint"):
        train(_cfg("tiny-stage1", tiny_data, tmp_path, "loss.mse=.nan", "max_steps=3"), resume=True,
              progress=False)
    assert last_checkpoint(_cfg("tiny-stage1", tiny_data, tmp_path)).read_bytes() == before


def test_corrupt_and_missing_samples_are_skipped_by_name(tiny_data, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    (root / "rendering_random_32views" / "obj0" / "003.png").write_bytes(b"not a png")
    (root / "rendering_random_32views" / "obj1" / "cameras.npz").unlink()
    cfg = _cfg("tiny-stage1", root, tmp_path / "out")
    dataset = MultiviewDataset(cfg.data, list_objects(root), seed=0)
    with pytest.warns(UserWarning) as caught:
        samples = [dataset[i] for i in range(6)]
    messages = " ".join(str(w.message) for w in caught)
    assert "'obj0'" in messages and "'obj1'" in messages
    assert all(s["target_images"].shape == (8, 3, 16, 16) for s in samples)
    shutil.rmtree(root / "rendering_random_32views" / "obj2")
    with pytest.raises(InputError, match="could not be read"), pytest.warns(UserWarning):
        MultiviewDataset(cfg.data, list_objects(root), seed=0)[0]


def test_samples_are_a_function_of_their_index(tiny_data, tmp_path):
    cfg = _cfg("tiny-stage1", tiny_data, tmp_path)
    a = MultiviewDataset(cfg.data, list_objects(tiny_data), seed=3)
    b = MultiviewDataset(cfg.data, list_objects(tiny_data), seed=3)
    for i in (0, 5):
        for key, value in a[i].items():
            torch.testing.assert_close(value, b[i][key], msg=key)


def test_config_overrides_are_checked(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        _cfg("tiny-stage1", tiny_data, tmp_path, "data.rooot=x")
    with pytest.raises(ConfigError, match="unknown key"):
        _cfg("tiny-stage1", tiny_data, tmp_path, "model.encoder.layers=3")
    with pytest.raises(ConfigError, match="not a file, nor one of"):
        load_train_config("no-such-config")
    cfg = _cfg("tiny-stage1", tiny_data, tmp_path, "optim.lr=1e-5", "model.transformer.num_layers=1")
    assert cfg.optim.lr == 1e-5 and cfg.model_config().transformer.num_layers == 1


def test_bad_training_input_is_a_clear_error(tiny_data, tmp_path, capsys):
    with pytest.raises(ConfigError, match="stage must be 1 or 2"):
        _cfg("tiny-stage1", tiny_data, tmp_path, "stage=3")
    with pytest.raises(ConfigError, match="num_input_views must be at least 1"):
        _cfg("tiny-stage1", tiny_data, tmp_path, "data.num_input_views=0")
    with pytest.raises(ConfigError, match="not key=value"):
        _cfg("tiny-stage1", tiny_data, tmp_path, "optim.lr")
    with pytest.raises(InputError, match="nothing to resume"):
        train(_cfg("tiny-stage1", tiny_data, tmp_path / "fresh"), resume=True, progress=False)
    assert main(["train", "tiny-stage1", "data.rooot=x"]) == 2
    assert "unknown key(s) ['rooot']" in capsys.readouterr().err
    assert main(["train", "tiny-stage1", f"data.root={tmp_path}", f"output={tmp_path / 'out'}"]) == 2
    assert "not a training-layout folder" in capsys.readouterr().err


def test_stage_two_starts_from_the_stage_one_field():
    torch.manual_seed(0)
    nerf = LRM(preset("tiny-nerf"))
    mesh = LRM(preset("tiny"))
    state = nerf_to_mesh_state(nerf.state_dict(), nerf.cfg.synthesizer.num_layers)
    missing, unexpected = mesh.load_state_dict(state, strict=False)
    assert not unexpected and all("net_deformation" in k or "net_weight" in k for k in missing)
    features = torch.randn(50, 3 * nerf.cfg.transformer.triplane_dim)
    sample = nerf.synthesizer.decoder(features)
    torch.testing.assert_close(mesh.synthesizer.decoder.sdf(features), 10.0 - sample.sigma)
    torch.testing.assert_close(mesh.synthesizer.decoder.rgb(features), sample.rgb)


def test_a_crop_camera_sees_the_crop():
    # The rays of the crop camera are the full image's rays of the cropped pixels.
    c2w = orbit_poses([30.0], [20.0], 4.0)[0]
    k = intrinsics_matrix(30.0)
    full, crop, x0, y0 = 40, 16, 12, 20
    k_crop = crop_intrinsics(k, x0 / full, y0 / full, crop / full)
    _, dirs_full = pixel_rays(torch.cat([c2w.reshape(16), k.reshape(9)])[None], full)
    _, dirs_crop = pixel_rays(torch.cat([c2w.reshape(16), k_crop.reshape(9)])[None], crop)
    expected = dirs_full[0].reshape(full, full, 3)[y0:y0 + crop, x0:x0 + crop].reshape(-1, 3)
    torch.testing.assert_close(dirs_crop[0], expected, atol=1e-6, rtol=0)
    # And the projection of a point along a pixel's ray lands on that pixel's centre.
    origins, _ = pixel_rays(torch.cat([c2w.reshape(16), k_crop.reshape(9)])[None], crop)
    pixel = 5 * crop + 11  # row 5, column 11
    point = origins[0, pixel] + 3.7 * dirs_crop[0, pixel]
    clip = project_intrinsics(point[None], c2w[None], k_crop)[0, 0]
    ndc = clip[:2] / clip[3]
    column, row = (ndc[0] + 1) / 2 * crop, (1 - ndc[1]) / 2 * crop
    assert column.item() == pytest.approx(11.5, abs=1e-4) and row.item() == pytest.approx(5.5, abs=1e-4)
    assert math.isclose(clip[3].item(), (point - c2w[:3, 3]) @ -c2w[:3, 2], rel_tol=1e-5)


def test_training_folder_errors_are_clear(tmp_path):
    with pytest.raises(InputError, match="not a training-layout folder"):
        list_objects(tmp_path)


@pytest.mark.parametrize("stage", ["tiny-stage1", "tiny-stage2"])
def test_gradient_checkpointing_gives_the_same_gradients(stage, tiny_data, tmp_path):
    from lrmesh.train.module import ReconstructionModule

    grads = []
    for checkpointing in (False, True):
        cfg = _cfg(stage, tiny_data, tmp_path, "init=", f"gradient_checkpointing={str(checkpointing).lower()}")
        torch.manual_seed(0)
        module = ReconstructionModule(cfg).train()
        batch = {k: v[None] for k, v in MultiviewDataset(cfg.data, list_objects(tiny_data), seed=0)[0].items()}
        generator = torch.Generator().manual_seed(5)  # the NeRF sample draws
        sum(module.compute_losses(module(batch, generator), batch).values()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_occupancy_loss_reads_the_points_and_scores_the_field(tiny_data, tmp_path):
    from lrmesh.train.module import ReconstructionModule

    with pytest.raises(ConfigError, match="data.occupancy_points"):
        _cfg("tiny-stage2", tiny_data, tmp_path, "loss.occupancy=1")
    for stage in ("tiny-stage1", "tiny-stage2"):
        cfg = _cfg(stage, tiny_data, tmp_path, "init=", "loss.occupancy=2", "data.occupancy_points=300")
        torch.manual_seed(0)
        module = ReconstructionModule(cfg).train()
        sample = MultiviewDataset(cfg.data, list_objects(tiny_data), seed=0)[1]
        assert sample["occupancy_points"].shape == (300, 3) and sample["occupancy_inside"].shape == (300,)
        assert set(sample["occupancy_inside"].unique().tolist()) == {0.0, 1.0}
        batch = {k: v[None] for k, v in sample.items()}
        rendered = module(batch, torch.Generator().manual_seed(1))
        terms = module.compute_losses(rendered, batch)
        synth = module.model.synthesizer
        field_mlp = synth.decoder.net_sdf if stage == "tiny-stage2" else synth.decoder.net
        raw = field_mlp(sample_triplanes(rendered.planes, batch["occupancy_points"], synth.cfg.box_warp))[..., 0]
        logits = -raw if stage == "tiny-stage2" else raw - 10.0
        expected = 2 * torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["occupancy_inside"])
        torch.testing.assert_close(terms["occupancy"], expected)
    # Occupancy alone: the step renders nothing (a renderer that is called fails the test).
    off = [f"loss.{name}=0" for name in ("mse", "mask", "depth", "normal", "sdf_entropy", "surface", "weights")]
    with pytest.raises(ConfigError, match="every loss weight is zero"):
        _cfg("tiny-stage2", tiny_data, tmp_path, *off)
    cfg = _cfg("tiny-stage2", tiny_data, tmp_path, "init=", *off, "loss.occupancy=1", "data.occupancy_points=64")
    module = ReconstructionModule(cfg).train()
    module.render = None
    module.log = module.log_dict = lambda *args, **kwargs: None
    loss = module.training_step(batch, 0)
    assert loss.ndim == 0 and loss.requires_grad and 0.1 < loss.item() < 10
    # With normalize_rotation the points turn with the cameras.
    plain = _cfg("tiny-stage2", tiny_data, tmp_path, "data.occupancy_points=50")
    turned = _cfg("tiny-stage2", tiny_data, tmp_path, "data.occupancy_points=50", "data.normalize_rotation=true")
    a = MultiviewDataset(plain.data, list_objects(tiny_data), seed=0)[2]
    b = MultiviewDataset(turned.data, list_objects(tiny_data), seed=0)[2]
    rotation = b["target_c2w"][0, :3, :3] @ a["target_c2w"][0, :3, :3].T
    torch.testing.assert_close(b["occupancy_points"], a["occupancy_points"] @ rotation.T, atol=1e-5, rtol=0)
    torch.testing.assert_close(b["occupancy_inside"], a["occupancy_inside"])


def test_an_object_without_occupancy_is_skipped_by_name(tiny_data, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    (root / "rendering_random_32views" / "obj1" / "occupancy.npz").unlink()
    cfg = _cfg("tiny-stage2", root, tmp_path, "loss.occupancy=1", "data.occupancy_points=20")
    dataset = MultiviewDataset(cfg.data, list_objects(root), seed=0, train=False)
    with pytest.warns(UserWarning, match=r"skipping training object 'obj1'.*occupancy\.npz"):
        sample = dataset[1]  # obj1's turn: obj2 takes its place
    assert sample["occupancy_points"].shape == (20, 3)


def test_point_color_loss_lifts_the_views_onto_the_object_and_scores_its_colours(tiny_data, tmp_path):
    from lrmesh.cameras import unproject_depth
    from lrmesh.metrics import nearest_distances, sample_surface
    from lrmesh.train.module import ReconstructionModule

    off = [f"loss.{name}=0" for name in ("mse", "mask", "depth", "normal", "sdf_entropy", "surface", "weights")]
    cfg = _cfg("tiny-stage2", tiny_data, tmp_path, "init=", *off, "loss.point_color=3")
    assert not cfg.loss.needs_renders
    sample = MultiviewDataset(cfg.data, list_objects(tiny_data), seed=0, train=False)[0]
    # The stored depth lifts the foreground pixels onto the object that was rendered (obj0 = random_object(0)).
    depth = sample["target_depths"][:, 0]
    covered = (sample["target_alphas"][:, 0] > 0.5) & (depth > 0)
    points = unproject_depth(sample["target_c2w"], sample["target_intrinsics"], depth)[covered]
    surface = sample_surface(random_object(0), 100000, seed=0)
    distances = nearest_distances(points, surface)
    assert covered.sum() > 50 and float(np.median(distances)) < 0.025 and float(distances.mean()) < 0.03
    # The term: weight x colour MSE in [-1, 1] at those points, through the colour head.
    torch.manual_seed(0)
    module = ReconstructionModule(cfg).train()
    batch = {k: v[None] for k, v in sample.items()}
    planes = module.model.forward_planes(batch["input_images"], batch["input_cameras"])
    terms = module.compute_losses(None, batch, planes)
    assert set(terms) == {"point_color"}
    colours = sample["target_images"].permute(0, 2, 3, 1)[covered]
    predicted = module.model.synthesizer.rgb(planes, points)
    expected = 3 * torch.nn.functional.mse_loss(predicted * 2 - 1, colours * 2 - 1)
    torch.testing.assert_close(terms["point_color"], expected)
    # A step renders nothing (a renderer that is called fails the test), and the colour head gets gradients.
    module.render = None
    module.log = module.log_dict = lambda *args, **kwargs: None
    loss = module.training_step(batch, 0)
    loss.backward()
    assert module.model.synthesizer.decoder.net_rgb[0].weight.grad.abs().sum() > 0


def test_a_negative_loss_weight_is_a_config_error(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match=r"loss weights must be 0 \(off\) or more, got loss.point_color=-1"):
        _cfg("tiny-stage2", tiny_data, tmp_path, "loss.point_color=-1")


def test_a_bad_last_checkpoint_is_one_error_line_naming_it(tiny_data, tmp_path, refuses_bad_resume):
    refuses_bad_resume(["train", "tiny-stage1", f"data.root={tiny_data}", f"output={tmp_path / 'out'}", "loss.lpips=0"],
                       tmp_path / "out")


def test_random_input_views_vary_per_batch_and_keep_the_fixed_views_in_the_mix(tiny_data, tmp_path):
    cfg = _cfg("tiny-stage1", tiny_data, tmp_path, "data.random_input_views=[2, 5]", "data.input_view_ids=[0, 1, 2]",
               "data.num_input_views=3", "data.fixed_input_fraction=0.25", "data.num_target_views=2")
    dataset = MultiviewDataset(cfg.data, list_objects(tiny_data), seed=0, batch_size=4)
    plans = [dataset.input_plan(i) for i in range(4 * 400)]
    batches = [plans[b:b + 4] for b in range(0, len(plans), 4)]
    assert all(len(set(batch)) == 1 for batch in batches)  # one plan per batch, so its samples stack
    counts = [batch[0] for batch in batches if not batch[0][1]]
    assert {count for count, _ in counts} == {2, 3, 4, 5}
    fixed = sum(batch[0][1] for batch in batches) / len(batches)
    assert abs(fixed - 0.25) < 0.07, fixed
    assert all(batch[0] == (3, True) for batch in batches if batch[0][1])
    # a fixed batch takes views 0, 1, 2; a random one its count of views; targets are the inputs, then 2 more
    fixed_i = next(4 * b for b, batch in enumerate(batches) if batch[0][1])
    random_i = next(4 * b for b, batch in enumerate(batches) if batch[0] == (5, False))
    fixed_sample, random_sample = dataset[fixed_i], dataset[random_i]
    assert fixed_sample["input_cameras"].shape == (3, 16) and random_sample["input_cameras"].shape == (5, 16)
    assert random_sample["target_images"].shape[0] == 5 + 2
    from lrmesh.train.data import read_object
    name = dataset.names[dataset.object_index(fixed_i)]
    views = read_object(dataset.root / name, [0, 1, 2])
    torch.testing.assert_close(fixed_sample["input_cameras"][:, :12], views.c2w[:, :3].reshape(3, 12),
                               atol=cfg.data.camera_noise + 1e-6, rtol=0)
    # validation keeps the fixed inputs
    assert MultiviewDataset(cfg.data, list_objects(tiny_data), seed=0, train=False).input_plan(7) == (3, True)


@pytest.mark.parametrize("override, message", [
    ("data.random_input_views=[0, 3]", "1 <= low <= high"),
    ("data.random_input_views=[5, 4]", "1 <= low <= high"),
    ("data.fixed_input_fraction=0.5", "needs data.random_input_views and data.input_view_ids"),
    ("data.fixed_input_fraction=2", "must be in [0, 1]"),
])
def test_random_input_view_settings_are_checked(tiny_data, tmp_path, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _cfg("tiny-stage1", tiny_data, tmp_path, override)


def test_two_steps_with_random_input_views_in_batches_of_two(tiny_data, tmp_path):
    cfg = _cfg("tiny-stage1", tiny_data, tmp_path, "max_steps=2", "batch_size=2", "data.random_input_views=[2, 4]",
               "data.num_target_views=2", "checkpoint_every=2", "validate_every=100")
    train(cfg, progress=False)
    assert len(logged_losses(tmp_path)) == 2
