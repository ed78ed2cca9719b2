"""Shared by the training tests."""

from __future__ import annotations

import csv
from pathlib import Path


def logged_losses(output: Path) -> dict[int, float]:
    """step -> training loss, from every CSV log of a run's output folder (a resumed run adds a version)."""
    rows = {}
    for path in sorted(Path(output).glob("logs/version_*/metrics.csv")):
        with path.open() as f:
            rows.update({int(float(r["train/step"])): float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")})
    return rows
