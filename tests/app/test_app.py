"""The app's job handler without a browser: model choices, one-line errors, textured OBJ zips, stage reports."""

from __future__ import annotations

import zipfile

import pytest

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
