"""Model cards: front matter parses and equals the report, HTML escapes, caveats from findings,
energy measured from RAPL counters or estimated and labelled."""

from __future__ import annotations

import math

import pytest
import yaml

from trustlab.audit.cards import caveats, render_card, training_cost, write_cards
from trustlab.audit.energy import EnergyMeter, estimate_energy
from trustlab.audit.report import AuditResult, Report
from trustlab.audit.store import ReportStore


def make_report(privacy: dict | None = None, training: dict | None = None) -> Report:
    fairness = AuditResult("fairness")
    fairness.add_metric("sex.equalized_odds_difference", 0.12, (0.05, 0.31))
    fairness.add_metric("race.demographic_parity_difference", 0.04)
    fairness.add_metric("sex.unestimable", math.nan)
    fairness.add_finding("high", "equalized odds gap of 0.12 between <b>Female</b> and Male",
                         "fairness.sex.equalized_odds_difference")
    fairness.add_finding("info", "boilerplate-free info note")
    performance = AuditResult("performance")
    performance.add_metric("test_accuracy", 0.85, (0.84, 0.86))
    broken = AuditResult("robustness", status="errored", error="RuntimeError: no gradients")
    subject = {"name": "adult-mlp", "arch": "mlp", "task": "classification", "dataset": "adult",
               "modality": "tabular", "sensitive_features": ["sex", "race"],
               "split_sizes": {"train": 10, "val": 2, "holdout": 3, "test": 5},
               "training": training or {"wall_time_s": 12.0, "epochs_run": 3, "seed": 0},
               "hardware": {"device": "cpu", "cpu": "x86_64", "threads": 2},
               "privacy": privacy}
    return Report(run_id="r1", subject=subject, results=[fairness, performance, broken],
                  created="2026-01-01T00:00:00Z",
                  provenance={"tier": "smoke", "seed": 0, "config_hash": "abc",
                              "policy": [{"rule": "fairness.sex.equalized_odds_difference <= 0.1",
                                          "status": "failed", "measured": 0.12, "bound": 0.1,
                                          "message": "0.12 violates <= 0.1"}]})


def front_matter(markdown: str) -> dict:
    assert markdown.startswith("---\n")
    return yaml.safe_load(markdown.split("---\n")[1])


def test_front_matter_parses_and_its_metrics_equal_the_reports():
    report = make_report()
    meta = front_matter(render_card(report, "md"))
    results = meta["model-index"][0]["results"][0]
    assert results["task"]["type"] == "tabular-classification"
    assert results["dataset"]["name"] == "adult"
    metrics = {m["type"]: m["value"] for m in results["metrics"]}
    finite = {k: m.value for k, m in report.metrics().items() if math.isfinite(m.value)}
    assert metrics == finite and "fairness.sex.unestimable" not in metrics
    assert meta["trustlab"]["policy_not_passed"] == [
        "fairness.sex.equalized_odds_difference <= 0.1"]


def test_sections_and_disaggregation():
    card = render_card(make_report(privacy={"epsilon": 3.0, "delta": 1e-5,
                                            "accountant": "rdp", "clipping": "flat"}), "md")
    for section in ("Model details", "Intended use", "Factors", "Metrics", "Evaluation data",
                    "Training data", "Quantitative analyses", "Ethical considerations",
                    "Caveats and recommendations", "Robustness", "Privacy", "Training cost",
                    "Provenance"):
        assert f"## {section}" in card
    by_sex = card.split("### By sex")[1].split("### By race")[0]
    assert "fairness.sex.equalized_odds_difference" in by_sex and "race." not in by_sex
    assert "ε = 3 at δ = 1e-05 (rdp accountant)." in card
    for fmt in ("md", "html"):
        secure = render_card(make_report(privacy={"epsilon": 3.0, "delta": 1e-5,
                                                  "secure_mode": True,
                                                  "clipping": "per_layer"}), fmt)
        assert "drawn from a CSPRNG (secure mode); per-layer clipping" in secure
    assert "clipping" not in card.split("## Privacy")[1].split("##")[0]  # flat: nothing said


def test_caveats_come_from_the_run():
    notes = caveats(make_report())
    assert notes[0].startswith("[high] equalized odds gap of 0.12")
    assert not any("boilerplate-free" in n for n in notes)  # info findings are not caveats
    assert any("robustness audit errored (RuntimeError: no gradients)" in n for n in notes)
    assert any("`fairness.sex.equalized_odds_difference <= 0.1` failed" in n for n in notes)
    assert any("Not audited in this run: adversarial robustness, membership inference, "
               "explanations" in n
               for n in notes)
    assert any("fairness.sex.equalized_odds_difference" in n and "Imprecise" in n for n in notes)
    assert any("without differential privacy" in n for n in notes)
    assert not any("without differential privacy" in n
                   for n in caveats(make_report(privacy={"epsilon": 1.0, "delta": 1e-5})))


def test_html_is_autoescaped_and_files_are_written(tmp_path):
    report = make_report()
    html = render_card(report, "html")
    assert "&lt;b&gt;Female&lt;/b&gt;" in html and "<b>Female</b>" not in html
    store = ReportStore(tmp_path)
    store.save(report)
    paths = write_cards(report, store)
    assert [p.name for p in paths] == ["card.md", "card.html"]
    assert all(p.parent == store.run_dir("r1") for p in paths)


def test_energy_is_an_estimate_unless_recorded():
    cost = training_cost(make_report())
    assert not cost["energy"].measured and cost["energy"].source == "estimate"
    assert cost["energy"].joules == pytest.approx(12.0 * 2 * 10.0)
    assert "ESTIMATE" in render_card(make_report(), "md")
    recorded = {"joules": 500.0, "wall_time_s": 12.0, "source": "rapl", "measured": True,
                "note": "RAPL"}
    measured = training_cost(make_report(training={"wall_time_s": 12.0, "energy": recorded}))
    assert measured["energy"].measured and measured["energy"].joules == 500.0


def test_rapl_counters_are_read_with_wraparound(tmp_path):
    package = tmp_path / "intel-rapl:0"
    (tmp_path / "intel-rapl:0:0").mkdir(parents=True)  # a sub-domain: must not be counted twice
    (tmp_path / "intel-rapl:0:0" / "energy_uj").write_text("5")
    package.mkdir()
    (package / "energy_uj").write_text("999000000")
    (package / "max_energy_range_uj").write_text("1000000000")
    with EnergyMeter({"threads": 2}, powercap=tmp_path) as meter:
        (package / "energy_uj").write_text("1000000")  # wrapped: 1e6 + 1e9 - 999e6 µJ = 2 J
    assert meter.reading.source == "rapl" and meter.reading.measured
    assert meter.reading.joules == pytest.approx(2.0)
    with EnergyMeter({"threads": 4}, powercap=tmp_path / "none") as meter:
        pass
    assert meter.reading.source == "estimate" and "estimated, not measured" in meter.reading.note
    assert estimate_energy(10.0, {"gpu": "H100"}).joules == pytest.approx(3000.0)
