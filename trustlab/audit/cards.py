"""Model cards from an audit run: Markdown with Hugging Face YAML metadata, and HTML.

Sections follow Mitchell et al. 2019 (model details, intended use, factors, metrics, evaluation
and training data, quantitative analyses by group, ethical considerations, caveats) plus
robustness, privacy (claimed and empirical ε), training cost and provenance. Everything comes
from the run's report; caveats are written from its findings, errors and gaps.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml
from jinja2 import Environment, PackageLoader, select_autoescape

from trustlab.audit.energy import EnergyReading, estimate_energy
from trustlab.audit.report import SEVERITIES, Metric, Report
from trustlab.audit.store import ReportStore
from trustlab.train.checkpoint import atomic_write_bytes

FORMATS = ("md", "html")
AUDIT_FAMILIES = {"fairness": "fairness (disaggregated error rates)",
                  "robustness": "adversarial robustness", "privacy": "membership inference",
                  "explain": "explanations"}
WIDE_CI = 0.10
MAX_LISTED = 8
TASK_TYPES = {("tabular", "classification"): "tabular-classification",
              ("image", "classification"): "image-classification",
              ("tabular", "reconstruction"): "anomaly-detection"}

_ENV = Environment(loader=PackageLoader("trustlab.audit", "templates"),
                   autoescape=select_autoescape(enabled_extensions=("html.j2",),
                                                default_for_string=False),
                   trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
_ENV.filters["num"] = lambda v, digits=4: "—" if v is None or (isinstance(v, float) and
                                                               math.isnan(v)) else f"{v:.{digits}g}"
_ENV.filters["cell"] = lambda text: str(text).replace("|", "\\|").replace("\n", " ")


def front_matter(report: Report) -> dict:
    """Hugging Face model-card metadata; ``model-index`` holds every finite metric of the run."""
    subject = report.subject
    task = TASK_TYPES.get((subject.get("modality"), subject.get("task")), subject.get("task"))
    metrics = [{"type": name, "name": name, "value": m.value, "verified": False}
               for name, m in report.metrics().items() if math.isfinite(m.value)]
    card = report.provenance.get("card") or {}
    meta = {"library_name": "pytorch", "tags": ["trustlab", "audit", str(subject.get("arch"))],
            "datasets": [subject.get("dataset")],
            "model-index": [{"name": subject.get("name"), "results": [{
                "task": {"type": task},
                "dataset": {"type": subject.get("dataset"), "name": subject.get("dataset")},
                "metrics": metrics}]}],
            "trustlab": {"run_id": report.run_id, "schema_version": report.schema_version,
                         "status": report.status, "tier": report.provenance.get("tier"),
                         "seed": report.provenance.get("seed"),
                         "policy_not_passed": [p["rule"] for p in report.provenance.get("policy")
                                               or [] if p["status"] != "passed"]}}
    if card.get("license"):
        meta["license"] = card["license"]
    return meta


def card_context(report: Report) -> dict:
    """Everything the templates show, computed once from the report."""
    subject, metrics = report.subject, report.metrics()
    sensitive = subject.get("sensitive_features") or []
    return {"report": report, "subject": subject, "card": report.provenance.get("card") or {},
            "provenance": report.provenance, "metrics": _rows(metrics),
            "by_group": {f: _rows({n: m for n, m in metrics.items() if f in n.split(".")})
                         for f in sensitive},
            "robustness": _rows({n: m for n, m in metrics.items()
                                 if n.startswith("robustness.")}),
            "privacy": privacy_facts(report), "cost": training_cost(report),
            "caveats": caveats(report), "policy": report.provenance.get("policy") or [],
            "audited": sorted({r.auditor for r in report.results})}


def render_card(report: Report, fmt: str = "md") -> str:
    """The card of ``report`` as Markdown (with YAML front matter) or HTML."""
    if fmt not in FORMATS:
        from trustlab.errors import ConfigError
        raise ConfigError(f"card format must be one of {FORMATS}, got {fmt!r}")
    context = card_context(report)
    body = _ENV.get_template(f"card.{fmt}.j2").render(**context)
    if fmt == "html":
        return body
    return "---\n" + yaml.safe_dump(front_matter(report), sort_keys=False) + "---\n\n" + body


def write_cards(report: Report, store: ReportStore) -> list[Path]:
    """Write ``card.md`` and ``card.html`` into the run's folder in ``store``."""
    paths = []
    for fmt in FORMATS:
        path = store.run_dir(report.run_id) / f"card.{fmt}"
        atomic_write_bytes(path, render_card(report, fmt).encode())
        paths.append(path)
    return paths


