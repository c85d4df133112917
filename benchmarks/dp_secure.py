"""What ``secure_mode`` costs: DP-SGD steps with the noise from keyed SHAKE-256 against torch's.

    python benchmarks/dp_secure.py [--device cpu|cuda] [--models mlp cnn transformer]
                                   [--batch 512] [--rounds 15]

For ``dp_step.py``'s reference models, non-private, trustlab and trustlab with
``secure_mode=True`` steps run interleaved round by round (medians); then the noise draw alone
for each model's parameter count: torch's ``normal_`` against ``SecureRandom.normal`` (four
Box–Muller normals per value from 32 bytes of the stream: SHAKE-256 on the host, the ChaCha20
kernel on CUDA).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import warnings

import torch

from dp_step import build, interleaved_times, keep_freed_memory, make_step
from trustlab.privacy.secure import SecureRandom

METHODS = ("nonprivate", "trustlab", "trustlab_secure")


def draw_times(size: int, rounds: int, device: str) -> dict[str, float]:
    """Median seconds to draw ``size`` Gaussian values, torch's generator against secure mode."""
    generator = torch.Generator(device=device).manual_seed(0)
    secure, buffer = SecureRandom(), torch.empty(size, device=device)
    draws = {"torch": lambda: buffer.normal_(0.0, 1.0, generator=generator),
             "secure": lambda: secure.normal(size, 1.0, device)}
    times = interleaved_times(draws, rounds, device)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn", "transformer"])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    malloc = "keep" if keep_freed_memory() else "default"
    warnings.filterwarnings("ignore")
    print(f"# device={args.device} threads={torch.get_num_threads()} malloc={malloc} "
          f"batch={args.batch}; medians")
    for name in args.models:
        torch.manual_seed(0)
        model, make_x, classes = build(name)
        x = make_x(args.batch).to(args.device)
        y = torch.randint(0, classes, (args.batch,), device=args.device)
        steps = {m: make_step(m, copy.deepcopy(model).to(args.device), x, y) for m in METHODS}
        interleaved_times(steps, 2, args.device)  # warm-up
        times = interleaved_times(steps, args.rounds, args.device)
        median = {m: statistics.median(t) for m, t in times.items()}
        size = sum(p.numel() for p in model.parameters())
        draw = draw_times(size, args.rounds, args.device)
        cells = "  ".join(f"{m} {median[m] * 1e3:8.2f} ms x{median[m] / median['nonprivate']:5.2f}"
                          for m in METHODS)
        print(f"{name:12s} {cells}  | noise for {size} params: torch {draw['torch'] * 1e3:.2f} "
              f"ms, secure {draw['secure'] * 1e3:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
