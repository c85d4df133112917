"""Adaptive-step vs uniform-step Integrated Gradients: time to reach the completeness bound.

Trains (or loads) the zoo CNN on digits, explains ``--examples`` test digits (predicted class,
black baseline) and prints, side by side: the adaptive IG's time and worst relative gap, and the
smallest uniform Gauss–Legendre step count (Captum's default rule, doubling from 50) that reaches
the same bound, with its time. The uniform search runs on the examples the adaptive run found
hardest (they decide it), then the found step count is timed once on every example.

    .venv/bin/python benchmarks/ig_adaptive.py [--examples 200] [--tol 1e-2] [--checkpoint DIR]

Run timings under ``flock /tmp/trustlab-bench.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from trustlab.explain import adaptive_integrated_gradients, predicted_target
from trustlab.explain.integrated import integrated_gradients
from trustlab.train.subject import Subject
from trustlab.train.trainer import TrainSettings, train


def load_subject(checkpoint: Path) -> Subject:
    if not (checkpoint / "meta.json").exists():
        train("cnn", "digits", settings=TrainSettings(epochs=15, seed=0), out=checkpoint,
              show_progress=False)
    return Subject.from_checkpoint(checkpoint)


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--tol", type=float, default=1e-2)
    parser.add_argument("--checkpoint", type=Path, default=Path("/tmp/trustlab-bench/digits-cnn"))
    parser.add_argument("--max-uniform-steps", type=int, default=25600)
    args = parser.parse_args()
    torch.set_num_threads(2)
    subject = load_subject(args.checkpoint)
    model = subject.clean_model()
    inputs = torch.from_numpy(subject.split("test").X[:args.examples])
    target = predicted_target(model, inputs)

    adaptive, adaptive_s = timed(adaptive_integrated_gradients, model, inputs, target, tol=args.tol)
    default = integrated_gradients(model, inputs, target, n_steps=50, internal_batch_size=2048)
    hard = np.argsort(-adaptive.steps)[:10]
    steps = 50
    while steps <= args.max_uniform_steps:
        probe = integrated_gradients(model, inputs[hard], target[hard], n_steps=steps,
                                     internal_batch_size=2048)
        gaps = np.abs(probe.delta) / np.abs(adaptive.output_change[hard]).clip(
            0.01 * np.abs(adaptive.output_change).max())
        if gaps[adaptive.judged[hard]].max() <= args.tol:
            break
        steps *= 2
    uniform, uniform_s = timed(integrated_gradients, model, inputs, target, n_steps=steps,
                               internal_batch_size=2048)
    print(f"digits CNN, {len(inputs)} test digits, tolerance {args.tol:g} (relative completeness "
          f"gap, examples with |f(x)-f(b)| >= 1% of the largest: {adaptive.judged.sum()})")
    print(f"{'':28}{'time s':>10}{'worst gap':>12}{'median gap':>12}{'grad evals':>12}")
    print(f"{'captum default (50 steps)':28}{'-':>10}{default.worst_relative_gap:>12.4f}"
          f"{np.median(default.relative_gap):>12.4f}{50 * len(inputs):>12}")
    print(f"{f'uniform ({steps} steps)':28}{uniform_s:>10.1f}{uniform.worst_relative_gap:>12.4f}"
          f"{np.median(uniform.relative_gap):>12.4f}{steps * len(inputs):>12}")
    print(f"{'adaptive (per example)':28}{adaptive_s:>10.1f}{adaptive.worst_relative_gap:>12.4f}"
          f"{np.median(adaptive.relative_gap):>12.4f}{adaptive.steps.sum():>12}")
    print(f"adaptive steps per example: median {np.median(adaptive.steps):.0f}, "
          f"max {adaptive.steps.max()}; time ratio adaptive/uniform = "
          f"{adaptive_s / uniform_s:.3f}")


if __name__ == "__main__":
    main()
