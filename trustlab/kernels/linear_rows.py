"""Flat clipping of Linear layers that each saw one row per sample, fused in one native call.

The MLP case: every layer's per-sample weight gradient is the outer product ``g_i a_i^T``, so a
flush is the norms ``||a_i||^2 ||g_i||^2`` (plus ``||g_i||^2`` for the bias), the clip factors,
the bias sums and one GEMM per layer on rescaled rows. The torch path takes some thirty small
torch calls for a three-layer MLP, whose dispatch costs more than their arithmetic at these
sizes; ``native/linear_rows.c`` computes the norms, factors and bias sums of all layers in one
call, on torch's threads, and, where torch's CPU library exports MKL's ``sgemm_`` and the
memory allows (:func:`weight_sums_in_call`), the weight sums too: each thread takes a share of
a weight's rows and runs one single-threaded GEMM per block of samples it has rescaled. The
engine's torch path (``LinearKernel.sq_norms``, :func:`~trustlab.kernels.clip.clip_factors`,
:func:`~trustlab.kernels.clip.weighted_weight_sum`) is its reference.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from trustlab.kernels import native

TRAINS_WEIGHT, TRAINS_BIAS = 1, 2  # as in the C source
# The call holds every layer's records until it returns, and the sums besides: it forms the
# weight sums itself only where they are at most this fraction of the records (the backward
# pass's peak holds the records and more, so the flush stays below it). Elsewhere torch runs
# one GEMM per layer and each layer's records are freed once summed.
WEIGHT_SUMS_PER_RECORDS = 0.2


@dataclass
class RowLayer:
    """A Linear layer's one call on (B, p) rows: activations, output gradients, and its weight
    and bias where they train (else None)."""

    a: Tensor
    g: Tensor
    weight: Tensor | None
    bias: Tensor | None


@dataclass
class RowsClipped:
    """Per-sample squared norms (of each sample's own loss gradient) and their sum (not finite
    when one is not: the factors are then not computed), the clip factors, and each layer's
    clipped weight sum (None where its weight does not train or the call was not asked for it)
    and bias sum (None where its bias does not train)."""

    sq_norms: Tensor
    total: float
    factors: Tensor
    weight_sums: list[Tensor | None]
    bias_sums: list[Tensor | None]


@functools.cache
def _kernel() -> Callable[..., float] | None:
    library = native.load("linear_rows")
    if library is None:
        return None
    clip = library.trustlab_linear_rows_clip
    int64s = ctypes.POINTER(ctypes.c_int64)
    clip.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.POINTER(ctypes.c_void_p), int64s,
                     int64s, ctypes.c_double, ctypes.c_double, ctypes.c_double, ctypes.c_int32,
                     ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    clip.restype = ctypes.c_double
    return clip


@functools.cache
def _blas() -> tuple[int, int | None] | None:
    """The addresses of MKL's ``sgemm_`` and ``MKL_Set_Num_Threads_Local`` in torch's own CPU
    library, where its wheel exports them (Linux x86-64 builds link MKL statically), once the
    kernel's weight sums through them have matched torch's on a small case; None elsewhere."""
    for path in glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.*")):
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        if _kernel() is None or not hasattr(library, "sgemm_"):
            return None
        address = functools.partial(_address, library)
        blas = address("sgemm_"), address("MKL_Set_Num_Threads_Local")
        generator = torch.Generator().manual_seed(0)  # two blocks of samples, float32
        a, g = (torch.randn(70, n, generator=generator, dtype=torch.float32) for n in (3, 5))
        layer = RowLayer(a, g, torch.empty(5, 3, dtype=torch.float32), None)
        clipped = _clip([layer], 1.0, 1.0, 1e-6, True, blas)
        want = (layer.g * clipped.factors[:, None]).t() @ layer.a
        agrees = torch.allclose(clipped.weight_sums[0], want, rtol=1e-5, atol=1e-6)
        return blas if agrees else None
    return None


def _address(library: ctypes.CDLL, name: str) -> int | None:
    function = getattr(library, name, None)
    return None if function is None else ctypes.cast(function, ctypes.c_void_p).value


def native_rows_available(layers: list[RowLayer]) -> bool:
    """Whether :func:`native_rows_clip` serves ``layers``: float32 on the CPU, a C compiler
    here, and ``TRUSTLAB_NATIVE`` not 0."""
    return (native.enabled() and all(_float32_cpu(layer) for layer in layers)
            and _kernel() is not None)


def weight_sums_in_call(layers: list[RowLayer]) -> bool:
    """Whether :func:`native_rows_clip` should form the weight sums too: MKL's sgemm found and
    the sums at most :data:`WEIGHT_SUMS_PER_RECORDS` of the records' size."""
    sums = sum(layer.weight.numel() for layer in layers if layer.weight is not None)
    records = sum(layer.a.numel() + layer.g.numel() for layer in layers)
    return sums <= WEIGHT_SUMS_PER_RECORDS * records and _blas() is not None


