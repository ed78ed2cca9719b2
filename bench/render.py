"""Time multi-view rendering (`lrmesh.render.shaded.render_views`) of a 20k-triangle mesh; not a test.

Usage: python bench/render.py [--views 32] [--resolution 320] [--threads N] [--repeat 3]

The mesh is an icosphere (20,480 triangles) of radius 0.9 with vertex colours, seen from `--views` cameras on the
Zero123++ orbit radius (4.0, fov 30), so it covers about 60 % of each view. For every device (CPU, and CUDA when
PyTorch has it) and rasterizer backend (torch, and nvdiffrast when importable on CUDA) it prints the best of
`--repeat` runs: the full render (antialiased RGBA, depth and normals: a (2R+1)^2 sample grid, shading, filter)
and the rasterizer alone at that grid size and at R, to show where the time goes. Target: 32 views at 320 px in
under 5 s on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable

import torch

from lrmesh.cameras import ZERO123PP_FOV, ZERO123PP_RADIUS, turntable_poses
from lrmesh.data.synthetic import OBJECT_RADIUS
from lrmesh.geometry.mesh import Mesh
from lrmesh.render.raster import project, rasterize
from lrmesh.render.shaded import FAR, NEAR, render_views

ICOSPHERE_SUBDIVISIONS = 5  # 20 * 4^5 = 20,480 triangles
TARGET_SECONDS = 5.0  # for 32 views at 320 px on the CPU


def icosphere_mesh(device: torch.device) -> Mesh:
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=ICOSPHERE_SUBDIVISIONS, radius=OBJECT_RADIUS)
    vertices = torch.tensor(sphere.vertices, dtype=torch.float32)
    colors = (vertices / OBJECT_RADIUS + 1) / 2  # a smooth rainbow, so colour interpolation is exercised
    return Mesh(vertices, torch.tensor(sphere.faces), vertex_colors=colors).to(device)


def best_seconds(fn: Callable[[], object], repeat: int, device: torch.device) -> float:
    fn()  # warm-up: allocator, kernels, nvdiffrast context
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def report(label: str, seconds: float, views: int) -> None:
    print(f"{label:<44s} {seconds:8.3f} s   {views / seconds:8.1f} views/s")


def bench_device(device: torch.device, backend: str, args: argparse.Namespace) -> None:
    mesh = icosphere_mesh(device)
    poses = turntable_poses(args.views, ZERO123PP_RADIUS).to(device)
    fine = 2 * args.resolution + 1

    def raster_only(size: int) -> Callable[[], object]:
        clip = project(mesh.vertices, poses, ZERO123PP_FOV, NEAR, FAR)
        return lambda: rasterize(clip, mesh.faces, size, size, backend=backend)

    name = f"{device.type}/{backend}"
    full = best_seconds(lambda: render_views(mesh, poses, ZERO123PP_FOV, args.resolution, backend=backend),
                        args.repeat, device)
    report(f"{name} render_views {args.resolution}px (full)", full, args.views)
    report(f"{name} rasterize only, {fine}px grid", best_seconds(raster_only(fine), args.repeat, device), args.views)
    report(f"{name} rasterize only, {args.resolution}px", best_seconds(raster_only(args.resolution), args.repeat,
                                                                       device), args.views)
    if device.type == "cpu" and args.views == 32 and args.resolution == 320:
        verdict = "meets" if full < TARGET_SECONDS else "MISSES"
        print(f"{name}: {verdict} the target of {TARGET_SECONDS:.0f} s for 32 views at 320 px ({full:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=320)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; {args.views} views of "
          f"{20 * 4 ** ICOSPHERE_SUBDIVISIONS} triangles at {args.resolution} px")
    runs = [(torch.device("cpu"), "torch")]
    if torch.cuda.is_available():
        runs.append((torch.device("cuda"), "torch"))
        if importlib.util.find_spec("nvdiffrast") is not None:
            runs.append((torch.device("cuda"), "nvdiffrast"))
        else:
            print("nvdiffrast: not installed, skipped")
    for device, backend in runs:
        bench_device(device, backend, args)


if __name__ == "__main__":
    main()
