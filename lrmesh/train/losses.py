"""Training losses of the two stages (InstantMesh, Xu et al. 2024, sec. 3.3; weights in `LossConfig`).

Stage 1: L = L_mse + w_lpips L_lpips + w_mask L_mask on rendered crops (OpenLRM: + w_tv TV of the planes).
Stage 2 adds L1 depth and normal consistency on covered pixels, and the FlexiCubes regularisers: the
sign-flip cross-entropy on grid edges (Shen et al. 2023, FlexiCubes eq. 9's L_sdf), the dual-vertex deviation
L_dev, and the weight magnitude.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lrmesh.geometry.flexicubes_tables import CUBE_EDGES

def grid_edges(cubes: Tensor) -> Tensor:
    """Unique edges of a cube grid: (M, 8) vertex indices -> (E, 2), each edge once."""
    pairs = torch.tensor(CUBE_EDGES, device=cubes.device)  # (12, 2) corner slots
    edges = cubes[:, pairs].reshape(-1, 2)  # (12M, 2)
    return torch.unique(torch.sort(edges, dim=1).values, dim=0)


def sdf_sign_entropy(sdf: Tensor, edges: Tensor) -> Tensor:
    """Binary cross-entropy pushing each end of a sign-changing edge towards the other's sign (L_sdf).

    sdf (N,), edges (E, 2) -> scalar; zero when no edge changes sign."""
    ends = sdf[edges]  # (E, 2)
    flips = ends[torch.sign(ends[:, 0]) != torch.sign(ends[:, 1])]
    if flips.numel() == 0:
        return sdf.sum() * 0
    a, b = flips[:, 0], flips[:, 1]
    return (F.binary_cross_entropy_with_logits(a, (b > 0).float())
            + F.binary_cross_entropy_with_logits(b, (a > 0).float()))


def image_mse(render: Tensor, target: Tensor) -> Tensor:
    """MSE of colours mapped to [-1, 1] (the reference's convention): 4x the MSE in [0, 1]."""
    return F.mse_loss(render * 2 - 1, target * 2 - 1)


def masked_l1(render: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean over objects of each object's L1 on its covered pixels; render, target, mask (B, ..., H, W), mask
    broadcast over channels. L = 1/B sum_b sum_p m_bp |r_bp - t_bp| / sum_p m_bp (0 for an object with no
    covered pixel). Per object, so a batch split across devices (DDP) has the mean of the devices' losses."""
    covered = (mask > 0).expand_as(render).flatten(1).float()  # (B, P)
    error = (render - target).abs().flatten(1)  # (B, P)
    return _object_mean((error * covered).sum(1), covered.sum(1))


def normal_consistency(render: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean over objects of 1 - mean |cos| between rendered and target normals (B, ..., 3, H, W) on each object's
    covered pixels, mask (B, ..., 1, H, W); 0 for an object with no covered pixel. The absolute value ignores which
    way a normal points (the reference's choice)."""
    similarity = (render * target).sum(dim=-3).abs().flatten(1)  # (B, P)
    covered = (mask.squeeze(-3) > 0).flatten(1).float()  # (B, P)
    count = covered.sum(1)
    return _object_mean((count - (similarity * covered).sum(1)), count)


def _object_mean(total: Tensor, count: Tensor) -> Tensor:
    """total (B,) / count (B,) per object, 0 where count is 0, then the mean over the B objects."""
    return torch.where(count > 0, total / count.clamp(min=1), 0.0).mean()


def plane_tv(planes: Tensor) -> Tensor:
    """Total variation of triplanes (B, 3, C, H, W), OpenLRM's TVLoss: per plane, the mean squared difference
    of vertically and of horizontally adjacent texels (each over all its differences), summed, then averaged
    over the planes and the batch."""
    x = planes.flatten(0, 1)  # (B*3, C, H, W)
    vertical = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean(dim=(1, 2, 3))
    horizontal = (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean(dim=(1, 2, 3))
    return (vertical + horizontal).mean()
