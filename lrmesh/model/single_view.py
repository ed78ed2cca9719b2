"""The single-image LRM of OpenLRM (Hong et al. 2024, LRM; He & Wang 2023, OpenLRM v1.0 / v1.1).

photo (N, 3, S, S) in [0, 1] -> plain encoder (DINO ViT in v1.0, DINOv2 with registers in v1.1) -> image
tokens; the canonical source camera (16 numbers) -> camera embedder -> the vector that modulates every
LayerNorm of the triplane transformer (ModLN) -> triplanes -> the triplane NeRF of `NerfSynthesizer`.

Everything but the encoder variant, the camera embedder and the modulated norms is InstantMesh's code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lrmesh.config import SingleViewConfig
from lrmesh.errors import ConfigError
from lrmesh.model.dinov2 import Dinov2
from lrmesh.model.synthesizers import NerfSynthesizer
from lrmesh.model.transformer import TriplaneTransformer
from lrmesh.model.vit import ModulatedViT

CAMERA_DIM = 16  # 12 pose numbers + fx, fy, cx, cy (cameras.encoder_cameras)


class SingleViewLRM(nn.Module):
    def __init__(self, cfg: SingleViewConfig):
        super().__init__()
        if cfg.transformer.modulation_dim != cfg.camera_embed_dim:
            raise ConfigError(f"transformer.modulation_dim ({cfg.transformer.modulation_dim}) must equal "
                              f"camera_embed_dim ({cfg.camera_embed_dim}): the camera embedding modulates the blocks")
        if cfg.synthesizer.kind != "nerf":
            raise ConfigError("the single-image LRM renders a NeRF: synthesizer.kind must be 'nerf'")
        self.cfg = cfg
        enc = cfg.encoder
        self.encoder = Dinov2(enc) if enc.architecture == "dinov2" else ModulatedViT(enc, modulated=False)
        ce = cfg.camera_embed_dim
        self.camera_embedder = nn.Sequential(nn.Linear(CAMERA_DIM, ce), nn.SiLU(), nn.Linear(ce, ce))
        self.transformer = TriplaneTransformer(cfg.transformer, cond_dim=enc.hidden_size)
        self.synthesizer = NerfSynthesizer(cfg.synthesizer, cfg.transformer.triplane_dim)

    @property
    def kind(self) -> str:
        return "nerf"  # its synthesizer; the training module picks its render path by this

    def encode(self, images: Tensor) -> Tensor:
        """images (N, 3, S, S) in [0, 1] -> tokens (N, 1 + (S/p)^2, De): normalised as the release expects
        (v1.0: x * 2 - 1; v1.1: unchanged), CLS first."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, S, S), got {tuple(images.shape)}")
        # no buffers: the whole state is parameters, so a loader can build the model on the meta device
        mean = torch.tensor(self.cfg.encoder.image_mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.cfg.encoder.image_std, device=images.device).view(1, 3, 1, 1)
        return self.encoder((images - mean) / std)

    def transformer_tokens(self, tokens: Tensor, cameras: Tensor) -> Tensor:
        """Image tokens (N, L, De) and source cameras (N, 16) -> transformer output (N, 3 r^2, Dt)."""
        return self.transformer.tokens(tokens, mod=self.camera_embedder(cameras))

    def forward_planes(self, images: Tensor, cameras: Tensor) -> Tensor:
        """images (N, 3, S, S) in [0, 1], source cameras (N, 16) -> triplanes (N, 3, C, 2r, 2r)."""
        if cameras.shape != (images.shape[0], CAMERA_DIM):
            raise ValueError(f"cameras must be ({images.shape[0]}, {CAMERA_DIM}), got {tuple(cameras.shape)}")
        return self.transformer.upsample(self.transformer_tokens(self.encode(images), cameras))
