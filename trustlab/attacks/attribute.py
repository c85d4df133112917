"""Attribute inference: does the model's output help guess a sensitive attribute (sex, race)?

ART's ``AttributeInferenceBlackBox`` sees the other features plus the model's prediction;
ART's ``AttributeInferenceBaseline`` sees only the other features. Both are fitted on one half of
the rows and scored on the other; the accuracy difference is what the model leaks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trustlab.errors import ConfigError, DataError


@dataclass
class AttributeLeak:
    """Accuracy of guessing one sensitive attribute with and without model access."""

    attribute: str
    attack_accuracy: float
    baseline_accuracy: float
    majority_accuracy: float
    rows: int

    @property
    def advantage(self) -> float:
        return self.attack_accuracy - self.baseline_accuracy


def attribute_columns(groups: dict[str, list[int]], attribute: str) -> slice:
    """The contiguous encoded columns of ``attribute`` as the slice ART expects."""
    if attribute not in groups:
        raise ConfigError(f"attribute {attribute!r} is not a model input; inputs: {sorted(groups)}")
    columns = sorted(groups[attribute])
    if columns != list(range(columns[0], columns[-1] + 1)):
        raise DataError(f"the encoded columns of {attribute!r} are not contiguous ({columns}): "
                        "ART's attribute inference needs one block of one-hot columns")
    return slice(columns[0], columns[-1] + 1, 1)


def attribute_inference(classifier, X: np.ndarray, y: np.ndarray, columns: slice,
                        attribute: str, *, attack_model_type: str = "rf",
                        seed: int = 0) -> AttributeLeak:
    """Fit ART's black-box attack and its no-model baseline on half of ``X``, score the rest.

    ``classifier`` is an ART classifier (``trustlab.attacks.membership.art_classifier``);
    ``columns`` the one-hot block of the attribute (:func:`attribute_columns`)."""
    from art.attacks.inference.attribute_inference import (AttributeInferenceBaseline,
                                                           AttributeInferenceBlackBox)

    width = columns.stop - columns.start
    if width < 2:
        raise ConfigError(f"{attribute!r} must be a one-hot block of >= 2 columns, got {width}")
    truth = X[:, columns].argmax(axis=1)
    order = np.random.default_rng(seed).permutation(len(X))
    fit, test = order[: len(X) // 2], order[len(X) // 2:]
    values = [[0.0, 1.0]] * width
    rest = np.delete(X[test], np.arange(columns.start, columns.stop), axis=1)
    np.random.seed(seed)  # ART's random forests draw from the global generator
    attack = AttributeInferenceBlackBox(classifier, attack_model_type=attack_model_type,
                                        attack_feature=columns)
    attack.fit(X[fit], y[fit])
    pred = classifier.predict(X[test]).argmax(axis=1).reshape(-1, 1)
    guessed = np.asarray(attack.infer(rest, y[test], pred=pred, values=values)).argmax(axis=1)
    baseline = AttributeInferenceBaseline(attack_model_type=attack_model_type,
                                          attack_feature=columns)
    baseline.fit(X[fit])
    base_guess = np.asarray(baseline.infer(rest, values=values)).argmax(axis=1)
    majority = np.bincount(truth[fit], minlength=width).argmax()
    return AttributeLeak(attribute=attribute,
                         attack_accuracy=float((guessed == truth[test]).mean()),
                         baseline_accuracy=float((base_guess == truth[test]).mean()),
                         majority_accuracy=float((truth[test] == majority).mean()),
                         rows=len(test))
