"""Train the reference zoo with default settings and print test accuracy and wall time.

    python benchmarks/train_zoo.py [--seed 0] [--device auto] [--json FILE]

The acceptance thresholds of the foundation issue are printed beside each model.
"""

from __future__ import annotations

import argparse
import json
import time

from trustlab.audit.demo import REFERENCE_ZOO
from trustlab.train.trainer import TrainSettings

THRESHOLDS = {"adult-mlp": 0.845, "adult-mlp-dp": 0.82, "adult-ft_transformer": 0.845, "compas-mlp": 0.66,
              "german-mlp": 0.72, "digits-cnn": 0.97, "digits-lstm": 0.95, "digits-gru": 0.95,
              "digits-vit": 0.95}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="write the records to this file")
    args = parser.parse_args()
    records = []
    print(f"{'model':24} {'metric':20} {'value':>7} {'target':>7} {'epochs':>6} {'time_s':>7}")
    for entry in REFERENCE_ZOO:
        started = time.perf_counter()
        trained = entry.train(TrainSettings(seed=args.seed, device=args.device), None, False)
        wall = time.perf_counter() - started
        metric = "test_anomaly_auroc" if "test_anomaly_auroc" in trained.metrics else "test_accuracy"
        value = trained.metrics[metric]
        target = THRESHOLDS.get(entry.name)
        records.append({"model": entry.name, "metric": metric, "value": value, "target": target,
                        "epochs": len(trained.history), "wall_time_s": wall,
                        "device": trained.meta["hardware"]["device"]})
        status = "" if target is None else ("ok" if value >= target else "BELOW TARGET")
        print(f"{entry.name:24} {metric:20} {value:7.4f} {target or '-':>7} "
              f"{len(trained.history):6d} {wall:7.1f} {status}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(records, handle, indent=2)


if __name__ == "__main__":
    main()
