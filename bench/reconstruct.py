"""Benchmark: stage times and peak memory of `lrmesh reconstruct` at a released preset, random weights.

    python bench/reconstruct.py                        # instant-mesh-large on the CPU (and CUDA if present)
    python bench/reconstruct.py --preset tiny --threads 2
    python bench/reconstruct.py --baseline             # also time the reference's whole-grid query
    python bench/reconstruct.py --inside-fraction 0.1  # a larger surface than the random weights give
    python bench/reconstruct.py --preset openlrm-base-1.1 --baseline --device cpu   # one photo, OpenLRM

Six 320x320 views (the bundled example), vertex colours, then a texture bake of the same mesh. Peak memory is
the process's peak resident set per stage on the CPU, the allocator's peak on CUDA. With --baseline the grid
query is also run the reference's way (deformation and FlexiCubes weights on every vertex and cube of the
grid), side by side, and the ratio printed.

OpenLRM presets (`openlrm-*`): one photo (the openlrm-tiny fixture's RGBA object) through a random-weight model
of the preset's real size, loaded model -> written PLY at mesh resolution 384: encode, transformer, grid query,
marching cubes, colours, write. With --baseline the grid is also queried OpenLRM's way (all res^3 points built
and decoded in chunks of 2^20, its `forward_grid`), side by side, and the densities compared.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import torch

from lrmesh.cameras import zero123pp_cameras
from lrmesh.config import preset
from lrmesh.geometry.flexicubes import surface_cube_mask
from lrmesh.geometry.texture import bake_texture
from lrmesh.io.views import load_views
from lrmesh.model.lrm import LRM
from lrmesh.progress import Stages, bench_devices, cpu_peak_bytes
from lrmesh.reconstruct import reconstruct

MIB = 2**20
OPENLRM_PHOTO = Path(__file__).parents[1] / "tests" / "fixtures" / "openlrm-tiny" / "object_rgba.png"
OPENLRM_CHUNK = 2**20  # points per chunk of OpenLRM's forward_points


def run(device: torch.device, preset_name: str, texture_resolution: int, baseline: bool,
        inside_fraction: float | None) -> None:
    torch.manual_seed(0)
    model = LRM(preset(preset_name)).eval().to(device)
    views = load_views(resources.files("lrmesh") / "assets" / "example_views.png").to(device)
    cameras = zero123pp_cameras().to(device)
    if inside_fraction is not None and model.kind == "mesh":
        _set_inside_fraction(model, views, cameras, inside_fraction)
    stages = Stages(device, show=True)  # stage lines on stderr as they finish
    result = reconstruct(model, views, cameras, stages=stages)
    mesh = result.mesh
    print(f"mesh: {mesh.num_vertices} vertices, {mesh.num_faces} faces", file=sys.stderr)
    if texture_resolution and mesh.num_faces:
        stages("texture")
        bake_texture(mesh, lambda p: model.synthesizer.rgb(result.planes, p), resolution=texture_resolution)
        stages.finish()
    print(f"\n{preset_name} on {device} ({torch.get_num_threads()} CPU threads): "
          f"{mesh.num_vertices} vertices, {mesh.num_faces} faces")
    print(f"{'stage':<14}{'seconds':>10}{'peak MiB':>12}")
    for r in stages.records:
        print(f"{r.name:<14}{r.seconds:>10.2f}{r.peak_bytes / MIB:>12.0f}")
    no_texture = sum(r.seconds for r in stages.records if r.name != "texture")
    peak = max(r.peak_bytes for r in stages.records if r.name != "texture")
    print(f"{'total':<14}{no_texture:>10.2f}{peak / MIB:>12.0f}   (loaded model -> mesh with vertex colours)")
    if baseline and model.kind == "mesh":
        _baseline(model, result.planes, stages, device)


def _set_inside_fraction(model: LRM, views: torch.Tensor, cameras: torch.Tensor, fraction: float) -> None:
    """Offset the SDF head so that `fraction` of the grid vertices lie inside: random weights otherwise give
    an arbitrary amount of surface, and the surface size drives the cost of the later stages."""
    synth = model.synthesizer
    with torch.no_grad():
        planes = model.forward_planes(views[None], cameras[None])
        verts = synth.grid(planes.device)[0]
        sdf = torch.cat([synth.decoder.sdf(synth.features(planes, verts[i:i + 2**18]))
                         for i in range(0, len(verts), 2**18)])
        synth.decoder.net_sdf[-1].bias -= torch.quantile(sdf[::7, 0].float(), fraction)


def _baseline(model: LRM, planes: torch.Tensor, stages: Stages, device: torch.device) -> None:
    """The reference's grid query: every head on every grid vertex / cube, side by side with ours."""
    synth = model.synthesizer
    ours = next(r for r in stages.records if r.name == "grid query")
    baseline = Stages(device, show=False)
    with torch.no_grad():
        baseline("all-cubes grid query")
        fields = synth.grid_fields(planes)
        baseline.finish()
    cubes = synth.grid(planes.device)[1]
    surface = int(surface_cube_mask(fields.sdf[:, 0], cubes).sum())
    r = baseline.records[0]
    print(f"{'all cubes':<14}{r.seconds:>10.2f}{r.peak_bytes / MIB:>12.0f}   "
          f"grid query, reference style ({len(cubes)} cubes vs {surface} surface cubes)")
    print(f"ratio all-cubes / surface-only grid query: time {r.seconds / ours.seconds:.1f}x, "
          f"peak memory {r.peak_bytes / max(ours.peak_bytes, 1):.1f}x")


