"""Report store: round trip, SQLite index, atomic writes, errored auditors recorded."""

from __future__ import annotations

import json
import os

import pytest

from trustlab.audit.report import AuditResult, Report
from trustlab.audit.runner import AuditConfig, audit, register_auditor
from trustlab.audit.store import ReportStore
from trustlab.errors import TrustlabError


def _report(run_id: str, value: float) -> Report:
    result = AuditResult("fake")
    result.add_metric("sex.gap", value, (value - 0.1, value + 0.1))
    result.add_finding("high", "a finding", "fake.sex.gap")
    return Report(run_id=run_id, subject={"name": "m", "arch": "mlp", "dataset": "adult"},
                  results=[result], created="2026-01-01T00:00:00Z")


def test_round_trip_and_index(tmp_path):
    store = ReportStore(tmp_path)
    store.save(_report("r1", 0.25))
    loaded = store.load("r1")
    assert loaded.metrics()["fake.sex.gap"].value == 0.25
    assert loaded.metrics()["fake.sex.gap"].ci_high == pytest.approx(0.35)
    assert [r["run_id"] for r in store.list_runs()] == ["r1"]
    assert store.metric_values("r1")["fake.sex.gap"]["ci_low"] == pytest.approx(0.15)


def test_crash_mid_write_leaves_old_report_readable(tmp_path, monkeypatch):
    store = ReportStore(tmp_path)
    store.save(_report("r1", 0.25))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.save(_report("r1", 0.99))
    monkeypatch.undo()
    assert store.load("r1").metrics()["fake.sex.gap"].value == 0.25
    assert not list((tmp_path / "runs" / "r1").glob(".*.tmp"))


def test_corrupted_report_is_named(tmp_path):
    store = ReportStore(tmp_path)
    store.save(_report("r1", 0.25))
    (tmp_path / "runs" / "r1" / "report.json").write_text("{")
    with pytest.raises(TrustlabError, match="report.json is corrupted"):
        store.load("r1")


def test_index_can_be_rebuilt_from_files(tmp_path):
    store = ReportStore(tmp_path)
    store.save(_report("r1", 0.25))
    store.save(_report("r2", 0.5))
    (tmp_path / "index.sqlite").unlink()
    assert ReportStore(tmp_path).rebuild_index() == 2


def test_nan_metrics_are_stored_as_null(tmp_path):
    store = ReportStore(tmp_path)
    report = _report("r1", float("nan"))
    store.save(report)
    raw = json.loads((tmp_path / "runs" / "r1" / "report.json").read_text())
    assert raw["results"][0]["metrics"]["fake.sex.gap"]["value"] is None


@register_auditor
class _Boom:
    name = "test-boom"

    def applies_to(self, subject) -> bool:
        return True

    def run(self, subject, config: AuditConfig) -> AuditResult:
        raise ValueError("the auditor broke")


def test_raising_auditor_is_recorded_as_errored(tmp_path, adult_mlp):
    store = ReportStore(tmp_path)
    report = audit(adult_mlp, auditors=["performance", "test-boom"], store=store,
                   show_progress=False)
    statuses = {r.auditor: r.status for r in report.results}
    assert statuses == {"performance": "passed", "test-boom": "errored"}
    assert "the auditor broke" in report.result("test-boom").error
    assert store.list_runs()[0]["status"] == "errored"
    assert store.load(report.run_id).result("performance").metrics


def test_performance_metrics_match_the_model(adult_mlp):
    report = audit(adult_mlp, auditors=["performance"], show_progress=False)
    test = adult_mlp.split("test")
    accuracy = (adult_mlp.logits(test.X).argmax(1) == test.y).mean()
    metric = report.metrics()["performance.test_accuracy"]
    assert metric.value == pytest.approx(accuracy)
    assert metric.ci_low < accuracy < metric.ci_high


def test_reader_refuses_a_missing_store_and_creates_nothing(tmp_path):
    with pytest.raises(TrustlabError, match=f"report store {tmp_path / 'typo'} does not exist"):
        ReportStore(tmp_path / "typo", create=False)
    assert not (tmp_path / "typo").exists()
    ReportStore(tmp_path / "store").save(_report("r1", 0.25))
    assert ReportStore(tmp_path / "store", create=False).load("r1").run_id == "r1"
