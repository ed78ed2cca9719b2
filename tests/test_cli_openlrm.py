"""`lrmesh reconstruct PHOTO -c OPENLRM_MODEL`: the reference's own PLY from the same photo and weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from lrmesh.cli import main
from lrmesh.errors import LrmeshError
from lrmesh.metrics import chamfer_distance

FIXTURE = Path(__file__).parent / "fixtures" / "openlrm-tiny"
PHOTO = FIXTURE / "object_rgba.png"
# What the release files cannot say for these tiny models (tests/fixtures/openlrm-tiny/README.md, "Models").
CASES = {
    "v11-sep": (FIXTURE / "v11-sep", ["--source-size", "224"]),
    "v11-packed": (FIXTURE / "v11-packed", ["--source-size", "336"]),
    "v10": (FIXTURE / "v10" / "model.pth", ["--encoder-heads", "2"]),
}
MESH_ARGS = ["--mesh-resolution", "48", "--mesh-threshold", "3.0"]


@pytest.mark.parametrize("name", list(CASES))
def test_reconstruct_gives_the_reference_ply(tmp_path, capsys, name):
    checkpoint, extra = CASES[name]
    out = tmp_path / "mesh.ply"
    code = main(["reconstruct", str(PHOTO), "-c", str(checkpoint), *MESH_ARGS, "--no-rembg", "-o", str(out), *extra])
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out)
    ours = trimesh.load(out, process=False)
    ref = trimesh.load(FIXTURE / name / "mesh_reference_rgba.ply", process=False)
    assert ours.vertices.shape == ref.vertices.shape and ours.faces.shape == ref.faces.shape
    np.testing.assert_array_equal(ours.faces, ref.faces)
    assert np.abs(ours.vertices - ref.vertices).max() <= 1e-4  # same frame: OpenLRM's own, unchanged
    colors, ref_colors = ours.visual.vertex_colors.astype(int), ref.visual.vertex_colors.astype(int)
    assert np.abs(colors - ref_colors).max() <= 1


def test_licence_notice_on_stderr_and_not_when_quiet(tmp_path, capsys):
    import lrmesh.openlrm as openlrm

    checkpoint, extra = CASES["v11-packed"]
    openlrm._notice_shown = False
    args = ["reconstruct", str(PHOTO), "-c", str(checkpoint), "--mesh-resolution", "16", "-o",
            str(tmp_path / "m.obj"), *extra]
    assert main(args + ["-q"]) == 0
    assert "CC BY-NC 4.0" not in capsys.readouterr().err
    assert main(args) == 0
    assert capsys.readouterr().err.count("CC BY-NC 4.0") == 1


def test_default_path_takes_the_photo_alpha_and_the_video(tmp_path, capsys):
    checkpoint, extra = CASES["v11-sep"]
    out = tmp_path / "mesh.glb"
    code = main(["reconstruct", str(PHOTO), "-c", str(checkpoint), *MESH_ARGS, "-o", str(out), "--video",
                 "--video-frames", "4", "--video-resolution", "16", "-q", *extra])
    assert code == 0
    assert capsys.readouterr().out.split() == [str(out), str(out.with_suffix(".mp4"))]
    assert out.with_suffix(".mp4").stat().st_size > 0


def test_default_path_cuts_out_a_photo_on_a_plain_background(tmp_path, capsys, monkeypatch):
    # object_rgb.png has no alpha: the shared plain-background matte cuts it out (no U2-Net here)
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "no-u2net"))
    checkpoint, extra = CASES["v11-sep"]
    out = tmp_path / "mesh.ply"
    assert main(["reconstruct", str(FIXTURE / "object_rgb.png"), "-c", str(checkpoint), *MESH_ARGS, "-o", str(out),
                 "-q", *extra]) == 0
    assert trimesh.load(out, process=False).faces.shape[0] > 0


def _textured_photo(tmp_path):
    from PIL import Image

    noise = (np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(tmp_path / "textured.png")
    return str(tmp_path / "textured.png")


@pytest.mark.parametrize("args,message", [
    (["TEXTURED", "-c", str(FIXTURE / "v11-sep"), "--source-size", "224"], "u2net.onnx"),
    ([str(PHOTO), str(PHOTO), "-c", str(FIXTURE / "v11-sep"), "--source-size", "224"], "one photo; got 2"),
    ([str(PHOTO), "-c", str(FIXTURE / "v11-sep")], "--source-size"),
    ([str(PHOTO), "--mesh-resolution", "48"], "apply to OpenLRM checkpoints only"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "no-u2net"))
    args = [_textured_photo(tmp_path) if a == "TEXTURED" else a for a in args]
    out = tmp_path / "m.ply"
    assert main(["reconstruct", *args, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("lrmesh: error: ") and message in err
    assert not out.exists()


def test_the_python_api_and_the_job_seam_give_the_reference_mesh(tmp_path):
    from lrmesh.api import LRMesh
    from lrmesh.jobs import JobOptions, Reconstructor

    checkpoint, extra = CASES["v11-sep"]
    lr = LRMesh(checkpoint, source_size=int(extra[extra.index("--source-size") + 1]), device="cpu")
    assert lr.single_view
    mesh, image = lr.photo_mesh(PHOTO, remove=False, mesh_resolution=48, mesh_threshold=3.0)
    ref = trimesh.load(FIXTURE / "v11-sep" / "mesh_reference_rgba.ply", process=False)
    assert mesh.faces.shape == ref.faces.shape and image.shape == (1, 3, 224, 224)
    assert np.abs(mesh.vertices.numpy() - ref.vertices).max() < 1e-4  # OpenLRM's world, unmirrored
    written = lr.export(mesh, tmp_path / "api.ply", keep_coordinates=True)
    assert np.abs(trimesh.load(written[0], process=False).vertices - ref.vertices).max() < 1e-4
    # batch mode and the app go through the same seam: one photo in, the mesh in OpenLRM's coordinates out
    job = Reconstructor(checkpoint, device="cpu", source_size=lr.source_size)
    job.model.synthesizer.cfg.mesh_resolution, job.model.synthesizer.cfg.mesh_threshold = 48, 3.0  # the fixture's
    result = job.run(PHOTO, [tmp_path / "job.ply"], JobOptions(remove_background=False))
    assert result.views.shape == (1, 3, 224, 224) and result.files == [tmp_path / "job.ply"]
    assert np.abs(trimesh.load(result.files[0], process=False).vertices - ref.vertices).max() < 1e-4
    with pytest.raises(LrmeshError, match="from one photo; got 2 inputs"):
        job.run([PHOTO, PHOTO], [tmp_path / "two.ply"])


def test_precision_bf16_gives_nearly_the_fp32_mesh_and_fp16_needs_cuda(tmp_path, capsys):
    checkpoint, extra = CASES["v11-sep"]
    meshes = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.ply"
        assert main(["reconstruct", str(PHOTO), "-c", str(checkpoint), *MESH_ARGS, "--no-rembg", "-o", str(out),
                     "-q", "--precision", precision, *extra]) == 0
        meshes[precision] = trimesh.load(out, process=False)
    a, b = (torch.from_numpy(np.asarray(meshes[k].vertices, np.float32)) for k in ("fp32", "bf16"))
    diagonal = float((a.max(0).values - a.min(0).values).norm())
    assert 0 < chamfer_distance(a, b) / diagonal < 1e-2  # rounding of the bf16 products, not another model
    capsys.readouterr()
    out = tmp_path / "fp16.ply"
    assert main(["reconstruct", str(PHOTO), "-c", str(checkpoint), "--device", "cpu", "--precision", "fp16",
                 "-o", str(out), "-q", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lrmesh: error: --precision fp16 runs on CUDA only; on the CPU use bf16 (or fp32)"]
    assert not out.exists()
