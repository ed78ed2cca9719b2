"""Benchmark: seconds per Zero123++ v1.2 diffusion step and peak memory, at the real sizes, random weights.

    python bench/views.py                           # CPU float32 and bfloat16 (and CUDA float16 if present)
    python bench/views.py --device cpu --dtype float32 --steps 2 --threads 2
    python bench/views.py --size tiny               # the zero123pp-tiny fixture's configs: a quick smoke run

One step is what `lrmesh views` does per step with guidance (the default 4.0): the write pass of the UNet on the
noised condition latents (2 x 4 x 64 x 64) and the read pass on the canvas (2 x 4 x 120 x 80) with reference
attention, then the Euler-ancestral update; the step loop is lrmesh's own (Zero123pp.sample). The VAE decode
(once per image) is timed too. The CLIP towers run once per image and are not built here (their sizes are below,
as facts). The first step includes the warm-up; with --steps 2 the second is printed on its own.

Real sizes (sudo-ai/zero123plus-v1.2, read from its module listing and parameter counts as published in
SoarCraft/Stable123Keypoints zero123plus_model_structure.md; the UNet and VAE are Stable Diffusion 2's):
UNet 865,910,724 parameters, VAE 83,653,863, CLIP text tower 340,387,840 (hidden 1024, 23 layers, MLP 4096),
CLIP vision tower 632,076,800 (ViT-H/14: hidden 1280, 32 layers, MLP 5120, projection 1024). The configs
below rebuild the UNet and the VAE; the script checks their parameter counts against these numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lrmesh.progress import StageRecord, Stages, bench_devices
from lrmesh.zero123pp.folder import Components, quiet_libraries
from lrmesh.zero123pp.pipeline import Conditioning, Zero123pp

MIB = 2**20
TINY = Path(__file__).parents[1] / "tests" / "fixtures" / "zero123pp-tiny" / "zero123plus-v1.2-tiny"
REAL_UNET = dict(  # Stable Diffusion 2 (v) UNet, as in zero123plus-v1.2/unet
    sample_size=96, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True, norm_num_groups=32)
REAL_VAE = dict(  # the Stable Diffusion VAE, as in zero123plus-v1.2/vae
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    sample_size=768, scaling_factor=0.18215)
REAL_PARAMETERS = {"unet": 865_910_724, "vae": 83_653_863}
REAL_TEXT_WIDTH = 1024  # CLIP text hidden size = UNet cross-attention width
REAL_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                      prediction_type="v_prediction", steps_offset=1, timestep_spacing="linspace")


def build(size: str) -> tuple[Components, int]:
    """Random-weight UNet and VAE (real or tiny configs), CLIP towers left out; and the text width."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    with quiet_libraries():
        if size == "real":
            unet, vae, width, scheduler = UNet2DConditionModel(**REAL_UNET), AutoencoderKL(**REAL_VAE), \
                REAL_TEXT_WIDTH, REAL_SCHEDULER
            for name, module in (("unet", unet), ("vae", vae)):
                count = sum(p.numel() for p in module.parameters())
                assert count == REAL_PARAMETERS[name], f"{name}: {count} parameters, the real one has " \
                                                       f"{REAL_PARAMETERS[name]}"
        else:
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(TINY / "unet"))
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(TINY / "vae"))
            width = unet.config.cross_attention_dim
            scheduler = json.loads((TINY / "scheduler" / "scheduler_config.json").read_text())
    for module in (unet, vae):
        module.eval().requires_grad_(False)
    unused = torch.nn.Identity()  # the CLIP towers: not part of a step
    components = Components(unet=unet, vae=vae, text_encoder=unused, vision_encoder=unused, tokenizer=None,
                            scheduler_config=scheduler, clip_config=_pixels(224), vae_config=_pixels(512),
                            ramping=torch.ones(77))
    return components, width


def _pixels(edge: int) -> dict:
    return {"size": {"shortest_edge": edge}, "crop_size": {"height": edge, "width": edge}, "image_mean": 0.5,
            "image_std": 0.5}


@dataclass
class StepTimes:
    per_step: list[float]  # seconds of each diffusion step (the first includes the warm-up)
    sampling: StageRecord  # all steps: seconds and peak memory
    decoding: StageRecord  # the VAE decode


def time_steps(size: str, device: torch.device, dtype: torch.dtype, steps: int) -> StepTimes:
    """`steps` guided diffusion steps and one VAE decode on random-weight components (`build`)."""
    components, width = build(size)
    mv = Zero123pp(components, device, dtype)
    rng = torch.Generator().manual_seed(0)
    conditioning = Conditioning(  # guidance on: batch 2 (negative, positive), as `lrmesh views` runs
        reference_latents=torch.randn(2, 4, 64, 64, generator=rng).to(device, dtype),
        text_embeds=torch.randn(2, 77, width, generator=rng).to(device, dtype))
    stages = Stages(device, show=False)  # peak memory per stage: resident set on the CPU, allocator on CUDA
    marks = []

    def stamp(name: str, value: torch.Tensor) -> None:
        if name in ("init_latents", "latents_out"):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            marks.append(time.perf_counter())

    stages("steps")
    latents = mv.sample(conditioning, steps, 4.0, rng, torch.Generator().manual_seed(0), trace=stamp)
    stages("decode")
    mv.decode(latents)
    stages.finish()
    sampling, decoding = stages.records
    return StepTimes([b - a for a, b in zip(marks, marks[1:])], sampling, decoding)


def run(size: str, device: torch.device, dtype: torch.dtype, steps: int) -> None:
    t = time_steps(size, device, dtype, steps)
    name = str(dtype).removeprefix("torch.")
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    print(f"{size:<5} {device.type:<5} {name:<9} step(s) {', '.join(f'{s:.1f}' for s in t.per_step)} s"
          f"  (peak {t.sampling.peak_bytes / MIB:.0f} MiB{threads});  VAE decode {t.decoding.seconds:.1f} s"
          f"  (peak {t.decoding.peak_bytes / MIB:.0f} MiB)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("real", "tiny"), default="real")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all")
    parser.add_argument("--dtype", choices=("all", "float32", "bfloat16", "float16"), default="all",
                        help="all: float32 and bfloat16 on the CPU, float16 on CUDA")
    parser.add_argument("--steps", type=int, default=1, help="diffusion steps to time (the first includes warm-up)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(" ".join(sys.argv), file=sys.stderr)
    for device in bench_devices(args.device):
        dtypes = {"cpu": ("float32", "bfloat16"), "cuda": ("float16",)}[device.type]
        for dtype in dtypes if args.dtype == "all" else (args.dtype,):
            run(args.size, device, getattr(torch, dtype), args.steps)


if __name__ == "__main__":
    main()
