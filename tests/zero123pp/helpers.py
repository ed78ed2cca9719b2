"""Comparisons shared by the Zero123++ tests."""

from __future__ import annotations

import numpy as np


def assert_grid_matches(grid: np.ndarray, reference: np.ndarray) -> None:
    """The issue's bar: no value off by more than 1/255, at most 0.1 % of the values off by 1."""
    assert grid.shape == reference.shape and grid.dtype == np.uint8
    diff = np.abs(grid.astype(np.int16) - reference.astype(np.int16))
    assert diff.max() <= 1
    assert (diff > 0).mean() <= 0.001
