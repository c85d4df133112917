"""Peak memory and time of one logical DP-SGD step run as physical batches (BatchMemoryManager).

    python benchmarks/dp_physical_batches.py [--models cnn transformer] [--batch 512]
                                             [--physical 512 256 128] [--rounds 5]

For ``dp_step.py``'s reference models, one optimizer step over a logical batch of ``--batch``
samples, each loaded through a DataLoader: non-private at the full batch, then trustlab with the
batch run as physical batches of each ``--physical`` size through ``BatchMemoryManager`` (the
same noisy step: see tests/privacy/test_batch_memory.py). Prints the peak memory
(``dp_step.peak_memory``) and the median time, each as a ratio to the non-private step.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dp_step import build, interleaved_times, keep_freed_memory, make_trustlab, peak_memory
from trustlab.privacy import BatchMemoryManager


def train_on(model: nn.Module, opt: torch.optim.Optimizer, batches) -> None:
    """The training loop: one optimizer step call per batch."""
    for xb, yb in batches:
        opt.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        opt.step()


def nonprivate_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One SGD step over the batch (x, y), loaded through a DataLoader like the DP steps."""
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    return lambda: train_on(model, opt, loader)


def physical_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, physical: int
                  ) -> Callable[[], None]:
    """One trustlab step over the logical batch (x, y) in physical batches of ``physical``."""
    model, opt, loader = make_trustlab(model, x, y)
    manager = BatchMemoryManager(data_loader=loader, max_physical_batch_size=physical,
                                 optimizer=opt)

    def step() -> None:
        with manager as batches:
            train_on(model, opt, batches)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "transformer"])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--physical", nargs="+", type=int, default=[512, 256, 128])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    keep_freed_memory()
    warnings.filterwarnings("ignore")
    print(f"# logical batch {args.batch}, threads={torch.get_num_threads()}; ratios to the "
          "non-private full-batch step")
    for name in args.models:
        torch.manual_seed(0)
        model, make_x, classes = build(name)
        x, y = make_x(args.batch), torch.randint(0, classes, (args.batch,))
        steps = {"nonprivate": nonprivate_step(copy.deepcopy(model), x, y)}
        steps |= {f"trustlab/{p}": physical_step(copy.deepcopy(model), x, y, p)
                  for p in args.physical}
        memory = {}
        for method, step in steps.items():
            step(), step()
            memory[method] = peak_memory(step, "cpu")
        times = {m: statistics.median(t) for m, t in interleaved_times(steps, args.rounds).items()}
        for method in steps:
            time_ratio = times[method] / times["nonprivate"]
            mem_ratio = memory[method] / memory["nonprivate"]
            print(f"{name:12s} {method:15s} {times[method] * 1e3:9.1f} ms x{time_ratio:5.2f}  "
                  f"mem {memory[method] / 2**20:7.1f} MiB x{mem_ratio:5.2f}", flush=True)


if __name__ == "__main__":
    main()
