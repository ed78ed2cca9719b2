"""The zero123pp-tiny fixture: its model folder, white-background UNet, inputs and expected arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

ZERO123PP = Path(__file__).parents[1] / "fixtures" / "zero123pp-tiny"


@pytest.fixture(scope="session")
def z123_dir() -> Path:
    return ZERO123PP


@pytest.fixture(scope="session")
def z123_expected() -> dict[str, np.ndarray]:
    with np.load(ZERO123PP / "expected.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def z123_pipeline():
    from lrmesh.zero123pp.pipeline import Zero123pp

    return Zero123pp.load(ZERO123PP / "zero123plus-v1.2-tiny", ZERO123PP / "diffusion_pytorch_model.bin")

