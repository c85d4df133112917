"""Adversarial training's gain on the digits CNN: PGD-40 (1, 5, 10 starts) and AutoAttack
accuracy at L∞ ε for the standard CNN and ``train_adversarial``'s, both with their defaults.

    python benchmarks/adversarial_training.py [--eps 0.1] [--threads 2] [--restarts 1 5 10]
"""

from __future__ import annotations

import argparse
import time

import torch

from trustlab.attacks.art_adapter import input_domain
from trustlab.attacks.autoattack import autoattack
from trustlab.attacks.defences import train_adversarial
from trustlab.attacks.evasion import evaluate_attack, make_threat, pgd
from trustlab.train.data import load_dataset
from trustlab.train.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--restarts", type=int, nargs="+", default=[1, 5, 10])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("digits", seed=0)
    test = data.splits["test"]
    threat = make_threat(input_domain(data), args.eps)
    models = {}
    for name, fit in (("standard", train), ("robust", train_adversarial)):
        start = time.perf_counter()
        models[name] = fit("cnn", "digits", data=data, show_progress=True).model.eval()
        print(f"{name} trained in {time.perf_counter() - start:.0f} s", flush=True)
    columns = [f"PGD-40 x{r}" for r in args.restarts] + ["AutoAttack"]
    rows = {}
    for name, model in models.items():
        rows[name] = [evaluate_attack(model, test.X, test.y,
                                      pgd(model, test.X, test.y, threat, steps=40,
                                          restarts=r)).robust_accuracy for r in args.restarts]
        rows[name].append(autoattack(model, test.X, test.y, data, threat).robust_accuracy)
    rows["gain (points)"] = [100 * (r - s) for r, s in zip(rows["robust"], rows["standard"])]
    print(f"\nL∞ ε = {args.eps}, {len(test.y)} test images, {torch.get_num_threads()} threads")
    print(f"{'':14s}" + "".join(f"{c:>14s}" for c in columns))
    for name, values in rows.items():
        print(f"{name:14s}" + "".join(f"{v:14.3f}" if name != "gain (points)" else f"{v:+14.1f}"
                                      for v in values))


if __name__ == "__main__":
    main()
