"""Floating-point operation counts per stage, for the benchmarks' achieved GFLOP/s and TFLOP/s.

torch.utils.flop_counter.FlopCounterMode counts matrix products, convolutions and the CUDA attention kernels;
the CPU's fused attention (`_scaled_dot_product_flash_attention_for_cpu`) is added here with the same formula,
4 B H Lq Lk D (two matrix products of 2 flops per multiply-add). Element-wise work (grid_sample, activations)
is not counted, so the figures are the matrix work's rate.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_flop_count

from lrmesh.progress import Stages

_CPU_ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


@register_flop_formula(_CPU_ATTENTION, get_raw=True)
def _cpu_attention_flops(query, key, value, *args, out_val=None, **kwargs) -> int:
    return sdpa_flop_count(query.shape, key.shape, value.shape)


class CountedStages(Stages):
    """Stages that also count each stage's flops: run the work inside `with stages.counter:`."""

    def __init__(self, device: torch.device, show: bool = True):
        super().__init__(device, show)
        self.counter = FlopCounterMode(display=False)
        self.flops: dict[str, int] = {}
        self._counted = 0

    def finish(self) -> None:
        name = self._current
        super().finish()
        if name is not None:
            total = self.counter.get_total_flops()
            self.flops[name] = self.flops.get(name, 0) + total - self._counted
            self._counted = total

    def gflops_per_second(self, name: str) -> float:
        seconds = sum(r.seconds for r in self.records if r.name == name)
        return self.flops.get(name, 0) / max(seconds, 1e-9) / 1e9
