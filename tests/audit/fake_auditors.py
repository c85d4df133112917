"""Small auditors for the pipeline tests, registered on import (a spec's ``plugins`` entry).

They stand in for the real ones (fairness, robustness, privacy) so these tests depend only on
the pipeline: a seeded estimate, a run counter, an auditor that blocks until released (for the
SIGINT test), one that interrupts the run and one that raises.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from trustlab.audit.report import AuditResult
from trustlab.audit.runner import AuditConfig, register_auditor


@register_auditor
class SeededAuditor:
    """A seeded estimate with a CI, a per-group metric and an artifact."""

    name = "fake_seeded"

    def applies_to(self, subject) -> bool:
        return True

    def run(self, subject, config: AuditConfig) -> AuditResult:
        result = AuditResult(self.name)
        draws = np.random.default_rng(config.seed).random(200) + config.params.get("offset", 0.0)
        spread = 1.96 * draws.std() / np.sqrt(len(draws))
        result.add_metric("score", draws.mean(), (draws.mean() - spread, draws.mean() + spread))
        result.add_metric("sex.gap", float(draws[:100].mean() - draws[100:].mean()))
        path, artifact = config.artifact("draws.json", "table", "the draws")
        path.write_text(json.dumps(draws.tolist()))
        result.artifacts.append(artifact)
        result.add_finding("high", "score <script>alert(1)</script> looks suspicious",
                           "fake_seeded.score")
        return result


@register_auditor
class CountingAuditor:
    """Appends a line to ``params['log']`` every time it runs."""

    name = "fake_counter"

    def applies_to(self, subject) -> bool:
        return True

    def run(self, subject, config: AuditConfig) -> AuditResult:
        with open(config.params["log"], "a") as handle:
            handle.write("ran\n")
        result = AuditResult(self.name)
        result.add_metric("value", 1.0)
        return result


@register_auditor
class BlockingAuditor:
    """Touches ``params['started']``, then waits while ``params['block']`` exists."""

    name = "fake_blocking"

    def applies_to(self, subject) -> bool:
        return True

    def run(self, subject, config: AuditConfig) -> AuditResult:
        Path(config.params["started"]).touch()
        deadline = time.monotonic() + 120
        while Path(config.params["block"]).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        result = AuditResult(self.name)
        result.add_metric("value", 2.0)
        return result


@register_auditor
class InterruptedAuditor:
    """Acts as Ctrl-C in the middle of the audit while ``params['block']`` exists."""

    name = "fake_interrupted"

    def applies_to(self, subject) -> bool:
        return True

    def run(self, subject, config: AuditConfig) -> AuditResult:
        path, _ = config.artifact("partial.txt", "table")
        path.write_text("half-written")
        if Path(config.params["block"]).exists():
            raise KeyboardInterrupt
        result = AuditResult(self.name)
        result.add_metric("value", 3.0)
        return result


@register_auditor
class BrokenAuditor:
    name = "fake_broken"

    def applies_to(self, subject) -> bool:
        return True

    def run(self, subject, config: AuditConfig) -> AuditResult:
        raise RuntimeError("boom")


FAKES = (SeededAuditor, CountingAuditor, BlockingAuditor, InterruptedAuditor, BrokenAuditor)
