"""The CI pipeline: spec → subject → auditors (cached, resumable, local or Ray) → report → gate.

``run_spec(spec, store)`` is what ``trustlab audit SPEC`` calls. Each auditor's result is cached
in the store by (subject hash, auditor config hash) the moment it finishes, so an interrupted
run leaves the store as it was (plus finished cache entries) and a rerun resumes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from trustlab.audit.cache import ResultCache
from trustlab.audit.energy import EnergyMeter
from trustlab.audit.policy import RuleResult, evaluate_policy
from trustlab.audit.report import AuditResult, Report
from trustlab.audit.runner import TIERS, available_auditors, get_auditor, make_report
from trustlab.audit.scale import AuditTask, run_tasks
from trustlab.audit.spec import AuditSpec, resolve_reference
from trustlab.audit.store import ReportStore, new_run_id
from trustlab.errors import CheckpointError, ConfigError
from trustlab.train.data import DataBundle
from trustlab.train.progress import progress_bar
from trustlab.train.subject import Subject
from trustlab.train.trainer import hardware, resolve_device

EXIT_PASSED, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


@dataclass
class GateResult:
    """A finished audit run and its gate: every rule's outcome and the exit code for CI."""

    report: Report
    rules: list[RuleResult]
    exit_code: int
    cached: list[str] = field(default_factory=list)
    baseline: str | None = None

    @property
    def passed(self) -> bool:
        return self.exit_code == EXIT_PASSED


