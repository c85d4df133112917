"""Shared fixtures: small trained subjects, cached once per test session."""

from __future__ import annotations

import pytest
import torch

from trustlab.train.subject import Subject
from trustlab.train.trainer import TrainSettings, train


@pytest.fixture(autouse=True, scope="session")
def _threads() -> None:
    torch.set_num_threads(2)


def _subject(tmp_path_factory: pytest.TempPathFactory, name: str, arch: str, dataset: str,
             epochs: int) -> Subject:
    out = tmp_path_factory.mktemp(name)
    trained = train(arch, dataset, settings=TrainSettings(epochs=epochs, seed=0), out=out,
                    show_progress=False)
    return Subject.from_trained(trained, name, out)


@pytest.fixture(scope="session")
def adult_mlp(tmp_path_factory: pytest.TempPathFactory) -> Subject:
    """An MLP on Adult after 3 epochs (test accuracy about 0.85)."""
    return _subject(tmp_path_factory, "adult-mlp", "mlp", "adult", 3)


@pytest.fixture(scope="session")
def digits_cnn(tmp_path_factory: pytest.TempPathFactory) -> Subject:
    """The ResNet-style CNN on digits after 15 epochs (test accuracy about 0.97)."""
    return _subject(tmp_path_factory, "digits-cnn", "cnn", "digits", 15)


@pytest.fixture(scope="session")
def compas_mlp(tmp_path_factory: pytest.TempPathFactory) -> Subject:
    """An MLP on COMPAS after 5 epochs."""
    return _subject(tmp_path_factory, "compas-mlp", "mlp", "compas", 5)
