"""Every benchmark in one go on a CUDA machine (aim: under 8 minutes), one table: seconds, peak GPU memory,
achieved TFLOP/s where the work is matrix products. Run it through bench/gpu.sh.

    bench/gpu.sh            # CUDA, the released sizes
    bench/gpu.sh --dry      # the CPU, tiny sizes, seconds: tests/test_bench_gpu.py runs it so it cannot rot

A row is a function in ROWS taking the sizes (REAL or DRY) and the device and returning a Result; add one there
for a new component. In dry mode the OpenLRM row loads the openlrm-tiny fixture's release and the Zero123++ row
builds the zero123pp-tiny fixture's UNet and VAE; on CUDA they are OpenLRM base v1.1 and Zero123++ v1.2 at their
real sizes with random weights.
In dry mode the memory column is the process's peak resident set (the CPU has no allocator peak).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from flops import CountedStages  # noqa: E402  (bench/flops.py)
from train import bench as train_steps  # noqa: E402  (bench/train.py)

from lrmesh.cameras import zero123pp_cameras  # noqa: E402
from lrmesh.config import preset  # noqa: E402
from lrmesh.io.views import load_views  # noqa: E402
from lrmesh.model.lrm import LRM  # noqa: E402
from lrmesh.progress import cpu_peak_bytes  # noqa: E402
from lrmesh.reconstruct import reconstruct  # noqa: E402

MIB = 2**20
BUDGET_SECONDS = 8 * 60
ROOT = Path(__file__).resolve().parents[1]
OPENLRM_INSIDE = 0.01  # grid fraction above the density threshold, as bench/reconstruct.py's OpenLRM runs
ZERO123PP_STEPS = 2  # the second step is the row's figure (the first includes the warm-up)


@dataclass(frozen=True)
class Sizes:
    mesh_preset: str  # reconstruction presets (random weights)
    nerf_preset: str
    texture: int  # texture side for the textured rows
    nerf_mesh_resolution: int  # marching-cubes grid of the NeRF rows (256: the reference's inference default)
    fit_minutes: float | None  # NeuS fitting budget; None: fit_steps only
    fit_steps: int
    fit_overrides: tuple[str, ...]
    scene_views: int  # the NeuS benchmark scene (lrmesh synth --layout blender, seed 7, as bench/fit.py)
    scene_resolution: int
    train_steps: int  # timed training steps per stage (after a warm-up step)
    train_input: int  # input view side
    train_render: int  # supervised crop side
    train_grid: int  # stage-2 FlexiCubes grid
    openlrm: str  # an OpenLRM preset (random weights), or a release folder with its source size after a colon
    openlrm_mesh_resolution: int  # marching-cubes grid (384: OpenLRM's inference default)
    zero123pp: str  # bench/views.py sizes: "real" (sudo-ai/zero123plus-v1.2's UNet and VAE) or "tiny"
    zero123pp_dtype: torch.dtype


REAL = Sizes("instant-mesh-large", "instant-nerf-large", 1024, 256, 2.0, 20000, (), 100, 200, 3, 320, 192, 128,
             "openlrm-base-1.1", 384, "real", torch.float16)
DRY = Sizes("tiny", "tiny-nerf", 32, 24, None, 2, (
    "geometry.grid.n_levels=4", "geometry.grid.log2_hashmap_size=12", "geometry.grid.base_resolution=8",
    "geometry.grid.start_level=4", "geometry.hidden_dim=16", "color.hidden_dim=16", "color.n_hidden_layers=1",
    "render.num_samples_per_ray=16", "render.occupancy_resolution=16", "render.rays_initial=64",
    "render.rays_max=128", "render.target_samples=1024", "mesh.resolution=16"), 6, 32, 1, 64, 16, 16,
    f"{ROOT}/tests/fixtures/openlrm-tiny/v11-sep:224", 32, "tiny", torch.float32)


@dataclass
class Result:
    seconds: float
    peak_bytes: int
    flops: int | None = None  # matrix-product flops of the timed work (None: not meaningful)


def _peak(device: torch.device) -> int:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else cpu_peak_bytes()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def reconstruct_row(kind: str, texture: bool = False, precision: str = "fp32") -> Callable[[Sizes, torch.device],
                                                                                            Result]:
    def row(sizes: Sizes, device: torch.device) -> Result:
        torch.manual_seed(0)
        cfg = preset(sizes.mesh_preset if kind == "mesh" else sizes.nerf_preset)
        if kind == "nerf":
            cfg.synthesizer.mesh_resolution = sizes.nerf_mesh_resolution
        model = LRM(cfg).eval().to(device)
        model.requires_grad_(False)
        views = load_views(resources.files("lrmesh") / "assets" / "example_views.png").to(device)
        cameras = zero123pp_cameras().to(device)
        if device.type == "cuda":  # kernels and allocator warm up outside the timing
            reconstruct(model, views, cameras, precision=precision)
        stages = CountedStages(device, show=False)
        with stages.counter:
            reconstruct(model, views, cameras, texture=texture, texture_resolution=sizes.texture, stages=stages,
                        precision=precision)
        return Result(stages.total_seconds, stages.peak_bytes, sum(stages.flops.values()))
    return row


def fit_row(sizes: Sizes, device: torch.device) -> Result:
    from lrmesh.neus.config import load_fit_config
    from lrmesh.neus.fit import fit

    with tempfile.TemporaryDirectory(prefix="lrmesh-gpu-bench-") as folder:
        subprocess.run([sys.executable, "-m", "lrmesh.cli", "synth", "-o", f"{folder}/scene", "--count", "1",
                        "--layout", "blender", "--views", str(sizes.scene_views), "--resolution",
                        str(sizes.scene_resolution), "--seed", "7", "-q", "--device", device.type], check=True)
        scene = next(Path(folder, "scene").iterdir())
        overrides = [f"steps={sizes.fit_steps}", "video_frames=0", "checkpoint_every=100000", "devices=1",
                     f"accelerator={'gpu' if device.type == 'cuda' else 'cpu'}", *sizes.fit_overrides]
        if sizes.fit_minutes:
            overrides.append(f"max_minutes={sizes.fit_minutes}")
        _reset_peak(device)
        start = time.perf_counter()
        fit(scene, load_fit_config("neus", None, overrides), f"{folder}/out", progress=False)
        return Result(time.perf_counter() - start, _peak(device))


def train_row(stage: int) -> Callable[[Sizes, torch.device], Result]:
    def row(sizes: Sizes, device: torch.device) -> Result:
        name = (sizes.nerf_preset if stage == 1 else sizes.mesh_preset)
        args = argparse.Namespace(steps=sizes.train_steps, input_size=sizes.train_input, target_views=4,
                                  render_size=sizes.train_render, grid_res=sizes.train_grid, bf16=False)
        _reset_peak(device)
        seconds, peak = train_steps(stage, name, False, args, device)
        return Result(seconds * sizes.train_steps, peak)
    return row


def openlrm_row(sizes: Sizes, device: torch.device) -> Result:
    """One photo through OpenLRM (bench/reconstruct.py's photo, its surface-making density shift), loaded model
    -> mesh with vertex colours."""
    from reconstruct import OPENLRM_PHOTO, _set_density_fraction  # bench/reconstruct.py

    from lrmesh.config import openlrm_preset
    from lrmesh.model.single_view import SingleViewLRM
    from lrmesh.openlrm import load_openlrm
    from lrmesh.single_image import load_photo, prepare_photo, reconstruct_photo

    torch.manual_seed(0)
    if sizes.openlrm.startswith("openlrm-"):
        model = SingleViewLRM(openlrm_preset(sizes.openlrm)).eval()
    else:
        folder, source_size = sizes.openlrm.rsplit(":", 1)
        model = load_openlrm(folder, source_size=int(source_size))
    model = model.to(device).requires_grad_(False)
    image = prepare_photo(load_photo(OPENLRM_PHOTO), model.cfg.source_size).to(device)
    _set_density_fraction(model, image, OPENLRM_INSIDE)
    with torch.no_grad():
        if device.type == "cuda":
            reconstruct_photo(model, image, sizes.openlrm_mesh_resolution)
        stages = CountedStages(device, show=False)
        with stages.counter:
            reconstruct_photo(model, image, sizes.openlrm_mesh_resolution, stages=stages)
    return Result(stages.total_seconds, stages.peak_bytes, sum(stages.flops.values()))


def zero123pp_row(sizes: Sizes, device: torch.device) -> Result:
    """One guided Zero123++ v1.2 step (bench/views.py: the UNet's write and read passes), after a warm-up step."""
    from views import time_steps  # bench/views.py

    with torch.no_grad():  # time_steps' Stages measure its own peak
        times = time_steps(sizes.zero123pp, device, sizes.zero123pp_dtype, ZERO123PP_STEPS)
    return Result(times.per_step[-1], times.sampling.peak_bytes)


ROWS: dict[str, Callable[[Sizes, torch.device], Result]] = {
    "reconstruct mesh, vertex colours": reconstruct_row("mesh"),
    "reconstruct mesh, vertex colours, bf16": reconstruct_row("mesh", precision="bf16"),
    "reconstruct mesh, texture": reconstruct_row("mesh", texture=True),
    "reconstruct NeRF, vertex colours": reconstruct_row("nerf"),
    "reconstruct NeRF, texture": reconstruct_row("nerf", texture=True),
    "OpenLRM base, one photo": openlrm_row,
    "Zero123++ v1.2 step (random weights)": zero123pp_row,
    "fit NeuS (benchmark scene)": fit_row,
    "train stage 1 (NeRF), steps": train_row(1),
    "train stage 2 (mesh), steps": train_row(2),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="tiny sizes on the CPU, a few seconds")
    parser.add_argument("--only", nargs="*", help="run only the rows whose names contain one of these words")
    args = parser.parse_args()
    if not args.dry and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here; use --dry for the CPU smoke run", file=sys.stderr)
        return 2
    device, sizes = (torch.device("cpu"), DRY) if args.dry else (torch.device("cuda"), REAL)
    name = "CPU (dry run: tiny sizes)" if args.dry else torch.cuda.get_device_name(device)
    print(f"{name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"{'benchmark':<44}{'seconds':>10}{'peak MiB':>10}{'TFLOP/s':>10}")
    start, failed = time.perf_counter(), []
    for row_name, row in ROWS.items():
        if args.only and not any(word in row_name for word in args.only):
            continue
        try:
            r = row(sizes, device)
        except Exception as err:  # one failed row must not hide the others' figures
            failed.append(row_name)
            print(f"{row_name:<44}  failed: {type(err).__name__}: {err}", flush=True)
            continue
        rate = f"{r.flops / r.seconds / 1e12:>10.3g}" if r.flops else f"{'-':>10}"  # 3 digits: dry runs are slow
        print(f"{row_name:<44}{r.seconds:>10.2f}{r.peak_bytes / MIB:>10.0f}{rate}", flush=True)
    total = time.perf_counter() - start
    print(f"total {total:.0f} s" + ("" if args.dry or total <= BUDGET_SECONDS else
                                    f" (over the {BUDGET_SECONDS // 60}-minute budget)"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
