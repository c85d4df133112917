"""Report data model: metrics (with CIs), findings, artifacts, one AuditResult per auditor.

The JSON form is documented in docs/report-schema.md and versioned by ``SCHEMA_VERSION``.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from trustlab.errors import TrustlabError

SCHEMA_VERSION = "1.0"
STATUSES = ("passed", "failed", "errored")
SEVERITIES = ("info", "low", "medium", "high")
METRIC_NAME = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-<>=+]+)*$")


@dataclass
class Metric:
    """A measured value, with a confidence interval where it is an estimate."""

    value: float
    ci_low: float | None = None
    ci_high: float | None = None

    def to_dict(self) -> dict:
        return {k: _finite_or_none(v) for k, v in asdict(self).items()}


@dataclass
class Finding:
    """Something a reader must know: ``severity`` is one of info, low, medium, high."""

    severity: str
    message: str
    metric: str | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise TrustlabError(f"finding severity must be one of {SEVERITIES}, "
                                f"got {self.severity!r}")


@dataclass
class Artifact:
    """A file an auditor produced, relative to the run folder (plot, image grid, array)."""

    name: str
    path: str
    kind: str  # "plot" (plotly JSON), "image" (PNG), "html", "table" (JSON/CSV), "array" (.npy)
    description: str = ""


@dataclass
class AuditResult:
    """What one auditor returns: metrics by dotted name, findings, artifacts and a status."""

    auditor: str
    status: str = "passed"
    metrics: dict[str, Metric] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    error: str | None = None
    config: dict = field(default_factory=dict)
    duration_s: float = 0.0

    def add_metric(self, name: str, value: float, ci: tuple[float, float] | None = None) -> None:
        """Record ``<auditor>.<name>`` (the auditor prefix is added here)."""
        full = f"{self.auditor}.{name}"
        if not METRIC_NAME.match(full):
            raise TrustlabError(f"invalid metric name {full!r}: use dotted [A-Za-z0-9_-] parts")
        low, high = ci if ci is not None else (None, None)
        self.metrics[full] = Metric(float(value), _opt_float(low), _opt_float(high))

    def add_finding(self, severity: str, message: str, metric: str | None = None) -> None:
        self.findings.append(Finding(severity, message, metric))

    def to_dict(self) -> dict:
        return {"auditor": self.auditor, "status": self.status, "error": self.error,
                "duration_s": self.duration_s, "config": self.config,
                "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
                "findings": [asdict(f) for f in self.findings],
                "artifacts": [asdict(a) for a in self.artifacts]}

    @classmethod
    def from_dict(cls, data: dict) -> "AuditResult":
        return cls(auditor=data["auditor"], status=data["status"], error=data.get("error"),
                   duration_s=data.get("duration_s", 0.0), config=data.get("config", {}),
                   metrics={k: Metric(**_nan_for_none(m)) for k, m in data["metrics"].items()},
                   findings=[Finding(**f) for f in data.get("findings", [])],
                   artifacts=[Artifact(**a) for a in data.get("artifacts", [])])


@dataclass
class Report:
    """All AuditResults of one run plus the subject's description and provenance."""

    run_id: str
    subject: dict  # name, arch, dataset, task, checkpoint, training metrics, privacy facts
    results: list[AuditResult] = field(default_factory=list)
    provenance: dict = field(default_factory=dict)  # versions, seed, config hash, hardware
    created: str = ""
    schema_version: str = SCHEMA_VERSION

    @property
    def status(self) -> str:
        """errored if any auditor errored, else failed if any failed, else passed."""
        statuses = {r.status for r in self.results}
        return next((s for s in ("errored", "failed") if s in statuses), "passed")

    def metrics(self) -> dict[str, Metric]:
        """Every metric of the run in one flat map of dotted names."""
        return {name: m for r in self.results for name, m in r.metrics.items()}

    def result(self, auditor: str) -> AuditResult | None:
        return next((r for r in self.results if r.auditor == auditor), None)

    def to_dict(self) -> dict:
        return {"schema_version": self.schema_version, "run_id": self.run_id,
                "created": self.created, "status": self.status, "subject": self.subject,
                "provenance": self.provenance, "results": [r.to_dict() for r in self.results]}

    @classmethod
    def from_dict(cls, data: dict) -> "Report":
        major = str(data.get("schema_version", "")).split(".")[0]
        if major != SCHEMA_VERSION.split(".")[0]:
            raise TrustlabError(f"report schema_version {data.get('schema_version')!r} is not "
                                f"readable by this trustlab (schema {SCHEMA_VERSION})")
        try:
            return cls(run_id=data["run_id"], subject=data["subject"],
                       results=[AuditResult.from_dict(r) for r in data["results"]],
                       provenance=data.get("provenance", {}), created=data.get("created", ""),
                       schema_version=data["schema_version"])
        except (KeyError, TypeError) as exc:
            raise TrustlabError(f"report is missing or has a malformed field: {exc}") from exc


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN/inf: store them as null."""
    return None if value is None or not math.isfinite(value) else value


def _nan_for_none(metric: dict) -> dict:
    return {**metric, "value": math.nan if metric.get("value") is None else metric["value"]}
