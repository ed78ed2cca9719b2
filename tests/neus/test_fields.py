"""SDF, density and colour fields: sphere initialisation, analytic vs finite-difference gradients, shapes."""

from __future__ import annotations

import math

import pytest
import torch

from lrmesh.neus.encoding import HashGridConfig
from lrmesh.neus.fields import (
    ColorField,
    ColorFieldConfig,
    DensityField,
    DensityFieldConfig,
    SDFField,
    SDFFieldConfig,
    mlp,
    trunc_exp,
)

# 4 levels, 8 to 27 vertices a side, 2^12 table rows: small and quick, dense and hashed levels both present.
GRID = HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=8, per_level_scale=1.5, start_level=4,
                      backend="torch")


def sdf_field(seed: int = 0, **overrides) -> SDFField:
    torch.manual_seed(seed)
    return SDFField(SDFFieldConfig(**{"radius": 1.0, "grid": GRID, **overrides}))


def perturb(module: torch.nn.Module, seed: int = 1, std: float = 0.1) -> None:
    """Leave the sphere initialisation, so that the grid features matter (their first-layer weights start at 0)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)


def sphere_points(n: int = 512, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)
    distance = torch.rand(n) * 0.6 + 0.2  # 0.2 .. 0.8 from the origin
    return direction * distance[:, None], distance


def test_mlp_sphere_init_layout():
    torch.manual_seed(0)
    net = mlp(3 + 8, 5, 32, 2, activation="softplus", sphere_init_radius=0.7)
    first, hidden, last = net[0], net[2], net[4]
    assert isinstance(net[1], torch.nn.Softplus) and net[1].beta == 100
    assert torch.all(first.weight[:, 3:] == 0) and first.weight[:, :3].abs().sum() > 0
    assert torch.all(first.bias == 0) and torch.all(hidden.bias == 0)
    assert torch.all(last.bias == -0.7)
    assert last.weight.mean().item() == pytest.approx(math.sqrt(math.pi) / math.sqrt(32), abs=1e-4)
    assert hidden.weight.std().item() == pytest.approx(math.sqrt(2) / math.sqrt(32), rel=0.1)
    assert isinstance(mlp(4, 3, 16, 1)[1], torch.nn.ReLU)


def test_weight_norm_keeps_the_initial_function():
    torch.manual_seed(0)
    plain = mlp(11, 4, 32, 2, activation="softplus", sphere_init_radius=0.5)
    torch.manual_seed(0)
    normed = mlp(11, 4, 32, 2, activation="softplus", sphere_init_radius=0.5, weight_norm=True)
    assert hasattr(normed[0], "parametrizations")
    x = torch.randn(16, 11)
    torch.testing.assert_close(normed(x), plain(x))


def test_sphere_init_gives_the_sdf_of_a_sphere():
    """sdf ~ |x| - r and gradient ~ x / |x| at initialisation. The geometric init holds in expectation over the
    weights: one width-64 network deviates by 10-20 % depending on the direction, and softplus(beta = 100) lies
    a little above ReLU near 0 (a positive bias of a few hundredths). So the test averages 16 initialisations.
    Measured with these seeds: |error| mean 0.029, max 0.091; cosine min 0.988; mean |gradient| 0.93 .. 1.16."""
    x, distance = sphere_points()
    outs = [sdf_field(seed)(x) for seed in range(16)]
    error = torch.stack([out.sdf for out in outs]).mean(0).detach() - (distance - 0.5)
    assert error.abs().mean() < 0.06 and error.abs().max() < 0.18
    gradient = torch.stack([out.gradient for out in outs]).mean(0).detach()
    cosine = (torch.nn.functional.normalize(gradient, dim=-1) * x / distance[:, None]).sum(-1)
    assert cosine.min() > 0.95  # the gradient points away from the centre
    norms = torch.stack([out.gradient.norm(dim=-1).mean() for out in outs])
    assert (norms - 1).abs().max() < 0.25 and (norms.mean() - 1).abs() < 0.1


def test_analytic_and_finite_difference_gradients_agree():
    field = sdf_field().double()
    perturb(field)
    x, _ = sphere_points(64)
    x = x.double()
    analytic = field(x)
    field.cfg.grad_type, field.cfg.finite_difference_eps = "finite_difference", 1e-6
    finite = field(x)
    torch.testing.assert_close(finite.sdf, analytic.sdf)
    torch.testing.assert_close(finite.features, analytic.features)
    torch.testing.assert_close(finite.gradient, analytic.gradient, rtol=1e-4, atol=1e-5)
    assert analytic.gradient.abs().max() > 0.1


def test_eikonal_loss_reaches_the_grid():
    field = sdf_field()
    perturb(field)
    x, _ = sphere_points(64)
    out = field(x)
    assert out.gradient.requires_grad
    ((out.gradient.norm(dim=-1) - 1) ** 2).mean().backward()
    grid = field.encoding.encoding
    assert grid.table.grad is not None and grid.table.grad.abs().sum() > 0


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_gradient_without_autograd(context):
    field = sdf_field()
    x, _ = sphere_points(32)
    expected = field(x)
    with context():
        out = field(x)
    assert out.gradient is not None and not out.gradient.requires_grad and not out.sdf.requires_grad
    torch.testing.assert_close(out.gradient, expected.gradient.detach())
    torch.testing.assert_close(field.sdf(x).detach(), expected.sdf.detach())
    assert field(x, with_grad=False).gradient is None


def test_update_step_reaches_the_grid():
    field = sdf_field(grid=HashGridConfig(**{**GRID.__dict__, "start_level": 1, "update_steps": 10}))
    grid = field.encoding.encoding
    assert grid.active_levels == 1
    field.update_step(25)
    assert grid.active_levels == 3


def test_sphere_init_needs_xyz():
    with pytest.raises(ValueError, match="include_xyz"):
        sdf_field(include_xyz=False)


@pytest.mark.parametrize("activation", ["trunc_exp", "softplus"])
def test_density_field(activation):
    torch.manual_seed(0)
    field = DensityField(DensityFieldConfig(radius=1.5, grid=GRID, feature_dim=16, density_activation=activation))
    x = (torch.rand(100, 3) * 2 - 1) * 1.5
    out = field(x)
    assert out.density.shape == (100,) and out.features.shape == (100, 16)
    assert torch.all(out.density >= 0)
    torch.testing.assert_close(field.density(x), out.density)
    out.density.sum().backward()
    assert field.encoding.encoding.table.grad.abs().sum() > 0


def test_trunc_exp_clamps_the_gradient():
    x = torch.tensor([0.0, 1.0, 20.0], requires_grad=True)
    y = trunc_exp(x)
    torch.testing.assert_close(y, x.detach().exp())
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([1.0, math.e, math.exp(15.0)]))


def test_color_field():
    torch.manual_seed(0)
    field = ColorField(ColorFieldConfig(feature_dim=13, use_normal=True))
    features = torch.randn(50, 13)
    directions = torch.nn.functional.normalize(torch.randn(50, 3), dim=-1)
    rgb = field(features, directions, normals=directions)
    assert rgb.shape == (50, 3) and torch.all((rgb > 0) & (rgb < 1))
    with pytest.raises(ValueError, match="use_normal"):
        field(features, directions)
    plain = ColorField(ColorFieldConfig(feature_dim=16, use_normal=False, sh_degree=2))
    assert plain(torch.randn(4, 16), directions[:4]).shape == (4, 3)
