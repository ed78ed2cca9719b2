"""lrmesh.memory.keep_freed_memory: freed CPU tensors' memory is reused inside the block, handed back after it.

Measured by the page faults of filling a fresh tensor of 48 MiB after one of 64 MiB was freed (both more than
glibc's 32 MiB mmap ceiling): served by a new mapping it faults in every 4 KiB page; carved from the freed one,
kept in the process, it faults in almost none.
"""

from __future__ import annotations

import resource

import pytest
import torch

from lrmesh import memory

pytestmark = pytest.mark.skipif(memory._libc() is None, reason="glibc only")

MIB_PAGES = 256  # 4 KiB pages per MiB
FREED_MIB, NEXT_MIB = 64, 48


def faults_of_a_fresh_tensor(mib: int) -> int:
    """Minor page faults while a new float tensor of `mib` MiB is allocated, filled and freed."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(mib * 2**18, dtype=torch.float32).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def faults_after_a_free(tries: int = 3) -> int:
    """The fewest faults of the NEXT_MIB tensor over a few tries. (A long-lived process's heap holds free blocks
    whose pages an earlier block's malloc_trim handed back; a try may land in one and fault it in once.)"""
    counts = []
    for _ in range(tries):
        faults_of_a_fresh_tensor(FREED_MIB)
        counts.append(faults_of_a_fresh_tensor(NEXT_MIB))
    return min(counts)


def reused(faults: int) -> bool:
    return faults < NEXT_MIB * MIB_PAGES // 10


def faulted_afresh(faults: int) -> bool:
    return faults > NEXT_MIB * MIB_PAGES // 2


def test_freed_memory_is_reused_inside_and_handed_back_after():
    with memory.keep_freed_memory("cpu"):
        kept = faults_after_a_free()
    handed_back = faults_after_a_free()
    assert reused(kept), kept
    assert faulted_afresh(handed_back), handed_back


def test_nested_blocks_keep_memory_until_the_outermost_ends():
    with memory.keep_freed_memory():
        with memory.keep_freed_memory():
            pass
        still_kept = faults_after_a_free()
    assert reused(still_kept), still_kept
    assert faulted_afresh(faults_after_a_free())
    assert memory._depth == 0


def test_a_cuda_device_leaves_the_cpu_allocator_alone():
    with memory.keep_freed_memory(torch.device("cuda")):
        assert faulted_afresh(faults_after_a_free())
    assert memory._depth == 0


def test_the_setting_is_restored_when_the_block_raises():
    with pytest.raises(RuntimeError, match="inside"):
        with memory.keep_freed_memory():
            raise RuntimeError("inside")
    assert memory._depth == 0
    assert faulted_afresh(faults_after_a_free())
