"""Named stages of long work: a progress line per stage, wall time and peak memory of each.

Peak memory is the process's peak resident set (VmHWM, reset at each stage start where Linux allows) on the
CPU, and the allocator's peak on CUDA.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_RESET_PEAK_RSS = "5"  # proc(5): writing 5 to clear_refs resets the peak resident set size


def _reset_cpu_peak() -> bool:
    try:
        _CLEAR_REFS.write_text(_RESET_PEAK_RSS)
        return True
    except OSError:
        return False


def cpu_peak_bytes() -> int:
    """Peak resident set of this process since the last reset (or since start)."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class StageRecord:
    name: str
    seconds: float  # wall time
    peak_bytes: int
    cpu_seconds: float = 0.0  # CPU time of the process's threads: on a shared CPU a steadier measure of work


class Stages:
    """Call with a stage name to end the current stage and start the next; `finish()` ends the last.

    >>> stages = Stages(torch.device("cpu"), show=False)
    >>> stages("encode"); ...; stages("transformer"); ...; stages.finish()
    """

    def __init__(self, device: torch.device, show: bool = True):
        self.device = torch.device(device)
        self.show = show
        self.records: list[StageRecord] = []
        self._current: str | None = None
        self._start = 0.0
        self._cpu_start = 0.0

    def __call__(self, name: str) -> None:
        self.finish()
        self._current = name
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _reset_cpu_peak()
        if self.show:
            print(f"  {name} ...", end="", file=sys.stderr, flush=True)
        self._start, self._cpu_start = time.perf_counter(), time.process_time()

    def finish(self) -> None:
        if self._current is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = cpu_peak_bytes()
        record = StageRecord(self._current, time.perf_counter() - self._start, peak,
                             time.process_time() - self._cpu_start)
        self.records.append(record)
        if self.show:
            print(f" {record.seconds:.2f} s", file=sys.stderr, flush=True)
        self._current = None

    def abort(self) -> None:
        """End the current stage without a record (it failed): its progress line is closed."""
        if self._current is not None and self.show:
            print(" failed", file=sys.stderr, flush=True)
        self._current = None

    @property
    def total_seconds(self) -> float:
        return sum(r.seconds for r in self.records)

    @property
    def peak_bytes(self) -> int:
        return max((r.peak_bytes for r in self.records), default=0)


def bench_devices(choice: str) -> list[torch.device]:
    """The devices a benchmark's --device all|cpu|cuda asks for: the CPU, and CUDA when one is present."""
    devices = [torch.device("cpu")] if choice in ("all", "cpu") else []
    if choice in ("all", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    return devices
