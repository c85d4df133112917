"""Clip factors, the clipped sums (fused scale-accumulate, one GEMM on rescaled rows), and the
noisy final gradient write."""

from __future__ import annotations

import functools
import itertools
from types import SimpleNamespace
from typing import Callable

import torch
from torch import Tensor

from trustlab.kernels.philox import native_available, native_noisy_write
from trustlab.kernels.registry import use_triton

CLIP_EPS = 1e-6
_WORD = 2**64 - 1
AUTO_S_GAMMA = 0.01  # automatic clipping's stability constant (Bu et al. 2022)


def clip_factors(sq_norms: Tensor, max_grad_norm: float, scale: float = 1.0) -> Tensor:
    """``scale * min(1, C / (||g_i|| + 1e-6))``: four in-place passes over one new tensor."""
    return automatic_factors(sq_norms, max_grad_norm, scale, CLIP_EPS).clamp_(max=scale)


def automatic_factors(sq_norms: Tensor, max_grad_norm: float, scale: float = 1.0,
                      gamma: float = AUTO_S_GAMMA) -> Tensor:
    """``scale * C / (||g_i|| + gamma)``: automatic clipping (AUTO-S, Bu et al. 2022), every
    sample normalised, none left at full size; each contribution stays below ``C``. Flat
    clipping's factors are these, with ``gamma = 1e-6``, capped at ``scale``."""
    return sq_norms.sqrt().add_(gamma).reciprocal_().mul_(max_grad_norm * scale)


def scale_accumulate(per_sample: Tensor, weights: Tensor) -> Tensor:
    """``sum_i w_i x_i`` over the rows of a (B, N) tensor of per-sample values."""
    if use_triton(per_sample):
        return triton_scale_accumulate(per_sample, weights)
    return weights.to(per_sample.dtype) @ per_sample


def weighted_weight_sum(a: Tensor, g: Tensor, weights: Tensor) -> Tensor:
    """``sum_i w_i g_i^T a_i`` as one GEMM, rescaling whichever of ``a``/``g`` is smaller;
    (B, T, ·) sequences or (B, ·) single rows, ``weights`` in ``g``'s dtype."""
    w = weights.view((-1,) + (1,) * (g.dim() - 1))
    if g.shape[-1] <= a.shape[-1]:
        g = g * w
    else:
        a = a * w
    if g.dim() > 2:
        g, a = g.flatten(0, -2), a.flatten(0, -2)
    return g.t() @ a


def noisy_write(sums: list[Tensor], std: float, denominator: float,
                generator: torch.Generator | None,
                draw_normal: Callable[[int, float, torch.device], Tensor] | None = None,
                in_place: bool = False, key: int | None = None) -> list[Tensor]:
    """``(s + N(0, std^2)) / denominator`` for every tensor: noise added once, in the final
    write: Triton on CUDA, the native Philox kernel for float32 on the CPU, both from the
    step's 63-bit Philox ``key`` (one step, one key: see :func:`step_key`; None: a fresh one
    from ``generator``). The torch path draws all the noise from ``generator`` into one flat
    buffer at scale ``std / denominator`` (the scale applied inside the sampler: no extra pass)
    and adds ``s / denominator`` in one foreach op; the results are views of that buffer.
    ``draw_normal(n, std, device)``, when given, draws the noise instead (any dtype). With
    ``in_place`` (sums nothing else holds) the Triton and native paths write over the sums
    (contiguous ones) instead of allocating."""
    if not sums:
        return []
    if (std > 0 and draw_normal is None and not use_triton(sums[0])
            and native_available(sums[0])
            and all(s.is_cpu and s.dtype == torch.float32 for s in sums)):
        if key is None:
            key = draw_key(generator, sums[0].device)
        # each tensor its own stream of that key
        return native_noisy_write(sums, std, 1.0 / denominator, key, in_place=in_place)
    if len({(s.dtype, s.device) for s in sums}) > 1:  # the flat buffer has one dtype and device
        # each kind its own key (the kinds' streams and offsets each start at 0)
        return _by_kind(sums, lambda part, kind: noisy_write(
            part, std, denominator, generator, draw_normal, in_place,
            None if key is None else step_key(key, kind)))
    if use_triton(sums[0]) and draw_normal is None:
        # the step's key as the seed, each tensor at its own offset of that stream: no two
        # tensors or steps share noise (31-bit seeds per tensor collide within ~10^5 steps)
        seed = draw_key(generator, sums[0].device) if key is None else key
        offsets = itertools.accumulate((s.numel() for s in sums[:-1]), initial=0)
        return [triton_noisy_write(s, std, denominator, seed, offset, in_place=in_place)
                for s, offset in zip(sums, offsets)]
    size, like = sum(s.numel() for s in sums), sums[0]
    if std > 0 and draw_normal is not None:
        flat = draw_normal(size, std / denominator, like.device).to(like.dtype)
    elif std > 0:
        flat = torch.empty(size, device=like.device, dtype=like.dtype).normal_(
            0.0, std / denominator, generator=generator)
    else:
        flat = like.new_zeros(size)
    out = [n.view_as(s) for n, s in zip(flat.split([s.numel() for s in sums]), sums)]
    torch._foreach_add_(out, sums, alpha=1.0 / denominator)
    return out


