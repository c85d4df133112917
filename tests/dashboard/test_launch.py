"""The launcher: the store travels in the environment; a missing store is a clear error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from trustlab.cli import EXIT_BAD_INPUT, main
from trustlab.dashboard import APP, STORE_ENV
from trustlab.dashboard.launch import dashboard_env, streamlit_command
from trustlab.errors import TrustlabError


def test_command_runs_the_app_headless_on_the_port() -> None:
    command = streamlit_command(port=8765, address="127.0.0.1")
    assert command[:5] == [sys.executable, "-m", "streamlit", "run", str(APP)]
    assert command[command.index("--server.port") + 1] == "8765"
    assert command[command.index("--server.headless") + 1] == "true"
    assert command[command.index("--browser.gatherUsageStats") + 1] == "false"


def test_store_goes_in_the_environment(tmp_path: Path) -> None:
    assert dashboard_env(tmp_path)[STORE_ENV] == str(tmp_path.resolve())
    with pytest.raises(TrustlabError, match="make demo"):
        dashboard_env(tmp_path / "missing")


def test_cli_missing_store_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["dashboard", "--store", str(tmp_path / "missing")]) == EXIT_BAD_INPUT
    assert "does not exist" in capsys.readouterr().err
