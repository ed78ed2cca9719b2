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


class _RunsCodeWhenUnpickled:
    """Unpickling this calls Path.touch(marker): a checkpoint that needs code to load (never to be run)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture()
def bad_resume_checkpoints(tmp_path) -> tuple[dict[str, bytes], Path]:
    """The bytes of last.ckpt files a resume must refuse, by kind (truncated, foreign two ways, needs code), and
    the file that unpickling the last one would create."""
    import io

    marker = tmp_path / "code-was-run"

    def saved(obj) -> bytes:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return buffer.getvalue()

    good_layout = saved({"state_dict": {"w": torch.zeros(8)}, "global_step": 3})
    return {
        "truncated": good_layout[: len(good_layout) // 2],
        "not lightning": saved({"w": torch.zeros(3)}),
        "another model": good_layout,
        "needs code": saved({"state_dict": {}, "global_step": 0, "hook": _RunsCodeWhenUnpickled(marker)}),
    }, marker


@pytest.fixture()
def refuses_bad_resume(bad_resume_checkpoints, capsys):
    """check(argv, out): with each bad OUT/checkpoints/last.ckpt, `lrmesh ARGV --resume` is one error line naming the
    file and why, exit 2; no code from the file ran and nothing but the checkpoint folder is in OUT."""
    from lrmesh.cli import main

    files, marker = bad_resume_checkpoints
    reasons = {"truncated": "truncated", "not lightning": "not a Lightning training checkpoint",
               "another model": "another model", "needs code": "needs code"}

    def check(argv: list[str], out: Path) -> None:
        ckpt = out / "checkpoints" / "last.ckpt"
        ckpt.parent.mkdir(parents=True)
        for kind, data in files.items():
            ckpt.write_bytes(data)
            assert main([*argv, "--resume", "-q"]) == 2, kind
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith(f"lrmesh: error: {ckpt}: ") and reasons[kind] in err[0], err
        assert not marker.exists() and sorted(p.name for p in out.iterdir()) == ["checkpoints"]

    return check
