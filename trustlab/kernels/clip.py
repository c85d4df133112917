"""Clip factors, the fused clip-scale-accumulate, and the noisy final gradient write."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch
from torch import Tensor

from trustlab.kernels.registry import use_triton

CLIP_EPS = 1e-6


def clip_factors(sq_norms: Tensor, max_grad_norm: float, scale: float = 1.0) -> Tensor:
    """``scale * min(1, C / (||g_i|| + 1e-6))``: four in-place passes over one new tensor."""
    return (sq_norms.sqrt().add_(CLIP_EPS).reciprocal_().mul_(max_grad_norm * scale)
            .clamp_(max=scale))


def scale_accumulate(per_sample: Tensor, weights: Tensor) -> Tensor:
    """``sum_i w_i x_i`` over the rows of a (B, N) tensor of per-sample values."""
    if use_triton(per_sample):
        return triton_scale_accumulate(per_sample, weights)
    return weights.to(per_sample.dtype) @ per_sample


def noisy_write(sums: list[Tensor], std: float, denominator: float,
                generator: torch.Generator | None) -> list[Tensor]:
    """``(s + N(0, std^2)) / denominator`` for every tensor: noise added once, in the final
    write. The torch path draws all the noise into one flat buffer at scale
    ``std / denominator`` (the scale applied inside the sampler: no extra pass) and adds
    ``s / denominator`` in one foreach op; the results are views of that buffer."""
    if not sums:
        return []
    if use_triton(sums[0]):
        seeds = torch.randint(0, 2**31 - 1, (len(sums),), generator=generator,
                              device=sums[0].device).tolist()
        return [triton_noisy_write(s, std, denominator, seed) for s, seed in zip(sums, seeds)]
    size, like = sum(s.numel() for s in sums), sums[0]
    if std > 0:
        flat = torch.empty(size, device=like.device, dtype=like.dtype).normal_(
            0.0, std / denominator, generator=generator)
    else:
        flat = like.new_zeros(size)
    out = [n.view_as(s) for n, s in zip(flat.split([s.numel() for s in sums]), sums)]
    torch._foreach_add_(out, sums, alpha=1.0 / denominator)
    return out


@functools.cache
def _triton() -> SimpleNamespace:
    import triton
    import triton.language as tl

    @triton.jit
    def accumulate(x_ptr, w_ptr, out_ptr, B, N, BN: tl.constexpr):
        rn = tl.program_id(0) * BN + tl.arange(0, BN)
        acc = tl.zeros((BN,), dtype=tl.float32)
        for b in range(0, B):
            acc += tl.load(w_ptr + b) * tl.load(x_ptr + b * N + rn, mask=rn < N, other=0.0)
        tl.store(out_ptr + rn, acc, mask=rn < N)

    @triton.jit
    def noisy(s_ptr, out_ptr, N, std, inv_denominator, seed, BN: tl.constexpr):
        rn = tl.program_id(0) * BN + tl.arange(0, BN)
        s = tl.load(s_ptr + rn, mask=rn < N, other=0.0)
        tl.store(out_ptr + rn, (s + std * tl.randn(seed, rn)) * inv_denominator, mask=rn < N)

    return SimpleNamespace(accumulate=accumulate, noisy=noisy)


def triton_scale_accumulate(per_sample: Tensor, weights: Tensor, block: int = 256) -> Tensor:
    import triton

    x = per_sample.float().contiguous()
    out = torch.empty(x.shape[1], dtype=torch.float32, device=x.device)
    _triton().accumulate[(triton.cdiv(x.shape[1], block),)](
        x, weights.float().contiguous(), out, x.shape[0], x.shape[1], BN=block)
    return out


def triton_noisy_write(summed: Tensor, std: float, denominator: float, seed: int,
                       block: int = 1024) -> Tensor:
    import triton

    s = summed.float().contiguous()
    out = torch.empty_like(s)
    _triton().noisy[(triton.cdiv(s.numel(), block),)](s, out, s.numel(), float(std),
                                                      1.0 / denominator, seed, BN=block)
    return out.view_as(summed)
