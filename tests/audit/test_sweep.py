"""The ε sweep: aggregation, Pareto fronts and the plot from fake runs; a real DP sweep (slow)."""

from __future__ import annotations

import json
import math

import pytest

from trustlab.audit import sweep
from trustlab.audit.runner import audit
from trustlab.audit.report import AuditResult, Report
from trustlab.audit.store import ReportStore
from trustlab.audit.sweep import (SweepPoint, SweepResult, SweepSettings, pareto_front,
                                  run_sweep, summarize)
from trustlab.errors import ConfigError
from trustlab.privacy.tracker import _TRACKERS

# Fake runs: (accuracy, worst equalized-odds gap, MIA TPR, robust accuracy) per ε.
FAKE = {0.5: (0.70, 0.02, 0.001, 0.30), 2.0: (0.80, 0.05, 0.002, 0.35),
        8.0: (0.78, 0.09, 0.004, 0.20), math.inf: (0.85, 0.12, 0.030, 0.40)}


def fake_point(settings: SweepSettings, epsilon: float) -> tuple[dict, dict[str, bytes]]:
    accuracy, gap, tpr, robust = FAKE[epsilon]
    performance, fairness = AuditResult("performance"), AuditResult("fairness")
    privacy, robustness = AuditResult("privacy"), AuditResult("robustness")
    performance.add_metric("test_accuracy", accuracy)
    fairness.add_metric("sex.equalized_odds_difference", gap)
    fairness.add_metric("race.equalized_odds_difference", gap / 2)
    privacy.add_metric("lira.tpr_at_0.001_fpr", tpr)
    robustness.add_metric("pgd_linf_0.1.accuracy", robust)
    robustness.add_metric("fgsm_linf_0.1.accuracy", robust + 0.1)
    subject = {"name": f"fake-eps{epsilon:g}", "arch": "mlp", "dataset": "adult",
               "task": "classification", "modality": "tabular"}
    report = Report(run_id=f"fake-{epsilon:g}", subject=subject,
                    results=[performance, fairness, privacy, robustness], created="2026")
    return report.to_dict(), {"performance/note.txt": b"hello"}


def test_summary_takes_the_worst_case_per_axis():
    values = summarize({"performance.test_accuracy": 0.8,
                        "fairness.sex.equalized_odds_difference": 0.1,
                        "fairness.race.equalized_odds_difference": 0.3,
                        "robustness.a.accuracy": 0.5,
                        "robustness.fgsm.eps_0p25.robust_accuracy": 0.2,
                        "robustness.per_class.x.robust_accuracy": 0.1,  # not an attack
                        "robustness.clean_accuracy": 0.9,
                        "privacy.lira.tpr_at_0.001_fpr": math.nan,
                        "privacy.lira.tpr_at_0.01_fpr": 0.02, "privacy.rmia.tpr_at_0.01_fpr": 0.03,
                        "privacy.rmia.tpr_at_0.1_fpr": 0.5})
    assert values == {"accuracy": 0.8, "fairness_gap": 0.3, "mia_tpr_at_low_fpr": 0.03,
                      "mia_fpr": 0.01, "robust_accuracy": 0.2}


def test_pareto_front_matches_brute_force():
    points = [SweepPoint(e, str(e), summarize({
        "performance.test_accuracy": a, "fairness.sex.equalized_odds_difference": g}))
        for e, (a, g, _, _) in FAKE.items()]
    front = pareto_front(points, "fairness_gap")
    # ε=8 is dominated by ε=2 (lower accuracy, larger gap); the others trade off.
    assert [p.epsilon for p in front] == [0.5, 2.0, math.inf]


def test_sweep_stores_runs_and_writes_the_plot(tmp_path):
    store = ReportStore(tmp_path / "store")
    settings = SweepSettings(epsilons=list(FAKE))
    result = run_sweep(settings, store, tmp_path / "out", point=fake_point)
    assert [p.values["robust_accuracy"] for p in result.points] == [v[3] for v in FAKE.values()]
    assert len(store.list_runs()) == 4
    assert (store.run_dir("fake-2") / "performance" / "note.txt").read_bytes() == b"hello"
    assert (store.run_dir("fake-2") / "card.md").is_file()
    data = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert data["points"][-1]["epsilon"] == "inf"
    figure = json.loads((tmp_path / "out" / "pareto.json").read_text())
    assert len(figure["data"]) == 2 * 3 + 4
    assert "inf" in result.table()
    assert isinstance(result, SweepResult)


def test_bad_epsilons_are_rejected():
    with pytest.raises(ConfigError, match="epsilons must be positive"):
        SweepSettings(epsilons=[0.0, 1.0])


@pytest.mark.slow
def test_real_sweep_trains_privately(tmp_path, monkeypatch):
    settings = SweepSettings(arch="mlp", dataset="german", epsilons=[1.0, math.inf], epochs=2,
                             auditors=["performance"])
    tracked = []  # whether each audited model still runs through the DP engine's taps

    def spy_audit(subject, **kwargs):
        tracked.append(any(m in _TRACKERS for m in subject.model.modules()))
        return audit(subject, **kwargs)

    monkeypatch.setattr(sweep, "audit", spy_audit)
    result = run_sweep(settings, ReportStore(tmp_path / "store"), tmp_path / "out")
    assert tracked == [False, False]
    private = ReportStore(tmp_path / "store").load(result.points[0].run_id)
    assert private.subject["privacy"]["epsilon"] == pytest.approx(1.0, rel=0.05)
    assert all(p.values["accuracy"] is not None for p in result.points)
    assert private.subject["training"]["energy"]["source"] in ("rapl", "nvml", "estimate")
