"""DINOv2 with registers (Oquab et al. 2024; Darcet et al. 2024), the image encoder of OpenLRM v1.1.

A plain pre-norm ViT with three differences from the Hugging Face ViT of `vit.py`:

- LayerScale: each residual branch is multiplied by a learned per-channel gamma before it is added;
- 4 register tokens, inserted right after CLS *after* the position embedding is added (they carry none), and
  dropped from the output;
- the stored position grid (37 x 37 patches, for 518 px images) is resampled to the image's patch grid with
  antialiased bicubic interpolation and no size offset (the `_reg` hub backbones).

Output: the final LayerNorm of CLS and the patch tokens, (N, 1 + (H/p)(W/p), D). OpenLRM v1.1 feeds it the
[0, 1] image without normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from lrmesh.config import EncoderConfig
from lrmesh.model.layers import MLP, Attention


class LayerScale(nn.Module):
    """x * gamma, gamma (D,) learned per channel (CaiT, Touvron et al. 2021)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Dinov2Block(nn.Module):
    """x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        d = cfg.hidden_size
        self.norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.attn = Attention(d, cfg.num_heads, qkv_bias=cfg.qkv_bias, out_bias=True)
        self.ls1 = LayerScale(d)
        self.norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.mlp = MLP(d, cfg.intermediate_size)
        self.ls2 = LayerScale(d)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class Dinov2(nn.Module):
    """images (N, 3, H, W) -> tokens (N, 1 + (H/p)(W/p), D), CLS first, registers removed."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        d, p = cfg.hidden_size, cfg.patch_size
        self.patch_size = p
        self.grid = cfg.image_size // p  # side of the stored position grid
        self.patch_embed = nn.Conv2d(3, d, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, d))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_registers, d))
        self.blocks = nn.ModuleList(Dinov2Block(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.register_tokens, std=1e-6)

    def position_embedding(self, height: int, width: int) -> Tensor:
        """Position embeddings for an H x W image -> (1, 1 + (H/p)(W/p), D): the stored grid resampled by
        antialiased bicubic interpolation with scale factors (H/p) / grid, (W/p) / grid, as the reference."""
        h, w = height // self.patch_size, width // self.patch_size
        if h == w == self.grid:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patch_pos = rearrange(patch_pos, "1 (h w) d -> 1 d h w", h=self.grid)
        patch_pos = F.interpolate(patch_pos, scale_factor=(h / self.grid, w / self.grid), mode="bicubic",
                                  antialias=True)
        if patch_pos.shape[-2:] != (h, w):
            raise RuntimeError(f"position embedding resampled to {tuple(patch_pos.shape[-2:])}, expected {(h, w)}")
        return torch.cat([cls_pos, rearrange(patch_pos, "1 d h w -> 1 (h w) d")], dim=1)

    def forward(self, images: Tensor) -> Tensor:
        n, _, height, width = images.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        x = rearrange(self.patch_embed(images), "n d h w -> n (h w) d")
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1) + self.position_embedding(height, width)
        registers = self.register_tokens.expand(n, -1, -1)
        x = torch.cat([x[:, :1], registers, x[:, 1:]], dim=1)  # (N, 1 + R + L, D)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return torch.cat([x[:, :1], x[:, 1 + registers.shape[1]:]], dim=1)
