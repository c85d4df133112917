"""A Markdown summary of a gate, fit for a CI step summary or a pull-request comment."""

from __future__ import annotations

from pathlib import Path

from trustlab.audit.pipeline import GateResult
from trustlab.audit.report import SEVERITIES
from trustlab.train.checkpoint import atomic_write_bytes

ICONS = {"passed": "✅", "failed": "❌", "errored": "⚠️", "skipped": "⏭️"}
VERDICTS = {0: "passed", 1: "failed: a policy rule is violated",
            2: "errored: a rule could not be evaluated or an auditor errored"}
MAX_FINDINGS = 10


def markdown_summary(gate: GateResult) -> str:
    """Verdict, the rules with measured value, bound and CI, the auditors, the main findings."""
    report = gate.report
    lines = [f"## trustlab audit: {report.subject['name']} — "
             f"{ICONS['passed' if gate.passed else 'failed']} {VERDICTS[gate.exit_code]}", "",
             f"Run `{report.run_id}` · tier `{report.provenance.get('tier')}` · seed "
             f"`{report.provenance.get('seed')}`"
             + (f" · baseline `{gate.baseline}`" if gate.baseline else ""), ""]
    if gate.rules:
        lines += ["| | rule | measured | bound | 95% CI |", "|---|---|---|---|---|"]
        lines += [f"| {ICONS[r.status]} | {_cell(r.name)} | {_number(r.measured)} | "
                  f"{_number(r.bound)} | {_ci(r.ci)} |" for r in gate.rules]
        lines += [f"- {ICONS[r.status]} {_cell(r.name)}: {r.message}" for r in gate.rules
                  if r.status in ("errored", "skipped")]
    else:
        lines.append("_The spec has no policy rules: nothing is gated._")
    lines += ["", "| auditor | status | time (s) |", "|---|---|---|"]
    lines += [f"| {r.auditor} | {ICONS[r.status] if r.status in ICONS else ''} {r.status}"
              f"{' (cached)' if r.auditor in gate.cached else ''} | {r.duration_s:.1f} |"
              for r in report.results]
    lines += [f"\n**{r.auditor} errored:** `{_cell(r.error or '')}`" for r in report.results
              if r.status == "errored"]
    findings = sorted(((f, r.auditor) for r in report.results for f in r.findings
                       if f.severity != "info"),
                      key=lambda item: -SEVERITIES.index(item[0].severity))
    if findings:
        lines += ["", "**Findings**", ""]
        lines += [f"- **{f.severity}** ({auditor}): {f.message}"
                  for f, auditor in findings[:MAX_FINDINGS]]
        if len(findings) > MAX_FINDINGS:
            lines.append(f"- … and {len(findings) - MAX_FINDINGS} more in the report")
    return "\n".join(lines) + "\n"


def write_summary(gate: GateResult, path: str | Path) -> Path:
    path = Path(path)
    atomic_write_bytes(path, markdown_summary(gate).encode())
    return path


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _ci(ci: tuple | None) -> str:
    return "—" if not ci or None in ci else f"[{ci[0]:.4g}, {ci[1]:.4g}]"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
