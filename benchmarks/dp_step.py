"""Time one full DP-SGD optimizer step: non-private vs Opacus (hooks, ghost) vs trustlab.

    python benchmarks/dp_step.py [--device cpu|cuda] [--batch 128 512] [--rounds 15] [--threads N]
                                 [--malloc keep|default] [--json FILE]
                                 [--methods nonprivate opacus_hooks opacus_ghost trustlab
                                            trustlab_per_layer]

``trustlab_per_layer`` (not run by default) is trustlab with per-layer clipping, which clips
each layer in its own backward and frees its records there.

Methods are interleaved round by round and the median step time is reported, so load from
other processes hits all methods alike. Peak memory is the step's high-water mark above the
memory held before it (CUDA: max_memory_allocated; CPU: the peak of the running sum of the
step's allocations and their frees as the profiler records them, in time order, temporaries
inside an op included).

CPU allocator: glibc returns freed memory to the OS by heuristics (a dynamic mmap threshold,
heap trimming) that depend on everything allocated before in the process, so whether a step
re-faults tens of MB of fresh pages (measured: 0 to 180 MiB per CNN step, ~1 ms per 4 MiB)
changes with the other methods interleaved beside it, by +-30% of a step. ``--malloc keep``
(the default) turns trimming off and fixes the mmap threshold, for every method alike, as a
caching allocator (jemalloc, tcmalloc, PyTorch's CUDA allocator) would; ``--malloc default``
measures glibc as it comes.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import statistics
import time
import warnings
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trustlab.privacy import fix, make_private

METHODS = ("nonprivate", "opacus_hooks", "opacus_ghost", "trustlab")
OPTIONAL_METHODS = ("trustlab_per_layer",)


class Pool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)


class LastStep(nn.Module):
    def __init__(self, rnn: nn.Module, hidden: int, classes: int) -> None:
        super().__init__()
        self.rnn, self.head = rnn, nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def build(name: str) -> tuple[nn.Module, Callable[[int], torch.Tensor], int]:
    """(model, input maker, classes) of the issue's reference models; ``mlp_tiny`` (the MLP's
    shape 4 wide, where compute is nil) shows an engine's fixed per-step overhead."""
    if name == "mlp":
        return (nn.Sequential(nn.Linear(100, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                              nn.Linear(256, 2)), lambda b: torch.randn(b, 100), 2)
    if name == "mlp_tiny":
        return (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(),
                              nn.Linear(4, 2)), lambda b: torch.randn(b, 4), 2)
    if name == "cnn":
        return (nn.Sequential(nn.Conv2d(1, 16, 5, padding=2), nn.GroupNorm(4, 16), nn.ReLU(),
                              nn.MaxPool2d(2), nn.Conv2d(16, 32, 5, padding=2),
                              nn.GroupNorm(8, 32), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(32 * 7 * 7, 10)), lambda b: torch.randn(b, 1, 28, 28), 10)
    if name == "transformer":
        layer = nn.TransformerEncoderLayer(128, 4, 256, dropout=0.0, batch_first=True)
        return (nn.Sequential(layer, Pool(), nn.Linear(128, 10)),
                lambda b: torch.randn(b, 64, 128), 10)
    if name == "lstm":
        return (LastStep(nn.LSTM(28, 128, batch_first=True), 128, 10),
                lambda b: torch.randn(b, 28, 28), 10)
    raise ValueError(name)


def make_trustlab(model: nn.Module, x: torch.Tensor, y: torch.Tensor, secure_mode: bool = False,
                  clipping: str = "flat") -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
    """``model``, SGD and the loader of the fixed batch (x, y), made private by trustlab."""
    model = fix(model)
    return make_private(model, torch.optim.SGD(model.parameters(), lr=0.01),
                        DataLoader(TensorDataset(x, y), batch_size=len(x)),
                        noise_multiplier=1.0, max_grad_norm=1.0, target_delta=1e-5,
                        poisson_sampling=False, noise_seed=None if secure_mode else 0,
                        secure_mode=secure_mode, clipping=clipping)


