"""The image encoder: a ViT (DINO ViT-B/16 weights) whose LayerNorms are modulated by the camera.

InstantMesh conditions the encoder on each view's camera with adaptive LayerNorm (DiT, Peebles & Xie
2023): a camera embedding e gives, per layer, shift and scale for the two LayerNorms,
LN(x) * (1 + scale) + shift. The modulation heads start at zero, so an untrained model is the plain ViT.
Built with `modulated=False` it is the plain Hugging Face ViT (OpenLRM v1.0's DINO encoder, which gets the
camera in the triplane transformer instead).

Parameter names are our own; `lrmesh.checkpoints` maps the Hugging Face `ViTModel` names (used by DINO weights
and by the official InstantMesh checkpoints) onto them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from lrmesh.config import EncoderConfig
from lrmesh.model.layers import MLP, Attention

# The DINO code adds 0.1 to the target grid size before bicubic resampling of the position embeddings to
# dodge a floating-point off-by-one in the output size (facebookresearch/dino issue 8); the checkpoints were
# trained with it, so we keep it to get the same numbers.
POS_EMBED_RESAMPLE_OFFSET = 0.1


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x (N, L, D) scaled and shifted per sample by (N, D) vectors."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class ModulatedViTBlock(nn.Module):
    """Pre-norm ViT block whose two LayerNorms are modulated by the camera embedding (plain if not `modulated`)."""

    def __init__(self, cfg: EncoderConfig, modulated: bool = True):
        super().__init__()
        d = cfg.hidden_size
        self.norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.attn = Attention(d, cfg.num_heads, qkv_bias=cfg.qkv_bias, out_bias=True)
        self.norm2 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.mlp = MLP(d, cfg.intermediate_size)
        self.adaln = None
        if modulated:
            # shift/scale for norm1 and norm2 from the camera embedding; zero-initialised (see module docstring)
            self.adaln = nn.Sequential(nn.SiLU(), nn.Linear(d, 4 * d))
            nn.init.zeros_(self.adaln[1].weight)
            nn.init.zeros_(self.adaln[1].bias)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        # x: (N, L, D) tokens; cond: (N, D) camera embedding of each image (None when not modulated)
        if self.adaln is None:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        shift_attn, scale_attn, shift_mlp, scale_mlp = self.adaln(cond).chunk(4, dim=1)
        x = x + self.attn(modulate(self.norm1(x), shift_attn, scale_attn))
        return x + self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class ModulatedViT(nn.Module):
    """ViT over the patches of each view, conditioned per view on a camera embedding.

    images (N, 3, H, W) normalised, cond (N, D) -> tokens (N, 1 + (H/p)(W/p), D), CLS first. With
    `modulated=False` there are no adaLN heads and no cond: the Hugging Face ViTModel's last_hidden_state.
    """

    def __init__(self, cfg: EncoderConfig, modulated: bool = True):
        super().__init__()
        d, p = cfg.hidden_size, cfg.patch_size
        self.patch_size = p
        self.grid = cfg.image_size // p  # side of the position-embedding grid
        self.patch_embed = nn.Conv2d(3, d, kernel_size=p, stride=p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, d))
        self.blocks = nn.ModuleList(ModulatedViTBlock(cfg, modulated) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def position_embedding(self, height: int, width: int) -> Tensor:
        """Position embeddings for an H x W image -> (1, 1 + (H/p)(W/p), D), resampled bicubically if needed."""
        h, w = height // self.patch_size, width // self.patch_size
        if h == w == self.grid:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patch_pos = rearrange(patch_pos, "1 (h w) d -> 1 d h w", h=self.grid)
        factors = ((h + POS_EMBED_RESAMPLE_OFFSET) / self.grid, (w + POS_EMBED_RESAMPLE_OFFSET) / self.grid)
        patch_pos = F.interpolate(patch_pos, scale_factor=factors, mode="bicubic", align_corners=False)
        if patch_pos.shape[-2:] != (h, w):
            raise RuntimeError(f"position embedding resampled to {tuple(patch_pos.shape[-2:])}, expected {(h, w)}")
        return torch.cat([cls_pos, rearrange(patch_pos, "1 d h w -> 1 (h w) d")], dim=1)

    def forward(self, images: Tensor, cond: Tensor | None = None) -> Tensor:
        n, _, height, width = images.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        x = rearrange(self.patch_embed(images), "n d h w -> n (h w) d")
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1)
        x = x + self.position_embedding(height, width)
        for block in self.blocks:
            x = block(x, cond)
        return self.norm(x)


class ImageEncoder(nn.Module):
    """Views + cameras -> image tokens: camera embedder, input normalisation (cfg.image_mean / image_std, see
    lrmesh/normalisation.py), modulated ViT.

    images (B, V, 3, H, W) in [0, 1], cameras (B, V, 16) -> tokens (B, V * (1 + HW/p^2), D).
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        d = cfg.hidden_size
        self.vit = ModulatedViT(cfg)
        self.input_size = cfg.input_size
        self.camera_embedder = nn.Sequential(nn.Linear(cfg.camera_dim, d), nn.SiLU(), nn.Linear(d, d))
        # Not in the state dict, so made on the CPU even when the weights are built on the meta device.
        self.register_buffer("mean", torch.tensor(cfg.image_mean, device="cpu").view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.image_std, device="cpu").view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor, cameras: Tensor) -> Tensor:
        b, v = images.shape[:2]
        x = rearrange(images, "b v c h w -> (b v) c h w").float()
        if self.input_size and x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                              align_corners=False)
        x = (x - self.mean) / self.std
        cond = self.camera_embedder(rearrange(cameras, "b v c -> (b v) c"))  # (B*V, D)
        tokens = self.vit(x.to(cond.dtype), cond)  # (B*V, L, D)
        return rearrange(tokens, "(b v) l d -> b (v l) d", b=b, v=v)
