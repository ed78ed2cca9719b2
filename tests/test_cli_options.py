"""Every numeric option of every subcommand is range-checked by argparse before any work starts; output places
that cannot be written and argparse's own complaints are one `lrmesh: error:` line and exit 2."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
from PIL import Image

from lrmesh.checkpoints import load_model, save_model
from lrmesh.cli import build_parser, main
from lrmesh.io.views import blank_views
from lrmesh.options import (
    SEED_MAX,
    int_at_least,
    positive_float,
    positive_int,
    seed_int,
)

# The shortest command line of each subcommand that parses; the sweep appends one option to it. A new
# subcommand needs a line here (the sweep fails until it has one). "{out}" is a fresh folder.
BASE_ARGS = {
    "reconstruct": ["-o", "{out}/mesh.obj"],
    "synth": ["-o", "{out}", "--count", "1"],
    "evaluate": ["objects", "-o", "{out}"],
    "train": ["tiny-stage1"],
    "fit": ["scene", "-o", "{out}"],
    "views": ["photo.png", "-o", "{out}/grid.png"],
    "app": [],
}
NOT_SWEPT: set[str] = set()  # subcommands whose options are not checked types yet (none)


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _bad_values(action: argparse.Action) -> list[str]:
    """Values the option must refuse, from the range its type declares (or its choices)."""
    if action.choices is not None:
        return [str(max(action.choices) + 1), "x"]
    if action.type is positive_float:
        return ["0", "-1.5", "nan", "inf", "x"]
    low, high = action.type.low, action.type.high
    fractional = [] if getattr(action.type, "is_float", False) else ["1.5"]
    return [str(low - 1), *fractional, "x"] + ([str(high + 1)] if high is not None else [])


def _numeric_options() -> list[tuple[str, str, argparse.Action]]:
    return [(name, action.option_strings[-1], action) for name, parser in _subcommands().items()
            if name not in NOT_SWEPT for action in parser._actions
            if action.option_strings and action.type is not None]


NUMERIC = _numeric_options()


def test_every_subcommand_is_in_the_table():
    assert set(_subcommands()) - NOT_SWEPT == set(BASE_ARGS)


@pytest.mark.parametrize("command,option,action", NUMERIC, ids=[f"{c} {o}" for c, o, _ in NUMERIC])
def test_numeric_options_out_of_range_are_one_error_line(command, option, action, tmp_path, monkeypatch, capsys):
    checked = action.type is positive_float or hasattr(action.type, "low") or action.choices is not None
    assert checked, f"{command} {option}: give it a range-checked type from lrmesh.options"
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    base = [command] + [a.replace("{out}", str(out)) for a in BASE_ARGS[command]]
    for bad in _bad_values(action):
        assert main(base + [option, bad]) == 2, (option, bad)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("lrmesh: error: argument ") and option in err[0], err
        assert "usage" not in err[0]
    assert list(tmp_path.iterdir()) == [], "nothing may be written before the options are checked"


def test_the_checked_types_accept_their_range():
    assert positive_int("1") == 1 and seed_int("0") == 0 and seed_int(str(SEED_MAX)) == SEED_MAX
    assert int_at_least(-2, 3)("-2") == -2 and positive_float("1e-3") == 1e-3
    for parse, bad in ((positive_int, "0"), (seed_int, str(SEED_MAX + 1)), (positive_float, "-inf")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)
    assert math.isclose(positive_float("2.5"), 2.5)


@pytest.mark.parametrize("argv,expected", [
    (["reconstruct", "--bogus"], "unrecognized arguments: --bogus"),
    (["synth", "--count", "1"], "the following arguments are required: -o/--output"),
    (["nonsense"], "invalid choice: 'nonsense'"),
])
def test_argparse_complaints_are_one_line(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lrmesh: error: {err[0].removeprefix('lrmesh: error: ')}"] and expected in err[0]


@pytest.fixture()
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


def test_unwritable_outputs_fail_before_the_model_runs(a_file, tmp_path, capsys):
    objects = tmp_path / "objects" / "obj0"
    objects.mkdir(parents=True)
    (objects / "grid.png").write_bytes(b"")
    (objects / "gt.glb").write_bytes(b"")
    below = a_file / "sub"
    cases = {
        "reconstruct": ["reconstruct", "-q", "-o", str(below / "mesh.obj")],
        "reconstruct video": ["reconstruct", "-q", "-o", str(tmp_path / "m" / "mesh.obj"), "--video",
                              str(below / "v.mp4")],
        "reconstruct into a folder": ["reconstruct", "-q", "-o", str(tmp_path)],
        "synth": ["synth", "-q", "-o", str(below), "--count", "1"],
        "evaluate": ["evaluate", "-q", str(tmp_path / "objects"), "-o", str(below)],
        "train": ["train", "-q", "tiny-stage1", f"output={below}"],
        "fit": ["fit", "-q", str(tmp_path), "-o", str(below)],
    }
    for name, argv in cases.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("lrmesh: error:"), (name, err)
        assert str(a_file) in err[0] or ".obj, .glb" in err[0], (name, err)
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_a_folder_named_like_a_mesh_is_refused(tmp_path, capsys):
    (tmp_path / "mesh.obj").mkdir()
    assert main(["reconstruct", "-q", "-o", str(tmp_path / "mesh.obj")]) == 2
    assert "it is a folder" in capsys.readouterr().err


def test_blank_views_are_those_of_one_background_colour():
    views = torch.ones(6, 3, 32, 32)
    views[1, :, 10:20, 10:20] = 0.2  # an object
    views[2] = torch.tensor([0.1, 0.5, 0.3])[:, None, None]  # a plain coloured background
    views[3, :, 5:7, 5] = 0.0  # two dark pixels: 0.2 % of the view, above the 0.1 % floor
    views[4] += 0.03 * (torch.rand(3, 32, 32) - 0.5)  # JPEG-like noise on white
    views[5, 0, :, 16:] = 0.5  # half the view differs in red only
    assert blank_views(views) == [0, 2, 4]


def test_blank_views_warn_and_an_empty_mesh_from_them_is_an_error(fixture_dir, tmp_path, capsys):
    white = tmp_path / "white.png"
    Image.new("RGB", (640, 960), "white").save(white)
    # (A mesh model never comes out empty: like the reference it imposes a tiny shape on an SDF of one sign.)
    model = load_model(fixture_dir / "instant_nerf_tiny.ckpt", fixture_dir / "config.yaml")
    with torch.no_grad():
        model.synthesizer.decoder.net[-1].bias[0] -= 1e3  # no density anywhere: no surface
    empty = tmp_path / "empty.safetensors"
    save_model(model, empty)
    out = tmp_path / "out" / "mesh.obj"
    assert main(["reconstruct", str(white), "-c", str(empty), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "lrmesh: warning: none of the 6 views shows an object (all one plain background colour)"
    assert err[1].startswith("lrmesh: error: the model found no surface") and "no view shows an object" in err[1]
    assert len(err) == 2 and not out.exists()
