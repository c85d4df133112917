"""Fixtures of the audit tests: fake auditors (a plugin module), a small German checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from trustlab.audit import runner
from trustlab.train.trainer import TrainSettings, train

HERE = Path(__file__).parent


@pytest.fixture
def fake_auditors(monkeypatch: pytest.MonkeyPatch):
    """Register the fake auditors for one test (and make them importable as a plugin)."""
    monkeypatch.syspath_prepend(str(HERE))
    import fake_auditors as module

    runner.available_auditors()  # load the built-in ones first
    for cls in module.FAKES:
        runner.register_auditor(cls)
    yield module
    for cls in module.FAKES:
        runner._AUDITORS.pop(cls.name, None)


@pytest.fixture(scope="session")
def german_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A German-credit MLP after 2 epochs (1000 rows: fast to train and to audit)."""
    out = tmp_path_factory.mktemp("german-mlp") / "german-mlp"
    train("mlp", "german", settings=TrainSettings(epochs=2, seed=0), out=out, show_progress=False)
    return out
