"""Benchmark: stage times and peak memory of `lrmesh reconstruct` at a released preset, random weights.

    python bench/reconstruct.py                        # instant-mesh-large on the CPU (and CUDA if present)
    python bench/reconstruct.py --preset tiny --threads 2
    python bench/reconstruct.py --baseline             # also time the reference's whole-grid query
    python bench/reconstruct.py --inside-fraction 0.1  # a larger surface than the random weights give
    python bench/reconstruct.py --preset openlrm-base-1.1 --baseline --device cpu   # one photo, OpenLRM
    python bench/reconstruct.py --precision bf16       # also bf16: transformer speed-up, Chamfer to fp32
    python bench/reconstruct.py --checkpoint bundled --precision bf16   # the same on the bundled model

Six 320x320 views (the bundled example), vertex colours, then a texture bake of the same mesh. Peak memory is
the process's peak resident set per stage on the CPU, the allocator's peak on CUDA. With --baseline the grid
query is also run the reference's way (deformation and FlexiCubes weights on every vertex and cube of the
grid), side by side, and the ratio printed. With --precision bf16 (or fp16 on CUDA) the same views are also
reconstructed at that precision, right after the fp32 run: the encoder and transformer speed-ups and the Chamfer
distance of the mesh to the fp32 mesh (surface samples, as a fraction of the fp32 mesh's bounding-box diagonal).

OpenLRM presets (`openlrm-*`): one photo (the openlrm-tiny fixture's RGBA object) through a random-weight model
of the preset's real size, loaded model -> written PLY at mesh resolution 384: encode, transformer, grid query,
marching cubes, colours, write. With --baseline the grid is also queried OpenLRM's way (all res^3 points built
and decoded in chunks of 2^20, its `forward_grid`), side by side, and the densities compared.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from lrmesh.cameras import zero123pp_cameras
from lrmesh.checkpoints import load_model, lrmesh_to_official
from lrmesh.config import preset
from lrmesh.geometry.flexicubes import surface_cube_mask
from lrmesh.geometry.texture import bake_texture
from lrmesh.io.mesh import load_mesh, save_mesh
from lrmesh.io.views import load_views
from lrmesh.metrics import sample_surface
from lrmesh.model.lrm import LRM
from lrmesh.progress import Stages, bench_devices, cpu_peak_bytes

sys.path.insert(0, str(Path(__file__).parent))
from flops import CountedStages  # noqa: E402  (bench/flops.py, beside this script)
from lrmesh.reconstruct import reconstruct

MIB = 2**20
OPENLRM_PHOTO = Path(__file__).parents[1] / "tests" / "fixtures" / "openlrm-tiny" / "object_rgba.png"
OPENLRM_CHUNK = 2**20  # points per chunk of OpenLRM's forward_points
BUNDLED = "bundled"  # --checkpoint bundled: the small model shipped in lrmesh/assets
PEAK_PREFIX = "bench-peak-rss-kib"
# `lrmesh` in a fresh interpreter that prints its peak resident memory (Linux's VmHWM, KiB) on the way out.
CLI_WITH_PEAK = f"""
import sys
from lrmesh.cli import main
code = main(sys.argv[1:])
try:
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
    print("{PEAK_PREFIX}", hwm, file=sys.stderr)
except OSError:
    pass
