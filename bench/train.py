"""Benchmark: training steps per second and peak memory of stage 1 (NeRF) and stage 2 (mesh) at the large preset,
batch 1, with and without gradient checkpointing, side by side.

    python bench/train.py                                   # CPU (and CUDA if present), CPU-sized renders
    python bench/train.py --device cuda --render-size 192 --grid-res 128   # the reference's training sizes
    python bench/train.py --preset-suffix base --steps 3

One step = encoder + transformer + rendering the supervision views + losses + backward + AdamW update, on a
random batch of the shapes the data loader produces (6 input views, `--target-views` supervised crops).
On the CPU the reference's sizes (192 px crops x 10 views x 128 samples per ray, a 128^3 FlexiCubes grid) take
minutes per step and tens of GiB, so the defaults there are smaller; they are printed with the results.
Peak memory: the process's peak resident set per configuration on the CPU, the allocator's peak on CUDA.
"""

from __future__ import annotations

import argparse
import time

import torch

from lrmesh.cameras import intrinsics_matrix, orbit_poses
from lrmesh.progress import Stages, bench_devices
from lrmesh.train.config import TrainConfig
from lrmesh.train.data import encoder_camera
from lrmesh.train.module import ReconstructionModule

MIB = 2**20


def random_batch(views: int, targets: int, input_size: int, render_size: int) -> dict:
    c2w = orbit_poses([30.0 + 60 * i for i in range(views + targets)],
                      [20.0 if i % 2 == 0 else -10.0 for i in range(views + targets)], 4.0)
    k = intrinsics_matrix(30.0)
    return {
        "input_images": torch.rand(1, views, 3, input_size, input_size),
        "input_cameras": torch.stack([encoder_camera(c2w[i], k) for i in range(views)])[None],
        "target_images": torch.rand(1, views + targets, 3, render_size, render_size),
        "target_alphas": (torch.rand(1, views + targets, 1, render_size, render_size) > 0.5).float(),
        "target_depths": torch.rand(1, views + targets, 1, render_size, render_size) + 3.5,
        "target_normals": torch.nn.functional.normalize(torch.randn(1, views + targets, 3, render_size, render_size),
                                                        dim=2),
        "target_c2w": c2w[None],
        "target_intrinsics": k.expand(views + targets, 3, 3)[None],
    }


def bench(stage: int, model_preset: str, checkpointing: bool, args: argparse.Namespace, device: torch.device) -> tuple:
    torch.manual_seed(0)
    model = {"synthesizer": {"grid_res": args.grid_res}} if stage == 2 else {}
    cfg = TrainConfig(stage=stage, model_preset=model_preset, model=model, gradient_checkpointing=checkpointing)
    cfg.loss.lpips = 0.0
    module = ReconstructionModule(cfg).to(device).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5)
    batch = {k: v.to(device) for k, v in random_batch(6, args.target_views, args.input_size, args.render_size).items()}
    stages = Stages(device, show=False)
    times = []
    for step in range(args.steps + 1):  # the first step warms up and is not timed
        if step == 1:
            stages("steps")
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = sum(module.compute_losses(module(batch), batch).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - start)
    stages.finish()
    return sum(times) / len(times), stages.records[0].peak_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset-suffix", default="large", choices=("large", "base"))
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration (after one warm-up)")
    parser.add_argument("--input-size", type=int, default=320)
    parser.add_argument("--render-size", type=int, default=None, help="supervised crop side (default: 192 CUDA, 32 CPU)")
    parser.add_argument("--grid-res", type=int, default=None, help="stage-2 FlexiCubes grid (default: 128 CUDA, 48 CPU)")
    parser.add_argument("--target-views", type=int, default=4)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (as the released training configs)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for device in bench_devices(args.device):
        run_args = argparse.Namespace(**vars(args))
        cuda = device.type == "cuda"
        run_args.render_size = args.render_size or (192 if cuda else 32)
        run_args.grid_res = args.grid_res or (128 if cuda else 48)
        print(f"\n{device} ({torch.get_num_threads()} CPU threads): batch 1, 6 input views at {args.input_size} px, "
              f"{6 + args.target_views} supervised views at {run_args.render_size} px, stage-2 grid "
              f"{run_args.grid_res}^3, {'bf16' if args.bf16 else 'fp32'}")
        print(f"{'stage':<28}{'checkpointing':>14}{'steps/s':>10}{'s/step':>10}{'peak MiB':>10}")
        for stage, kind in ((1, "nerf"), (2, "mesh")):
            name = f"instant-{kind}-{args.preset_suffix}"
            results = {}
            for checkpointing in (False, True):
                seconds, peak = bench(stage, name, checkpointing, run_args, device)
                results[checkpointing] = (seconds, peak)
                print(f"{f'{stage} ({name})':<28}{'on' if checkpointing else 'off':>14}{1 / seconds:>10.3f}"
                      f"{seconds:>10.2f}{peak / MIB:>10.0f}")
            (off_s, off_m), (on_s, on_m) = results[False], results[True]
            print(f"{'  checkpointing on / off':<28}{'':>14}{'':>10}{on_s / off_s:>9.2f}x{on_m / max(off_m, 1):>9.2f}x")


if __name__ == "__main__":
    main()
