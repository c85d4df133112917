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

from trustlab.dashboard import PAGES as DASHBOARD_PAGES
from trustlab.dashboard.sample import make_sample_store

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
# page slug -> (its heading, selector of its key element); nav labels come from the app's table
KEY_ELEMENTS = {"runs": ("Runs", '[data-testid="stDataFrame"]'),
                "fairness": ("Fairness", '[data-testid="stPlotlyChart"]'),
                "explainability": ("Explainability", '[data-testid="stPlotlyChart"]'),
                "robustness": ("Robustness", '[data-testid="stPlotlyChart"]'),
                "privacy": ("Privacy", '[data-testid="stPlotlyChart"]'),
                "model_card": ("Model card", '[data-testid="stDownloadButton"]'),
                "compare": ("Compare runs", '[data-testid="stDataFrame"]')}
assert set(KEY_ELEMENTS) == {slug for slug, _, _ in DASHBOARD_PAGES}

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


@pytest.fixture(scope="module")
def tab(server: str, browser):
    """One browser tab on the dashboard, as a user has it; JavaScript errors are collected."""
    page = browser.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.goto(server, wait_until="domcontentloaded")
    yield page
    page.close()


@pytest.mark.parametrize(("slug", "label"), [(slug, label) for slug, label, _ in DASHBOARD_PAGES])
def test_page_renders_in_chromium(tab, screenshots: Path, slug: str, label: str) -> None:
    """Open the page from the sidebar, wait for its key element, then look for failures."""
    heading, key_element = KEY_ELEMENTS[slug]
    tab.locator('[data-testid="stSidebarNav"]').get_by_text(label, exact=True).click()
    tab.get_by_role("heading", name=heading, exact=True).first.wait_for(timeout=30_000)
    tab.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden", timeout=30_000)
    tab.locator(key_element).first.wait_for(timeout=30_000)
    tab.wait_for_timeout(300)  # let plotly finish drawing before the screenshot
    exceptions = tab.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, exceptions.first.inner_text()
    assert not tab.errors, f"JavaScript errors on {label}: {tab.errors}"
    assert tab.url.rstrip("/").endswith("" if slug == "runs" else f"/{slug}")
    tab.screenshot(path=str(screenshots / f"{slug}.png"))
