"""DP vs non-private Adult MLPs (small configuration): attacks and the one-run ε audit.

The one-run audit inserts 200 canaries (rows with flipped labels), each in the training set with
probability ½, trains once, and bounds ε from the canaries' logit-scaled confidences.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from trustlab.attacks.membership import (logit_confidence, loss_scores, reference_attack_scores)
from trustlab.attacks.reference_models import RecipeSettings, train_reference_models
from trustlab.privacy.audit import epsilon_lower_bound
from trustlab.privacy.engine import make_private
from trustlab.train.data import Split, load_dataset
from trustlab.train.trainer import TrainSettings, input_spec_for, train

EPOCHS, BASE, CANARIES = 100, 1000, 200


def _take(split: Split, index: np.ndarray, y: np.ndarray | None = None) -> Split:
    return Split(X=split.X[index], y=split.y[index] if y is None else y,
                 sensitive=split.sensitive.iloc[index].reset_index(drop=True),
                 rows=split.rows[index])


@pytest.fixture(scope="module")
def canary_setup():
    data = load_dataset("adult", seed=0)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data.splits["train"]))
    base, canary = order[:BASE], order[BASE:BASE + CANARIES]
    canary_y = 1 - data.splits["train"].y[canary]  # mislabelled: only memorising fits them
    included = rng.random(CANARIES) < 0.5
    train_rows = np.r_[base, canary[included]]
    labels = np.r_[data.splits["train"].y[base], canary_y[included]]
    splits = {**data.splits, "train": _take(data.splits["train"], train_rows, labels),
              "holdout": _take(data.splits["holdout"], np.arange(BASE))}
    return dataclasses.replace(data, splits=splits), data.splits["train"].X[canary], canary_y, \
        included


def _train(data, private: bool):
    def wrap(model, optimizer, loader):
        return make_private(model, optimizer, loader, target_epsilon=1.0, target_delta=1e-5,
                            max_grad_norm=1.0, epochs=EPOCHS)

    settings = TrainSettings(epochs=EPOCHS, lr=2e-3, batch_size=128, weight_decay=0.0,
                             early_stopping=False, seed=0)
    return train("mlp", "adult", data=data, settings=settings, config={"dropout": 0.0},
                 wrap=wrap if private else None, show_progress=False)


@pytest.mark.parametrize("private", [False, True])
def test_one_run_epsilon_and_attacks(canary_setup, private: bool) -> None:
    data, canary_X, canary_y, included = canary_setup
    trained = _train(data, private)
    model = trained.model.eval()
    with torch.no_grad():
        canary_logits = model(torch.from_numpy(canary_X)).numpy()
    audit = epsilon_lower_bound(logit_confidence(canary_logits, canary_y), included,
                                delta=1e-5)
    if private:
        assert audit.epsilon <= 1.0
    else:
        assert audit.epsilon > 1.0
    if not private:
        return
    members, nonmembers = data.splits["train"], data.splits["holdout"]
    members = _take(members, np.arange(BASE))  # the base rows, not the canaries
    X = np.concatenate([members.X, nonmembers.X])
    y = np.concatenate([members.y, nonmembers.y])
    is_member = np.r_[np.ones(BASE, bool), np.zeros(BASE, bool)]
    with torch.no_grad():
        logits = model(torch.from_numpy(X)).numpy()
    refs = train_reference_models("mlp", input_spec_for(data), X, y, n_models=4,
                                  config={"dropout": 0.0}, seed=1,
                                  recipe=RecipeSettings(epochs=EPOCHS, lr=2e-3, batch_size=128,
                                                        weight_decay=0.0))
    scores = {"loss": loss_scores(logits, y),
              **reference_attack_scores(logits, refs.outputs(X), refs.masks, y)}
    for attack, values in scores.items():
        assert roc_auc_score(is_member, values) <= 0.55, attack