def native_rows_clip(layers: list[RowLayer], max_grad_norm: float, scale: float, gamma: float,
                     cap: bool, weight_sums: bool = False) -> RowsClipped | None:
    """Each sample's clip factor ``scale * C / (||grad_i|| + gamma)`` (capped at ``scale``
    when ``cap``: flat clipping; uncapped: automatic), ``grad_i`` the sample's gradient over
    all ``layers`` times ``scale``, the bias sums weighted by them and, with ``weight_sums``
    (where :func:`weight_sums_in_call` says so), the weight sums; without, they are
    :func:`~trustlab.kernels.clip.weighted_weight_sum` of each layer's rows and the factors.
    None where the kernel does not serve ``layers`` (:func:`native_rows_available`). The sums
    are views of one new tensor, the norms and factors of another (a step's fixed cost is
    mostly calls like these, so this one makes few)."""
    if _kernel() is None or not native.enabled() or not all(map(_float32_cpu, layers)):
        return None
    blas = _blas() if weight_sums else (None, None)
    if blas is None:
        raise RuntimeError("weight sums asked of the native flush without MKL's sgemm: check "
                           "weight_sums_in_call first")
    return _clip(layers, max_grad_norm, scale, gamma, cap, blas)


def _clip(layers: list[RowLayer], max_grad_norm: float, scale: float, gamma: float, cap: bool,
          blas: tuple[int | None, int | None]) -> RowsClipped:
    """The kernel's call; ``blas``: the addresses of sgemm and of MKL's thread setter (None,
    None: no weight sums)."""
    a = [layer.a.contiguous() for layer in layers]
    g = [layer.g.contiguous() for layer in layers]
    with_weights = blas[0] is not None
    parts, sizes = [], []
    for layer, rows_g in zip(layers, g):
        weight, bias = with_weights and layer.weight is not None, layer.bias is not None
        parts.append(TRAINS_WEIGHT * (layer.weight is not None) + TRAINS_BIAS * bias)
        sizes += [layer.weight.numel() if weight else 0, rows_g.shape[1] if bias else 0]
    batch = g[0].shape[0]
    padded = [_padded(n) for n in sizes]
    norms, out = g[0].new_empty(2 * _padded(batch)), g[0].new_empty(sum(padded))
    total = _kernel()(len(layers), batch, native.pointers(a + g),
                      native.int64s([t.shape[1] for t in a] + [t.shape[1] for t in g]),
                      native.int64s(parts), max_grad_norm, scale, gamma, int(cap),
                      norms.data_ptr(), out.data_ptr(), *blas)
    if total == -1.0:
        raise MemoryError("the native flush could not allocate its tables and scratch")
    sq_norms, factors = norms[:batch], norms[_padded(batch):][:batch]
    sums = [part[:n] for part, n in zip(out.split(padded), sizes)]
    return RowsClipped(sq_norms, total, factors,
                       [s.view(layer.weight.shape) if s.numel() else None
                        for s, layer in zip(sums[::2], layers)],
                       [s if layer.bias is not None else None
                        for s, layer in zip(sums[1::2], layers)])


def _padded(n: int) -> int:
    """``n`` floats rounded up to whole 64-byte lines (each part of the kernel's outputs starts
    on one: the noise kernel and the optimizer then read whole vectors)."""
    return (n + 15) // 16 * 16


def _float32_cpu(layer: RowLayer) -> bool:
    a, g = layer.a, layer.g
    return a.dtype == torch.float32 and g.dtype == torch.float32 and a.is_cpu and g.is_cpu
