"""MLP heads that turn triplane features into field values (EG3D's OSGDecoder, with ReLU as InstantMesh)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lrmesh.config import SynthesizerConfig

# 12 beta (one per cube edge) + 8 alpha (one per cube corner) + 1 gamma, in that column order (FlexiCubes).
FLEXI_WEIGHTS = 21
CUBE_CORNERS = 8
# Scales the raw FlexiCubes weights so they start near zero (reference: decoder output * 0.1).
FLEXI_WEIGHT_SCALE = 0.1
# Colours go through sigmoid * (1 + 2 eps) - eps so that 0 and 1 are reachable (Mip-NeRF).
COLOR_PAD = 1e-3


def mlp(in_dim: int, hidden: int, out_dim: int, num_layers: int) -> nn.Sequential:
    """Linear/ReLU stack with `num_layers` linear layers and no activation after the last."""
    dims = [in_dim] + [hidden] * (num_layers - 1)
    layers: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(dims[-1], out_dim))
    for m in layers:
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


def padded_sigmoid(x: Tensor) -> Tensor:
    return torch.sigmoid(x) * (1 + 2 * COLOR_PAD) - COLOR_PAD


@dataclass
class NerfSample:
    sigma: Tensor  # (..., 1) raw density, before the softplus(x - 1) activation
    rgb: Tensor  # (..., 3)


class NerfDecoder(nn.Module):
    """features (..., 3C) -> raw density and colour (one MLP, 1 + 3 outputs)."""

    def __init__(self, feat_dim: int, cfg: SynthesizerConfig):
        super().__init__()
        self.net = mlp(feat_dim, cfg.hidden_dim, 1 + 3, cfg.num_layers)

    def forward(self, features: Tensor) -> NerfSample:
        out = self.net(features)
        return NerfSample(sigma=out[..., :1], rgb=padded_sigmoid(out[..., 1:]))


class MeshDecoder(nn.Module):
    """Four heads on triplane features: SDF, colour and vertex deformation per point, and the FlexiCubes
    weights per cube from the features of its 8 corners."""

    def __init__(self, feat_dim: int, cfg: SynthesizerConfig):
        super().__init__()
        h, n = cfg.hidden_dim, cfg.num_layers
        self.net_sdf = mlp(feat_dim, h, 1, n)
        self.net_rgb = mlp(feat_dim, h, 3, n)
        self.net_deformation = mlp(feat_dim, h, 3, n)
        self.net_weight = mlp(CUBE_CORNERS * feat_dim, h, FLEXI_WEIGHTS, n)

    def sdf(self, features: Tensor) -> Tensor:
        return self.net_sdf(features)  # (..., 1), negative inside

    def deformation(self, features: Tensor) -> Tensor:
        return self.net_deformation(features)  # (..., 3) raw, before tanh scaling

    def rgb(self, features: Tensor) -> Tensor:
        return padded_sigmoid(self.net_rgb(features))  # (..., 3)

    def weights(self, corner_features: Tensor) -> Tensor:
        """corner_features (..., 8, 3C), corners in FlexiCubes order -> raw weights (..., 21)."""
        return self.net_weight(corner_features.flatten(-2)) * FLEXI_WEIGHT_SCALE
