"""Command-line values checked before any work starts: numbers in their range, output places writable.

The `type=` helpers raise argparse.ArgumentTypeError, which `Parser` turns into one `lrmesh: error:` line
(exit 2) instead of argparse's usage block. Every numeric option of every subcommand goes through one of them,
so a bad value never reaches the model.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

from lrmesh.errors import LrmeshError

SEED_MAX = 2**32 - 1  # numpy's seeds are unsigned 32-bit; torch accepts them too


class UsageError(LrmeshError):
    """A command line argparse cannot parse or a value out of its range."""


class Parser(argparse.ArgumentParser):
    """argparse, but a parse error raises UsageError (one `lrmesh: error:` line from main(), exit 2)."""

    def error(self, message: str):
        raise UsageError(message)


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (no upper end when high is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"at least {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its own messages
    parse.low, parse.high = low, high  # the range, for the option sweep test
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
seed_int = int_at_least(0, SEED_MAX)


def positive_float(text: str) -> float:
    """An argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def float_in(low: float, high: float, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a number in [low, high] (or (low, high] with low_open)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        inside = (low < value if low_open else low <= value) and value <= high  # false for nan too
        if not inside:
            raise argparse.ArgumentTypeError(f"must be {'above' if low_open else 'at least'} {low:g} and at most "
                                             f"{high:g}, got {value}")
        return value

    parse.__name__ = "number"
    parse.low, parse.high, parse.is_float = low, high, True  # the range, for the option sweep test
    return parse


fraction = float_in(0, 1, low_open=True)  # a share, e.g. of an image side


def writable_folder(folder: str | Path, what: str = "output folder") -> Path:
    """Create `folder` (and its parents) if needed and check a file can be written in it; LrmeshError if not.

    Run before any long work, so a bad output place fails at once with nothing half-written.
    """
    folder = Path(folder)
    problem = _unwritable(folder)
    if problem:
        raise LrmeshError(f"cannot write to {what} {folder}: {problem}")
    return folder


def writable_file(path: str | Path, what: str = "output file") -> Path:
    """Check that file `path` can be written: not a folder, its folder created if needed and writable."""
    path = Path(path)
    problem = "it is a folder" if path.is_dir() else _unwritable(path.parent)
    if problem:
        raise LrmeshError(f"cannot write {what} {path}: {problem}")
    return path


def _unwritable(folder: Path) -> str | None:
    """Why no file can be written in `folder` (created if missing), or None when one can."""
    for part in (folder, *folder.parents):
        if part.exists() and not part.is_dir():
            return f"{part} is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return f"{err.strerror or err}" + (f" ({err.filename})" if err.filename else "")
    return None
