"""Benchmark: a decoder head on every point of a lattice (`lrmesh.model.lattice.on_lattice`), by block size, and
the per-point way beside it (triplane sampling and the whole MLP at every point, chunks of 2^18 as before).

    python bench/lattice.py --threads 2                 # the FlexiCubes grid of instant-mesh-large (129^3)
    python bench/lattice.py --threads 2 --side 384      # OpenLRM's marching-cubes grid

Random planes (80 channels, 64 x 64) and a random 4-layer, 64-wide head (one output row, the density or SDF),
as the released presets have. Prints CPU and wall seconds per way, the ratios to the default block size, and
the largest difference between the ways' outputs.
"""

from __future__ import annotations

import argparse
import time

import torch

from lrmesh.model.decoders import mlp
from lrmesh.model.lattice import LATTICE_CHUNK, linears, on_lattice, plane_terms
from lrmesh.model.triplane import sample_triplanes, sample_triplanes_on_lattice

CHANNELS, PLANE_SIZE, HIDDEN, LAYERS = 80, 64, 64, 4
PER_POINT_CHUNK = 2**18


def timed(fn):
    cpu, wall = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=129, help="lattice points per axis")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--per-point", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the per-point way (default: for sides up to 160)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    planes = torch.randn(1, 3, CHANNELS, PLANE_SIZE, PLANE_SIZE)
    head = mlp(3 * CHANNELS, HIDDEN, 4, LAYERS)
    axis = torch.linspace(-1, 1, args.side)
    first, *rest = linears(head)
    rows = []
    with torch.no_grad():
        terms = plane_terms(sample_triplanes_on_lattice(planes, axis), first)
        for chunk in (LATTICE_CHUNK, 2**11, args.side ** 2):
            points = max(1, min(args.side, chunk // args.side)) * args.side  # what on_lattice makes of it
            out, cpu, wall = timed(lambda: on_lattice(terms, rest, chunk, rows=1))
            rows.append((f"blocks of {points} points" + (" (default)" if chunk == LATTICE_CHUNK else
                                                         " (one x-layer)" if chunk == args.side ** 2 else ""),
                         cpu, wall, out))
        if args.per_point if args.per_point is not None else args.side <= 160:
            gx, gy, gz = torch.meshgrid(axis, axis, axis, indexing="ij")
            points = torch.stack([gx, gy, gz], -1).reshape(-1, 3)

            def per_point():
                return torch.cat([head(sample_triplanes(planes, points[None, i:i + PER_POINT_CHUNK])[0])[:, :1]
                                  for i in range(0, len(points), PER_POINT_CHUNK)]).view(*(args.side,) * 3, 1)

            out, cpu, wall = timed(per_point)
            rows.append(("per point (sample + whole MLP)", cpu, wall, out))
    base = rows[0]
    print(f"{args.side}^3 lattice, {torch.get_num_threads()} threads")
    print(f"{'way':<36}{'CPU s':>8}{'wall s':>8}{'CPU x':>8}{'wall x':>8}{'max diff':>10}")
    for name, cpu, wall, out in rows:
        print(f"{name:<36}{cpu:>8.2f}{wall:>8.2f}{cpu / base[1]:>8.2f}{wall / base[2]:>8.2f}"
              f"{float((out - base[3]).abs().max()):>10.1e}")


if __name__ == "__main__":
    main()
