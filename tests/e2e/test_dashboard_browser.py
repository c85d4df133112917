"""The dashboard in a real browser: `trustlab dashboard` serves, headless Chromium opens each page.

Uses Debian's Chromium (`apt-get install chromium chromium-driver`, done by `make setup`) driven by
Playwright through ``executable_path``; no browser is downloaded. The store is a synthetic one
unless ``TRUSTLAB_E2E_STORE`` names another (the demo store); screenshots go to pytest's temp
folder unless ``TRUSTLAB_SCREENSHOTS`` names a folder (docs/screenshots for the README).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from trustlab.dashboard.sample import make_sample_store

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
# (url path, page title, selector of the page's key element)
PAGES = [("", "Runs", '[data-testid="stDataFrame"]'),
         ("fairness", "Fairness", '[data-testid="stPlotlyChart"]'),
         ("explainability", "Explainability", '[data-testid="stPlotlyChart"]'),
         ("robustness", "Robustness", '[data-testid="stPlotlyChart"]'),
         ("privacy", "Privacy", '[data-testid="stPlotlyChart"]'),
         ("model_card", "Model card", '[data-testid="stDownloadButton"]'),
         ("compare", "Compare runs", '[data-testid="stDataFrame"]')]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                       reason="Debian chromium is not installed: run `apt-get install -y "
                              "chromium chromium-driver` (make setup does it)"),
]
playwright = pytest.importorskip("playwright.sync_api",
                                 reason="playwright (the test extra) is not installed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"dashboard server exited with {server.returncode}: "
                                 f"{server.stdout.read() if server.stdout else ''}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                if reply.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"dashboard did not answer on {url} within {timeout} s")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("TRUSTLAB_E2E_STORE"):
        return Path(os.environ["TRUSTLAB_E2E_STORE"])
    root = tmp_path_factory.mktemp("store")
    make_sample_store(root, n_runs=6)
    return root


@pytest.fixture(scope="module")
def server(store: Path) -> str:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "trustlab.cli", "dashboard", "--store", str(store), "--port",
         str(port), "--address", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_healthy(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    with playwright.sync_playwright() as driver:  # a fresh profile: its --user-data-dir
        context = driver.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1440, "height": 1000})
        yield context
        context.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("TRUSTLAB_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.parametrize(("path", "title", "key_element"), PAGES, ids=[p[1] for p in PAGES])
def test_page_renders_in_chromium(server: str, browser, screenshots: Path, path: str,
                                  title: str, key_element: str) -> None:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{server}/{path}", wait_until="domcontentloaded")
        page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=30_000)
        page.locator(key_element).first.wait_for(timeout=30_000)
        page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=30_000)
        page.wait_for_timeout(300)  # let plotly finish drawing before the screenshot
        assert page.locator('[data-testid="stException"]').count() == 0, \
            page.locator('[data-testid="stException"]').first.inner_text()
        page.screenshot(path=str(screenshots / f"{title.lower().replace(' ', '_')}.png"))
    finally:
        page.close()
    assert not errors, f"JavaScript errors on {title}: {errors}"
