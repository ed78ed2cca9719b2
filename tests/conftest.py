"""Shared fixtures: the reference's tiny parity fixture (tests/fixtures/instantmesh-tiny, see its README)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURE = Path(__file__).parent / "fixtures" / "instantmesh-tiny"


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # The fixture was generated with 2 CPU threads; the same count reproduces its accumulation order best.
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURE


@pytest.fixture(scope="session")
def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "expected.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def fixture_cameras() -> torch.Tensor:
    return torch.tensor(json.loads((FIXTURE / "cameras.json").read_text()), dtype=torch.float32)


@pytest.fixture(scope="session")
def fixture_views() -> torch.Tensor:
    from lrmesh.io.views import load_views

    return load_views([FIXTURE / f"view_{i}.png" for i in range(6)])


def _model(kind: str):
    from lrmesh.checkpoints import load_model

    return load_model(FIXTURE / f"instant_{kind}_tiny.ckpt", FIXTURE / "config.yaml")


@pytest.fixture(scope="session")
def mesh_model():
    return _model("mesh")


@pytest.fixture(scope="session")
def nerf_model():
    return _model("nerf")
