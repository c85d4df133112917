"""The report store: ``runs/<run_id>/report.json`` + artifacts, and a SQLite index over them.

A run is written into a staging folder and renamed into place, so readers never see half a
run; rewriting an existing report replaces the file atomically. The index is derived data: it
can always be rebuilt from the report files (``rebuild_index``).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
import uuid
from contextlib import closing
from pathlib import Path

from trustlab.audit.report import Report
from trustlab.errors import TrustlabError
from trustlab.train.checkpoint import atomic_write_json

INDEX = "index.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, created TEXT, name TEXT, arch TEXT, dataset TEXT,
    status TEXT, schema_version TEXT, report_path TEXT);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT, name TEXT, value REAL, ci_low REAL, ci_high REAL,
    PRIMARY KEY (run_id, name));
CREATE TABLE IF NOT EXISTS findings (
    run_id TEXT, auditor TEXT, severity TEXT, message TEXT, metric TEXT);
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT, auditor TEXT, status TEXT, error TEXT, duration_s REAL,
    PRIMARY KEY (run_id, auditor));
CREATE INDEX IF NOT EXISTS metrics_by_name ON metrics (name);
"""


def new_run_id(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40]
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{safe}-{uuid.uuid4().hex[:6]}"


class ReportStore:
    """A directory of runs with a SQLite index; see the module docstring for the layout."""

    def __init__(self, root: str | Path, *, create: bool = True) -> None:
        """Open the store at ``root``; ``create=False`` (readers) refuses a missing store
        instead of creating an empty one at a mistyped path."""
        self.root = Path(root)
        self.runs_dir = self.root / "runs"
        if not create and not self.runs_dir.is_dir():
            raise TrustlabError(f"report store {self.root} does not exist (no {self.runs_dir}): "
                                "pass --store DIR of an existing store, or fill one with "
                                "`trustlab demo` or `trustlab audit`")
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.root / INDEX, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    def run_dir(self, run_id: str) -> Path:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise TrustlabError(f"invalid run id {run_id!r}")
        return self.runs_dir / run_id

    def staging_dir(self, run_id: str) -> Path:
        """Where a run in progress writes its artifacts before ``save`` moves them into place."""
        path = self.runs_dir / f".staging-{run_id}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def save(self, report: Report) -> Path:
        """Write ``report`` (and its staged artifacts) and index it; atomic at each step."""
        final = self.run_dir(report.run_id)
        staging = self.runs_dir / f".staging-{report.run_id}"
        if final.exists():
            if staging.exists():  # artifacts of a re-run replace the old ones
                for item in staging.iterdir():
                    target = final / item.name
                    if target.is_dir():
                        shutil.rmtree(target)
                    item.replace(target)
                staging.rmdir()
            atomic_write_json(final / "report.json", report.to_dict())
        else:
            staging.mkdir(parents=True, exist_ok=True)
            atomic_write_json(staging / "report.json", report.to_dict())
            staging.replace(final)
        self._index(report)
        return final

    def _index(self, report: Report) -> None:
        subject = report.subject
        with closing(self._connect()) as db, db:
            db.execute("DELETE FROM metrics WHERE run_id = ?", (report.run_id,))
            db.execute("DELETE FROM findings WHERE run_id = ?", (report.run_id,))
            db.execute("DELETE FROM results WHERE run_id = ?", (report.run_id,))
            db.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?)",
                       (report.run_id, report.created, subject.get("name"), subject.get("arch"),
                        subject.get("dataset"), report.status, report.schema_version,
                        f"runs/{report.run_id}/report.json"))
            db.executemany("INSERT INTO metrics VALUES (?,?,?,?,?)",
                           [(report.run_id, name, m.value, m.ci_low, m.ci_high)
                            for name, m in report.metrics().items()])
            db.executemany("INSERT INTO findings VALUES (?,?,?,?,?)",
                           [(report.run_id, r.auditor, f.severity, f.message, f.metric)
                            for r in report.results for f in r.findings])
            db.executemany("INSERT INTO results VALUES (?,?,?,?,?)",
                           [(report.run_id, r.auditor, r.status, r.error, r.duration_s)
                            for r in report.results])

    def load(self, run_id: str) -> Report:
        """Read one run's report; a missing or corrupted file raises TrustlabError naming it."""
        path = self.run_dir(run_id) / "report.json"
        if not path.is_file():
            raise TrustlabError(f"run {run_id!r} not found in {self.root}")
        try:
            return Report.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TrustlabError(f"{path} is corrupted: {exc}") from exc

    def list_runs(self, limit: int | None = None) -> list[dict]:
        """Index rows of every run, newest first."""
        query = "SELECT * FROM runs ORDER BY created DESC, run_id DESC"
        params: tuple = ()
        if limit is not None:
            query, params = query + " LIMIT ?", (limit,)
        with closing(self._connect()) as db:
            return [dict(row) for row in db.execute(query, params)]

    def metric_values(self, run_id: str) -> dict[str, dict]:
        with closing(self._connect()) as db:
            rows = db.execute("SELECT name, value, ci_low, ci_high FROM metrics WHERE run_id = ?",
                              (run_id,))
            return {r["name"]: {"value": r["value"], "ci_low": r["ci_low"],
                                "ci_high": r["ci_high"]} for r in rows}

    def rebuild_index(self) -> int:
        """Re-index every readable report (e.g. after copying runs in); returns how many."""
        count = 0
        for path in sorted(self.runs_dir.glob("*/report.json")):
            try:
                report = Report.from_dict(json.loads(path.read_text()))
            except (json.JSONDecodeError, TrustlabError):
                continue
            self._index(report)
            count += 1
        return count
