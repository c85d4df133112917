"""``train_private``: a batch size that fits the data set, checked before training."""

from __future__ import annotations

import pytest

from trustlab.errors import ConfigError
from trustlab.privacy.train import dp_batch_size, train_private
from trustlab.train import trainer
from trustlab.train.trainer import TrainSettings


def test_default_batch_keeps_the_sampling_rate_low():
    assert dp_batch_size(None, 1024, 22620) == 1024  # Adult: the tuned default stands
    assert dp_batch_size(None, 128, 1077) == 128  # digits: likewise
    assert dp_batch_size(None, 1024, 599) == 74  # German: 1024 would sample every row
    assert dp_batch_size(None, 1024, 5) == 1
    assert dp_batch_size(300, 1024, 599) == 300  # an explicit one below the rows is kept


@pytest.mark.parametrize("batch_size", [599, 1024])
def test_batch_of_the_whole_training_set_is_refused_before_training(batch_size, monkeypatch,
                                                                   tmp_path):
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(trainer, "fit", no_training)
    with pytest.raises(ConfigError, match=f"batch size {batch_size} is not below the 599 "
                                          "training rows.*default here: 74"):
        train_private("mlp", "german", target_epsilon=3.0, out=tmp_path / "m",
                      settings=TrainSettings(batch_size=batch_size))
    assert not (tmp_path / "m").exists()


def test_german_trains_in_many_poisson_steps():
    trained = train_private("mlp", "german", target_epsilon=3.0, noise_seed=0,
                            settings=TrainSettings(epochs=1), show_progress=False)
    assert trained.meta["training"]["batch_size"] == 74
    assert trained.meta["privacy"]["sample_rate"] == pytest.approx(1 / 9)
    assert trained.meta["privacy"]["epsilon"] <= 3.0
