"""``trustlab sweep``: train a zoo model at several privacy budgets ε, audit each, and plot the
trade-offs together — accuracy against the fairness gap, membership-inference TPR at a low FPR
(0.1% where the tier's sample allows it) and robust accuracy — with each curve's Pareto front.

Each ε is one point: trained with the DP engine (``trustlab.privacy.make_private``, ε = inf
means non-private), audited with every applicable auditor, stored as a run with its card. Points
are independent, so ``backend="ray"`` trains and audits them in parallel on a Ray cluster.
"""

from __future__ import annotations

import math
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from trustlab.audit.cards import write_cards
from trustlab.audit.energy import EnergyMeter
from trustlab.audit.report import Report
from trustlab.audit.runner import audit
from trustlab.audit.scale import map_tasks
from trustlab.audit.store import ReportStore
from trustlab.errors import ConfigError
from trustlab.train.checkpoint import atomic_write_json
from trustlab.train.subject import Subject
from trustlab.train.trainer import TrainSettings, hardware, resolve_device, train
from trustlab.train.zoo import arch_info

MIA_TPR = re.compile(r"^privacy\.[^.]+\.tpr_at_([0-9.e-]+)_fpr$")


def _worst(pattern: str, combine: Callable[[list[float]], float]) -> Callable[[dict], float | None]:
    """The worst case over every finite metric matching ``pattern``."""
    def read(metrics: dict[str, float]) -> float | None:
        found = [v for n, v in metrics.items() if re.match(pattern, n) and math.isfinite(v)]
        return combine(found) if found else None
    return read


def lowest_fpr_tpr(metrics: dict[str, float]) -> tuple[float | None, float | None]:
    """(FPR, worst attack's TPR) at the lowest FPR the privacy audit measured — 0.001 when the
    tier's sample sizes allow it (the full tier), else the next one."""
    by_fpr: dict[float, list[float]] = {}
    for name, value in metrics.items():
        match = MIA_TPR.match(name)
        if match and math.isfinite(value):
            by_fpr.setdefault(float(match.group(1)), []).append(value)
    if not by_fpr:
        return None, None
    fpr = min(by_fpr)
    return fpr, max(by_fpr[fpr])


# Each axis: how to read it from a run's metrics (worst case) and its better direction.
AXES: dict[str, tuple[Callable[[dict], float | None], str]] = {
    "accuracy": (_worst(r"^performance\.test_accuracy$", max), "max"),
    "fairness_gap": (_worst(r"^fairness\.[^.]+\.equalized_odds_difference$", max), "min"),
    "mia_tpr_at_low_fpr": (lambda m: lowest_fpr_tpr(m)[1], "min"),
    "robust_accuracy": (_worst(r"^robustness\.(?!by_group\.|per_class\.).+\.(robust_)?accuracy$",
                               min), "max"),
}
RISKS = ("fairness_gap", "mia_tpr_at_low_fpr", "robust_accuracy")


@dataclass
class SweepSettings:
    """What to sweep: the zoo model, the ε grid (inf: non-private) and the audit."""

    arch: str = "mlp"
    dataset: str = "adult"
    epsilons: list[float] = field(default_factory=lambda: [1.0, 4.0, 16.0, math.inf])
    epochs: int | None = None
    seed: int = 0
    tier: str = "smoke"
    auditors: list[str] | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if not self.epsilons or any(e <= 0 or math.isnan(e) for e in self.epsilons):
            raise ConfigError(f"epsilons must be positive numbers (inf: non-private), "
                              f"got {self.epsilons}")


@dataclass
class SweepPoint:
    """One ε of the sweep: its run and its values on each axis (None: not measured)."""

    epsilon: float
    run_id: str
    values: dict[str, float | None]


@dataclass
class SweepResult:
    points: list[SweepPoint]

    def table(self) -> str:
        """A plain-text table of the points, one row per ε."""
        header = ["epsilon", *AXES, "run_id"]
        rows = [[f"{p.epsilon:g}", *(_fmt(p.values.get(a)) for a in AXES), p.run_id]
                for p in self.points]
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths))
                         for r in [header, *rows])

    def to_dict(self) -> dict:
        return {"axes": {a: {"better": b} for a, (_, b) in AXES.items()},
                "points": [{**asdict(p), "epsilon": _json_number(p.epsilon)}
                           for p in self.points]}


def summarize(metrics: dict[str, float]) -> dict[str, float | None]:
    """Each axis's value from a run's metrics, plus ``mia_fpr``: the FPR of the MIA axis."""
    values = {axis: read(metrics) for axis, (read, _) in AXES.items()}
    values["mia_fpr"] = lowest_fpr_tpr(metrics)[0]
    return values


def pareto_front(points: list[SweepPoint], axis: str) -> list[SweepPoint]:
    """Points not dominated on (accuracy ↑, ``axis`` in its better direction), by accuracy."""
    better = AXES[axis][1]
    usable = [p for p in points if p.values.get("accuracy") is not None
              and p.values.get(axis) is not None]

    def key(p: SweepPoint) -> tuple[float, float]:
        risk = p.values[axis]
        return p.values["accuracy"], (risk if better == "max" else -risk)  # type: ignore[operator]

    front = [p for p in usable if not any(
        all(a >= b for a, b in zip(key(q), key(p))) and key(q) != key(p) for q in usable)]
    return sorted(front, key=lambda p: p.values["accuracy"])  # type: ignore[arg-type, return-value]


