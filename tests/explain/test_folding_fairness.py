"""One-hot folding, global importance CIs, proxies and attribution shares."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trustlab.errors import ConfigError
from trustlab.explain import fold_groups, global_importance
from trustlab.explain.fairness import attribution_shares, proxy_strength, sensitive_reliance


def test_fold_groups_sums_one_hot_columns():
    attr = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 1.0, 0.0]])
    folded, names = fold_groups(attr, {"age": [0], "job": [1, 2], "sex": [3]})
    assert names == ["age", "job", "sex"]
    np.testing.assert_allclose(folded, [[1, 5, 4], [0.5, 0, 0]])
    with pytest.raises(ConfigError, match="cover columns"):
        fold_groups(attr, {"age": [0], "job": [1, 2]})


def test_global_importance_ci_brackets_the_mean():
    rng = np.random.default_rng(0)
    imp = global_importance(rng.normal(size=(200, 3)) * [1, 2, 3], ["a", "b", "c"], seed=0)
    assert [name for name, *_ in imp.ranked()] == ["c", "b", "a"]
    assert np.all(imp.ci_low <= imp.mean_abs) and np.all(imp.mean_abs <= imp.ci_high)


def test_shares_and_reliance_by_group():
    folded = np.array([[1.0, 1.0, 2.0], [0.0, 3.0, 1.0], [2.0, 2.0, 0.0]])
    names = ["sex", "relationship", "age"]
    np.testing.assert_allclose(attribution_shares(folded, names, ["sex"]), [0.25, 0, 0.5])
    rel = sensitive_reliance(folded, names, np.array(["F", "M", "F"]), "sex",
                             {"relationship": 0.9, "age": 0.55}, n_resamples=50)
    assert rel.proxies == [("relationship", 0.9)]
    assert rel.by_group["F"]["share"] == pytest.approx(0.375)
    assert rel.by_group["M"]["proxy_share"] == pytest.approx(0.75)


def test_relationship_is_a_proxy_of_sex_on_adult(adult_mlp):
    strength = proxy_strength(adult_mlp.data, "sex")
    assert "sex" not in strength and "race" not in strength
    assert strength["relationship"] > 0.8
    assert max(strength, key=strength.get) == "relationship"
    with pytest.raises(ConfigError, match="unknown sensitive attribute"):
        proxy_strength(adult_mlp.data, "religion")