sys.exit(code)
"""
SURFACE_SAMPLES = 200_000  # points per mesh for the precision Chamfer distance
DISTANCE_CHUNK = 8192  # points per block of the point-to-surface distances (bounds their memory)


def run(device: torch.device, preset_name: str, texture_resolution: int, baseline: bool,
        inside_fraction: float | None, checkpoint: str | None = None, precision: str = "fp32",
        cli: bool = False) -> None:
    torch.manual_seed(0)
    if checkpoint:
        path = resources.files("lrmesh") / "assets" / "lrmesh-small.safetensors" if checkpoint == BUNDLED \
            else checkpoint
        model, preset_name = load_model(path).to(device), str(checkpoint)
    else:
        model = LRM(preset(preset_name)).eval().to(device)
    model.requires_grad_(False)  # FlopCounterMode's module tracker trips over parameters that want gradients
    views = load_views(resources.files("lrmesh") / "assets" / "example_views.png").to(device)
    cameras = zero123pp_cameras().to(device)
    if inside_fraction is not None and model.kind == "mesh":
        _set_inside_fraction(model, views, cameras, inside_fraction)
    stages = CountedStages(device, show=True)  # stage lines on stderr as they finish
    with stages.counter:
        result = reconstruct(model, views, cameras, stages=stages)
    mesh = result.mesh
    print(f"mesh: {mesh.num_vertices} vertices, {mesh.num_faces} faces", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="lrmesh-bench-") as folder:
        stages("write .obj")
        save_mesh(mesh.to("cpu"), Path(folder) / "mesh.obj")
        stages.finish()
    if texture_resolution and mesh.num_faces:
        stages("texture")
        bake_texture(mesh, lambda p: model.synthesizer.rgb(result.planes, p), resolution=texture_resolution)
        stages.finish()
    print(f"\n{preset_name} on {device} ({torch.get_num_threads()} CPU threads): "
          f"{mesh.num_vertices} vertices, {mesh.num_faces} faces")
    print(f"{'stage':<14}{'seconds':>10}{'peak MiB':>12}{'GFLOP':>10}{'GFLOP/s':>10}{'CPU s':>10}")
    for r in stages.records:
        flops = stages.flops.get(r.name, 0)
        print(f"{r.name:<14}{r.seconds:>10.2f}{r.peak_bytes / MIB:>12.0f}{flops / 1e9:>10.1f}"
              f"{flops / 1e9 / max(r.seconds, 1e-9):>10.1f}{r.cpu_seconds:>10.2f}")
    counted = [r for r in stages.records if r.name != "texture"]
    print(f"{'total':<14}{sum(r.seconds for r in counted):>10.2f}{max(r.peak_bytes for r in counted) / MIB:>12.0f}"
          "   (loaded model -> written OBJ with vertex colours)")
    if baseline and model.kind == "mesh":
        _baseline(model, result.planes, stages, device)
    if precision != "fp32":
        _compare_precision(model, views, cameras, stages, mesh, precision, device)
    if cli and model.kind == "mesh" and not checkpoint:
        _whole_cli(model, mesh, device)


def _whole_cli(model: LRM, mesh, device: torch.device) -> None:
    """`lrmesh reconstruct` as a subprocess on these weights, saved in the official layout (a Lightning-style
    .ckpt with 'lrm_generator.' names, as the released files): wall time, peak resident memory, same mesh."""
    with tempfile.TemporaryDirectory(prefix="lrmesh-bench-") as folder:
        ckpt, out = Path(folder) / "instant_mesh_large.ckpt", Path(folder) / "mesh.obj"
        torch.save({"state_dict": lrmesh_to_official(model.to("cpu").state_dict())}, ckpt)
        model.to(device)
        command = [sys.executable, "-c", CLI_WITH_PEAK, "reconstruct", "-c", str(ckpt), "-o", str(out),
                   "--device", device.type, "--threads", str(torch.get_num_threads())]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"lrmesh reconstruct failed:\n{done.stderr}")
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = usage.ru_utime + usage.ru_stime
        # The child's own high-water mark: getrusage's ru_maxrss of a child counts the parent's memory image it
        # was forked from, which here holds a second copy of the model (and, with --baseline, the 5 GB query).
        reported = [line.split()[-1] for line in done.stderr.splitlines() if line.startswith(PEAK_PREFIX)]
        peak = int(reported[0]) * 1024 if reported else usage.ru_maxrss * 1024
        written = load_mesh(out)
    stage_lines = [line.strip() for line in done.stderr.splitlines() if line.startswith("  ")]
    same = written.num_faces == mesh.num_faces and written.num_vertices == mesh.num_vertices
    print(f"\nwhole CLI (subprocess, official-layout .ckpt): {wall:.1f} s wall, {cpu:.1f} s CPU time, peak RSS "
          f"{peak / MIB:.0f} MiB; stages: {'; '.join(stage_lines)}")
    print(f"its mesh: {written.num_vertices} vertices, {written.num_faces} faces "
          f"({'the same counts as' if same else 'DIFFERENT from'} the in-process run)")


def _compare_precision(model: LRM, views: torch.Tensor, cameras: torch.Tensor, fp32: Stages, fp32_mesh,
                       precision: str, device: torch.device) -> None:
    """Reconstruct again at `precision`, then at fp32 once more (the faster fp32 time counts, so neither warm-up
    nor the order favours `precision`); print the stage speed-ups and the mesh's Chamfer distance to fp32's."""
    stages, again = Stages(device, show=False), Stages(device, show=False)
    mesh = reconstruct(model, views, cameras, stages=stages, precision=precision).mesh
    reconstruct(model, views, cameras, stages=again)
    seconds = {r.name: min(r.seconds, s.seconds) for r, s in zip(fp32.records, again.records)}
    cpu = {r.name: min(r.cpu_seconds, s.cpu_seconds) for r, s in zip(fp32.records, again.records)}
    print(f"\n{precision} vs fp32 (same views; fp32: the faster of the runs before and after; CPU time is the "
          f"process's, steadier than wall time on a shared machine): {mesh.num_vertices} vertices, "
          f"{mesh.num_faces} faces")
    print(f"{'stage':<14}{'seconds':>10}{'peak MiB':>12}{'fp32 s':>10}{'speed-up':>10}{'CPU s':>10}{'fp32 CPU s':>12}"
          f"{'CPU speed-up':>14}")
    for r in stages.records:
        print(f"{r.name:<14}{r.seconds:>10.2f}{r.peak_bytes / MIB:>12.0f}{seconds[r.name]:>10.2f}"
              f"{seconds[r.name] / max(r.seconds, 1e-9):>9.2f}x{r.cpu_seconds:>10.2f}{cpu[r.name]:>12.2f}"
              f"{cpu[r.name] / max(r.cpu_seconds, 1e-9):>13.2f}x")
    low, high = fp32_mesh.vertices.min(0).values, fp32_mesh.vertices.max(0).values
    diagonal = float((high - low).norm())
    fp32_mesh, mesh = fp32_mesh.to("cpu"), mesh.to("cpu")
    chamfer = 0.5 * (surface_distances(sample_surface(fp32_mesh, SURFACE_SAMPLES), mesh).mean()
                     + surface_distances(sample_surface(mesh, SURFACE_SAMPLES, seed=1), fp32_mesh).mean())
    transformer = next(r for r in stages.records if r.name == "transformer")
    print(f"Chamfer({precision} mesh, fp32 mesh) = {chamfer:.3g} = {chamfer / diagonal:.2e} of the bounding-box "
          f"diagonal ({diagonal:.3f}); transformer speed-up {seconds['transformer'] / transformer.seconds:.2f}x "
          f"wall, {cpu['transformer'] / max(transformer.cpu_seconds, 1e-9):.2f}x CPU time")


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
def surface_distances(points: torch.Tensor, mesh, candidates: int = 16) -> np.ndarray:
    """Distance from each point (P, 3) to the surface of `mesh` -> (P,): exact to the nearest of the `candidates`
    triangles with the nearest centroids (so exact for meshes of small triangles near the points, as here).

    Unlike a Chamfer distance between two point samples, it has no floor from the sample spacing, so two
    nearly equal meshes score nearly 0.
    """
    corners = mesh.vertices.double().numpy()[mesh.faces.numpy()]  # (F, 3, 3)
    tree = cKDTree(corners.mean(1))
    return np.concatenate([_nearest_triangle_distances(points[i:i + DISTANCE_CHUNK].double().numpy(), corners,
                                                       tree, candidates)
                           for i in range(0, len(points), DISTANCE_CHUNK)])


def _nearest_triangle_distances(p: np.ndarray, corners: np.ndarray, tree: cKDTree, candidates: int) -> np.ndarray:
    _, near = tree.query(p, k=min(candidates, len(corners)))
    a, b, c = (corners[near.reshape(len(p), -1)][:, :, i] for i in range(3))  # (P, K, 3) each
    q = p[:, None]
    normal = np.cross(b - a, c - a)
    unit = normal / np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-30)
    foot = q - (np.einsum("pkc,pkc->pk", q - a, unit))[..., None] * unit  # projection onto the plane
    # The foot is inside the triangle when it lies on the inner side of all three edges.
    inside = np.ones(foot.shape[:2], dtype=bool)
    for u, v in ((a, b), (b, c), (c, a)):
        inside &= np.einsum("pkc,pkc->pk", np.cross(v - u, foot - u), normal) >= 0
    plane = np.linalg.norm(q - foot, axis=-1)
    edges = np.min([_segment_distance(q, u, v) for u, v in ((a, b), (b, c), (c, a))], axis=0)
    return np.where(inside, plane, edges).min(axis=1)


def _segment_distance(q: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """|q - closest point of segment uv|: t = clamp((q - u).(v - u) / |v - u|^2, 0, 1)."""
    d = v - u
    t = np.clip(np.einsum("pkc,pkc->pk", q - u, d) / np.maximum(np.einsum("pkc,pkc->pk", d, d), 1e-30), 0, 1)
    return np.linalg.norm(q - (u + t[..., None] * d), axis=-1)


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
    parser.add_argument("--checkpoint", help=f"a checkpoint instead of random weights ('{BUNDLED}': the bundled "
                                             "small model)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="also run at this precision and compare with fp32")
    parser.add_argument("--cli", action="store_true",
                        help="also run `lrmesh reconstruct` as a subprocess on these weights in the official layout")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    for device in bench_devices(args.device):
        if args.preset.startswith("openlrm-"):
            run_openlrm(device, args.preset, args.mesh_resolution, args.baseline,
                        args.inside_fraction if args.inside_fraction is not None else 0.01)
        else:
            run(device, args.preset, args.texture_resolution, args.baseline, args.inside_fraction, args.checkpoint,
                args.precision, args.cli)
    print(f"\nbenchmark wall time {time.perf_counter() - start:.0f} s, process peak RSS "
          f"{cpu_peak_bytes() / MIB:.0f} MiB")


if __name__ == "__main__":
    main()