def run_openlrm(device: torch.device, preset_name: str, resolution: int, baseline: bool,
                inside_fraction: float) -> None:
    from lrmesh.config import openlrm_preset
    from lrmesh.io.mesh import save_mesh
    from lrmesh.model.single_view import SingleViewLRM
    from lrmesh.single_image import load_photo, prepare_photo, reconstruct_photo

    torch.manual_seed(0)
    model = SingleViewLRM(openlrm_preset(preset_name)).eval().to(device)
    image = prepare_photo(load_photo(OPENLRM_PHOTO), model.cfg.source_size).to(device)
    _set_density_fraction(model, image, inside_fraction)
    stages = Stages(device, show=True)
    cpu = CpuClock(stages)
    result = reconstruct_photo(model, image, resolution, stages=cpu)
    with tempfile.TemporaryDirectory() as folder:
        cpu("write")
        save_mesh(result.mesh.to("cpu"), Path(folder) / "mesh.ply", keep_coordinates=True)
        cpu.finish()
    mesh = result.mesh
    print(f"\n{preset_name} on {device} ({torch.get_num_threads()} CPU threads), mesh grid {resolution}^3: "
          f"{mesh.num_vertices} vertices, {mesh.num_faces} faces; load average {os.getloadavg()[0]:.1f}")
    print(f"{'stage':<16}{'seconds':>10}{'CPU s':>10}{'peak MiB':>12}")
    for r, used in zip(stages.records, cpu.seconds):
        print(f"{r.name:<16}{r.seconds:>10.2f}{used:>10.2f}{r.peak_bytes / MIB:>12.0f}")
    peak = max(r.peak_bytes for r in stages.records)
    print(f"{'total':<16}{stages.total_seconds:>10.2f}{sum(cpu.seconds):>10.2f}{peak / MIB:>12.0f}"
          "   (loaded model -> written PLY; CPU s: this process's CPU time, all threads)")
    if baseline:
        _openlrm_baseline(model, result.planes, resolution, stages, cpu.seconds, device)


class CpuClock:
    """Passes stage names on to `Stages` and also records this process's CPU time per stage: on a shared
    machine the wall time includes waiting for the cores, the CPU time does not."""

    def __init__(self, stages: Stages):
        self.stages, self.seconds, self._start = stages, [], None

    def __call__(self, name: str) -> None:
        self._lap()
        self.stages(name)
        self._start = time.process_time()

    def finish(self) -> None:
        self._lap()
        self.stages.finish()

    def _lap(self) -> None:
        if self._start is not None:
            self.seconds.append(time.process_time() - self._start)
            self._start = None


