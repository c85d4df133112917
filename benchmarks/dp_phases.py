"""Where a DP-SGD step's time goes: forward, backward, flush and optimizer step, against non-private.

    python benchmarks/dp_phases.py [--models mlp cnn transformer lstm] [--batch 512]
                                   [--rounds 101] [--malloc keep|default]

For each of ``dp_step.py``'s reference models, non-private and trustlab steps are interleaved
round by round and each phase is timed separately (medians over the rounds after two warm-up
rounds): the forward pass with the loss, the backward pass (trustlab: the input-gradient
backward only; the flush that clips is held back and timed on its own), the flush, and the
optimizer step (trustlab: the noise and the wrapped optimizer's step). ``--models mlp_tiny
--batch 2`` (the MLP 4 wide) leaves only the fixed per-step cost of each phase: autograd, the
optimizer and the engine's Python and dispatch.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
from torch import nn

from dp_step import build, keep_freed_memory, make_trustlab, noise_source

PHASES = ("forward", "backward", "flush", "step")


def _phases(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
            y: torch.Tensor, tracker=None) -> list[float]:
    """Seconds of each phase of one step; ``tracker`` (trustlab) has its flush timed apart."""
    marks = [time.perf_counter()]
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    marks.append(time.perf_counter())
    if tracker is not None:
        tracker._callback_queued = True  # hold the end-of-backward flush back
    loss.backward()
    marks.append(time.perf_counter())
    if tracker is not None:
        tracker._callback_queued = False
        with torch.no_grad():
            tracker.flush()
    marks.append(time.perf_counter())
    optimizer.step()
    marks.append(time.perf_counter())
    return [b - a for a, b in zip(marks, marks[1:])]


def run(name: str, batch: int, rounds: int) -> None:
    torch.manual_seed(0)
    model, make_x, classes = build(name)
    x, y = make_x(batch), torch.randint(0, classes, (batch,))
    plain = copy.deepcopy(model)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.01)
    private, private_opt, _ = make_trustlab(copy.deepcopy(model), x, y)
    times: dict[str, list[list[float]]] = {"nonprivate": [], "trustlab": []}
    for r in range(rounds + 2):
        for method in times:
            phases = (_phases(plain, plain_opt, x, y) if method == "nonprivate" else
                      _phases(private, private_opt, x, y, private_opt.tracker))
            if r >= 2:
                times[method].append(phases)
    base = sum(statistics.median(p) for p in zip(*times["nonprivate"]))
    for method, rows in times.items():
        medians = [statistics.median(p) * 1e3 for p in zip(*rows)]
        cells = "  ".join(f"{phase} {m:8.3f}" for phase, m in zip(PHASES, medians))
        print(f"{name:12s} B={batch:4d} {method:11s} {cells}  total {sum(medians):8.3f} ms  "
              f"x{sum(medians) / 1e3 / base:5.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn", "transformer", "lstm"])
    parser.add_argument("--batch", nargs="+", type=int, default=[512])
    parser.add_argument("--rounds", type=int, default=101)
    parser.add_argument("--malloc", default="keep", choices=["keep", "default"],
                        help="as in dp_step.py")
    args = parser.parse_args()
    malloc = "keep" if args.malloc == "keep" and keep_freed_memory() else "default"
    warnings.filterwarnings("ignore")
    print(f"# threads={torch.get_num_threads()} malloc={malloc} noise={noise_source('cpu')}; "
          "phase medians in ms")
    for name in args.models:
        for batch in args.batch:
            run(name, batch, args.rounds)


if __name__ == "__main__":
    main()
