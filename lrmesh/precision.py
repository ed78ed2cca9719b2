"""Reduced precision for the heavy matrix work (encoder, triplane transformer): `--precision fp32|bf16|fp16`.

fp32 is the default and keeps parity with the reference. bf16 and fp16 run the encoder and the transformer
under torch.autocast: matrix products in the reduced type (on the CPU through oneDNN, which uses AVX512-BF16
where the CPU has it), LayerNorms, softmax statistics and the residual sums in fp32. The triplanes come out
as fp32, and the grid queries and the isosurface stay fp32, so the surface does not move with the rounding.
fp16 is for CUDA only: PyTorch's CPU autocast has no fast fp16 matrix path.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

from lrmesh.errors import LrmeshError

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of `precision` on `device`; LrmeshError for an unknown name or fp16 off CUDA."""
    if precision not in PRECISIONS:
        raise LrmeshError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise LrmeshError("--precision fp16 runs on CUDA only; on the CPU use bf16 (or fp32)")
    return PRECISIONS[precision]


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """A context that runs the matrix work inside it at `precision` on `device` (nothing for fp32)."""
    dtype = check_precision(precision, device)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
