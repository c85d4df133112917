"""Per-auditor result cache inside a report store: ``<store>/cache/<key>/``.

The key hashes the subject (weights, data, facts) with the auditor's name, parameters, tier,
seed and code (trustlab version, the auditor module's source), so a rerun of an interrupted
audit reuses every auditor that finished. An entry is written in a staging folder and renamed
into place: it is either complete or absent. Errored results are not cached (a rerun retries
them).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
from pathlib import Path

from trustlab.audit.report import AuditResult
from trustlab.audit.runner import config_hash, get_auditor
from trustlab.audit.store import ReportStore
from trustlab.train.checkpoint import atomic_write_json

RESULT = "result.json"


class ResultCache:
    """Finished AuditResults and their artifact folders, keyed by (subject, auditor config)."""

    def __init__(self, store: ReportStore) -> None:
        self.root = store.root / "cache"
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(subject_hash: str, auditor: str, params: dict, tier: str, seed: int) -> str:
        """The entry of ``auditor`` on a subject; changes with its settings, the trustlab
        version and the source of the auditor's module."""
        from trustlab import __version__

        settings = config_hash({"auditor": auditor, "params": params, "tier": tier, "seed": seed,
                                "trustlab": __version__, "code": _source_hash(auditor)})
        return f"{subject_hash}-{auditor}-{settings}"

    def get(self, key: str) -> tuple[AuditResult, Path] | None:
        """The cached result and its folder, or None (absent or unreadable)."""
        folder = self.root / key
        try:
            return AuditResult.from_dict(json.loads((folder / RESULT).read_text())), folder
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def staged(self, key: str) -> Path:
        """The staging folder of ``key`` (where an auditor in progress writes)."""
        return self.root / f".staging-{key}"

    def staging(self, key: str) -> Path:
        """A fresh, empty staging folder (a leftover of an interrupted run is removed)."""
        folder = self.staged(key)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def commit(self, key: str, result: AuditResult) -> Path:
        """Move the staged entry into place with its result; returns the entry's folder."""
        staging, final = self.staged(key), self.root / key
        atomic_write_json(staging / RESULT, result.to_dict())
        shutil.rmtree(final, ignore_errors=True)
        staging.replace(final)
        return final

    def discard(self, key: str) -> None:
        shutil.rmtree(self.staged(key), ignore_errors=True)


def _source_hash(auditor: str) -> str | None:
    """A digest of the auditor's module source (None when it has no source file)."""
    try:
        source = inspect.getsourcefile(type(get_auditor(auditor)))
        return hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16] if source else None
    except (OSError, TypeError):
        return None
