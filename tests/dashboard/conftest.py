"""Fixture stores for the dashboard tests: empty, normal (with a hostile model name), corrupted."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from trustlab.dashboard import APP, STORE_ENV
from trustlab.dashboard.sample import corrupt_report, make_sample_store


@pytest.fixture(scope="session")
def sample_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Six runs covering every page; run 0's model name is Markdown/HTML that must be escaped."""
    root = tmp_path_factory.mktemp("sample-store")
    return root, make_sample_store(root, n_runs=6, hostile=True)


@pytest.fixture(scope="session")
def corrupted_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Three runs; the newest one's report.json is truncated (its index rows remain)."""
    root = tmp_path_factory.mktemp("corrupted-store")
    run_ids = make_sample_store(root, n_runs=3, cards=False)
    corrupt_report(root, run_ids[-1])
    return root, run_ids


@pytest.fixture
def open_app(monkeypatch: pytest.MonkeyPatch):
    """``open_app(store, page, run_id=None)`` → an AppTest that has run ``page`` on ``store``."""

    def run(store: Path, page: str, run_id: str | None = None) -> AppTest:
        monkeypatch.setenv(STORE_ENV, str(store))
        app = AppTest.from_file(str(APP), default_timeout=60)
        app.run()
        if run_id is not None:
            app.sidebar.selectbox(key="run_id").set_value(run_id).run()
        if page != "runs":
            app.switch_page(f"views/{page}.py").run()
        assert not app.exception, [e.value for e in app.exception]
        return app

    return run
