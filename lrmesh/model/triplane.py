"""Reading features off the triplanes (EG3D, Chan et al. 2022): project a point onto three axis-aligned
planes, sample each bilinearly, concatenate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

# For each plane, the world axes that index its (column, row): plane 0 is xy, plane 1 xz, plane 2 zy.
# (These are the EG3D plane axes after the fix of NVlabs/eg3d issue 67, as the checkpoints were trained.)
PLANE_AXES = ((0, 1), (0, 2), (2, 1))


def sample_triplanes(planes: Tensor, points: Tensor, box_warp: float = 2.0) -> Tensor:
    """Triplane features at points.

    Points are scaled by 2 / box_warp so the planes span [-box_warp/2, box_warp/2]; outside that the
    features are zero (grid_sample zero padding, align_corners False: texel centres at -1 + (2k + 1) / W).

    Args:
        planes: (B, 3, C, H, W).
        points: (B, P, 3) world coordinates.
    Returns:
        (B, P, 3*C): the features of planes 0, 1, 2 concatenated.
    """
    b, n_planes, c, h, w = planes.shape
    coords = points * (2.0 / box_warp)
    grid = torch.stack([coords[..., list(axes)] for axes in PLANE_AXES], dim=1)  # (B, 3, P, 2)
    grid = rearrange(grid, "b p n two -> (b p) 1 n two").to(planes.dtype)
    feats = F.grid_sample(planes.reshape(b * n_planes, c, h, w), grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)  # (B*3, C, 1, P)
    return rearrange(feats, "(b p) c 1 n -> b n (p c)", p=n_planes)


def sample_triplanes_on_lattice(planes: Tensor, axis: Tensor, box_warp: float = 2.0) -> list[Tensor]:
    """Each plane's features on the lattice axis x axis: what `sample_triplanes` gives at every point of the grid
    axis^3, without repeating it along the plane's normal (a grid point's plane-p feature depends only on its
    two coordinates in PLANE_AXES[p]).

    Args:
        planes: (1, 3, C, H, W).
        axis: (G,) coordinates shared by the three world axes.
    Returns:
        three (G, G, C) tensors; plane p's [m, n] is its feature at (axis[m], axis[n]) on its (column, row)
        axes PLANE_AXES[p], e.g. plane 0's [i, j] is at x = axis[i], y = axis[j].
    """
    coords = axis * (2.0 / box_warp)
    u, v = torch.meshgrid(coords, coords, indexing="ij")  # (G, G): u along the plane's column axis
    grid = torch.stack([u, v], dim=-1)[None].to(planes.dtype)  # (1, G, G, 2)
    out = []
    for p in range(planes.shape[1]):
        feats = F.grid_sample(planes[:, p], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out.append(rearrange(feats[0], "c m n -> m n c"))
    return out
