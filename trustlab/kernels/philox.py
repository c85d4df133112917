"""The DP step's Gaussian noise on the CPU: Philox4x32-10 normals, fused with the final write.

torch's CPU sampler (a Mersenne Twister, one draw after another) takes a tenth of a small
model's whole step; the C kernel ``native/philox_noise.c`` draws its normals about 3 times
faster on one thread (5 on two), vectorised (the Philox rounds on 32-bit lanes with AVX-512 or
AVX2 where the CPU has them), in the pass that writes ``(s + std z) * scale``. The normals of a
64-bit ``key`` and ``stream`` are defined by :func:`philox_normals`, the pure-torch reference
the kernel is tested against (the layout is described in the C source). Each step has its own
key (the optimizer's noise key, drawn once from its generator and saved by ``state_dict``, mixed
with the count of keys it has given: :func:`~trustlab.kernels.clip.step_key`) and each tensor
is its own
stream, so no two tensors or steps share noise.
"""

from __future__ import annotations

import ctypes
import functools
import math
from typing import Callable

import torch
from torch import Tensor

from trustlab.kernels import native

BLOCK = 64  # Philox counters per chunk of 4 * BLOCK normals (as in the C source)
MASK = 0xFFFFFFFF
MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
KEY_STEPS = (0x9E3779B9, 0xBB67AE85)


@functools.cache
def _kernel() -> Callable[..., None] | None:
    """The C kernel's entry point, or None where it cannot be built."""
    library = native.load("philox_noise", fast_math=True)
    if library is None:
        return None
    write = library.trustlab_noisy_write
    pointers = ctypes.POINTER(ctypes.c_void_p)
    write.argtypes = [ctypes.c_int64, pointers, pointers, ctypes.POINTER(ctypes.c_int64),
                      ctypes.c_uint64, ctypes.c_uint64, ctypes.c_float, ctypes.c_float]
    write.restype = ctypes.c_int
    return write


def native_available(tensor: Tensor) -> bool:
    """Whether :func:`native_noisy_write` serves ``tensor``: float32 on the CPU, a C compiler
    here, and ``TRUSTLAB_NATIVE`` not 0."""
    return (tensor.is_cpu and tensor.dtype == torch.float32 and native.enabled()
            and _kernel() is not None)


def native_noisy_write(sums: list[Tensor], std: float, scale: float, key: int,
                       first_stream: int = 0, *, in_place: bool = False) -> list[Tensor]:
    """``(s + std * z) * scale`` for each tensor ``s`` of ``sums``, ``z`` the normals of
    (``key``, ``first_stream + k``) for the ``k``-th tensor, in one call (float32 on the CPU;
    see :func:`native_available`): in new tensors, or, with ``in_place``, written over the
    (contiguous) sums themselves."""
    sums = [s if s.is_contiguous() else s.contiguous() for s in sums]
    summed = native.pointers(sums)
    out = sums if in_place else [torch.empty_like(s) for s in sums]
    status = _kernel()(len(sums), summed if in_place else native.pointers(out), summed,
                       native.int64s([s.numel() for s in sums]), key, first_stream, std, scale)
    if status != 0:
        raise MemoryError(f"the native noise kernel could not allocate its table of {len(sums)} "
                          "tensors")
    return out


def philox_words(counters: Tensor, stream: int, key: int) -> Tensor:
    """Reference Philox4x32-10: the four 32-bit words (in int64, (N, 4)) of each 64-bit counter
    of ``counters`` (int64) with the high counter words ``stream``, under the 64-bit ``key``."""
    c = [counters & MASK, (counters >> 32) & MASK,
         torch.full_like(counters, stream & MASK), torch.full_like(counters, (stream >> 32) & MASK)]
    k = [key & MASK, (key >> 32) & MASK]
    for _ in range(10):
        hi0, lo0 = _mulhilo(MULTIPLIERS[0], c[0])
        hi1, lo1 = _mulhilo(MULTIPLIERS[1], c[2])
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0]
        k = [(k[0] + KEY_STEPS[0]) & MASK, (k[1] + KEY_STEPS[1]) & MASK]
    return torch.stack(c, dim=1)


def _mulhilo(multiplier: int, c: Tensor) -> tuple[Tensor, Tensor]:
    """The high and low 32-bit words of ``multiplier * c`` (c < 2^32), in int64 without
    overflow: the multiplier taken in 16-bit halves."""
    high, low = multiplier >> 16, multiplier & 0xFFFF
    by_high, by_low = c * high, c * low  # each < 2^48
    hi = (by_high + (by_low >> 16)) >> 16
    lo = (((by_high & 0xFFFF) << 16) + by_low) & MASK
    return hi, lo


def philox_normals(n: int, key: int, stream: int) -> Tensor:
    """Reference: the first ``n`` standard normals (float32) of (``key``, ``stream``)."""
    chunks = max(1, math.ceil(n / (4 * BLOCK)))
    words = philox_words(torch.arange(chunks * BLOCK, dtype=torch.int64), stream, key)
    x = words.view(chunks, BLOCK, 4).transpose(1, 2).reshape(chunks, 4 * BLOCK)
    u1 = (x[:, :2 * BLOCK].to(torch.float32) + 0.5) * 2.0 ** -32
    r = (-2.0 * torch.log(u1)).sqrt()
    t = (x[:, 2 * BLOCK:] >> 8).to(torch.float32) * (2 * math.pi * 2.0 ** -24)
    return torch.cat([r * torch.cos(t), r * torch.sin(t)], dim=1).flatten()[:n]
