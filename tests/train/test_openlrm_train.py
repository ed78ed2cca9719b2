"""Training the OpenLRM single-image model: the tiny preset trains two steps and resumes; OpenLRM's view
sampling (source re-posed to the canonical camera, random backgrounds) and its TV loss."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from lrmesh.cameras import openlrm_source_camera
from lrmesh.data.multiview import write_object
from lrmesh.data.synthetic import random_object
from lrmesh.errors import ConfigError
from lrmesh.openlrm import load_openlrm
from lrmesh.train.config import load_train_config
from lrmesh.train.data import MultiviewDataset, list_objects
from lrmesh.train.losses import plane_tv
from lrmesh.train.run import train
from tests.train.helpers import logged_losses


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("openlrm-data")
    for seed in range(3):
        write_object(random_object(seed), root, f"obj{seed}", "training", 8, 32, seed, "test", occupancy=False)
    return root


def _cfg(root, output, *extra):
    return load_train_config("openlrm-tiny", [f"data.root={root}", f"output={output}", "log_every=1", *extra])



@pytest.mark.slow
def test_two_steps_then_resume_repeats_the_curve_and_writes_a_release(tiny_data, tmp_path):
    full = train(_cfg(tiny_data, tmp_path / "full", "max_steps=4"), progress=False)
    assert full.global_step == 4
    train(_cfg(tiny_data, tmp_path / "cut", "max_steps=2"), progress=False)
    resumed = train(_cfg(tiny_data, tmp_path / "cut", "max_steps=4"), resume=True, progress=False)
    assert resumed.global_step == 4
    expected, got = logged_losses(tmp_path / "full"), logged_losses(tmp_path / "cut")
    assert sorted(expected) == sorted(got) == [0, 1, 2, 3]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-6)
    # the model is written in OpenLRM's v1.1 layout, which loads back strictly into the same weights
    release = load_openlrm(tmp_path / "full" / "openlrm", source_size=28)
    for name, value in full.model.state_dict().items():
        torch.testing.assert_close(release.state_dict()[name], value.cpu())


def test_source_view_is_reposed_to_the_canonical_camera_and_targets_get_grey_backgrounds(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, tmp_path)
    data = MultiviewDataset(cfg.data, list_objects(tiny_data), seed=0)
    sample = data[0]
    c2w = sample["target_c2w"]  # inputs first: view 0 is the source
    distance = float(c2w[0, :3, 3].norm())
    canonical = openlrm_source_camera(distance)[0, :12].reshape(3, 4)
    torch.testing.assert_close(c2w[0, :3], canonical, atol=1e-5, rtol=0)
    torch.testing.assert_close(sample["input_cameras"][0, :12], canonical.reshape(12), atol=1e-5, rtol=0)
    # a rotation about the origin: every camera keeps its distance and still looks at the origin
    for pose in c2w:
        eye, forward = pose[:3, 3], -pose[:3, 2]
        assert torch.allclose(torch.linalg.cross(forward, -eye), torch.zeros(3), atol=1e-4)
    levels = sample["target_backgrounds"][:, 0]
    assert set(levels.tolist()) <= {0.0, 0.5, 1.0}
    empty = sample["target_alphas"][:, 0] == 0  # (T, C, C) pixels off the object show the view's grey
    for view in range(levels.shape[0]):
        pixels = sample["target_images"][view][:, empty[view]]  # (bicubic resizing blurs the silhouette's rim)
        assert pixels.numel() and float((pixels - levels[view]).abs().median()) < 1e-3


def test_plane_tv_by_hand():
    planes = torch.zeros(1, 3, 1, 2, 2)
    planes[0, 0, 0, 0, 0] = 1.0  # one plane: [[1, 0], [0, 0]]
    # vertical diffs: (-1, 0) -> mean 1/2; horizontal: (-1, 0) -> 1/2; plane 1 + the two zero planes: mean 1/3
    assert plane_tv(planes).item() == pytest.approx(1 / 3)


@pytest.mark.parametrize("override,message", [
    ("stage=2", "single-image NeRF model"),
    ("data.input_size=42", "must be the model's source_size"),
    ("data.background_levels=[2.0]", "must lie in"),
])
def test_openlrm_training_config_errors(tiny_data, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(tiny_data, tmp_path, override)


def test_init_from_a_release_of_another_model_is_refused(tiny_data, tmp_path):
    from pathlib import Path

    from lrmesh.errors import LrmeshError
    from lrmesh.train.module import build_model

    fixture = Path(__file__).parents[1] / "fixtures" / "openlrm-tiny" / "v11-sep"
    cfg = _cfg(tiny_data, tmp_path, f"init={fixture}")
    with pytest.raises(LrmeshError, match="is not the openlrm-small-1.1 model"):
        build_model(cfg)
    assert np.isfinite(cfg.loss.tv)