def make_step(method: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor
              ) -> Callable[[], None]:
    """A closure running one optimizer step of ``method`` on the fixed batch (x, y)."""
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
    loss_fn = nn.CrossEntropyLoss()
    if method == "nonprivate":
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
    elif method.startswith("trustlab"):  # trustlab, trustlab_secure, trustlab_per_layer
        model, opt, _ = make_trustlab(model, x, y, secure_mode=method == "trustlab_secure",
                                      clipping="per_layer" if method.endswith("per_layer")
                                      else "flat")
    else:
        from opacus import PrivacyEngine
        from opacus.validators import ModuleValidator

        model = ModuleValidator.fix(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        mode = method.split("_")[1]
        out = PrivacyEngine().make_private(module=model, optimizer=opt, data_loader=loader,
                                           criterion=loss_fn, noise_multiplier=1.0,
                                           max_grad_norm=1.0, poisson_sampling=False,
                                           grad_sample_mode=mode)
        model, opt, loss_fn = out[0], out[1], out[2] if mode == "ghost" else loss_fn

    def step() -> None:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def peak_memory(step: Callable[[], None], device: str) -> int:
    """Bytes the step needs above what is held before it."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    # CPU: the running sum of the step's own allocations and their frees, in time order (frees
    # of memory allocated before the step, like last step's gradients, are not counted: the
    # profiler knows their sizes only if it happened to see them allocated)
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events, pending = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        event = pending.pop()
        if event.typed[0] == _EventType.Allocation:
            events.append((event.start_time_ns, event.typed[1].alloc_size, event.typed[1].ptr))
        pending.extend(event.children)
    live: dict[int, int] = {}
    held = peak = 0
    for _, size, ptr in sorted(events):
        if size > 0:
            live[ptr] = size
        elif ptr in live:
            size = -live.pop(ptr)
        else:
            continue
        held += size
        peak = max(peak, held)
    return peak


def interleaved_times(steps: dict[str, Callable[[], None]], rounds: int, device: str = "cpu"
                      ) -> dict[str, list[float]]:
    """Seconds of each step in each round, the steps run in turn round by round (so load from
    other processes hits them alike)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return times


def noise_source(device: str) -> str:
    """Which sampler trustlab's noise comes from on ``device`` (printed with the results)."""
    from trustlab.kernels.philox import native_available
    if device == "cuda":
        return "triton"
    return "native" if native_available(torch.zeros(1)) else "torch"


def keep_freed_memory() -> bool:
    """glibc: keep freed memory in the process (no trimming, mmap only above 32 MiB), so that
    steady-state steps reuse pages instead of faulting fresh ones. False where not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        return bool(libc.mallopt(m_trim_threshold, 2**31 - 1)
                    and libc.mallopt(m_mmap_threshold, 32 * 2**20))
    except (OSError, AttributeError):
        return False


def run(models: list[str], batches: list[int], rounds: int, device: str,
        methods: tuple[str, ...] = METHODS) -> list[dict]:
    records = []
    for name in models:
        for batch in batches:
            torch.manual_seed(0)
            model, make_x, classes = build(name)
            x, y = make_x(batch).to(device), torch.randint(0, classes, (batch,), device=device)
            steps = {m: make_step(m, copy.deepcopy(model).to(device), x, y) for m in methods}
            memory = {}
            for m, step in steps.items():  # warm up, then one step for the memory peak
                step(), step()
                memory[m] = peak_memory(step, device)
            times = interleaved_times(steps, rounds, device)
            base_t = statistics.median(times["nonprivate"])
            for m in methods:
                t = statistics.median(times[m])
                records.append({"model": name, "batch": batch, "method": m, "step_time_s": t,
                                "peak_mem_bytes": memory[m],
                                "time_ratio_vs_nonprivate": t / base_t,
                                "mem_ratio_vs_nonprivate": memory[m] / max(memory["nonprivate"], 1)})
                r = records[-1]
                print(f"{name:12s} B={batch:4d} {m:18s} {t * 1e3:9.2f} ms  "
                      f"x{r['time_ratio_vs_nonprivate']:5.2f}  mem {memory[m] / 2**20:8.1f} MiB  "
                      f"x{r['mem_ratio_vs_nonprivate']:5.2f}", flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn", "transformer", "lstm"])
    parser.add_argument("--batch", nargs="+", type=int, default=[128, 512])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", help="write the records to this file")
    parser.add_argument("--methods", nargs="+", default=list(METHODS),
                        choices=METHODS + OPTIONAL_METHODS,
                        help="what to run besides nonprivate (always run: the ratios' base)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's; "
                        "1 gives stable ratios on a loaded machine)")
    parser.add_argument("--malloc", default="keep", choices=["keep", "default"],
                        help="CPU allocator: keep freed memory (no trimming; default) or "
                        "glibc's defaults (see the module docstring)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = "keep" if args.malloc == "keep" and keep_freed_memory() else "default"
    warnings.filterwarnings("ignore")
    print(f"# {datetime.date.today()} device={args.device} torch={torch.__version__} "
          f"threads={torch.get_num_threads()} malloc={malloc} noise={noise_source(args.device)}")
    methods = tuple(dict.fromkeys(["nonprivate", *args.methods]))
    records = run(args.models, args.batch, args.rounds, args.device, methods)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
