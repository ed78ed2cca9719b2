"""The app's job handler without a browser: model choices, one-line errors, textured OBJ zips, stage reports."""

from __future__ import annotations

import zipfile

import pytest

import lrmesh.api
import lrmesh.jobs
from lrmesh.app import BUNDLED_LABEL, Engine, model_choices, run_job
from lrmesh.cli import ASSETS, EXAMPLE_VIEWS
from lrmesh.errors import LrmeshError
from lrmesh.io.mesh import load_mesh

GRID = str(ASSETS / EXAMPLE_VIEWS)


def test_model_choices_put_the_checkpoint_then_the_bundled_model_first(tmp_path):
    (tmp_path / "b.ckpt").write_bytes(b"")
    (tmp_path / "a.safetensors").write_bytes(b"")
    (tmp_path / "openlrm").mkdir()
    (tmp_path / "notes.txt").write_text("")
    choices = model_choices("mine.ckpt", tmp_path)
    assert list(choices) == ["mine.ckpt", BUNDLED_LABEL, "a.safetensors", "b.ckpt", "openlrm"]
    assert choices[BUNDLED_LABEL] is None
    with pytest.raises(LrmeshError, match="not a folder"):
        model_choices(None, tmp_path / "missing")


def test_a_job_reports_its_stages_and_zips_a_textured_obj(tmp_path):
    engine = Engine(model_choices(None, None), root=tmp_path)
    heard = []
    result = run_job(engine, GRID, None, BUNDLED_LABEL, 42, 75, True, False, report=lambda f, name: heard.append(name))
    assert result.error == "" and result.ply is None  # PLY holds vertex colours only
    assert heard[:3] == ["views", "encode", "transformer"] and heard[-2:] == ["texture", "write"]
    with zipfile.ZipFile(result.obj) as archive:
        assert sorted(archive.namelist()) == ["example_views.mtl", "example_views.obj", "example_views.png"]
        archive.extractall(tmp_path / "unzipped")
    obj = load_mesh(tmp_path / "unzipped" / "example_views.obj")
    assert obj.texture is not None and obj.num_faces == load_mesh(result.glb).num_faces


@pytest.mark.parametrize("image, files, message", [
    (GRID, [GRID], "lrmesh: error: give either one image or the files, not both"),
    (None, None, "lrmesh: error: no input"),
    (None, [GRID, GRID], "lrmesh: error: expected 6 views (or one grid image), got 2"),
])
def test_bad_inputs_are_one_line(tmp_path, image, files, message):
    result = run_job(Engine(model_choices(None, None), root=tmp_path), image, files, BUNDLED_LABEL, 42, 75, False,
                     False)
    assert result.error.startswith(message) and "\n" not in result.error and result.glb is None


def test_a_bug_is_one_line_on_the_page_and_a_traceback_in_the_log(tmp_path, monkeypatch, capsys):
    def broken_run(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(lrmesh.jobs.Reconstructor, "run", broken_run)
    result = run_job(Engine(model_choices(None, None), root=tmp_path), GRID, None, BUNDLED_LABEL, 42, 75, False,
                     False)
    assert result.error == "lrmesh: error: internal error (RuntimeError: boom); see the server log"
    assert "Traceback" in capsys.readouterr().err


def test_unknown_model_and_mv_model_are_errors(tmp_path):
    engine = Engine(model_choices(None, None), root=tmp_path)
    assert run_job(engine, GRID, None, "nope", 42, 75, False, False).error.startswith("lrmesh: error: unknown model")
    with pytest.raises(LrmeshError, match="--mv-model zero123plus: no such folder"):
        lrmesh.jobs.Reconstructor(mv_model="zero123plus")


def test_the_page_has_its_elem_ids_and_one_job_at_a_time(tmp_path):
    pytest.importorskip("gradio")
    from lrmesh.app import ELEM_IDS, build_app

    page = build_app(Engine(model_choices(None, None), root=tmp_path))
    elem_ids = {c["props"].get("elem_id") for c in page.config["components"]}
    assert set(ELEM_IDS) <= elem_ids
    (generate,) = [fn for fn in page.fns.values() if fn.api_name == "generate"]
    assert generate.queue and generate.concurrency_limit == 1


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_missing_browser_fails_in_ci_and_skips_elsewhere(monkeypatch, ci, outcome):
    from tests.app.conftest import missing

    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome):
        missing("chromium")


@pytest.mark.parametrize("argv, message", [
    (["--mv-model", "zero123plus"], "--mv-model zero123plus: no such folder"),
    (["--models", "missing-folder"], "--models missing-folder: not a folder"),
    (["--port", "70000"], "argument --port: must be from 1 to 65535"),
])
def test_app_option_errors_before_serving(capsys, argv, message):
    from lrmesh.cli import main

    assert main(["app", *argv]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("lrmesh: error: ") and message in line


def test_the_photo_preview_cuts_out_and_recentres_a_photo_on_a_plain_background(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image, ImageDraw

    from lrmesh.app import photo_preview

    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "no-u2net"))  # the plain-background matte, no learned model
    photo = Image.new("RGB", (300, 200), (250, 250, 250))
    ImageDraw.Draw(photo).rectangle([100, 80, 159, 119], fill=(200, 30, 30))  # 60 x 40 px object
    photo.save(tmp_path / "photo.png")
    engine = Engine(model_choices(None, None), root=tmp_path)
    preview, note = photo_preview(engine, str(tmp_path / "photo.png"), True, 0.8)
    alpha = np.array(preview.getchannel("A")) > 0
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    # recentred: a square image whose longer object side is 0.8 of it (InstantMesh's crop drops one row/column)
    assert preview.width == preview.height
    assert abs((cols[-1] - cols[0] + 1) / preview.width - 0.8) <= 2 / preview.width
    assert abs((rows[-1] - rows[0] + 1) / (cols[-1] - cols[0] + 1) - 40 / 60) < 0.05
    side = (cols[-1] - cols[0] + 1) / preview.width
    assert "foreground ratio 0.80" in note and f"object side {side:.2f} of the image" in note
    # the image as given with the removal off; a grid is no photo; a textured photo without U2-Net is the error line
    kept, _ = photo_preview(engine, str(tmp_path / "photo.png"), False, 0.8)
    assert kept.size == (300, 200)
    assert photo_preview(engine, GRID, True, 0.85) == (None, "")
    noise = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(tmp_path / "textured.png")
    none, error = photo_preview(engine, str(tmp_path / "textured.png"), True, 0.85)
    assert none is None and error.startswith("lrmesh: error:") and "u2net.onnx" in error


def test_a_photo_job_hands_the_page_settings_to_the_multiview_step(tmp_path, monkeypatch):
    seen = {}

    def views(self, photo, **options):
        seen.update(options)
        raise LrmeshError("stop here")

    monkeypatch.setattr(lrmesh.api.LRMesh, "views", views)
    monkeypatch.setattr(lrmesh.api.LRMesh, "check_multiview", lambda self: None)
    from PIL import Image

    Image.new("RGB", (300, 200), "white").save(tmp_path / "photo.png")
    result = run_job(Engine(model_choices(None, None), root=tmp_path), str(tmp_path / "photo.png"), None,
                     BUNDLED_LABEL, 7, 12, False, False, False, 0.7)
    assert result.error == "lrmesh: error: stop here"
    assert seen["remove"] is False and seen["foreground_ratio"] == 0.7 and seen["steps"] == 12 and seen["seed"] == 7