def privacy_facts(report: Report) -> dict:
    """Claimed (ε, δ) from DP training and every empirical privacy metric of the run."""
    metrics = report.metrics()
    claimed = report.subject.get("privacy") or None
    empirical = {n: m for n, m in metrics.items() if n.startswith("privacy.")}
    epsilon = next((m for n, m in empirical.items() if n.endswith("empirical_epsilon")), None)
    return {"claimed": claimed, "empirical_epsilon": epsilon, "metrics": _rows(empirical)}


def training_cost(report: Report) -> dict:
    """Wall time, hardware and energy of training (measured if recorded, else an estimate)."""
    training = report.subject.get("training") or {}
    hardware = report.subject.get("hardware") or report.provenance.get("hardware") or {}
    wall = training.get("wall_time_s")
    recorded = training.get("energy")
    if isinstance(recorded, dict) and "joules" in recorded:
        energy: EnergyReading | None = EnergyReading(**recorded)
    else:
        energy = estimate_energy(float(wall), hardware) if wall is not None else None
    return {"wall_time_s": wall, "epochs": training.get("epochs_run"), "hardware": hardware,
            "energy": energy, "audit_energy": report.provenance.get("audit_energy")}


def caveats(report: Report) -> list[str]:
    """What a reader must keep in mind, from this run's findings, errors, failures and gaps."""
    notes = []
    findings = sorted(((f, r.auditor) for r in report.results for f in r.findings
                       if f.severity != "info"),
                      key=lambda item: -SEVERITIES.index(item[0].severity))
    notes += [f"[{f.severity}] {f.message} ({auditor})" for f, auditor in findings]
    notes += [f"The {r.auditor} audit errored ({r.error}); its risks are unassessed."
              for r in report.results if r.status == "errored"]
    notes += [f"Policy rule `{p['rule']}` {p['status']}: {p['message']}"
              for p in report.provenance.get("policy") or [] if p["status"] != "passed"]
    audited = {r.auditor for r in report.results if r.status != "errored"}
    missing = [label for name, label in AUDIT_FAMILIES.items() if name not in audited]
    if missing:
        notes.append(f"Not audited in this run: {', '.join(missing)}. Absence of evidence is "
                     "not evidence of safety.")
    wide = [n for n, m in report.metrics().items() if m.ci_low is not None and
            m.ci_high is not None and m.ci_high - m.ci_low > WIDE_CI]
    if wide:
        more = f" and {len(wide) - MAX_LISTED} more" if len(wide) > MAX_LISTED else ""
        notes.append(f"Imprecise estimates (95% CI wider than {WIDE_CI}): "
                     f"{', '.join(wide[:MAX_LISTED])}{more}.")
    if report.provenance.get("tier") == "smoke":
        notes.append("Audited at the smoke tier (small samples for every push); release "
                     "decisions need the full tier.")
    if not report.subject.get("privacy"):
        notes.append("Trained without differential privacy: no formal bound on what the model "
                     "reveals about its training rows.")
    return notes


def _rows(metrics: dict[str, Metric]) -> list[dict]:
    return [{"name": n, "value": m.value, "ci_low": m.ci_low, "ci_high": m.ci_high}
            for n, m in sorted(metrics.items())]