def draw_key(generator: torch.Generator | None, device: torch.device) -> int:
    """A fresh 63-bit Philox key from ``generator`` (on ``device``'s kind of generator)."""
    key = torch.empty((), dtype=torch.int64, device=device)  # randint's draw, fewer steps
    return int(key.random_(0, 2**63 - 1, generator=generator))


def step_key(base_key: int, step: int) -> int:
    """Step ``step``'s 63-bit Philox key: ``base_key + step`` through SplitMix64's finaliser
    (a bijection of 64-bit words, so distinct steps get distinct keys bar the 63-bit cut),
    in Python: a step's noise then costs no torch call to draw its key (an optimizer draws its
    base key once, :func:`draw_key`, and saves it with its state)."""
    x = (base_key + step + 0x9E3779B97F4A7C15) & _WORD
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _WORD
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _WORD
    return (x ^ (x >> 31)) & (2**63 - 1)


def _by_kind(tensors: list[Tensor], write: Callable[[list[Tensor], int], list[Tensor]]
             ) -> list[Tensor]:
    """``write(part, k)`` applied to the tensors of each dtype and device apart (``k`` numbers
    the kinds in order of first appearance), results in input order."""
    groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.dtype, t.device), []).append(i)
    out: dict[int, Tensor] = {}
    for kind, positions in enumerate(groups.values()):
        out.update(zip(positions, write([tensors[i] for i in positions], kind)))
    return [out[i] for i in range(len(tensors))]


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
    def noisy(s_ptr, out_ptr, N, std, inv_denominator, seed, offset, BN: tl.constexpr):
        rn = tl.program_id(0) * BN + tl.arange(0, BN)
        s = tl.load(s_ptr + rn, mask=rn < N, other=0.0)
        noise = tl.randn(seed, rn.to(tl.int64) + offset)
        tl.store(out_ptr + rn, (s + std * noise) * inv_denominator, mask=rn < N)

    return SimpleNamespace(accumulate=accumulate, noisy=noisy)


def triton_scale_accumulate(per_sample: Tensor, weights: Tensor, block: int = 256) -> Tensor:
    import triton

    x = per_sample.float().contiguous()
    out = torch.empty(x.shape[1], dtype=torch.float32, device=x.device)
    _triton().accumulate[(triton.cdiv(x.shape[1], block),)](
        x, weights.float().contiguous(), out, x.shape[0], x.shape[1], BN=block)
    return out


def triton_noisy_write(summed: Tensor, std: float, denominator: float, seed: int,
                       offset: int = 0, block: int = 1024, in_place: bool = False) -> Tensor:
    """``(summed + std * z) / denominator`` with ``z`` the Philox normals of ``seed`` at
    positions ``offset, offset + 1, ...``, computed in float32, in ``summed``'s dtype;
    ``in_place``: over ``summed`` where it is a contiguous float32 tensor."""
    import triton

    s = summed.float().contiguous()
    out = s if in_place else torch.empty_like(s)
    _triton().noisy[(triton.cdiv(s.numel(), block),)](s, out, s.numel(), float(std),
                                                      1.0 / denominator, seed, offset, BN=block)
    return out.view_as(summed).to(summed.dtype)
