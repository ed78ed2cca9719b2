"""--precision: bf16 autocast of the encoder and transformer gives nearly the fp32 mesh; fp16 needs CUDA."""

from __future__ import annotations

import pytest
import torch

from lrmesh.cli import main
from lrmesh.errors import LrmeshError
from lrmesh.metrics import chamfer_distance
from lrmesh.precision import autocast, check_precision
from lrmesh.reconstruct import reconstruct


def test_fp16_on_the_cpu_and_unknown_names_are_errors(capsys):
    with pytest.raises(LrmeshError, match="CUDA only"):
        check_precision("fp16", torch.device("cpu"))
    with pytest.raises(LrmeshError, match="one of fp32, bf16, fp16"):
        check_precision("int8", torch.device("cpu"))
    assert main(["reconstruct", "-q", "--device", "cpu", "--precision", "fp16"]) == 2
    assert capsys.readouterr().err.strip() == "lrmesh: error: --precision fp16 runs on CUDA only; on the CPU use " \
                                              "bf16 (or fp32)"


def test_bf16_runs_the_matrix_products_in_bf16_and_fp32_changes_nothing():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    with autocast("bf16", torch.device("cpu")):
        assert (a @ b).dtype == torch.bfloat16
    with autocast("fp32", torch.device("cpu")):
        assert torch.equal(a @ b, a @ b) and (a @ b).dtype == torch.float32


def test_bf16_mesh_is_the_fp32_mesh_within_rounding(mesh_model, fixture_views, fixture_cameras):
    fp32 = reconstruct(mesh_model, fixture_views, fixture_cameras)
    bf16 = reconstruct(mesh_model, fixture_views, fixture_cameras, precision="bf16")
    assert bf16.planes.dtype == torch.float32
    planes_error = (bf16.planes - fp32.planes).abs().max() / fp32.planes.abs().max()
    assert 0 < planes_error < 2e-2  # bf16 has 8 mantissa bits: rounding, not a different model
    a, b = fp32.mesh.vertices, bf16.mesh.vertices
    diagonal = float((a.max(0).values - a.min(0).values).norm())
    assert chamfer_distance(a, b) / diagonal < 1e-2
