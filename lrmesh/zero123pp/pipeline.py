"""Zero123++ v1.2: one image -> a 640 x 960 grid of six views, as InstantMesh runs it.

Our pipeline over diffusers' UNet2DConditionModel, AutoencoderKL and EulerAncestralDiscreteScheduler and
transformers' CLIP text and vision towers. Each step below is a method, and `trace(name, tensor)` receives the
named intermediates (the array names of the zero123pp-tiny fixture's README, which this follows section by
section):

1. condition image on white; VAE-branch and CLIP-branch pixels (pixels.py);
2. condition latent = a VAE posterior sample (raw: no scaling factor); with guidance also the posterior of an
   all-zero (mid-grey) image as the negative reference;
3. global embedding = the CLIP image embedding; text embedding of the empty prompt plus the global embedding
   times the per-token ramping coefficients ("global embedding ramping"); the negative embedding is the plain
   empty-prompt embedding;
4. Euler ancestral sampling (v-prediction, trailing timesteps) on a 4 x 120 x 80 latent canvas; each step runs
   the UNet twice: a write pass on the condition latent noised to the step's sigma, then the read pass on the
   canvas (attention.py); classifier-free guidance u + g (c - u);
5. decoding: latents / 0.75 + 0.22, then the VAE's scaling factor; pixels x 1.6; diffusers' postprocessing.

Random numbers: two CPU generators seeded with the same seed. The *condition* stream draws the condition
posterior noise, the negative posterior noise (with guidance) and each step's reference noise; the *sampler*
stream draws the initial noise and each step's ancestral noise. With seed s this gives the draws of the
reference run with torch.manual_seed(s) and torch.Generator().manual_seed(s), on any device.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from lrmesh.zero123pp.attention import ReferenceBank, install_reference_attention
from lrmesh.zero123pp.folder import Components, load_components, quiet_libraries
from lrmesh.zero123pp.pixels import PixelConfig, on_white, preprocess

# Zero123++ v1.2 pipeline (sudo-ai/zero123plus, diffusers-support/pipeline.py): `unscale_latents` and
# `unscale_image`: its latents are (z_vae * scaling_factor - 0.22) * 0.75 and its images y * 0.5 / 0.8.
LATENT_SHIFT, LATENT_SCALE = 0.22, 0.75
IMAGE_DIVISOR, IMAGE_FACTOR = 0.5, 0.8
GRID_WIDTH, GRID_HEIGHT = 640, 960  # 2 x 3 views of 320 px
LATENT_DOWNSAMPLE = 8  # the VAE's spatial factor (three down blocks halving)
PROMPT = ""  # Zero123++ is prompted with the empty string; the image enters through embeddings and attention
TRAILING = "trailing"  # InstantMesh's run.py overrides the folder's "linspace" timestep spacing

Trace = Callable[[str, Tensor], None]


def _no_trace(name: str, value: Tensor) -> None:
    pass


@dataclass
class Conditioning:
    """What the input image contributes to every step (batch B = 2 with guidance: [negative, positive])."""

    reference_latents: Tensor  # (B, 4, h/8, w/8) raw VAE posterior samples, noised at every step
    text_embeds: Tensor  # (B, 77, D) encoder hidden states of every UNet call


@dataclass
class MultiviewResult:
    grid: Image.Image  # 640 x 960 RGB, views in 3 rows x 2 columns (see lrmesh.cameras for their poses)
    latents: Tensor  # (1, 4, 120, 80) final latents, before unscaling


class Zero123pp:
    """Loaded Zero123++ v1.2 (with InstantMesh's white-background UNet when given). Load once, call per image.

    >>> mv = Zero123pp.load("zero123plus-v1.2", "diffusion_pytorch_model.bin")
    >>> grid = mv(prepared_rgba_image, steps=75, guidance=4.0, seed=42).grid
    """

    def __init__(self, components: Components, device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
        from diffusers import EulerAncestralDiscreteScheduler

        self.device = torch.device(device)
        # half precision on CUDA, float32 elsewhere unless asked
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.parts = components
        with quiet_libraries():
            for module in (components.unet, components.vae, components.text_encoder, components.vision_encoder):
                module.to(self.device, self.dtype)
        self.bank: ReferenceBank = install_reference_attention(components.unet)
        self.scheduler = EulerAncestralDiscreteScheduler.from_config(components.scheduler_config,
                                                                     timestep_spacing=TRAILING)
        self.clip_pixels = PixelConfig.from_json(components.clip_config)
        self.vae_pixels = PixelConfig.from_json(components.vae_config)

    @classmethod
    def load(cls, folder, unet_file=None, device: torch.device | str = "cpu", dtype: torch.dtype | None = None,
             say: Callable[[str], None] | None = None) -> Zero123pp:
        """From a local model folder (and InstantMesh's UNet file); `say` receives the licence notice, once."""
        return cls(load_components(folder, unet_file, say), device, dtype)

    # -------------------------------------------------------------------------------------------- conditioning
    def _to(self, x: Tensor) -> Tensor:
        return x.to(self.device, self.dtype)

    def _posterior_sample(self, pixels: Tensor, rng: torch.Generator) -> tuple[Tensor, Tensor]:
        """VAE posterior of (1, 3, H, W) pixels -> (mean, mean + std * noise), noise from `rng`."""
        posterior = self.parts.vae.encode(self._to(pixels)).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=rng, dtype=torch.float32)
        return posterior.mean, posterior.mean + posterior.std * self._to(noise)

    @torch.no_grad()
    def condition(self, image: Image.Image, guidance: float, rng: torch.Generator,
                  trace: Trace = _no_trace) -> Conditioning:
        """RGB or RGBA condition image -> Conditioning (steps 1-3 of the module docstring)."""
        rgb = on_white(image)
        trace("input_rgb", torch.from_numpy(np.asarray(rgb).copy()))
        image_vae, image_clip = preprocess(rgb, self.vae_pixels), preprocess(rgb, self.clip_pixels)
        trace("image_vae", image_vae)
        trace("image_clip", image_clip)
        cond_mean, cond_lat = self._posterior_sample(image_vae, rng)
        trace("cond_lat_mean", cond_mean)
        trace("cond_lat", cond_lat)
        global_embeds = self.parts.vision_encoder(self._to(image_clip)).image_embeds[:, None]  # (1, 1, D)
        trace("global_embeds", global_embeds)
        tokenizer = self.parts.tokenizer
        ids = tokenizer(PROMPT, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids  # (1, 77)
        trace("prompt_ids", ids)
        empty_embeds = self.parts.text_encoder(ids.to(self.device))[0]  # (1, 77, D) last hidden state
        trace("negative_prompt_embeds", empty_embeds)
        ramp = self._to(self.parts.ramping)[:, None]  # (77, 1)
        prompt_embeds = empty_embeds + global_embeds * ramp
        trace("prompt_embeds", prompt_embeds)
        if guidance <= 1:
            return Conditioning(cond_lat, prompt_embeds)
        negative_mean, negative_lat = self._posterior_sample(torch.zeros_like(image_vae), rng)
        trace("negative_lat_mean", negative_mean)
        trace("negative_lat", negative_lat)
        return Conditioning(torch.cat([negative_lat, cond_lat]), torch.cat([empty_embeds, prompt_embeds]))

    # -------------------------------------------------------------------------------------------- sampling
    def unet_output(self, canvas: Tensor, conditioning: Conditioning, t: Tensor, sigma: Tensor,
                    rng: torch.Generator, trace: Trace = _no_trace) -> Tensor:
        """One model evaluation: write pass on the noised reference, read pass on `canvas` (B, 4, h, w), scaled.

        Reference input = (L + eps sigma) / sqrt(sigma^2 + 1), eps ~ N(0, 1) from `rng`, the canvas's sigma.
        """
        unet, reference = self.parts.unet, conditioning.reference_latents
        eps = torch.randn(reference.shape, generator=rng, dtype=torch.float32)
        trace("ref_noise", eps)
        sigma = sigma.to(torch.float32)
        noisy = (reference.float() + self._to(eps).float() * sigma) / (sigma ** 2 + 1) ** 0.5
        trace("unet_ref_input", noisy)
        with self.bank.pass_("write"):
            unet(self._to(noisy), t, encoder_hidden_states=conditioning.text_embeds, return_dict=False)
        with self.bank.pass_("read"):
            out = unet(self._to(canvas), t, encoder_hidden_states=conditioning.text_embeds, return_dict=False)[0]
        trace("unet_out", out)
        return out.float()

    @torch.no_grad()
    def sample(self, conditioning: Conditioning, steps: int, guidance: float, rng: torch.Generator,
               sampler_rng: torch.Generator, progress: bool = False, trace: Trace = _no_trace) -> Tensor:
        """Euler-ancestral sampling -> (1, 4, 120, 80) float32 latents (before unscaling)."""
        from tqdm.auto import tqdm

        scheduler = self.scheduler
        scheduler.set_timesteps(steps, device=self.device)
        trace("timesteps", scheduler.timesteps)
        trace("sigmas", scheduler.sigmas)
        shape = (1, 4, GRID_HEIGHT // LATENT_DOWNSAMPLE, GRID_WIDTH // LATENT_DOWNSAMPLE)
        latents = torch.randn(shape, generator=sampler_rng, dtype=torch.float32).to(self.device)
        trace("init_noise_sigma", torch.as_tensor(float(scheduler.init_noise_sigma)))
        latents = latents * scheduler.init_noise_sigma
        trace("init_latents", latents)
        batch = conditioning.reference_latents.shape[0]
        for i, t in enumerate(tqdm(scheduler.timesteps, desc="views", unit="step", disable=not progress,
                                   file=sys.stderr)):
            canvas = scheduler.scale_model_input(torch.cat([latents] * batch), t)
            out = self.unet_output(canvas, conditioning, t, scheduler.sigmas[i], rng, trace)
            if batch == 2:
                uncond, cond = out.chunk(2)
                out = uncond + guidance * (cond - uncond)
            trace("noise_pred", out)
            latents = scheduler.step(out, t, latents, generator=sampler_rng, return_dict=False)[0]
            trace("latents_out", latents)
        return latents

    # -------------------------------------------------------------------------------------------- decoding
    @torch.no_grad()
    def decode(self, latents: Tensor, trace: Trace = _no_trace) -> Tensor:
        """(1, 4, h, w) latents -> (3, 8h, 8w) float32 RGB in [0, 1] (before 8-bit quantisation)."""
        unscaled = latents / LATENT_SCALE + LATENT_SHIFT
        trace("final_latents_unscaled", unscaled)
        vae = self.parts.vae
        decoded = vae.decode(self._to(unscaled / vae.config.scaling_factor), return_dict=False)[0]
        image = (decoded.float() / IMAGE_DIVISOR * IMAGE_FACTOR / 2 + 0.5).clamp(0, 1)  # diffusers' [-1, 1] -> [0, 1]
        trace("decoded", image)
        return image[0]

    def __call__(self, image: Image.Image, steps: int = 75, guidance: float = 4.0, seed: int = 42,
                 progress: bool = False, trace: Trace = _no_trace) -> MultiviewResult:
        """Prepared (recentred) RGBA or RGB image -> the six-view grid."""
        rng = torch.Generator("cpu").manual_seed(seed)
        sampler_rng = torch.Generator("cpu").manual_seed(seed)
        conditioning = self.condition(image, guidance, rng, trace)
        latents = self.sample(conditioning, steps, guidance, rng, sampler_rng, progress, trace)
        pixels = self.decode(latents, trace)
        return MultiviewResult(grid=to_grid_image(pixels), latents=latents)


def to_grid_image(pixels: Tensor) -> Image.Image:
    """(3, H, W) floats in [0, 1] -> 8-bit RGB image: round(x * 255) half to even, as diffusers quantises."""
    quantised = (pixels.permute(1, 2, 0).cpu() * 255).round().to(torch.uint8)
    return Image.fromarray(quantised.numpy(), "RGB")
