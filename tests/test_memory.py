"""lrmesh.memory.keep_freed_memory: freed CPU tensors' memory is reused inside the block, handed back after it.

Measured by the page faults of filling a fresh tensor of 48 MiB after one of 64 MiB was freed (both more than
glibc's 32 MiB mmap ceiling): served by a new mapping it faults in every 4 KiB page; carved from the freed one,
kept in the process, it faults in almost none. Each scenario runs in a fresh interpreter: the allocator's settings
are per process, and another test's background thread (the web app's jobs) may hold a block open in this one.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lrmesh import memory

pytestmark = pytest.mark.skipif(memory._libc() is None, reason="glibc only")

NEXT_PAGES = 48 * 256  # 4 KiB pages of the 48 MiB tensor

PRELUDE = """
import json, resource, torch
from lrmesh import memory

def fresh(mib):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(mib * 2**18, dtype=torch.float32).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def after_a_free(tries=3):
    # the fewest faults of a 48 MiB tensor allocated after a 64 MiB one was freed, over a few tries
    counts = []
    for _ in range(tries):
        fresh(64)
        counts.append(fresh(48))
    return min(counts)

out = {}
"""


def scenario(body: str) -> dict:
    """Run body (after PRELUDE) in a fresh interpreter; the `out` dict it fills, with the block depth at the end."""
    code = PRELUDE + body + "\nout['depth'] = memory._depth\nprint(json.dumps(out))\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result.pop("depth") == 0
    return result


def reused(faults: int) -> bool:
    return faults < NEXT_PAGES // 10


def faulted_afresh(faults: int) -> bool:
    return faults > NEXT_PAGES // 2


def test_freed_memory_is_reused_inside_and_handed_back_after():
    got = scenario("""
with memory.keep_freed_memory("cpu"):
    out["kept"] = after_a_free()
out["after"] = after_a_free()
""")
    assert reused(got["kept"]), got
    assert faulted_afresh(got["after"]), got


def test_nested_blocks_keep_memory_until_the_outermost_ends():
    got = scenario("""
with memory.keep_freed_memory():
    with memory.keep_freed_memory():
        pass
    out["still_kept"] = after_a_free()
out["after"] = after_a_free()
""")
    assert reused(got["still_kept"]), got
    assert faulted_afresh(got["after"]), got


def test_a_cuda_device_leaves_the_cpu_allocator_alone():
    got = scenario("""
with memory.keep_freed_memory(torch.device("cuda")):
    out["inside"] = after_a_free()
""")
    assert faulted_afresh(got["inside"]), got


def test_the_setting_is_restored_when_the_block_raises():
    got = scenario("""
try:
    with memory.keep_freed_memory():
        raise RuntimeError("inside")
except RuntimeError as err:
    out["raised"] = str(err)
out["after"] = after_a_free()
""")
    assert got["raised"] == "inside"
    assert faulted_afresh(got["after"]), got
