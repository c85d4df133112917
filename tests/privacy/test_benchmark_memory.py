"""The DP-SGD benchmark's CPU peak memory, which the issue's memory target is judged on."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from dp_step import peak_memory  # noqa: E402

MIB = 1 << 20


def test_peak_counts_every_buffer_alive_at_once() -> None:
    def step() -> None:
        x = torch.ones(MIB // 4)          # 1 MiB
        y = x + x                         # 2 MiB alive: the peak
        del x, y
        z = torch.ones(MIB // 8)          # 0.5 MiB after both were freed
        del z

    assert 2 * MIB <= peak_memory(step, "cpu") < 2 * MIB + 4096


def test_frees_of_memory_held_before_the_step_do_not_lower_the_peak() -> None:
    held = [torch.ones(MIB // 4)]

    def step() -> None:
        held.clear()                      # frees 1 MiB the step did not allocate
        y = torch.ones(MIB // 2)          # 2 MiB new
        del y

    assert 2 * MIB <= peak_memory(step, "cpu") < 2 * MIB + 4096


class _TemporaryInBackward(torch.autograd.Function):
    """Identity whose backward allocates and drops a 1 MiB buffer (as Opacus's hooks do with
    per-sample gradients): the buffer lives and dies inside one autograd node."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        scratch = torch.ones(MIB // 4)
        return g * scratch[0]


def test_peak_sees_temporaries_inside_an_autograd_node() -> None:
    x = torch.ones(4, requires_grad=True)

    def step() -> None:
        _TemporaryInBackward.apply(x).sum().backward()

    assert MIB <= peak_memory(step, "cpu") < MIB + 4096
