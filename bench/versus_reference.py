"""Benchmark: the whole `lrmesh reconstruct` beside the reference's reconstruction, on the same weights and views.

    python bench/versus_reference.py --repo PATH/InstantMesh --reference-python PATH/venv/bin/python
    python bench/versus_reference.py ... --inside-fraction 0.27 --threads 2    # issue 17's stress case (default)

Random instant-mesh-large weights (seed 0; the SDF head shifted so `--inside-fraction` of the grid is inside, as
bench/reconstruct.py does), written in the released `.ckpt` layout, and the bundled example grid composited on
white as an RGB file (`write_rgb_grid`). The model is
then freed, and each program runs in turn as a subprocess with the same thread count: `lrmesh reconstruct` and
bench/reference_instantmesh.py (run.py's second stage) under the reference's own environment. Printed: wall time
from start to exit, CPU time, each one's own peak resident memory, the ratios, and how far apart the two meshes
are (Chamfer distance of 200k surface samples each way, over the bounding-box diagonal).

The reference's environment (CPU; its code at TencentARC/InstantMesh, e.g. commit 08822c5):
    python3 -m venv REF && REF/bin/pip install torch==2.13.0
    REF/bin/pip install numpy==1.26.4 einops==0.8.2 omegaconf transformers==4.34.1 trimesh==5.2.0 PyMCubes \\
        xatlas Pillow imageio
"""

from __future__ import annotations

import argparse
import gc
import resource
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import torch
from einops import rearrange
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from reconstruct import (CLI_WITH_PEAK, PEAK_PREFIX, SURFACE_SAMPLES, _set_inside_fraction,  # noqa: E402
                         surface_distances)

from lrmesh.cameras import zero123pp_cameras  # noqa: E402
from lrmesh.checkpoints import lrmesh_to_official  # noqa: E402
from lrmesh.config import preset  # noqa: E402
from lrmesh.io.mesh import load_mesh  # noqa: E402
from lrmesh.io.views import load_views  # noqa: E402
from lrmesh.metrics import sample_surface  # noqa: E402
from lrmesh.model.lrm import LRM  # noqa: E402

MIB = 2**20
RUNNER = Path(__file__).parent / "reference_instantmesh.py"
REFERENCE_CONFIG = "configs/instant-mesh-large.yaml"  # in the reference's checkout
REFERENCE_PEAK = "peak_rss_VmHWM="


def write_weights(folder: Path, inside_fraction: float) -> Path:
    torch.manual_seed(0)
    model = LRM(preset("instant-mesh-large")).eval().requires_grad_(False)
    views = load_views(resources.files("lrmesh") / "assets" / "example_views.png")
    _set_inside_fraction(model, views, zero123pp_cameras(), inside_fraction)
    ckpt = folder / "instant_mesh_large.ckpt"
    torch.save({"state_dict": lrmesh_to_official(model.state_dict())}, ckpt)
    return ckpt


def write_rgb_grid(folder: Path) -> Path:
    """The bundled example grid composited on white as lrmesh reads it, saved as an 8-bit RGB PNG: the file both
    programs read (the reference's run.py takes a Zero123++ output, RGB, and would read an RGBA file's colours
    under its transparent pixels as they are)."""
    views = load_views(resources.files("lrmesh") / "assets" / "example_views.png")  # (6, 3, 320, 320) on white
    grid = rearrange(views, "(n m) c h w -> (n h) (m w) c", n=3, m=2)  # the Zero123++ layout, 640 x 960
    path = folder / "views_rgb.png"
    Image.fromarray((grid.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), "RGB").save(path)
    return path


def timed(command: list[str], peak_of) -> tuple[float, float, int, str]:
    """Run command; its wall time, CPU time (user + system) and peak RSS (bytes, from its output)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{command[0]} failed:\n{done.stdout}\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, peak_of(done.stdout + done.stderr), done.stdout + done.stderr


def lrmesh_peak(output: str) -> int:
    return int(next(line.split()[-1] for line in output.splitlines() if line.startswith(PEAK_PREFIX))) * 1024


def reference_peak(output: str) -> int:
    line = next(line for line in output.splitlines() if line.startswith(REFERENCE_PEAK))
    return int(line[len(REFERENCE_PEAK):].split()[0]) * 1024  # "NNN kB"


def chamfer_over_diagonal(a, b) -> float:
    diagonal = float((a.vertices.max(0).values - a.vertices.min(0).values).norm())
    chamfer = 0.5 * (surface_distances(sample_surface(a, SURFACE_SAMPLES), b).mean()
                     + surface_distances(sample_surface(b, SURFACE_SAMPLES, seed=1), a).mean())
    return float(chamfer) / diagonal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True, type=Path, help="a checkout of TencentARC/InstantMesh")
    parser.add_argument("--reference-python", required=True, help="the Python of the reference's environment")
    parser.add_argument("--inside-fraction", type=float, default=0.27)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lrmesh-versus-") as name:
        folder = Path(name)
        grid = write_rgb_grid(folder)
        ckpt = write_weights(folder, args.inside_fraction)
        gc.collect()  # the model is gone: neither run shares the machine's memory with it
        ours_obj, theirs_obj = folder / "lrmesh.obj", folder / "reference.obj"
        ours = timed([sys.executable, "-c", CLI_WITH_PEAK, "reconstruct", str(grid), "-c", str(ckpt), "-o",
                      str(ours_obj), "--device", "cpu", "--threads", str(args.threads)], lrmesh_peak)
        print(f"lrmesh done: {ours[0]:.1f} s", file=sys.stderr, flush=True)
        theirs = timed([args.reference_python, str(RUNNER), "--repo", str(args.repo), "--config",
                        str(args.repo / REFERENCE_CONFIG), "--checkpoint", str(ckpt), "--grid", str(grid), "--out",
                        str(theirs_obj), "--threads", str(args.threads)], reference_peak)
        mesh_ours, mesh_theirs = load_mesh(ours_obj), load_mesh(theirs_obj)
    print(f"\ninstant-mesh-large, random weights, {args.inside_fraction:.0%} of the grid inside; {args.threads} "
          f"threads; the whole program, start to exit")
    print(f"{'program':<12}{'wall s':>10}{'CPU s':>10}{'peak MiB':>10}{'vertices':>12}{'faces':>12}")
    for label, (wall, cpu, peak, _), mesh in (("reference", theirs, mesh_theirs), ("lrmesh", ours, mesh_ours)):
        print(f"{label:<12}{wall:>10.1f}{cpu:>10.1f}{peak / MIB:>10.0f}{mesh.num_vertices:>12}{mesh.num_faces:>12}")
    print(f"lrmesh / reference: wall {ours[0] / theirs[0]:.3f}x, CPU {ours[1] / theirs[1]:.3f}x, "
          f"peak memory {ours[2] / theirs[2]:.3f}x")
    print(f"Chamfer(lrmesh mesh, reference mesh) = {chamfer_over_diagonal(mesh_theirs, mesh_ours):.2e} of the "
          "bounding-box diagonal")
    print("\nreference stages:", " ".join(line for line in theirs[3].splitlines() if line.startswith("time_")))


if __name__ == "__main__":
    main()
