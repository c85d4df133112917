"""Turn a run's flat dotted metrics into the tables the pages plot (pure functions, no UI).

Known shapes get dedicated tables; everything else stays visible in the generic metric table:
- ``fairness.<feature>.by_group.<group>.<metric>`` → one row per (feature, group, metric);
- ``privacy.<attack>.auc`` and ``privacy.<attack>.tpr_at_<fpr>_fpr`` → one row per attack;
- ``robustness.<...>accuracy<...>`` with an ε or radius in the name → curves over that parameter.
"""

from __future__ import annotations

import math
import re

import pandas as pd

from trustlab.audit.report import Metric, Report

COLUMNS = ["name", "value", "ci_low", "ci_high"]
BY_GROUP = re.compile(r"^fairness\.(?P<feature>.+?)\.by_group\.(?P<group>.+)\.(?P<metric>[^.]+)$")
MITIGATIONS = ("threshold_optimizer", "exponentiated_gradient", "fair_finetune")
MITIGATION = re.compile(rf"^fairness\.(?P<feature>[^.]+)\.(?P<method>(?:{'|'.join(MITIGATIONS)})"
                        r"(?:\.[^.]+)?)\.(?P<metric>[^.]+)$")
ATTACK_AUC = re.compile(r"^privacy\.(?P<attack>[^.]+)\.auc$")
ATTACK_TPR = re.compile(r"^privacy\.(?P<attack>[^.]+)\.tpr_at_(?P<fpr>[0-9.eE+-]+?)_?fpr$")
GROUP_TPR = re.compile(r"^privacy\.(?P<attack>[^.]+)\.(?P<feature>[^.]+)\.(?P<group>[^.]+)"
                       r"\.tpr_at_(?P<fpr>[0-9.eE+-]+?)_?fpr$")
PARAMETER = re.compile(r"(?P<key>epsilon|eps|radius)[_=-]?(?P<number>[0-9]+(?:[.p][0-9]+)?"
                       r"(?:e-?[0-9]+)?)")


