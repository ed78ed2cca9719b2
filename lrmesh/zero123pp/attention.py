"""Reference-only attention: the UNet's self-attention layers also attend to a noised condition latent.

Zero123++ (Shi et al. 2023, section 3.3) conditions on the input image by running the UNet on the noised
condition latent first (the write pass), keeping what every self-attention layer saw, and then letting each
self-attention layer of the real pass (the read pass) take its keys and values from its own tokens followed
by the stored ones. Queries stay the layer's own, so each layer keeps its token count. Cross-attention is
untouched. Attention itself is diffusers' AttnProcessor2_0 (PyTorch scaled-dot-product attention).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

SELF_ATTENTION_SUFFIX = "attn1.processor"  # diffusers' name of a transformer block's self-attention processor


@dataclass
class ReferenceBank:
    """What the write pass stored, per self-attention layer, for the one read pass that follows."""

    mode: Literal["off", "write", "read"] = "off"
    tokens: dict[str, Tensor] = field(default_factory=dict)  # layer name -> (B, h w, C) tokens it received

    @contextmanager
    def pass_(self, mode: Literal["write", "read"]):
        self.mode = mode
        try:
            yield
        finally:
            self.mode = "off"


class ReferenceAttnProcessor:
    """Self-attention that stores its input (write) or also attends to the stored tokens (read)."""

    def __init__(self, name: str, bank: ReferenceBank):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.name, self.bank, self.inner = name, bank, AttnProcessor2_0()

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, **kwargs) -> Tensor:
        context = encoder_hidden_states
        if self.bank.mode == "write":
            self.bank.tokens[self.name] = hidden_states
        elif self.bank.mode == "read":
            # (B, N, C) own tokens then (B, M, C) reference tokens -> keys / values over N + M tokens
            context = torch.cat([hidden_states, self.bank.tokens.pop(self.name)], dim=1)
        return self.inner(attn, hidden_states, context, attention_mask, temb)


def install_reference_attention(unet: torch.nn.Module) -> ReferenceBank:
    """Give every self-attention layer of a diffusers UNet a ReferenceAttnProcessor, every other attention layer
    the plain SDPA processor; return the bank they share."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    bank = ReferenceBank()
    processors = {name: ReferenceAttnProcessor(name, bank) if name.endswith(SELF_ATTENTION_SUFFIX)
                  else AttnProcessor2_0() for name in unet.attn_processors}
    unet.set_attn_processor(processors)
    return bank