def pareto_figure(result: SweepResult):  # noqa: ANN201 - a plotly Figure
    """Accuracy against each risk axis (points labelled by ε, Pareto front as a line), plus every
    axis against ε."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=1, cols=len(RISKS) + 1,
                           subplot_titles=[*(f"accuracy vs {a}" for a in RISKS), "all vs ε"])
    for col, axis in enumerate(RISKS, start=1):
        shown = [p for p in result.points if p.values.get(axis) is not None
                 and p.values.get("accuracy") is not None]
        figure.add_trace(go.Scatter(
            x=[p.values[axis] for p in shown], y=[p.values["accuracy"] for p in shown],
            mode="markers+text", text=[f"ε={p.epsilon:g}" for p in shown],
            textposition="top center", name=f"runs ({axis})", showlegend=False), row=1, col=col)
        front = pareto_front(result.points, axis)
        figure.add_trace(go.Scatter(x=[p.values[axis] for p in front],
                                    y=[p.values["accuracy"] for p in front], mode="lines",
                                    name=f"Pareto front ({axis})", line={"dash": "dot"}),
                         row=1, col=col)
        fpr = next((p.values.get("mia_fpr") for p in shown if p.values.get("mia_fpr")), None)
        title = f"MIA TPR at {fpr:g} FPR" if axis == "mia_tpr_at_low_fpr" and fpr else axis
        figure.update_xaxes(title_text=title, row=1, col=col)
        figure.update_yaxes(title_text="test accuracy", row=1, col=col)
    ordered = sorted(result.points, key=lambda p: p.epsilon)
    finite = [p.epsilon for p in ordered if math.isfinite(p.epsilon)]
    shown_inf = 10 * max(finite) if finite else 1.0  # inf plotted to the right, labelled
    for axis in AXES:
        figure.add_trace(go.Scatter(
            x=[p.epsilon if math.isfinite(p.epsilon) else shown_inf for p in ordered],
            y=[p.values.get(axis) for p in ordered], mode="lines+markers", name=axis),
            row=1, col=len(RISKS) + 1)
    figure.update_xaxes(type="log", title_text="ε (rightmost: non-private)", row=1,
                        col=len(RISKS) + 1)
    figure.update_layout(title="privacy–utility–fairness–robustness trade-offs", height=450,
                         width=400 * (len(RISKS) + 1))
    return figure


PointFn = Callable[[SweepSettings, float], tuple[dict, dict[str, bytes]]]


def run_sweep(settings: SweepSettings, store: ReportStore, out: str | Path = "sweep", *,
              backend: str = "local", address: str | None = None,
              point: PointFn | None = None) -> SweepResult:
    """Train and audit each ε (locally or on Ray), store each run with its card, and write
    ``out/sweep.json`` and ``out/pareto.json`` (plotly). ``point`` replaces training (tests)."""
    point = point or train_and_audit
    outputs = map_tasks(lambda eps: point(settings, eps), settings.epsilons, backend=backend,
                        address=address)
    points = []
    for epsilon, (report_data, files) in zip(settings.epsilons, outputs):
        report = Report.from_dict(report_data)
        staging = store.staging_dir(report.run_id)
        for relative, content in files.items():
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            (staging / relative).write_bytes(content)
        store.save(report)
        write_cards(report, store)
        metrics = {n: m.value for n, m in report.metrics().items()}
        points.append(SweepPoint(epsilon, report.run_id, summarize(metrics)))
    result = SweepResult(points)
    out = Path(out)
    atomic_write_json(out / "sweep.json", result.to_dict())
    pareto_figure(result).write_json(str(out / "pareto.json"))
    return result


def train_and_audit(settings: SweepSettings, epsilon: float) -> tuple[dict, dict[str, bytes]]:
    """One point: train at ``epsilon`` (DP-SGD unless inf), audit; the report and artifacts."""
    epochs = settings.epochs or arch_info(settings.arch).training["epochs"]
    train_settings = TrainSettings(epochs=epochs, seed=settings.seed)
    holder: dict = {}
    wrap = None if math.isinf(epsilon) else _private_wrap(settings, epsilon, epochs, holder)
    with EnergyMeter(hardware(resolve_device(train_settings.device))) as meter:
        trained = train(settings.arch, settings.dataset, settings=train_settings, wrap=wrap,
                        show_progress=False)
    trained.meta["training"]["energy"] = meter.reading.to_dict()  # type: ignore[union-attr]
    if "optimizer" in holder:  # the audits run on the plain model, not through the DP taps
        holder["optimizer"].detach()
        trained.meta["privacy"] = holder["optimizer"].privacy_facts(settings.delta).to_dict()
    name = f"{settings.dataset}-{settings.arch}-eps{epsilon:g}"
    with tempfile.TemporaryDirectory(prefix="trustlab-sweep-") as scratch:
        store = ReportStore(scratch)
        subject = Subject.from_trained(trained, name)
        report = audit(subject, auditors=settings.auditors, tier=settings.tier,
                       seed=settings.seed, store=store, show_progress=False)
        run_dir = store.run_dir(report.run_id)
        files = {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*")
                 if p.is_file() and p.name != "report.json"}
    return report.to_dict(), files


def _private_wrap(settings: SweepSettings, epsilon: float, epochs: int,
                  holder: dict):  # noqa: ANN202 - returns the trainer's wrap hook
    try:
        from trustlab.privacy import make_private
    except ImportError as exc:
        raise ConfigError("a finite ε needs the DP engine trustlab.privacy.make_private") from exc

    def wrap(model, optimizer, loader):  # noqa: ANN001, ANN202 - the trainer's hook
        model, optimizer, loader = make_private(
            model, optimizer, loader, target_epsilon=epsilon, target_delta=settings.delta,
            epochs=epochs, max_grad_norm=settings.max_grad_norm, noise_seed=settings.seed)
        holder["optimizer"] = optimizer
        return model, optimizer, loader

    return wrap


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _json_number(value: float) -> float | str:
    return value if math.isfinite(value) else "inf"
