"""A running `lrmesh app` server and a headless Chromium for the browser tests.

The browser is Debian's chromium driven by Playwright (its own browser download cannot run here); headless WebGL
goes through SwiftShader. Without chromium, Playwright or gradio the tests skip, except in CI (CI=true), where
they fail: `.ci/run` installs chromium, the test extra the Python packages.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--use-gl=swiftshader", "--enable-unsafe-swiftshader",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
SERVER_START_SECONDS = 180
BROKEN_CHECKPOINT = "broken.safetensors"


def missing(what: str) -> None:
    """Fail in CI, skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing; .ci/run installs it")
    pytest.skip(f"{what} is missing")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`lrmesh app` in a subprocess on a free port, with a --models folder holding one broken checkpoint;
    yields its URL and checks at the end that it shuts down."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        missing("gradio (pip install -e '.[test]')")
    root = tmp_path_factory.mktemp("app")
    models = root / "models"
    models.mkdir()
    (models / BROKEN_CHECKPOINT).write_bytes(b"not a safetensors file")
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "lrmesh.cli", "app", "--port", str(port), "--models", str(models)],
                            cwd=root, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + SERVER_START_SECONDS
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"lrmesh app did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield url
    assert proc.poll() is None, "the server died during the tests"
    proc.terminate()
    assert proc.wait(timeout=60) is not None
    log.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    """A fresh page on the app; `page.requests` lists every URL it asked for."""
    context = browser.new_context(viewport={"width": 1280, "height": 1200}, accept_downloads=True)
    tab = context.new_page()
    tab.requests = []
    tab.on("request", lambda request: tab.requests.append(request.url))
    tab.goto(server)
    tab.wait_for_selector("#generate")
    yield tab
    context.close()
