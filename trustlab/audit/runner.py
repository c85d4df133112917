"""Auditor registry and the audit runner.

An auditor is a class with a ``name``, ``applies_to(subject)`` and
``run(subject, config) -> AuditResult``, registered with ``@register_auditor``. Every module in
``trustlab.audit.auditors`` is imported on first use, so adding an auditor means adding one file.
A raising auditor is recorded as ``errored`` with its message; the others still run.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pkgutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from trustlab.audit.report import Artifact, AuditResult, Report
from trustlab.audit.store import ReportStore, new_run_id
from trustlab.errors import ConfigError
from trustlab.train.progress import progress_bar
from trustlab.train.subject import Subject
from trustlab.train.trainer import hardware, resolve_device, versions

TIERS = ("smoke", "full")


@dataclass
class AuditConfig:
    """What the runner hands an auditor: its parameters, the budget tier, the seed, and where
    artifacts go (``artifact(name)`` gives a path inside the run folder)."""

    params: dict = field(default_factory=dict)
    tier: str = "smoke"
    seed: int = 0
    run_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="trustlab-")))
    auditor: str = ""
    show_progress: bool = False

    def artifact_path(self, filename: str) -> Path:
        """A path for an artifact file under ``<run>/<auditor>/``; the folder is created."""
        folder = self.run_dir / self.auditor
        folder.mkdir(parents=True, exist_ok=True)
        return folder / filename

    def artifact(self, filename: str, kind: str, description: str = "") -> tuple[Path, Artifact]:
        """A path to write plus the Artifact record (path relative to the run folder)."""
        path = self.artifact_path(filename)
        return path, Artifact(name=filename, path=f"{self.auditor}/{filename}", kind=kind,
                              description=description)


class Auditor(Protocol):
    name: str

    def applies_to(self, subject: Subject) -> bool: ...

    def run(self, subject: Subject, config: AuditConfig) -> AuditResult: ...


_AUDITORS: dict[str, type] = {}
_LOADED = False


def register_auditor(cls: type) -> type:
    """Class decorator: register an auditor under its ``name``."""
    if not getattr(cls, "name", None):
        raise ConfigError(f"auditor class {cls.__name__} has no name")
    _AUDITORS[cls.name] = cls
    return cls


def _load_builtin() -> None:
    global _LOADED
    if _LOADED:
        return
    import trustlab.audit.auditors as package

    for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        importlib.import_module(f"{package.__name__}.{module.name}")
    _LOADED = True


def available_auditors() -> list[str]:
    _load_builtin()
    return sorted(_AUDITORS)


def get_auditor(name: str) -> Auditor:
    _load_builtin()
    if name not in _AUDITORS:
        raise ConfigError(f"unknown auditor {name!r}; available: {', '.join(sorted(_AUDITORS))}")
    return _AUDITORS[name]()


def config_hash(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_auditor(auditor: Auditor, subject: Subject, config: AuditConfig) -> AuditResult:
    """Run one auditor; an exception becomes an ``errored`` result with the message."""
    started = time.perf_counter()
    try:
        result = auditor.run(subject, config)
    except Exception as exc:  # noqa: BLE001 - an auditor's failure must not stop the audit
        result = AuditResult(auditor=auditor.name, status="errored",
                             error=f"{type(exc).__name__}: {exc}")
        result.config = {"traceback": traceback.format_exc(limit=5)}
    result.config = {**config.params, **result.config}
    result.duration_s = time.perf_counter() - started
    return result


def run_applicable(auditor: Auditor, subject: Subject, config: AuditConfig) -> AuditResult:
    """Run ``auditor``, or record it as errored when it does not apply to ``subject``."""
    if not auditor.applies_to(subject):
        return AuditResult(auditor=auditor.name, status="errored",
                           error=f"auditor {auditor.name!r} does not apply to "
                                 f"{subject.arch} on {subject.data.name}")
    return run_auditor(auditor, subject, config)


def make_report(subject: Subject, results: list[AuditResult], *, run_id: str, names: list[str],
                params: dict[str, dict], tier: str, seed: int) -> Report:
    """The Report of one run: results plus the subject's description and provenance."""
    return Report(run_id=run_id, subject=subject.describe(), results=results,
                  created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  provenance={"versions": versions(), "seed": seed, "tier": tier,
                              "hardware": hardware(resolve_device("cpu")),
                              "config_hash": config_hash({"auditors": names, "params": params,
                                                          "tier": tier, "seed": seed})})


def audit(subject: Subject, *, auditors: list[str] | None = None,
          params: dict[str, dict] | None = None, tier: str = "smoke", seed: int = 0,
          store: ReportStore | None = None, run_id: str | None = None,
          show_progress: bool = True) -> Report:
    """Run ``auditors`` (default: every registered one that applies) on ``subject``.

    ``params`` maps auditor name to its parameters. With a ``store`` the report and its
    artifacts land there; an interrupted run leaves only a staging folder behind.
    """
    if tier not in TIERS:
        raise ConfigError(f"tier must be one of {TIERS}, got {tier!r}")
    params = params or {}
    names = auditors if auditors is not None else available_auditors()
    chosen = [get_auditor(n) for n in names]
    unknown = set(params) - set(names)
    if unknown:
        raise ConfigError(f"parameters given for auditor(s) {sorted(unknown)} that are not run")
    run_id = run_id or new_run_id(subject.name)
    run_dir = store.staging_dir(run_id) if store else Path(tempfile.mkdtemp(prefix="trustlab-"))
    applicable = [a for a in chosen if auditors is not None or a.applies_to(subject)]
    results = []
    with progress_bar(f"auditing {subject.name}", len(applicable), show_progress) as bar:
        for auditor in applicable:
            config = AuditConfig(params=params.get(auditor.name, {}), tier=tier, seed=seed,
                                 run_dir=run_dir, auditor=auditor.name,
                                 show_progress=show_progress)
            result = run_applicable(auditor, subject, config)
            results.append(result)
            bar.advance(f"{auditor.name}: {result.status}")
    report = make_report(subject, results, run_id=run_id, names=names, params=params, tier=tier,
                         seed=seed)
    if store is not None:
        store.save(report)
    return report