def _set_density_fraction(model, image: torch.Tensor, fraction: float) -> None:
    """Shift the density bias so that `fraction` of the grid is above the mesh threshold (random weights
    otherwise give no surface at all); measured on a 64^3 grid."""
    synth = model.synthesizer
    with torch.no_grad():
        planes = model.forward_planes(image, openlrm_camera(image.device))
        density = synth.grid_density(planes, 64).flatten()
        raw = torch.log(torch.expm1(density.double().clamp_min(1e-12))) + 1  # softplus(raw - 1) inverted
        target = 1 + torch.log(torch.expm1(torch.tensor(synth.cfg.mesh_threshold, dtype=torch.float64)))
        synth.decoder.net[-1].bias[0] += float(target - torch.quantile(raw, 1 - fraction))


def openlrm_camera(device: torch.device) -> torch.Tensor:
    from lrmesh.cameras import openlrm_source_camera

    return openlrm_source_camera().to(device)


def _openlrm_baseline(model, planes: torch.Tensor, resolution: int, stages: Stages, cpu_seconds: list[float],
                      device: torch.device) -> None:
    """OpenLRM's forward_grid: every point of the grid built, decoded in chunks of 2^20 (all four outputs)."""
    synth = model.synthesizer
    ours = next(r for r in stages.records if r.name == "grid query")
    baseline = Stages(device, show=False)
    ours_cpu = cpu_seconds[[r.name for r in stages.records].index("grid query")]
    with torch.no_grad():
        start = time.process_time()
        baseline("grid, OpenLRM")
        axis = torch.linspace(-1, 1, resolution, device=device)
        points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(1, -1, 3)
        sigma = torch.cat([synth.query(planes, points[:, i:i + OPENLRM_CHUNK]).sigma
                           for i in range(0, points.shape[1], OPENLRM_CHUNK)], dim=1)
        density = torch.nn.functional.softplus(sigma - 1).reshape(resolution, resolution, resolution)
        baseline.finish()
        baseline_cpu = time.process_time() - start
        ours_density = synth.grid_density(planes, resolution)
    r = baseline.records[0]
    print(f"{'grid, OpenLRM':<16}{r.seconds:>10.2f}{baseline_cpu:>10.2f}{r.peak_bytes / MIB:>12.0f}   "
          f"(all {resolution ** 3} points through the whole decoder)")
    print(f"ratio OpenLRM / lrmesh grid query: wall time {r.seconds / ours.seconds:.1f}x, CPU time "
          f"{baseline_cpu / ours_cpu:.1f}x, peak memory "
          f"{r.peak_bytes / max(ours.peak_bytes, 1):.1f}x; max |density difference| "
          f"{float((density - ours_density).abs().max()):.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="instant-mesh-large")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--texture-resolution", type=int, default=1024, help="0 skips the texture stage")
    parser.add_argument("--baseline", action="store_true", help="also time the whole-grid (reference) query")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all")
    parser.add_argument("--inside-fraction", type=float, default=None,
                        help="shift the random SDF so this fraction of the grid is inside (e.g. 0.1)")
    parser.add_argument("--mesh-resolution", type=int, default=384, help="OpenLRM presets: marching-cubes grid")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    for device in bench_devices(args.device):
        if args.preset.startswith("openlrm-"):
            run_openlrm(device, args.preset, args.mesh_resolution, args.baseline,
                        args.inside_fraction if args.inside_fraction is not None else 0.01)
        else:
            run(device, args.preset, args.texture_resolution, args.baseline, args.inside_fraction)
    print(f"\nbenchmark wall time {time.perf_counter() - start:.0f} s, process peak RSS "
          f"{cpu_peak_bytes() / MIB:.0f} MiB")


if __name__ == "__main__":
    main()
