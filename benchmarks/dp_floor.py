"""The MLP's DP-SGD floor on this machine: what book-keeping costs with no engine at all.

    python benchmarks/dp_floor.py [--batch 512] [--rounds 400] [--malloc keep|default]

For ``dp_step.py``'s MLP (100-256-256-2, ReLU) three hand-written steps run interleaved with the
real non-private step (autograd and ``torch.optim.SGD``), each op called directly (no autograd,
no Python engine): the non-private step (weight-gradient GEMMs), the DP step with the fewest
torch ops book-keeping needs (per-sample norms ``||a_i||^2 (||g_i||^2 + 1)``, clip factors,
the clipped sums as GEMMs on rescaled ``g``, the engine's noisy write of all parameters) and
the same DP step without noise. ``raw DP - raw non-private`` is the least any torch-op engine adds to a
step; the floor printed is that extra over the real non-private step.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from typing import Callable

import torch
import torch.nn.functional as F

from trustlab.kernels import noisy_write

from dp_step import build, interleaved_times, keep_freed_memory, make_step, noise_source


def raw_steps(model: torch.nn.Sequential, x: torch.Tensor, y: torch.Tensor, max_grad_norm: float
              ) -> dict[str, Callable[[], None]]:
    """Hand-written non-private and DP steps of the MLP ``model`` on the batch (x, y)."""
    weights = [m.weight.detach().clone() for m in model if isinstance(m, torch.nn.Linear)]
    biases = [m.bias.detach().clone() for m in model if isinstance(m, torch.nn.Linear)]
    params = weights + biases
    generator = torch.Generator().manual_seed(0)
    batch = len(x)

    def forward_backward() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        acts, h = [x], x
        for i, (w, b) in enumerate(zip(weights, biases)):
            h = torch.addmm(b, h, w.t())
            if i < len(weights) - 1:
                h = torch.relu(h)
                acts.append(h)
        out = h.detach().requires_grad_()
        F.cross_entropy(out, y).backward()
        grads, g = [None] * len(weights), out.grad
        for i in reversed(range(len(weights))):
            grads[i] = g
            if i:
                g = torch.ops.aten.threshold_backward(g @ weights[i], acts[i], 0.0)
        return acts, grads

    def nonprivate() -> None:
        acts, grads = forward_backward()
        sums = [g.t() @ a for a, g in zip(acts, grads)] + [g.sum(0) for g in grads]
        torch._foreach_add_(params, sums, alpha=-0.01)

    def private(noise: bool) -> None:
        acts, grads = forward_backward()
        norms = sum(torch.addcmul(g_sq, g_sq, torch.linalg.vector_norm(a, dim=1).square())
                    for a, g_sq in ((a, torch.linalg.vector_norm(g, dim=1).square())
                                    for a, g in zip(acts, grads)))
        c = norms.mul_(batch**2).sqrt_().add_(1e-6).reciprocal_().mul_(max_grad_norm * batch)
        c = c.clamp_(max=batch)[:, None]
        sums = [s.view_as(p) for s, p in zip(
            [(g * c).t() @ a for a, g in zip(acts, grads)] + [c.t() @ g for g in grads], params)]
        # the engine's noisy write (the native kernel where it is built, else torch's sampler)
        sums = (noisy_write(sums, max_grad_norm, batch, generator) if noise
                else [s / batch for s in sums])
        torch._foreach_add_(params, sums, alpha=-0.01)

    return {"raw_nonprivate": nonprivate, "raw_dp": lambda: private(True),
            "raw_dp_no_noise": lambda: private(False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--malloc", default="keep", choices=["keep", "default"],
                        help="as in dp_step.py")
    args = parser.parse_args()
    malloc = "keep" if args.malloc == "keep" and keep_freed_memory() else "default"
    torch.manual_seed(0)
    model, make_x, classes = build("mlp")
    x, y = make_x(args.batch), torch.randint(0, classes, (args.batch,))
    steps = {"nonprivate": make_step("nonprivate", copy.deepcopy(model), x, y),
             "trustlab": make_step("trustlab", copy.deepcopy(model), x, y),
             **raw_steps(model, x, y, max_grad_norm=1.0)}
    interleaved_times(steps, 20)  # warm-up
    times = interleaved_times(steps, args.rounds)
    median = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    print(f"# mlp B={args.batch} threads={torch.get_num_threads()} malloc={malloc} "
          f"noise={noise_source('cpu')}; medians in ms")
    for name, ms in median.items():
        print(f"{name:16s} {ms:7.3f} ms  x{ms / median['nonprivate']:5.2f} vs non-private")
    extra = median["raw_dp"] - median["raw_nonprivate"]
    noise = median["raw_dp"] - median["raw_dp_no_noise"]
    print(f"least DP extra {extra:.3f} ms (noise {noise:.3f} ms): floor "
          f"x{1 + extra / median['nonprivate']:.2f} of the non-private step; trustlab "
          f"x{median['trustlab'] / median['nonprivate']:.2f}")


if __name__ == "__main__":
    main()
