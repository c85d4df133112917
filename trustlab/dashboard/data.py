"""The dashboard's read-only data layer over one report store.

It reads ``index.sqlite`` (opened read-only) and ``runs/<run_id>/report.json`` directly rather
than through ``trustlab.audit.store.ReportStore``, which creates folders and tables and imports
torch. Every read is cached with ``st.cache_data`` and keyed on the file's modification time, so
a store that changes while the dashboard is open is picked up on the next rerun.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import streamlit as st

from trustlab.audit.report import Artifact, Report
from trustlab.dashboard import STORE_ENV
from trustlab.errors import TrustlabError

DEFAULT_STORE = "store"
INDEX = "index.sqlite"  # the file name trustlab.audit.store writes
MAX_ARTIFACT_BYTES = 20 * 2**20  # aggregates only: a larger file is not loaded into a page
# Headline columns of the Runs page: (column, SQL LIKE pattern over metric names, aggregate).
KEY_METRICS = (
    ("test accuracy", "performance.test_accuracy", "MAX"),
    ("anomaly AUROC", "performance.test_anomaly_auroc", "MAX"),
    ("max fairness gap", "fairness.%difference", "MAX"),
    ("max MIA AUC", "privacy.%.auc", "MAX"),
    ("empirical ε", "privacy.empirical_epsilon", "MAX"),
    ("min robust accuracy", "robustness.%accuracy%", "MIN"),
)
READ_ERRORS = (TrustlabError, OSError, ValueError, TypeError, KeyError, AttributeError)


def store_root() -> Path:
    """The store the launcher named (``TRUSTLAB_DASHBOARD_STORE``), else ``./store``."""
    return Path(os.environ.get(STORE_ENV, DEFAULT_STORE)).resolve()


def index_stamp(root: Path) -> float:
    """Modification time of the index (0.0 when there is none): the cache key of index reads."""
    try:
        return (root / INDEX).stat().st_mtime
    except OSError:
        return 0.0


def _query(root: str, sql: str, params: tuple = ()) -> pd.DataFrame:
    path = Path(root) / INDEX
    if not path.is_file():
        return pd.DataFrame()
    uri = f"{path.as_uri()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=10)) as db:
        return pd.read_sql_query(sql, db, params=params)


@st.cache_data(show_spinner=False, max_entries=64)
def runs_frame(root: str, stamp: float) -> pd.DataFrame:
    """One row per indexed run: identity, status, auditor statuses and the headline metrics."""
    runs = _query(root, "SELECT run_id, created, name, arch, dataset, status FROM runs "
                        "ORDER BY created DESC, run_id DESC")
    if runs.empty:
        return runs
    results = _query(root, "SELECT run_id, auditor, status FROM results")
    if not results.empty:
        statuses = results.pivot(index="run_id", columns="auditor", values="status")
        runs = runs.join(statuses.add_prefix("auditor:"), on="run_id")
    for column, pattern, aggregate in KEY_METRICS:
        values = _query(root, f"SELECT run_id, {aggregate}(value) AS v FROM metrics "
                              "WHERE name LIKE ? GROUP BY run_id", (pattern,))
        runs[column] = runs["run_id"].map(values.set_index("run_id")["v"]) \
            if not values.empty else float("nan")
    findings = _query(root, "SELECT run_id, COUNT(*) AS n FROM findings "
                            "WHERE severity IN ('medium', 'high') GROUP BY run_id")
    runs["serious findings"] = runs["run_id"].map(
        findings.set_index("run_id")["n"] if not findings.empty else {}).fillna(0).astype(int)
    return runs.dropna(axis=1, how="all")


@st.cache_data(show_spinner=False, max_entries=64)
def metric_names(root: str, stamp: float) -> list[str]:
    """Every metric name in the store, sorted."""
    names = _query(root, "SELECT DISTINCT name FROM metrics ORDER BY name")
    return names["name"].tolist() if not names.empty else []


@st.cache_data(show_spinner=False, max_entries=64)
def metric_trend(root: str, stamp: float, name: str) -> pd.DataFrame:
    """One metric across runs: created, model name, run_id, value and CI."""
    return _query(root, "SELECT r.created, r.name AS model, r.run_id, m.value, m.ci_low, "
                        "m.ci_high FROM metrics m JOIN runs r USING (run_id) WHERE m.name = ? "
                        "ORDER BY r.created", (name,))


@st.cache_data(show_spinner=False, max_entries=64)
def run_metrics(root: str, stamp: float, run_id: str) -> pd.DataFrame:
    """The indexed metrics of one run (name, value, ci_low, ci_high)."""
    return _query(root, "SELECT name, value, ci_low, ci_high FROM metrics WHERE run_id = ? "
                        "ORDER BY name", (run_id,))


@st.cache_data(show_spinner=False, max_entries=64)
def run_findings(root: str, stamp: float, run_id: str) -> pd.DataFrame:
    """The indexed findings of one run."""
    return _query(root, "SELECT auditor, severity, message, metric FROM findings "
                        "WHERE run_id = ?", (run_id,))


def run_dir(root: Path, run_id: str) -> Path:
    """The folder of ``run_id``; a name that could leave ``runs/`` is refused."""
    if not run_id or "/" in run_id or "\\" in run_id or run_id.startswith("."):
        raise TrustlabError(f"invalid run id {run_id!r}")
    return root / "runs" / run_id


@dataclass(frozen=True)
class LoadedReport:
    """A report read from disk, or the reason it could not be read."""

    run_id: str
    report: Report | None
    error: str | None = None


def load_report(root: Path, run_id: str) -> LoadedReport:
    """Read one run's report.json; a missing or corrupted file gives ``error``, never raises."""
    try:
        path = run_dir(root, run_id) / "report.json"
        return _load_report(str(path), path.stat().st_mtime, run_id)
    except READ_ERRORS as exc:
        return LoadedReport(run_id, None, f"{type(exc).__name__}: {exc}")


