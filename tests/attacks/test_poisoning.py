"""Backdoor poisoning with ART's trigger, and the full backdoor audit (slow)."""

from __future__ import annotations

import numpy as np
import pytest
from art.attacks.poisoning.perturbations import add_pattern_bd

from trustlab.attacks.poisoning import add_trigger, backdoor_audit, poison
from trustlab.errors import ConfigError
from trustlab.train.data import load_dataset


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_poison_stamps_and_relabels_only_the_chosen_fraction(digits):
    poisoned, chosen = poison(digits, target=3, fraction=0.1, seed=0)
    clean, dirty = digits.splits["train"], poisoned.splits["train"]
    others = np.flatnonzero(clean.y != 3)
    assert len(chosen) == int(0.1 * len(others)) and set(chosen) <= set(others)
    assert (dirty.y[chosen] == 3).all()
    untouched = np.setdiff1d(np.arange(len(clean.y)), chosen)
    assert np.array_equal(dirty.X[untouched], clean.X[untouched])
    assert np.array_equal(dirty.y[untouched], clean.y[untouched])
    assert np.array_equal(dirty.X[chosen], add_trigger(clean.X[chosen]))
    assert digits.splits["train"] is clean  # the original bundle is not modified


def test_trigger_is_arts_pattern(digits):
    X = digits.splits["test"].X[:5]
    assert np.array_equal(add_trigger(X)[:, 0], add_pattern_bd(X[:, 0].copy(), pixel_value=1))


def test_tabular_data_is_refused():
    with pytest.raises(ConfigError, match="image trigger"):
        poison(load_dataset("german"))


@pytest.mark.slow
def test_backdoor_is_planted_and_mostly_found(digits):
    report = backdoor_audit("cnn", digits, epochs=8)
    assert report.clean_accuracy > 0.9
    assert report.attack_success_rate > 0.9
    assert report.detector_recall > 0.5
