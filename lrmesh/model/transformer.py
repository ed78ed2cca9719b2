"""The triplane transformer: learned plane tokens read the image tokens and become three feature planes.

LRM (Hong et al. 2024, sec. 3.2): 3 x low_res^2 learned tokens pass through blocks of cross-attention to the
image tokens, self-attention and an MLP (all pre-norm, attention without biases); a final LayerNorm and a
stride-2 transposed convolution per plane turn each token into 2x2 texels of `triplane_dim` channels.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from lrmesh.config import TransformerConfig
from lrmesh.model.layers import MLP, Attention

# The blocks' LayerNorms keep PyTorch's default epsilon; the final one uses 1e-6 (reference TriplaneTransformer).
BLOCK_NORM_EPS = 1e-5
FINAL_NORM_EPS = 1e-6


class TriplaneBlock(nn.Module):
    def __init__(self, dim: int, cond_dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.cross_attn = Attention(dim, num_heads, kv_dim=cond_dim)
        self.norm2 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.self_attn = Attention(dim, num_heads)
        self.norm3 = nn.LayerNorm(dim, eps=BLOCK_NORM_EPS)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        # Note the keys/values of the cross-attention are the raw image tokens: no norm on `cond`.
        x = x + self.cross_attn(self.norm1(x), cond)
        x = x + self.self_attn(self.norm2(x))
        return x + self.mlp(self.norm3(x))


class TriplaneTransformer(nn.Module):
    """image tokens (B, L, cond_dim) -> triplanes (B, 3, triplane_dim, 2 low_res, 2 low_res)."""

    def __init__(self, cfg: TransformerConfig, cond_dim: int):
        super().__init__()
        self.low_res = cfg.low_res
        self.pos_embed = nn.Parameter(torch.randn(1, 3 * cfg.low_res**2, cfg.dim) * cfg.dim**-0.5)
        self.blocks = nn.ModuleList(
            TriplaneBlock(cfg.dim, cond_dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.dim, eps=FINAL_NORM_EPS)
        self.deconv = nn.ConvTranspose2d(cfg.dim, cfg.triplane_dim, kernel_size=2, stride=2)
        self.gradient_checkpointing = False

    def forward(self, cond: Tensor, queries: Tensor | None = None) -> Tensor:
        """cond: image tokens; queries: optional (B, 3*r*r, D) added to the learned plane tokens."""
        b = cond.shape[0]
        x = self.pos_embed.expand(b, -1, -1)  # (B, 3*r*r, D), plane-major then row then column
        if queries is not None:
            x = x + queries
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, cond, use_reentrant=False)
            else:
                x = block(x, cond)
        # The output head stays fp32 under bf16/fp16 autocast: it is cheap (one 2x2 deconvolution), and the
        # triplanes it makes set the surface (on the shipped model it halves the bf16 error of the planes).
        with torch.autocast(x.device.type, enabled=False):
            x = self.norm(x.float())
            x = rearrange(x, "b (p h w) d -> (b p) d h w", p=3, h=self.low_res)
            x = self.deconv(x)  # (B*3, C, 2r, 2r)
        return rearrange(x, "(b p) c h w -> b p c h w", p=3)
