"""Keeping freed CPU memory in the process while one reconstruction runs (Linux with glibc; a no-op elsewhere).

Why: glibc's malloc serves every request above its mmap threshold (which adapts, up to 32 MiB) with a mapping of
its own and unmaps it when freed, and hands freed heap memory back to the kernel once more than its trim
threshold of it lies at the top. A reconstruction allocates and frees tensors of tens to hundreds of MiB again and
again (FlexiCubes' arrays over a million surface cubes, the transformer's 48 MiB MLP activations in each of its 16
blocks), and each comes back as fresh pages that the kernel faults in and zeroes 4 KiB at a time. On the 2-core CI
machine (a virtual machine, where a page the guest has not touched before costs the host a fault as well) that
was a third of FlexiCubes' time on a 2-million-face surface: 3.90 s against 2.49 s kept, and 32.3 s against
28.7 s for the whole reconstruction (bench/memory.py, means of three alternating pairs of fresh processes).

`keep_freed_memory` raises both thresholds while the work runs, so freed blocks are reused, and on the way out
sets them to the values glibc's adaptive mode settles at after large frees (32 MiB, 64 MiB) and hands the unused
memory back (`malloc_trim`). PyTorch's CPU allocator has no caching mode on Linux, and jemalloc or tcmalloc can
only be preloaded before the process starts, so this is the lever that works from inside a library call; written
here because no library offers it. Kept memory can fragment (small blocks between large free ones), so the
peak resident set can grow; bench/reconstruct.py prints it (the stress case's whole CLI stayed at 2.8 GiB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import torch

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_BYTES = 2**30  # while kept: requests up to 1 GiB come from the heap, and up to 1 GiB of free top stays
MMAP_THRESHOLD_AFTER = 32 * 2**20  # glibc's adaptive ceiling (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems)
TRIM_THRESHOLD_AFTER = 2 * MMAP_THRESHOLD_AFTER  # what the adaptive mode pairs with it

_lock = threading.Lock()
_depth = 0


@cache
def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018  (both must exist)
    except (OSError, AttributeError):
        return None
    return libc


def _set(libc: ctypes.CDLL, mmap_threshold: int, trim_threshold: int) -> None:
    libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)
    libc.mallopt(M_TRIM_THRESHOLD, trim_threshold)


@contextmanager
def keep_freed_memory(device: torch.device | str = "cpu") -> Iterator[None]:
    """Within the block, CPU memory freed by tensors is kept for the next ones (module docstring); nested and
    concurrent blocks share one setting, restored when the last ends. Nothing changes for a CUDA device, whose
    tensors PyTorch's caching allocator already reuses."""
    global _depth
    libc = _libc()
    if libc is None or torch.device(device).type != "cpu":
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            _set(libc, KEEP_BYTES, KEEP_BYTES)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _set(libc, MMAP_THRESHOLD_AFTER, TRIM_THRESHOLD_AFTER)
                libc.malloc_trim(0)
