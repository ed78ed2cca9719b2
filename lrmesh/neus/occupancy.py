"""Occupancy grid that lets the ray marcher skip empty space (Instant-NGP, Mueller et al. 2022, sec. 5.2 and app. E).

Semantics of nerfacc's `OccGridEstimator` (one level, an axis-aligned cube), as instant-nsr-pl drives it:
every `n` steps, evaluate the field at one jittered point in each chosen cell (all cells during warmup, afterwards
a quarter of the cells at random plus up to as many occupied ones), keep an exponential moving maximum
value <- max(decay * value, new), and mark a cell occupied when value > min(mean of all values, occ_thre).

Two choices differ from nerfacc: the grid starts all occupied (nerfacc starts empty and relies on an update before
the first render), and an update that would leave no cell occupied keeps the previous binary grid instead, with
a warning, so training never silently renders nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

EvalFn = Callable[[Tensor], Tensor]  # points (N, 3) -> occupancy (N,) or (N, 1): alpha for NeuS, sigma * dt for NeRF

EMA_DECAY = 0.95  # nerfacc / instant-nsr-pl default
# After warmup, each update visits cells / RANDOM_CELL_FRACTION random cells and as many occupied ones (nerfacc).
RANDOM_CELL_FRACTION = 4
EVAL_CHUNK = 65536  # points per eval_fn call, bounding memory on a 128^3 grid (2M cells)


class OccupancyGrid(nn.Module):
    """Binary occupancy of resolution^3 cells over the cube [-radius, radius]^3; holds buffers only.

    Use `update(step, eval_fn, occ_thre)` once per training step and pass `grid.occupied` to
    `lrmesh.neus.rendering.uniform_samples`. The state dict (values and binary grid, plus radius and resolution,
    checked on load) round-trips, so a resumed run keeps its grid.
    """

    def __init__(self, radius: float, resolution: int = 128, ema_decay: float = EMA_DECAY):
        super().__init__()
        self.radius = float(radius)
        self.resolution = int(resolution)
        self.ema_decay = float(ema_decay)
        self.n_cells = self.resolution**3
        self.register_buffer("values", torch.zeros(self.n_cells))  # (res^3,) EMA of the occupancy, x-major
        self.register_buffer("binary", torch.ones(self.resolution, self.resolution, self.resolution, dtype=torch.bool))
        self._warned_empty = False

    @property
    def cell_size(self) -> float:
        return 2 * self.radius / self.resolution

    def occupied(self, points: Tensor) -> Tensor:
        """Whether the cell holding each point (N, 3) is occupied -> (N,) bool; points outside the cube are not."""
        inside = (points.abs() <= self.radius).all(dim=-1)
        ijk = torch.floor((points + self.radius) / self.cell_size).long().clamp(0, self.resolution - 1)
        return self.binary[ijk[:, 0], ijk[:, 1], ijk[:, 2]] & inside

    def occupied_fraction(self) -> float:
        return self.binary.float().mean().item()

    def cell_points(self, cells: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One point drawn uniformly inside each cell (N,) of flat index (i res + j) res + k -> (N, 3)."""
        res = self.resolution
        ijk = torch.stack([cells // (res * res), (cells // res) % res, cells % res], dim=-1)  # (N, 3)
        jitter = torch.rand(ijk.shape, generator=generator, device=cells.device, dtype=self.values.dtype)
        return -self.radius + (ijk.to(self.values.dtype) + jitter) * self.cell_size

    def _cells_to_visit(self, warmup: bool, generator: torch.Generator | None) -> Tensor:
        device = self.values.device
        if warmup:
            return torch.arange(self.n_cells, device=device)
        n = self.n_cells // RANDOM_CELL_FRACTION
        uniform = torch.randint(self.n_cells, (n,), generator=generator, device=device)
        occupied = torch.nonzero(self.binary.flatten())[:, 0]
        if occupied.shape[0] > n:
            occupied = occupied[torch.randint(occupied.shape[0], (n,), generator=generator, device=device)]
        return torch.cat([uniform, occupied])

    @torch.no_grad()
    def update(self, step: int, eval_fn: EvalFn, occ_thre: float = 0.01, warmup_steps: int = 256, n: int = 16,
               generator: torch.Generator | None = None) -> bool:
        """Refresh the grid if `step` is a multiple of `n`; returns whether it did.

        Steps before `warmup_steps` evaluate every cell, later ones a random subset plus the occupied cells.
        `eval_fn` runs without gradients on chunks of `EVAL_CHUNK` points.
        """
        if step % n != 0:
            return False
        cells = self._cells_to_visit(step < warmup_steps, generator)  # (N,), may repeat a cell
        points = self.cell_points(cells, generator)
        occupancy = torch.cat([eval_fn(chunk).reshape(-1) for chunk in points.split(EVAL_CHUNK)])
        occupancy = occupancy.to(self.values.dtype)
        fresh = torch.maximum(self.values[cells] * self.ema_decay, occupancy)
        # amax over repeated cells: each cell decays once and keeps its largest new value, deterministically
        self.values.scatter_reduce_(0, cells, fresh, reduce="amax", include_self=False)
        threshold = torch.clamp(self.values.mean(), max=occ_thre)
        binary = (self.values > threshold).view_as(self.binary)
        if binary.any():
            self.binary.copy_(binary)
        elif not self._warned_empty:
            warnings.warn(f"occupancy update at step {step} marked no cell occupied (max value "
                          f"{self.values.max().item():.3g}, threshold {threshold.item():.3g}); keeping the previous "
                          "grid. The field may have collapsed to empty space.", RuntimeWarning, stacklevel=2)
            self._warned_empty = True
        return True

    def get_extra_state(self) -> dict[str, Any]:
        return {"radius": self.radius, "resolution": self.resolution}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state != self.get_extra_state():
            raise ValueError(f"occupancy grid checkpoint is for {state}, this grid is {self.get_extra_state()}")
