"""The web page in a real browser (headless Chromium): upload, generate, view, download; bad input; the API.

Oracles: the downloaded GLB read back equals what `lrmesh reconstruct` writes for the same grid; the viewer's
canvas shows more than its background; the page asks nothing of any host but the app's.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lrmesh.app import BUNDLED_LABEL
from lrmesh.cli import ASSETS, EXAMPLE_VIEWS, main
from lrmesh.io.mesh import load_mesh
from tests.app.conftest import BROKEN_CHECKPOINT

GRID = Path(str(ASSETS / EXAMPLE_VIEWS))
JOB_TIMEOUT_MS = 300_000
VIEWER_SECONDS = 60
DRAWN_LEVELS = 8  # colour difference (of 255) that counts as drawn, above compression and antialiasing noise
DRAWN_SHARE = 0.05  # the example's mesh covers about half of the viewer's centre
SCREENSHOT_WIDTH = 800  # px of the README's screenshot (docs/app.png)


@pytest.fixture(scope="module")
def cli_mesh(tmp_path_factory):
    """The mesh `lrmesh reconstruct GRID -o x.glb` writes, read back."""
    path = tmp_path_factory.mktemp("cli") / "cli.glb"
    assert main(["reconstruct", str(GRID), "-o", str(path), "-q"]) == 0
    return load_mesh(path)


def assert_same_mesh(mesh, expected):
    assert mesh.num_faces == expected.num_faces and mesh.num_vertices == expected.num_vertices
    np.testing.assert_allclose(mesh.vertices.numpy(), expected.vertices.numpy(), atol=1e-6)
    np.testing.assert_array_equal(mesh.faces.numpy(), expected.faces.numpy())


def error_text(page) -> str:
    return page.locator("#error").inner_text().strip()


def drawn_fraction(png: bytes) -> float:
    """Share of the central half of a screenshot that differs (by more than a few levels) from its most common
    colour, the background: 0 for a blank viewer, whose frame, label and buttons sit outside that half."""
    import io

    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    h, w, _ = image.shape
    centre = image[h // 4:3 * h // 4, w // 4:3 * w // 4].reshape(-1, 3)
    colours, counts = np.unique(centre, axis=0, return_counts=True)
    background = colours[counts.argmax()]
    return float((np.abs(centre - background).max(axis=1) > DRAWN_LEVELS).mean())


def test_non_image_shows_the_cli_error_and_the_app_keeps_serving(page, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.set_input_files("#input-files input[type=file]", str(notes))
    page.wait_for_selector("#input-files >> text=notes", timeout=30_000)
    page.click("#generate")
    page.wait_for_function("document.querySelector('#error').innerText.includes('lrmesh: error:')",
                           timeout=JOB_TIMEOUT_MS)
    text = error_text(page)
    assert text.startswith("lrmesh: error: cannot read image ") and "notes.txt" in text
    assert "\n" not in text and "Traceback" not in page.content()
    assert page.locator("#result-glb a").count() == 0


def test_generate_view_and_download(page, tmp_path, cli_mesh):
    page.set_input_files("#input-image input[type=file]", str(GRID))
    page.wait_for_selector("#input-image img", timeout=30_000)
    page.click("#generate")
    page.wait_for_selector("#result-glb a", timeout=JOB_TIMEOUT_MS)
    assert error_text(page) == ""
    assert page.locator("#views-gallery img").count() >= 6
    for kind in ("obj", "ply"):
        assert page.locator(f"#result-{kind} a").count() == 1

    canvas = page.locator("#result-model canvas")
    deadline = time.monotonic() + VIEWER_SECONDS
    while (fraction := drawn_fraction(canvas.screenshot())) < DRAWN_SHARE and time.monotonic() < deadline:
        time.sleep(1)  # the viewer loads the GLB and renders it seconds later
    assert fraction >= DRAWN_SHARE, "the 3D viewer shows nothing but its background"
    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot))  # the viewport: a full-page shot resizes the page and clears the WebGL canvas
    if os.environ.get("LRMESH_APP_SCREENSHOT"):  # the README's docs/app.png
        image = Image.open(shot).convert("RGB")
        image = image.resize((SCREENSHOT_WIDTH, round(image.height * SCREENSHOT_WIDTH / image.width)), Image.LANCZOS)
        image.quantize(colors=128).save(os.environ["LRMESH_APP_SCREENSHOT"], optimize=True)

    with page.expect_download() as download:
        page.click("#result-glb a")
    glb = tmp_path / "page.glb"
    download.value.save_as(glb)
    assert_same_mesh(load_mesh(glb), cli_mesh)

    hosts = {url.split("/")[2] for url in page.requests if url.startswith(("http:", "https:", "ws:", "wss:"))}
    assert hosts == {page.url.split("/")[2]}, f"the page asked other hosts: {hosts}"


def test_gradio_client(server, tmp_path, cli_mesh):
    """The README's gradio_client call, and the one-line errors of the API for bad inputs."""
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False, download_files=str(tmp_path))
    views, viewer, glb, obj, ply, video, stages, error = client.predict(
        handle_file(str(GRID)), None, BUNDLED_LABEL, 42, 75, False, False, True, 0.85, api_name="/generate")
    assert error == "" and len(views) == 6 and video is None and "transformer" in stages
    assert_same_mesh(load_mesh(glb), cli_mesh)

    def error_of(image, files, model=BUNDLED_LABEL):
        return client.predict(image, files, model, 42, 75, False, False, True, 0.85, api_name="/generate")[-1]

    broken = error_of(handle_file(str(GRID)), None, BROKEN_CHECKPOINT)
    assert broken.startswith("lrmesh: error: ") and BROKEN_CHECKPOINT in broken
    three = [handle_file(str(GRID))] * 3
    assert error_of(None, three).startswith("lrmesh: error: expected 6 views (or one grid image), got 3")
    video = tmp_path / "orbit.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    assert error_of(None, [handle_file(str(video))]).startswith("lrmesh: error: cannot read video ")
    assert error_of(None, None).startswith("lrmesh: error: no input")
