"""The triplane transformer: learned plane tokens read the image tokens and become three feature planes.

LRM (Hong et al. 2024, sec. 3.2): 3 x low_res^2 learned tokens pass through blocks of cross-attention to the
image tokens, self-attention and an MLP (all pre-norm, attention without biases); a final LayerNorm and a
stride-2 transposed convolution per plane turn each token into 2x2 texels of `triplane_dim` channels.

InstantMesh's blocks use plain LayerNorms (its camera enters the encoder). LRM / OpenLRM instead condition
every LayerNorm of the blocks on the source camera's embedding (`cfg.modulation_dim` > 0): ModLN.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from lrmesh.config import TransformerConfig
from lrmesh.model.layers import MLP, Attention
from lrmesh.model.vit import modulate

# The final LayerNorm uses 1e-6 in both references (InstantMesh's and OpenLRM's TriplaneTransformer).
FINAL_NORM_EPS = 1e-6


class ModLN(nn.Module):
    """LayerNorm modulated by a conditioning vector (LRM sec. 3.2, after DiT's adaLN):
    ModLN(x, m) = LN(x) * (1 + scale) + shift, [shift, scale] = Linear(SiLU(m)) (shift first)."""

    def __init__(self, dim: int, mod_dim: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(mod_dim, 2 * dim))

    def forward(self, x: Tensor, mod: Tensor) -> Tensor:
        # x: (N, L, D); mod: (N, mod_dim)
        shift, scale = self.mlp(mod).chunk(2, dim=-1)  # (N, D) each
        return modulate(self.norm(x), shift, scale)


class TriplaneBlock(nn.Module):
    """Pre-norm cross-attention -> self-attention -> MLP; the norms are ModLN when `mod_dim` > 0."""

    def __init__(self, dim: int, cond_dim: int, num_heads: int, mlp_ratio: float, norm_eps: float,
                 mod_dim: int = 0):
        super().__init__()
        self.modulated = mod_dim > 0

        def norm() -> nn.Module:
            return ModLN(dim, mod_dim, norm_eps) if self.modulated else nn.LayerNorm(dim, eps=norm_eps)

        self.norm1 = norm()
        self.cross_attn = Attention(dim, num_heads, kv_dim=cond_dim)
        self.norm2 = norm()
        self.self_attn = Attention(dim, num_heads)
        self.norm3 = norm()
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, cond: Tensor, mod: Tensor | None = None) -> Tensor:
        # Note the keys/values of the cross-attention are the raw image tokens: no norm on `cond`.
        def norm(layer: nn.Module, h: Tensor) -> Tensor:
            return layer(h, mod) if self.modulated else layer(h)

        x = x + self.cross_attn(norm(self.norm1, x), cond)
        x = x + self.self_attn(norm(self.norm2, x))
        return x + self.mlp(norm(self.norm3, x))


class TriplaneTransformer(nn.Module):
    """image tokens (B, L, cond_dim) [+ modulation (B, modulation_dim)] -> triplanes (B, 3, triplane_dim, 2r, 2r)."""

    def __init__(self, cfg: TransformerConfig, cond_dim: int):
        super().__init__()
        self.low_res = cfg.low_res
        self.pos_embed = nn.Parameter(torch.randn(1, 3 * cfg.low_res**2, cfg.dim) * cfg.dim**-0.5)
        self.blocks = nn.ModuleList(
            TriplaneBlock(cfg.dim, cond_dim, cfg.num_heads, cfg.mlp_ratio, cfg.block_norm_eps, cfg.modulation_dim)
            for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.dim, eps=FINAL_NORM_EPS)
        self.deconv = nn.ConvTranspose2d(cfg.dim, cfg.triplane_dim, kernel_size=2, stride=2)
        self.gradient_checkpointing = False

    def forward(self, cond: Tensor, queries: Tensor | None = None, mod: Tensor | None = None) -> Tensor:
        """cond: image tokens; queries: optional (B, 3*r*r, D) added to the learned plane tokens; mod: the
        (B, modulation_dim) vector of the ModLN blocks (the source camera's embedding), when modulated."""
        return self.upsample(self.tokens(cond, queries, mod))

    def tokens(self, cond: Tensor, queries: Tensor | None = None, mod: Tensor | None = None) -> Tensor:
        """The blocks and the final LayerNorm -> (B, 3*r*r, D), plane-major then row then column."""
        b = cond.shape[0]
        x = self.pos_embed.expand(b, -1, -1)  # (B, 3*r*r, D), plane-major then row then column
        if queries is not None:
            x = x + queries
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, cond, mod, use_reentrant=False)
            else:
                x = block(x, cond, mod)
        # The output head stays fp32 under bf16/fp16 autocast: it is cheap (a LayerNorm, one 2x2 deconvolution),
        # and the triplanes it makes set the surface (on the shipped model it halves the bf16 error of the planes).
        with torch.autocast(x.device.type, enabled=False):
            return self.norm(x.float())

    def upsample(self, x: Tensor) -> Tensor:
        """Tokens (B, 3*r*r, D) -> planes (B, 3, C, 2r, 2r), one transposed convolution per plane (fp32, see
        `tokens`)."""
        with torch.autocast(x.device.type, enabled=False):
            x = rearrange(x.float(), "b (p h w) d -> (b p) d h w", p=3, h=self.low_res)
            x = self.deconv(x)  # (B*3, C, 2r, 2r)
        return rearrange(x, "(b p) c h w -> b p c h w", p=3)
