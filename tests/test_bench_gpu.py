"""bench/gpu.sh --dry: the one-command GPU benchmark runs end to end on the CPU at tiny sizes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_benchmark_runs_dry_on_the_cpu():
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry"], capture_output=True, text=True,
                          env=env, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(ROOT / "bench"))
    from gpu import ROWS

    lines = done.stdout.splitlines()
    for name in ROWS:
        row = next(line for line in lines if line.startswith(name))
        seconds, peak_mib = (float(x) for x in row[len(name):].split()[:2])
        assert seconds > 0 and peak_mib > 0, row
    tflops = next(line for line in lines if line.startswith("reconstruct mesh, vertex colours ")).split()[-1]
    assert float(tflops) > 0  # the matrix work was counted
