"""Privacy–utility curve: test accuracy of DP-SGD models at several ε (δ = 1e-5).

    python benchmarks/dp_utility.py [--runs mlp:adult cnn:digits] [--eps 0.5 1 3 8] [--plot docs/dp_utility]
"""

from __future__ import annotations

import argparse
import json
import time

from trustlab.privacy.train import train_private


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["mlp:adult", "cnn:digits"])
    parser.add_argument("--eps", nargs="+", type=float, default=[0.5, 1.0, 3.0, 8.0])
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--plot", help="write PATH.html and PATH.png")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()
    results = []
    for run in args.runs:
        arch, dataset = run.split(":")
        for eps in args.eps:
            start = time.perf_counter()
            trained = train_private(arch, dataset, target_epsilon=eps, delta=args.delta,
                                    noise_seed=0, show_progress=False)
            row = {"arch": arch, "dataset": dataset, "target_epsilon": eps,
                   "epsilon": trained.meta["privacy"]["epsilon"],
                   "sigma": trained.meta["privacy"]["noise_multiplier"],
                   "steps": trained.meta["privacy"]["steps"],
                   "test_accuracy": trained.meta["metrics"]["test_accuracy"],
                   "wall_s": round(time.perf_counter() - start, 1)}
            results.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.plot:
        plot(results, args.plot)


def plot(results: list[dict], path: str) -> None:
    """Test accuracy against ε, one line per model, as PATH.html and PATH.png."""
    import plotly.express as px

    for row in results:
        row["model"] = f"{row['arch']} on {row['dataset']}"
    fig = px.line(results, x="target_epsilon", y="test_accuracy", color="model",
                  markers=True, log_x=True, title="DP-SGD privacy–utility (δ = 1e-5)",
                  labels={"target_epsilon": "ε", "test_accuracy": "test accuracy"})
    fig.write_html(f"{path}.html")
    fig.write_image(f"{path}.png")


if __name__ == "__main__":
    main()
