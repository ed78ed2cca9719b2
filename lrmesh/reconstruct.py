"""Views in, mesh out: the inference pipeline that the CLI, the web UI and the benchmark share."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lrmesh.geometry.mesh import Mesh
from lrmesh.geometry.texture import bake_texture
from lrmesh.memory import keep_freed_memory
from lrmesh.model.lrm import LRM
from lrmesh.precision import autocast
from lrmesh.progress import Stages


@dataclass
class Reconstruction:
    mesh: Mesh  # model frame (z up), vertex colours or a texture
    planes: Tensor  # (1, 3, C, H, W) triplanes, for renders or further queries


@torch.no_grad()
def reconstruct(model: LRM, views: Tensor, cameras: Tensor, texture: bool = False, texture_resolution: int = 1024,
                stages: Stages | None = None, precision: str = "fp32") -> Reconstruction:
    """Reconstruct one object.

    Args:
        model: a loaded LRM in eval mode, on the device to use.
        views: (V, 3, 320, 320) RGB in [0, 1] on white; cameras: (V, 16) encoder cameras, same order.
        texture: bake a UV texture map (xatlas) instead of vertex colours.
        stages: receives the stage names (encode, transformer, grid query, ..., texture) for progress/timing.
        precision: fp32 (parity with the reference), bf16 or fp16 (CUDA) for the encoder and the transformer;
            see lrmesh.precision. The triplanes, grid queries and isosurface are fp32 in every case.
    """
    stages = stages or Stages(cameras.device, show=False)
    device = next(model.parameters()).device
    with keep_freed_memory(device):  # the stages' large temporaries reuse memory (lrmesh.memory)
        stages("encode")
        views, cameras = views[None].to(device), cameras[None].to(device)
        with autocast(precision, device):
            tokens = model.encoder(views, cameras)
            stages("transformer")
            planes = model.planes_from_tokens(tokens, cameras, views.shape[-2:]).float()  # (1, 3, C, H, W)
        synthesizer = model.synthesizer
        mesh = synthesizer.extract_mesh(planes, with_colors=not texture, progress=stages)
        if texture and mesh.num_faces:
            stages("texture")
            mesh = bake_texture(mesh, lambda points: synthesizer.rgb(planes, points), resolution=texture_resolution)
    stages.finish()  # after the memory is handed back, so the last stage's time includes that
    return Reconstruction(mesh=mesh, planes=planes)
