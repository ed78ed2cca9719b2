"""Benchmark: `reconstruct` with and without `lrmesh.memory.keep_freed_memory`, side by side in fresh processes.

    python bench/memory.py                       # the stress case, 3 pairs of runs, 2 threads
    python bench/memory.py --pairs 1 --inside-fraction 0.1

Each run is a fresh interpreter (the allocator's state is per process): random instant-mesh-large weights, the SDF
shifted so `--inside-fraction` of the grid is inside (as bench/reconstruct.py does), one reconstruction of the
bundled example with vertex colours. The runs alternate, kept first, so neither setting always gets the quieter
moment. Printed: each stage's mean seconds both ways and their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from reconstruct import _set_inside_fraction  # noqa: E402  (bench/reconstruct.py)

import lrmesh.reconstruct  # noqa: E402
from lrmesh.cameras import zero123pp_cameras  # noqa: E402
from lrmesh.config import preset  # noqa: E402
from lrmesh.io.views import load_views  # noqa: E402
from lrmesh.model.lrm import LRM  # noqa: E402
from lrmesh.progress import Stages  # noqa: E402

SETTINGS = ("kept", "plain")


def child(setting: str, inside_fraction: float) -> None:
    """One reconstruction; prints {stage: seconds} as JSON on the last line."""
    if setting == "plain":  # what reconstruct() did before lrmesh.memory
        lrmesh.reconstruct.keep_freed_memory = lambda device: contextlib.nullcontext()
    torch.manual_seed(0)
    model = LRM(preset("instant-mesh-large")).eval().requires_grad_(False)
    views = load_views(resources.files("lrmesh") / "assets" / "example_views.png")
    cameras = zero123pp_cameras()
    _set_inside_fraction(model, views, cameras, inside_fraction)
    stages = Stages(torch.device("cpu"), show=False)
    lrmesh.reconstruct.reconstruct(model, views, cameras, stages=stages)
    print(json.dumps({r.name: r.seconds for r in stages.records}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--inside-fraction", type=float, default=0.27)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, args.inside_fraction)
        return
    runs: dict[str, list[dict[str, float]]] = {setting: [] for setting in SETTINGS}
    for pair in range(args.pairs):
        for setting in SETTINGS:
            done = subprocess.run([sys.executable, __file__, "--child", setting, "--inside-fraction",
                                   str(args.inside_fraction), "--threads", str(args.threads)],
                                  capture_output=True, text=True, check=True)
            runs[setting].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"pair {pair + 1}, {setting}: {sum(runs[setting][-1].values()):.2f} s", file=sys.stderr, flush=True)
    names = list(runs["kept"][0])
    mean = {s: {n: sum(r[n] for r in runs[s]) / len(runs[s]) for n in names} for s in SETTINGS}
    print(f"\ninstant-mesh-large, {args.inside_fraction:.0%} of the grid inside, {args.threads} threads; mean seconds "
          f"of {args.pairs} fresh process(es) each way")
    print(f"{'stage':<14}{'kept':>10}{'plain':>10}{'plain / kept':>14}")
    for name in [*names, "total"]:
        kept, plain = ((sum(mean[s].values()) if name == "total" else mean[s][name]) for s in SETTINGS)
        print(f"{name:<14}{kept:>10.2f}{plain:>10.2f}{plain / max(kept, 1e-9):>13.2f}x")


if __name__ == "__main__":
    main()
