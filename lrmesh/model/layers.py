"""Building blocks shared by the encoder and the triplane transformer."""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head attention: queries of width `dim` attend to a context of width `kv_dim` (self-attention
    when no context is given), computed with scaled_dot_product_attention (flash / memory-efficient kernels
    where available).

    With qkv_bias = out_bias = False this is torch.nn.MultiheadAttention(bias=False, batch_first=True), as
    in the triplane transformer; with both True it is the Hugging Face ViT self-attention.
    """

    def __init__(self, dim: int, num_heads: int, kv_dim: int | None = None, qkv_bias: bool = False,
                 out_bias: bool = False):
        super().__init__()
        kv_dim = kv_dim or dim
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(kv_dim, dim, bias=qkv_bias)
        self.v = nn.Linear(kv_dim, dim, bias=qkv_bias)
        self.out = nn.Linear(dim, dim, bias=out_bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        # x: (N, Lq, dim); context: (N, Lk, kv_dim), x itself for self-attention
        context = x if context is None else context
        q = rearrange(self.q(x), "n l (h d) -> n h l d", h=self.num_heads)
        k = rearrange(self.k(context), "n l (h d) -> n h l d", h=self.num_heads)
        v = rearrange(self.v(context), "n l (h d) -> n h l d", h=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, Lq, head_dim)
        return self.out(rearrange(out, "n h l d -> n l (h d)"))


class MLP(nn.Module):
    """Linear -> GELU (exact, erf) -> Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))
