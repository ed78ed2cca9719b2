"""Batch mode, `lrmesh reconstruct --batch IN_DIR -o OUT_DIR`: one mesh per input of a folder, the model loaded once.

The inputs are the folder's entries, by name: every image file (a Zero123++ grid; or a photo, which needs a
multi-view model), every video file (an orbit video) and every subfolder holding image files (a view set). Each
gives OUT_DIR/<its name without suffix><format>. An input that fails is reported in one line and the rest go on;
an input whose mesh file already exists is skipped, so a re-run after an interruption or a failure only does
what is left (a job's files are renamed into place with the mesh file last, see lrmesh.jobs).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lrmesh.errors import LrmeshError
from lrmesh.io.views import IMAGE_SUFFIXES, list_view_files
from lrmesh.jobs import VIDEO_SUFFIX, JobOptions, Reconstructor

VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".avi", ".gif")  # orbit videos (tried, so they fail by name)
BATCH_FORMATS = (".obj", ".glb", ".ply")


@dataclass
class BatchSummary:
    done: list[Path] = field(default_factory=list)  # inputs reconstructed in this run
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (input, the one-line reason)
    skipped: list[Path] = field(default_factory=list)  # inputs whose output already existed

    def line(self) -> str:
        return f"lrmesh: batch: {len(self.done)} done, {len(self.failed)} failed, {len(self.skipped)} skipped"


def find_inputs(folder: Path) -> list[Path]:
    """The batch inputs of `folder` (image files, video files, subfolders with images), sorted by name."""
    if not folder.is_dir():
        raise LrmeshError(f"--batch {folder}: not a folder")
    inputs = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and list_view_files(entry):
            inputs.append(entry)
        elif entry.is_file() and entry.suffix.lower() in (*IMAGE_SUFFIXES, *VIDEO_SUFFIXES):
            inputs.append(entry)
    if not inputs:
        raise LrmeshError(f"--batch {folder}: no image files, videos or folders of views in it")
    return inputs


def output_names(inputs: list[Path], suffix: str) -> list[str]:
    """One output file name per input: its stem, made unique with _2, _3, ... in input order."""
    names, used = [], set()
    for path in inputs:
        stem, copy = (path.name if path.is_dir() else path.stem), 1
        name = stem
        while name in used:
            copy += 1
            name = f"{stem}_{copy}"
        used.add(name)
        names.append(name + suffix)
    return names


def run_batch(reconstructor: Reconstructor, inputs: list[Path], out_dir: Path, suffix: str, options: JobOptions,
              video: bool = False, progress: bool = True) -> BatchSummary:
    """Reconstruct every input into `out_dir` (one file per input, `suffix` its format, plus an .mp4 turntable
    with `video`). Each mesh written is printed on stdout, each failure as one line on stderr."""
    from tqdm.auto import tqdm

    summary = BatchSummary()
    jobs = list(zip(inputs, output_names(inputs, suffix)))
    for source, name in tqdm(jobs, desc="batch", unit="input", disable=not progress, file=sys.stderr):
        output = out_dir / name
        if output.exists():
            summary.skipped.append(source)
            continue
        outputs = [output] + ([output.with_suffix(VIDEO_SUFFIX)] if video else [])
        try:
            reconstructor.run(source, outputs, options)
        except LrmeshError as err:
            summary.failed.append((source, str(err)))
            tqdm.write(f"lrmesh: failed: {source.name}: {err}", file=sys.stderr)
            continue
        summary.done.append(source)
        print(output)
    return summary


def add_batch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", metavar="IN_DIR",
                        help="reconstruct every grid, photo, video and folder of views in IN_DIR into the folder "
                             "-o OUT_DIR (one mesh each, named after the input); finished ones are skipped")
    parser.add_argument("--format", choices=[s[1:] for s in BATCH_FORMATS], default="obj",
                        help="--batch: mesh format of the outputs (default: obj)")


def cmd_batch(args: argparse.Namespace) -> int:
    """`lrmesh reconstruct --batch IN_DIR -o OUT_DIR`; exit status 1 when any input failed."""
    if args.views:
        raise LrmeshError("give either input VIEWS or --batch IN_DIR, not both")
    if not args.output:
        raise LrmeshError("--batch needs -o OUT_DIR, the folder for the meshes")
    out_dir = Path(args.output)
    if out_dir.suffix.lower() in BATCH_FORMATS or (out_dir.exists() and not out_dir.is_dir()):
        raise LrmeshError(f"--batch: -o {out_dir} must be a folder (the format is --format)")
    inputs = find_inputs(Path(args.batch))
    if args.video not in (None, ""):
        raise LrmeshError("--batch: --video takes no file name (each video goes beside its mesh)")
    if args.threads:
        torch.set_num_threads(args.threads)
    say = None if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    if say is not None and not args.checkpoint:
        say("lrmesh: no --checkpoint given: using the bundled small model (trained on synthetic objects only)")
    reconstructor = Reconstructor(args.checkpoint, args.config, args.device, mv_model=args.mv_model, say=say,
                                  mv_unet=args.mv_unet, rembg_model=args.rembg_model)
    options = JobOptions(texture=args.texture, texture_resolution=args.texture_resolution, num_views=args.num_views,
                         scale=args.scale, seed=args.seed, steps=args.steps, remove_background=args.rembg,
                         foreground_ratio=args.foreground_ratio,
                         video_frames=args.video_frames or JobOptions.video_frames,
                         video_resolution=args.video_resolution or JobOptions.video_resolution)
    summary = run_batch(reconstructor, inputs, out_dir, f".{args.format}", options, video=args.video is not None,
                        progress=not args.quiet)
    print(summary.line(), file=sys.stderr)
    return 1 if summary.failed else 0