def build_subject(spec: AuditSpec) -> Subject:
    """The spec's subject: a zoo checkpoint, or a user factory + safetensors + data loader."""
    subject = spec.subject
    if subject.checkpoint is not None:
        return Subject.from_checkpoint(spec.resolve(subject.checkpoint), name=subject.name)
    model = resolve_reference(subject.model, "model")()  # type: ignore[arg-type]
    weights = spec.resolve(subject.weights)  # type: ignore[arg-type]
    try:
        model.load_state_dict(load_file(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"subject.weights: {weights} is missing or not a safetensors "
                              f"file: {exc}") from exc
    except RuntimeError as exc:
        raise CheckpointError(f"subject.weights: {weights} does not fit the model of "
                              f"{subject.model}: {exc}") from exc
    data = resolve_reference(subject.data, "data")()  # type: ignore[arg-type]
    if not isinstance(data, DataBundle):
        raise ConfigError(f"subject.data: {subject.data} returned {type(data).__name__}, "
                          "not a trustlab.train.data.DataBundle")
    meta = {"arch": f"user:{subject.model}", "task": subject.task, "config": {},
            "data": data.spec(), "training": subject.training, "privacy": subject.privacy,
            "metrics": {}}
    return Subject(name=subject.name or weights.stem, model=model.eval(), data=data, meta=meta,
                   checkpoint=weights)


def subject_hash(subject: Subject) -> str:
    """A digest of what an audit depends on: weights, every data split, and the training facts."""
    digest = hashlib.sha256()
    for name, tensor in sorted(subject.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    for name, split in sorted(subject.data.splits.items()):
        digest.update(name.encode())
        digest.update(split.X.tobytes())
        digest.update(split.y.tobytes())
    facts = {k: subject.meta.get(k) for k in ("arch", "task", "config", "privacy", "data")}
    digest.update(json.dumps(facts, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def run_spec(spec: AuditSpec, store: ReportStore, tier: str | None = None,
             baseline: str | None = None, *, backend: str = "local", address: str | None = None,
             on_auditor_error: str | None = None, show_progress: bool = True) -> GateResult:
    """Audit the spec's subject, store the run, evaluate the policy; see :class:`GateResult`.

    ``tier`` and ``on_auditor_error`` override the spec's; ``baseline`` is a run id in ``store``
    that ``baseline`` in rules refers to; ``backend="ray"`` fans the auditors out over Ray.
    """
    tier = tier or spec.tier
    if tier not in TIERS:
        raise ConfigError(f"tier must be one of {TIERS}, got {tier!r}")
    baseline_metrics = store.load(baseline).metrics() if baseline else None
    subject = build_subject(spec)
    digest = subject_hash(subject)
    params = spec.auditor_params()
    names = list(params) if spec.auditors is not None else \
        [n for n in available_auditors() if get_auditor(n).applies_to(subject)]
    cache = ResultCache(store)
    tasks = [AuditTask(cache.key(digest, n, params.get(n, {}), tier, spec.seed), n,
                       params.get(n, {}), tier, spec.seed, tuple(spec.plugins)) for n in names]
    results: dict[str, tuple[AuditResult, Path]] = {}
    for task in tasks:
        hit = cache.get(task.key)
        if hit is not None:
            results[task.auditor] = hit
    cached = list(results)
    device = hardware(resolve_device("cpu"))
    with progress_bar(f"auditing {subject.name}", len(tasks), show_progress) as bar, \
            EnergyMeter(device) as meter:
        for name in cached:
            bar.advance(f"{name}: cached")

        def finished(task: AuditTask, result: AuditResult, files: dict[str, bytes] | None) -> None:
            folder = cache.staging(task.key) if files is not None else cache.staged(task.key)
            for relative, content in (files or {}).items():
                (folder / relative).parent.mkdir(parents=True, exist_ok=True)
                (folder / relative).write_bytes(content)
            if result.status != "errored":  # errored results stay staged, uncached
                folder = cache.commit(task.key, result)
            results[task.auditor] = (result, folder)
            bar.advance(f"{task.auditor}: {result.status}")

        run_tasks(subject, [t for t in tasks if t.auditor not in results], finished,
                  staging=lambda t: cache.staging(t.key), backend=backend, address=address,
                  show_progress=show_progress)
    run_id = new_run_id(spec.name or subject.name)
    run_dir = store.staging_dir(run_id)
    for result, folder in results.values():
        if (folder / result.auditor).is_dir():
            shutil.copytree(folder / result.auditor, run_dir / result.auditor, dirs_exist_ok=True)
    report = make_report(subject, [results[n][0] for n in names], run_id=run_id, names=names,
                         params=params, tier=tier, seed=spec.seed)
    rules = evaluate_policy(spec.rules(), report.metrics(), baseline_metrics)
    report.subject.update({"hash": digest, "hardware": subject.meta.get("hardware"),
                           "data": subject.meta.get("data")})
    report.provenance.update({
        "subject_hash": digest, "spec": str(spec.source) if spec.source else None,
        "spec_hash": _spec_hash(spec), "backend": backend, "cached_auditors": cached,
        "baseline": baseline, "policy": [r.to_dict() for r in rules],
        "audit_energy": meter.reading.to_dict() if meter.reading else None,
        "card": spec.card.model_dump(exclude_none=True)})
    store.save(report)
    for task in tasks:
        cache.discard(task.key)
    code = gate_exit_code(rules, report, on_auditor_error or spec.on_auditor_error)
    return GateResult(report=report, rules=rules, exit_code=code, cached=cached,
                      baseline=baseline)


def gate_exit_code(rules: list[RuleResult], report: Report, on_auditor_error: str = "error"
                   ) -> int:
    """2 if a rule could not be evaluated (or an auditor errored and ``on_auditor_error`` is
    "error"), 1 if a rule failed (or an auditor errored under "fail"), else 0."""
    auditor_errored = any(r.status == "errored" for r in report.results)
    if any(r.status == "errored" for r in rules) or (auditor_errored and
                                                     on_auditor_error == "error"):
        return EXIT_INVALID
    if any(r.status == "failed" for r in rules) or (auditor_errored and
                                                    on_auditor_error == "fail"):
        return EXIT_FAILED
    return EXIT_PASSED


def _spec_hash(spec: AuditSpec) -> str:
    text = json.dumps(spec.model_dump(mode="json", exclude={"source"}), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