@st.cache_data(show_spinner=False, max_entries=32)
def _load_report(path: str, mtime: float, run_id: str) -> LoadedReport:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise TrustlabError("report.json does not hold a JSON object")
        return LoadedReport(run_id, Report.from_dict(data))
    except (json.JSONDecodeError, *READ_ERRORS) as exc:
        return LoadedReport(run_id, None, f"{type(exc).__name__}: {exc}")


def artifact_file(root: Path, run_id: str, artifact: Artifact) -> Path:
    """The artifact's file inside its run folder; paths leaving the folder or too big raise."""
    folder = run_dir(root, run_id).resolve()
    path = (folder / artifact.path).resolve()
    if not path.is_relative_to(folder):
        raise TrustlabError(f"artifact {artifact.name!r} points outside its run folder")
    if not path.is_file():
        raise TrustlabError(f"artifact {artifact.name!r} is missing ({artifact.path})")
    if path.stat().st_size > MAX_ARTIFACT_BYTES:
        raise TrustlabError(f"artifact {artifact.name!r} is larger than "
                            f"{MAX_ARTIFACT_BYTES // 2**20} MiB; the dashboard shows aggregates")
    return path


@st.cache_data(show_spinner=False, max_entries=128)
def read_text(path: str, mtime: float) -> str:
    """A cached UTF-8 read of a file the caller already validated."""
    return Path(path).read_text(encoding="utf-8")


def read_artifact_text(root: Path, run_id: str, artifact: Artifact) -> str:
    path = artifact_file(root, run_id, artifact)
    return read_text(str(path), path.stat().st_mtime)


def model_card(root: Path, run_id: str) -> dict[str, str]:
    """The run's generated model card files that exist: {"md": text, "html": text}."""
    cards = {}
    for kind in ("md", "html"):
        path = run_dir(root, run_id) / f"card.{kind}"
        if path.is_file() and path.stat().st_size <= MAX_ARTIFACT_BYTES:
            cards[kind] = read_text(str(path), path.stat().st_mtime)
    return cards


def split_front_matter(markdown: str) -> tuple[str, str]:
    """(YAML metadata, body) of a Hugging Face style card; metadata is "" when there is none."""
    if markdown.startswith("---\n"):
        end = markdown.find("\n---", 4)
        if end != -1:
            return markdown[4:end].strip(), markdown[end + 4:].lstrip("\n")
    return "", markdown


def table_frame(obj: object) -> tuple[pd.DataFrame | None, dict]:
    """A JSON table artifact as (rows, scalar fields): a list of records, or a dict holding one
    (``{"attack": "lira", "examples": [...]}``). Nested cells become text; rows is None when the
    JSON holds no list of records."""
    scalars = {}
    records = obj if isinstance(obj, list) else None
    if isinstance(obj, dict):
        scalars = {k: v for k, v in obj.items() if isinstance(v, (str, int, float, bool))}
        records = next((v for v in obj.values() if isinstance(v, list) and v
                        and all(isinstance(r, dict) for r in v)), None)
    if not records or not all(isinstance(r, dict) for r in records):
        return None, scalars
    frame = pd.DataFrame.from_records(records)
    for column in frame.columns:
        if frame[column].map(lambda v: isinstance(v, (list, dict))).any():
            frame[column] = frame[column].map(json.dumps)
    return frame, scalars
