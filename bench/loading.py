"""Benchmark: loading an official-layout instant-mesh-large checkpoint, lrmesh's way beside the plain way.

    python bench/loading.py [--preset instant-mesh-large]

Writes random weights in the released layout (a .ckpt of {'state_dict': 'lrm_generator.' names}) to a temporary
folder, then loads it in two fresh subprocesses, side by side:
- plain: torch.load(weights_only=True) into memory, build the model (random initialisation), copy the weights in;
- lrmesh: `load_model`, which memory-maps the file (torch.load(mmap=True)) and builds the model on the meta
  device, so the file's pages become the weights: no initialisation and no second copy.
Each prints its wall time, CPU time and peak resident memory; CPU time is the steadier figure on a shared CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from lrmesh.checkpoints import lrmesh_to_official
from lrmesh.config import preset
from lrmesh.model.lrm import LRM

MIB = 2**20
PLAIN = """
import torch
from lrmesh.checkpoints import load_state, official_to_lrmesh
from lrmesh.config import preset
from lrmesh.model.lrm import LRM
state = official_to_lrmesh(torch.load(PATH, map_location="cpu", weights_only=True)["state_dict"])
model = LRM(preset(PRESET)).eval()
load_state(model, state)
"""
LRMESH = """
from lrmesh.checkpoints import load_model
model = load_model(PATH)
"""
MEASURE = """
import json, resource, time
wall, cpu = time.perf_counter(), time.process_time()
{body}
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                  "peak": usage.ru_maxrss * 1024, "params": sum(p.numel() for p in model.parameters())}}))
"""


def measure(body: str, path: Path, preset_name: str) -> dict:
    code = f"PATH, PRESET = {str(path)!r}, {preset_name!r}\n" + MEASURE.format(body=body)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="instant-mesh-large")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lrmesh-bench-") as folder:
        path = Path(folder) / "official.ckpt"
        torch.manual_seed(0)
        torch.save({"state_dict": lrmesh_to_official(LRM(preset(args.preset)).state_dict())}, path)
        size = path.stat().st_size
        results = {"plain": measure(PLAIN, path, args.preset), "lrmesh": measure(LRMESH, path, args.preset)}
    print(f"{args.preset}: {size / MIB:.0f} MiB official-layout checkpoint, "
          f"{results['lrmesh']['params'] / 1e6:.0f} M parameters (time: the loading only; peak: the process)")
    print(f"{'way':<10}{'wall s':>10}{'CPU s':>10}{'peak MiB':>10}")
    for name, r in results.items():
        print(f"{name:<10}{r['wall']:>10.2f}{r['cpu']:>10.2f}{r['peak'] / MIB:>10.0f}")
    plain, ours = results["plain"], results["lrmesh"]
    print(f"plain / lrmesh: wall {plain['wall'] / ours['wall']:.1f}x, CPU {plain['cpu'] / ours['cpu']:.1f}x, "
          f"peak memory {plain['peak'] / ours['peak']:.1f}x")


if __name__ == "__main__":
    main()
