"""Time FlexiCubes extraction at InstantMesh's grid resolution (128) on a sphere; not a test.

Usage: python bench/flexicubes.py [--res 128] [--radius 0.6] [--wobble 0.0] [--threads N]
--wobble adds a * sin(f x) sin(f y) sin(f z) (f = WOBBLE_FREQUENCY) to the sphere SDF for a larger, bumpier
surface (0.25 gives about 100k surface cubes at res 128; the plain radius-0.6 sphere has about 28k).
Prints the time to build the grid, to find the surface cubes and to extract (inference, then training followed
by a backward pass), with the peak resident memory of the process so far (getrusage).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from lrmesh.geometry.flexicubes import (
    FLEXI_WEIGHTS,
    flexicubes_extract,
    flexicubes_grid,
    surface_cube_mask,
)

GRID_SCALE = 2.0  # InstantMesh's grid_scale
KIB_PER_MIB = 1024  # ru_maxrss is in KiB on Linux
WOBBLE_FREQUENCY = 25.0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KIB_PER_MIB


def timed(label: str, fn):
    start = time.perf_counter()
    result = fn()
    print(f"{label:<32s} {time.perf_counter() - start:8.3f} s   peak RSS {peak_rss_mib():8.1f} MiB")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--res", type=int, default=128)
    parser.add_argument("--radius", type=float, default=0.6)
    parser.add_argument("--wobble", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, res {args.res}")
    print(f"{'baseline (imports)':<32s} {'':>8s}     peak RSS {peak_rss_mib():8.1f} MiB")

    verts, cubes = timed("grid", lambda: flexicubes_grid(args.res, GRID_SCALE))
    sdf = verts.norm(dim=-1) - args.radius
    if args.wobble:
        sdf = sdf + args.wobble * torch.sin(WOBBLE_FREQUENCY * verts).prod(dim=-1)
    surface = timed("surface mask", lambda: surface_cube_mask(sdf, cubes))
    num_surface = int(surface.sum())
    raw = torch.randn(num_surface, FLEXI_WEIGHTS, generator=torch.Generator().manual_seed(0))
    print(f"surface cubes: {num_surface} of {cubes.shape[0]}")

    mesh = timed("extract (inference)", lambda: flexicubes_extract(verts, sdf, cubes, args.res, surface, raw))
    print(f"mesh: {mesh.vertices.shape[0]} vertices, {mesh.faces.shape[0]} faces")

    verts_g, sdf_g, raw_g = (t.clone().requires_grad_() for t in (verts, sdf, raw))
    train = timed(
        "extract (training)",
        lambda: flexicubes_extract(verts_g, sdf_g, cubes, args.res, surface, raw_g, training=True),
    )
    timed("backward (training)", lambda: (train.vertices.square().sum() + train.dev_loss.mean()).backward())
    print(f"training mesh: {train.vertices.shape[0]} vertices, {train.faces.shape[0]} faces")


if __name__ == "__main__":
    main()
