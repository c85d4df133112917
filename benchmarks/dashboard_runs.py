"""How long the dashboard's Runs page takes with 1000 runs in the store (target: ≤ 2 s).

Makes (or reuses) a synthetic store of N runs written through ``ReportStore.save`` with the
metric set of a full audit (~110 metrics per run), then times the Runs page:

- ``first``: the first script run in a fresh server process (module imports + uncached reads);
- ``uncached``: a new session after the index changed (cache miss, modules already imported);
- ``cached``: a new session with the index unchanged (what most page loads are);
- ``browser``: headless Chromium from navigation to the rendered runs table (server warm, cache
  miss), when Debian's chromium is installed.

Usage: .venv/bin/python benchmarks/dashboard_runs.py [--runs 1000] [--store DIR]
Run timings under ``flock /tmp/trustlab-bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from trustlab.dashboard import APP, STORE_ENV
from trustlab.dashboard.data import INDEX

TARGET_S = 2.0
REPEATS = 5


def make_store(root: Path, n_runs: int) -> None:
    from trustlab.audit.store import ReportStore
    from trustlab.dashboard.sample import make_sample_store

    existing = len(ReportStore(root).list_runs()) if (root / INDEX).exists() else 0
    if existing >= n_runs:
        print(f"reusing {root} ({existing} runs)")
        return
    started = time.perf_counter()
    make_sample_store(root, n_runs=n_runs, artifacts=False, cards=False)
    print(f"wrote {n_runs} runs to {root} in {time.perf_counter() - started:.1f} s")


def time_apptest(root: Path) -> dict[str, list[float]]:
    """Runs-page script timings under AppTest (first run, then cache misses and hits)."""
    os.environ[STORE_ENV] = str(root)
    from streamlit.testing.v1 import AppTest

    def run_once() -> float:
        app = AppTest.from_file(str(APP), default_timeout=120)
        started = time.perf_counter()
        app.run()
        elapsed = time.perf_counter() - started
        assert not app.exception, [e.value for e in app.exception]
        assert len(app.dataframe[0].value) > 0
        return elapsed

    times = {"first": [run_once()], "uncached": [], "cached": []}
    for _ in range(REPEATS):
        (root / INDEX).touch()  # a new index stamp: every cached read misses
        times["uncached"].append(run_once())
        times["cached"].append(run_once())
    return times


def time_browser(root: Path, n_runs: int) -> list[float]:
    """Navigation → rendered runs table in headless Chromium, index touched before each load."""
    chromium = shutil.which("chromium")
    if chromium is None:
        print("browser: skipped (Debian chromium is not installed)")
        return []
    from playwright.sync_api import sync_playwright

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "trustlab.cli", "dashboard", "--store",
                               str(root), "--port", str(port), "--address", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}_stcore/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        times = []
        with sync_playwright() as driver, tempfile.TemporaryDirectory() as profile:
            context = driver.chromium.launch_persistent_context(
                profile, executable_path=chromium, headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update",
                      "--disable-sync"])
            page = context.new_page()
            for i in range(REPEATS + 1):
                (root / INDEX).touch()
                started = time.perf_counter()
                page.goto(url)
                page.get_by_text(f"of {n_runs} runs").wait_for(timeout=60_000)
                if i:  # the first load also starts the server's script machinery
                    times.append(time.perf_counter() - started)
            context.close()
        return times
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--store", type=Path, help="default: a temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = (args.store or Path(scratch) / "store").resolve()
        make_store(root, args.runs)
        times = time_apptest(root)
        times["browser"] = time_browser(root, args.runs)
    print(f"Runs page with {args.runs} runs (target ≤ {TARGET_S} s):")
    for name, values in times.items():
        if values:
            print(f"  {name:9s} median {statistics.median(values):.3f} s, "
                  f"max {max(values):.3f} s over {len(values)} load(s)")
    worst = max(max(v) for k, v in times.items() if v and k != "cached")
    print(f"worst non-cached load {worst:.3f} s: {'PASS' if worst <= TARGET_S else 'FAIL'}")


if __name__ == "__main__":
    main()
