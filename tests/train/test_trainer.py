"""Training settings are validated before any data is loaded or any step is taken."""

from __future__ import annotations

import pytest
import torch

from trustlab.errors import ConfigError
from trustlab.train import trainer
from trustlab.train.trainer import TrainSettings, resolve_device, train


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 0, "epochs must be >= 1, got 0"),
    ("batch_size", 0, "batch_size must be >= 1, got 0"),
    ("patience", 0, "patience must be >= 1, got 0"),
    ("lr", -1.0, "lr .* must be > 0, got -1.0"),
    ("lr", float("nan"), "lr .* must be > 0, got nan"),
    ("weight_decay", -0.1, "weight_decay must be >= 0, got -0.1"),
])
def test_invalid_settings_are_named(field, value, message):
    with pytest.raises(ConfigError, match=message):
        TrainSettings(**{field: value}).resolved(
            {"epochs": 1, "lr": 1e-3, "batch_size": 8, "weight_decay": 0.0, "patience": 1})


def test_cuda_without_cuda_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match="CUDA is not available here.*cpu or auto"):
            resolve_device(device)
    assert resolve_device("cpu").type == "cpu"


def _no_training(*args, **kwargs):
    raise AssertionError("training started before the bad input was caught")


def test_bad_input_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "fit", _no_training)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        train("mlp", "german", settings=TrainSettings(device="cuda"))
    with pytest.raises(ConfigError, match="lr"):
        train("mlp", "german", settings=TrainSettings(lr=-1.0))
    existing = tmp_path / "m"
    existing.write_text("")
    with pytest.raises(ConfigError, match=f"{existing} is an existing file"):
        train("mlp", "german", out=existing)