def metrics_frame(report: Report, prefixes: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The report's metrics as a frame of ``COLUMNS``; only names under ``prefixes`` if given."""
    rows = [(name, *_numbers(m)) for name, m in report.metrics().items()
            if prefixes is None or name.split(".", 1)[0] in prefixes]
    return pd.DataFrame(rows, columns=COLUMNS)


def _numbers(metric: Metric) -> tuple[float, float, float]:
    return tuple(math.nan if v is None else float(v)
                 for v in (metric.value, metric.ci_low, metric.ci_high))


def _matching(frame: pd.DataFrame, pattern: re.Pattern) -> pd.DataFrame:
    """Rows whose name matches ``pattern``, with its named groups as extra columns."""
    parts = frame["name"].str.extract(pattern)
    keep = parts.notna().all(axis=1)
    return pd.concat([parts[keep], frame[keep]], axis=1)


def fairness_by_group(frame: pd.DataFrame) -> pd.DataFrame:
    """``fairness.<feature>.by_group.<group>.<metric>`` rows split into their parts."""
    return _matching(frame, BY_GROUP)


def fairness_mitigation(frame: pd.DataFrame) -> pd.DataFrame:
    """``fairness.<feature>.<method>[.<setting>].<metric>`` rows of the known mitigations."""
    return _matching(frame, MITIGATION)


def fairness_disparities(frame: pd.DataFrame, feature: str) -> pd.DataFrame:
    """``fairness.<feature>.<metric>`` rows (differences, ratios): not per group, not mitigation."""
    prefix = f"fairness.{feature}."
    rest = frame["name"].str.removeprefix(prefix)
    return frame[frame["name"].str.startswith(prefix) & ~rest.str.contains(".", regex=False)]


def is_intersectional(feature: str) -> bool:
    """Whether a fairness feature name combines attributes (``sex_x_race``, as the auditor
    names intersections)."""
    return "_x_" in feature


def privacy_attacks(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (attack, quantity): ``quantity`` is "AUC" or "TPR @ FPR=<fpr>"."""
    auc = _matching(frame, ATTACK_AUC).assign(quantity="AUC", fpr=math.nan)
    tpr = _matching(frame, ATTACK_TPR)
    tpr = tpr.assign(fpr=pd.to_numeric(tpr["fpr"], errors="coerce"))
    tpr = tpr.assign(quantity="TPR @ FPR=" + tpr["fpr"].map("{:g}".format))
    return pd.concat([auc, tpr], ignore_index=True)[["attack", "quantity", "fpr", *COLUMNS]]


def privacy_by_group(frame: pd.DataFrame) -> pd.DataFrame:
    """``privacy.<attack>.<feature>.<group>.tpr_at_<fpr>_fpr``: which groups are most exposed."""
    return _matching(frame, GROUP_TPR)


def epsilons(frame: pd.DataFrame) -> pd.DataFrame:
    """Claimed (accounted) and empirical (audited lower bound) ε, where the run has them."""
    names = {"privacy.claimed_epsilon": "claimed ε (accountant)",
             "privacy.empirical_epsilon": "empirical ε (audit)"}
    rows = frame[frame["name"].isin(names)]
    return rows.assign(kind=rows["name"].map(names))


DP_FACTS = {"epsilon": "ε (claimed)", "delta": "δ", "target_epsilon": "target ε",
            "noise_multiplier": "noise multiplier σ", "sample_rate": "sampling rate q",
            "steps": "steps", "max_grad_norm": "clipping bound C", "clipping": "clipping style",
            "accountant": "accountant",
            "secure_mode": "secure mode (CSPRNG noise and sampling)"}


def dp_training_facts(facts: dict) -> pd.DataFrame:
    """The DP training run's privacy facts (checkpoint meta ``privacy``) as (fact, value) rows,
    in a fixed order; values as text (the column mixes numbers, names and flags)."""
    rows = [(label, "yes" if facts[key] is True else "no" if facts[key] is False
             else f"{facts[key]:.6g}" if isinstance(facts[key], float) else str(facts[key]))
            for key, label in DP_FACTS.items() if facts.get(key) is not None]
    return pd.DataFrame(rows, columns=["fact", "value"])


def parameter_curves(frame: pd.DataFrame, word: str = "accuracy") -> pd.DataFrame:
    """Metrics containing ``word`` and a numeric ε/radius in the name, as curves.

    ``robustness.pgd.eps_0.03.accuracy`` → curve "robustness.pgd.accuracy", x = 0.03.
    """
    rows = []
    for _, row in frame[frame["name"].str.contains(word, regex=False)].iterrows():
        match = PARAMETER.search(row["name"])
        if match is None:
            continue
        x = float(match["number"].replace("p", "."))
        curve = (row["name"][:match.start()] + row["name"][match.end():]).replace("..", ".")
        rows.append({"curve": curve.strip("._"), "parameter": match["key"], "x": x,
                     **row[COLUMNS].to_dict()})
    return pd.DataFrame(rows, columns=["curve", "parameter", "x", *COLUMNS])


def containing(frame: pd.DataFrame, *words: str) -> pd.DataFrame:
    """Rows whose name contains any of ``words``."""
    mask = pd.Series(False, index=frame.index)
    for word in words:
        mask |= frame["name"].str.contains(word, regex=False)
    return frame[mask]


def last_part(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def compare(left: pd.DataFrame, right: pd.DataFrame) -> pd.DataFrame:
    """Metrics of two runs side by side with ``delta = B − A`` (NaN where one lacks it)."""
    merged = pd.merge(left[["name", "value"]], right[["name", "value"]], on="name", how="outer",
                      suffixes=(" A", " B"))
    merged["delta"] = merged["value B"] - merged["value A"]
    merged.insert(0, "auditor", merged["name"].str.split(".").str[0])
    return merged.sort_values("name", ignore_index=True)
