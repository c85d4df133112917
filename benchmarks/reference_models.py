"""Batched (vmap over stacked weights) vs one-after-another reference-model training, one run.

    python benchmarks/reference_models.py [--models 8] [--epochs 10]

Same models, rows, batches and recipe both ways (Adult MLP 256-256, each on a random half of a
10,000-row population); prints both wall times and the speed-up. Run it alone
(``flock /tmp/trustlab-bench.lock``): the machine is shared.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from trustlab.attacks.reference_models import RecipeSettings, train_reference_models
from trustlab.train.data import load_dataset
from trustlab.train.trainer import input_spec_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("adult")
    rows = np.random.default_rng(0).choice(len(data.splits["train"]), 10_000, replace=False)
    X, y = data.splits["train"].X[rows], data.splits["train"].y[rows]
    kwargs = dict(n_models=args.models, config={"hidden": [256, 256], "dropout": 0.0},
                  recipe=RecipeSettings(epochs=args.epochs, lr=2e-3, batch_size=args.batch_size,
                                        weight_decay=0.0), seed=0)
    times = {}
    for batched in (True, False):
        started = time.perf_counter()
        train_reference_models("mlp", input_spec_for(data), X, y, batched=batched, **kwargs)
        times[batched] = time.perf_counter() - started
    print(f"{args.models} models x {args.epochs} epochs on {args.threads} threads: batched "
          f"{times[True]:.1f} s, sequential {times[False]:.1f} s, speed-up "
          f"{times[False] / times[True]:.2f}x ({times[True] / args.models:.2f} s per model "
          "batched)")


if __name__ == "__main__":
    main()
