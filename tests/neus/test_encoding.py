"""Hash grid against a slow, obvious reference; frequency and spherical-harmonics encodings against hand values."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lrmesh.neus.encoding import (
    CompositeEncoding,
    FrequencyEncoding,
    HashGrid,
    HashGridConfig,
    SphericalHarmonics,
    level_scales,
    resolve_backend,
    tcnn_available,
)

# Level 0: scale 3, 5 vertices a side, 125 <= 2^10 -> dense. Levels 1, 2: scales 11 and 35, 13^3 and 37^3 > 2^10 ->
# hashed.
SMALL = HashGridConfig(
    n_levels=3, n_features_per_level=2, log2_hashmap_size=10, base_resolution=4, per_level_scale=3.0,
    start_level=3, backend="torch",
)


def reference_grid(table: torch.Tensor, x: torch.Tensor, cfg: HashGridConfig) -> torch.Tensor:
    """The hash grid written out: a loop over levels and corners, Python-integer hashing, explicit weights.

    table (F, rows), levels stored one after another; x (B, 3) in [0, 1] -> (B, L * F).
    """
    size_cap = 2**cfg.log2_hashmap_size
    offset, out = 0, []
    for level in range(cfg.n_levels):
        scale = torch.tensor(cfg.base_resolution * cfg.per_level_scale**level - 1, dtype=torch.float32)
        side = math.ceil(scale.item()) + 2
        dense = side**3 <= size_cap
        pos = x * scale + 0.5
        lower = pos.floor()
        frac = pos - lower
        level_features = torch.zeros(x.shape[0], table.shape[0], dtype=table.dtype)
        for corner in itertools.product((0, 1), repeat=3):
            vertices = (lower.long() + torch.tensor(corner)).tolist()
            if dense:
                rows = [i + side * j + side * side * k for i, j, k in vertices]
            else:
                rows = [((i * 1) ^ (j * 2654435761) ^ (k * 805459861)) % 2**32 % size_cap for i, j, k in vertices]
            weight = torch.ones(x.shape[0], dtype=x.dtype)
            for axis in range(3):
                weight = weight * (frac[:, axis] if corner[axis] else 1 - frac[:, axis])
            level_features = level_features + weight[:, None] * table[:, offset + torch.tensor(rows)].T
        out.append(level_features)
        offset += side**3 if dense else size_cap
    assert offset == table.shape[1]
    return torch.cat(out, dim=1)


def small_grid(seed: int = 0, **overrides) -> HashGrid:
    torch.manual_seed(seed)
    grid = HashGrid(HashGridConfig(**{**SMALL.__dict__, **overrides}))
    with torch.no_grad():
        grid.table.normal_()  # values far from the 1e-4 init, so that mistakes show
    return grid


def points(n: int = 64, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    x = torch.rand(n, 3)
    x[0] = 0.0  # the first vertex
    x[1] = 1.0  # the last vertex of every level: the extra (ceil(s) + 2)-th vertex is used
    return x


def test_level_layout():
    grid = small_grid()
    assert grid.level_sides == [5, 13, 37]
    assert grid.n_dense == 1
    assert tuple(grid.table.shape) == (2, 125 + 2 * 1024)
    assert grid.n_output_dims == 6


def test_scales_follow_tcnn_and_max_resolution():
    cfg = HashGridConfig(n_levels=16, base_resolution=16, max_resolution=2048)
    scales = level_scales(cfg)
    assert scales[0] == pytest.approx(15.0)  # N_min b^0 - 1
    assert scales[-1] == pytest.approx(2047.0)  # N_max - 1
    assert cfg.growth_factor == pytest.approx(math.exp(math.log(128) / 15))
    # instant-nsr-pl's default b reaches 16 * 256 = 4096 at level 15.
    assert level_scales(HashGridConfig())[-1] == pytest.approx(4095.0, rel=1e-6)


def test_matches_reference_values_and_gradients():
    grid = small_grid()
    x = points().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    table_ref = grid.table.detach().clone().requires_grad_(True)

    out, ref = grid(x), reference_grid(table_ref, x_ref, grid.cfg)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)

    torch.manual_seed(2)
    upstream = torch.randn_like(ref)
    (out * upstream).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(grid.table.grad, table_ref.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    # Both kinds of level received gradient.
    assert grid.table.grad[:, :125].abs().sum() > 0 and grid.table.grad[:, 125:].abs().sum() > 0


def test_very_fine_level_uses_64_bit_indices():
    # Level 1 has about 4 million vertices a side: its hash terms no longer fit in int32.
    grid = small_grid(n_levels=2, per_level_scale=2.0**20, start_level=2)
    assert grid.strides.dtype == torch.int64 and small_grid().strides.dtype == torch.int32
    x = points()
    torch.testing.assert_close(grid(x), reference_grid(grid.table.detach(), x, grid.cfg))


def test_double_backward_reaches_the_table():
    """The eikonal loss differentiates |d f / d x| with respect to the grid: compare with the reference."""
    grid = small_grid()
    table_ref = grid.table.detach().clone().requires_grad_(True)
    torch.manual_seed(3)
    mix = torch.randn(6)  # a scalar field f = features . mix, as an MLP's last layer would make

    def eikonal(fn, table):
        x = points(32).requires_grad_(True)
        f = fn(table, x) @ mix
        (gradient,) = torch.autograd.grad(f.sum(), x, create_graph=True)
        return ((gradient.norm(dim=-1) - 1) ** 2).mean()

    eikonal(lambda _, x: grid(x), grid.table).backward()
    eikonal(lambda table, x: reference_grid(table, x, grid.cfg), table_ref).backward()
    assert grid.table.grad.abs().sum() > 0
    torch.testing.assert_close(grid.table.grad, table_ref.grad, rtol=1e-4, atol=1e-6)


def test_progressive_mask():
    grid = small_grid(start_level=1, start_step=100, update_steps=10)
    x = points()
    full = reference_grid(grid.table.detach(), x, grid.cfg)
    for step, levels in [(0, 1), (105, 1), (110, 2), (125, 3), (10_000, 3)]:
        grid.update_step(step)
        assert grid.active_levels == levels
        out = grid(x)
        torch.testing.assert_close(out[:, : 2 * levels], full[:, : 2 * levels], rtol=1e-5, atol=1e-6)
        assert torch.all(out[:, 2 * levels :] == 0)

    grid.update_step(0)
    grid(x).sum().backward()
    assert torch.all(grid.table.grad[:, 125:] == 0)  # the disabled hashed levels learn nothing

    restored = small_grid(seed=5, start_level=1, start_step=100, update_steps=10)
    grid.update_step(115)
    restored.load_state_dict(grid.state_dict())
    assert restored.active_levels == 2  # the schedule's state travels with the weights


def test_points_outside_the_unit_cube_are_clamped():
    grid = small_grid()
    x = torch.tensor([[-0.5, 0.5, 1.5]])
    torch.testing.assert_close(grid(x), grid(torch.tensor([[0.0, 0.5, 1.0]])))


def test_default_config_runs():
    grid = HashGrid(HashGridConfig(backend="torch"))
    assert grid.active_levels == 4 and grid.n_output_dims == 32
    assert grid.table.abs().max() <= 1e-4  # tiny-cuda-nn's init range
    out = grid(torch.rand(16, 3))
    assert out.shape == (16, 32) and torch.all(out[:, 8:] == 0)


def test_backend_choice():
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("auto", None) == "torch"
    assert resolve_backend("torch", "cuda") == "torch"
    if not tcnn_available():
        assert resolve_backend("auto", "cuda") == "torch"
        with pytest.raises(ImportError, match="tiny-cuda-nn"):
            resolve_backend("tcnn", "cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_backend_on_cuda_matches_cpu():
    grid = small_grid()
    x = points()
    expected = grid(x)
    torch.testing.assert_close(grid.cuda()(x.cuda()).cpu(), expected, rtol=1e-5, atol=1e-6)


def test_composite_encoding_prepends_the_mapped_input():
    grid = small_grid()
    enc = CompositeEncoding(grid, include_input=True, scale=2.0, offset=-1.0)
    x = points(8)
    out = enc(x)
    assert enc.n_output_dims == 3 + 6
    torch.testing.assert_close(out[:, :3], 2 * x - 1)
    torch.testing.assert_close(out[:, 3:], grid(x))
    assert CompositeEncoding(grid, include_input=False).n_output_dims == 6


def test_frequency_encoding_known_values():
    enc = FrequencyEncoding(n_input_dims=3, n_frequencies=2, include_input=True)
    x = torch.tensor([[0.0, math.pi / 2, math.pi / 4]])
    r = math.sqrt(0.5)
    expected = torch.tensor(
        [[0.0, math.pi / 2, math.pi / 4,  # x
          0.0, 1.0, r,  # sin(x)
          1.0, 0.0, r,  # cos(x)
          0.0, 0.0, 1.0,  # sin(2x)
          1.0, -1.0, 0.0]]  # cos(2x)
    )
    assert enc.n_output_dims == 15
    torch.testing.assert_close(enc(x), expected, atol=1e-6, rtol=0)
    no_input = FrequencyEncoding(3, 2, include_input=False)
    torch.testing.assert_close(no_input(x), expected[:, 3:], atol=1e-6, rtol=0)


def test_spherical_harmonics_low_degrees():
    c0, c1 = 0.28209479177387814, 0.48860251190291987  # 1 / (2 sqrt(pi)), sqrt(3) / (2 sqrt(pi))
    d = torch.eye(3)  # +x, +y, +z
    torch.testing.assert_close(SphericalHarmonics(1)(d), torch.full((3, 1), c0))
    expected = torch.tensor([[c0, 0.0, 0.0, -c1], [c0, -c1, 0.0, 0.0], [c0, 0.0, c1, 0.0]])
    torch.testing.assert_close(SphericalHarmonics(2)(d), expected)
    # Band 2 at +z: only Y_2^0 = sqrt(5) / (4 sqrt(pi)) * (3 - 1) is non-zero.
    torch.testing.assert_close(SphericalHarmonics(3)(d)[2, 4:], torch.tensor([0, 0, 0.6307831305050400, 0, 0]))


def test_spherical_harmonics_are_orthonormal():
    """Integrals of Y_i Y_j over the sphere on a Fibonacci lattice: the identity, if every constant is right."""
    n = 20_000
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + math.sqrt(5)) * i
    rho = (1 - z**2).sqrt()
    d = torch.stack([rho * phi.cos(), rho * phi.sin(), z], dim=-1)
    y = SphericalHarmonics(4)(d)  # (n, 16)
    gram = y.T @ y * (4 * math.pi / n)
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="degree"):
        SphericalHarmonics(5)


def test_no_points_give_no_features():
    grid = HashGrid(HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=8))
    assert grid(torch.zeros(0, 3)).shape == (0, 8)
