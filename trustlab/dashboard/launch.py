"""``trustlab dashboard``: start the Streamlit app on one report store.

The store path travels to the app in ``TRUSTLAB_DASHBOARD_STORE``; pages never take a path from
the browser.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

from trustlab.dashboard import APP, STORE_ENV
from trustlab.errors import TrustlabError


def streamlit_command(port: int = 8501, address: str = "localhost") -> list[str]:
    """The ``streamlit run`` command line for the app (headless, no telemetry, no file watcher)."""
    return [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.port", str(port), "--server.address", address,
            "--server.headless", "true", "--server.fileWatcherType", "none",
            "--server.runOnSave", "false", "--browser.gatherUsageStats", "false",
            "--global.developmentMode", "false", "--client.toolbarMode", "minimal"]


def dashboard_env(store: str | Path) -> dict[str, str]:
    """The environment for the app: this process's, plus the store it must show."""
    root = Path(store)
    if not root.is_dir():
        raise TrustlabError(f"report store {root} does not exist: run `make demo` to create "
                            "the demo store, or pass --store DIR of an existing store")
    return {**os.environ, STORE_ENV: str(root.resolve())}


def launch(store: str | Path = "store", port: int = 8501, address: str = "localhost") -> NoReturn:
    """Serve the dashboard for ``store`` at http://<address>:<port> until interrupted.

    This process becomes the Streamlit server (exec), so a SIGTERM from a process manager, a
    container stop or a test stops the server itself instead of orphaning it."""
    if not 1 <= port <= 65535:
        raise TrustlabError(f"--port must be between 1 and 65535, got {port}")
    env = dashboard_env(store)
    print(f"trustlab dashboard on http://{address}:{port} (store {env[STORE_ENV]}); "
          "Ctrl-C stops it", file=sys.stderr, flush=True)
    command = streamlit_command(port, address)
    os.execve(command[0], command, env)
