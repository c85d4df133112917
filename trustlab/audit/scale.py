"""Where auditors run: in this process (``local``) or fanned out over a Ray cluster (``ray``).

Both backends run the same function, :func:`run_task`, with the same seed, so they give the same
metrics. On Ray the subject travels once through the object store, every auditor is one task,
and a task returns its result and artifact files (workers need not share a disk with the driver).
Ray is an optional extra: ``pip install 'trustlab[ray]'``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, TypeVar

from trustlab.audit.report import AuditResult
from trustlab.audit.runner import AuditConfig, get_auditor, run_applicable
from trustlab.errors import ConfigError
from trustlab.train.subject import Subject

BACKENDS = ("local", "ray")
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class AuditTask:
    """One auditor to run on the subject: everything a worker needs besides the subject."""

    key: str
    auditor: str
    params: dict = field(default_factory=dict)
    tier: str = "smoke"
    seed: int = 0
    plugins: tuple[str, ...] = ()


def run_task(subject: Subject, task: AuditTask, run_dir: Path,
             show_progress: bool = False) -> AuditResult:
    """Run one auditor with artifacts under ``run_dir/<auditor>/``."""
    from trustlab.audit.spec import import_plugins

    import_plugins(task.plugins)
    config = AuditConfig(params=task.params, tier=task.tier, seed=task.seed, run_dir=run_dir,
                         auditor=task.auditor, show_progress=show_progress)
    return run_applicable(get_auditor(task.auditor), subject, config)


def _remote_task(subject: Subject, task: AuditTask) -> tuple[dict, dict[str, bytes]]:
    """A Ray worker's side: run in a scratch folder, ship the result and the artifact bytes."""
    with tempfile.TemporaryDirectory(prefix="trustlab-ray-") as scratch:
        result = run_task(subject, task, Path(scratch))
        files = {str(p.relative_to(scratch)): p.read_bytes()
                 for p in Path(scratch).rglob("*") if p.is_file()}
    return result.to_dict(), files


Done = Callable[[AuditTask, AuditResult, dict[str, bytes] | None], None]


def run_tasks(subject: Subject, tasks: Iterable[AuditTask], on_done: Done, *,
              staging: Callable[[AuditTask], Path], backend: str = "local",
              address: str | None = None, show_progress: bool = False) -> None:
    """Run ``tasks``; ``on_done(task, result, files)`` is called as each finishes.

    Locally a task writes its artifacts straight into ``staging(task)`` (``files`` is None);
    on Ray ``files`` maps paths relative to the run folder to their bytes.
    """
    tasks = list(tasks)
    if backend == "local":
        for task in tasks:
            on_done(task, run_task(subject, task, staging(task), show_progress), None)
        return
    if backend != "ray":
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    ray = connect_ray(address)
    remote = ray.remote(_remote_task)
    subject_ref = ray.put(subject)
    pending = {remote.remote(subject_ref, task): task for task in tasks}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        task = pending.pop(ready[0])
        result, files = ray.get(ready[0])
        on_done(task, AuditResult.from_dict(result), files)


def map_tasks(fn: Callable[[T], R], items: Iterable[T], *, backend: str = "local",
              address: str | None = None) -> list[R]:
    """``[fn(item) for item in items]``, in this process or as parallel Ray tasks (same order)."""
    items = list(items)
    if backend == "local":
        return [fn(item) for item in items]
    if backend != "ray":
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    ray = connect_ray(address)
    remote = ray.remote(fn)
    return ray.get([remote.remote(item) for item in items])


def connect_ray(address: str | None = None):  # noqa: ANN201 - the ray module
    """Import Ray and connect: to ``address`` (a cluster, or "auto"), or start a local instance."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("the Ray backend needs the optional extra: pip install 'trustlab[ray]'"
                          ) from exc
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
    return ray
