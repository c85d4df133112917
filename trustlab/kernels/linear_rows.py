"""Flat clipping of Linear layers that each saw one row per sample, in native calls.

The MLP case: every layer's per-sample weight gradient is the outer product ``g_i a_i^T``, so a
flush is the norms ``||a_i||^2 ||g_i||^2`` (plus ``||g_i||^2`` for the bias), the clip factors,
the bias sums and one GEMM per layer on rescaled rows. The torch path takes some thirty small
torch calls for a three-layer MLP, whose dispatch costs more than their arithmetic at these
sizes. ``native/linear_rows.c`` computes the norms, factors and bias sums of all layers in one
call (:func:`native_rows_clip`), on torch's threads, and, where torch's CPU library exports
MKL's ``sgemm_``, each layer's weight sum in one more (:func:`native_weight_sum`): each thread
takes a share of the weight's rows and runs one single-threaded GEMM per block of samples it
has rescaled, so no rescaled copy of the layer is made. The engine's torch path
(``LinearKernel.sq_norms``, :func:`~trustlab.kernels.clip.clip_factors`,
:func:`~trustlab.kernels.clip.weighted_weight_sum`) is its reference.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import Tensor

from trustlab.kernels import native

TRAINS_WEIGHT, TRAINS_BIAS = 1, 2  # as in the C source


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
    clipped bias sum (None where its bias does not train)."""

    sq_norms: Tensor
    total: float
    factors: Tensor
    bias_sums: list[Tensor | None]


@functools.cache
def _kernels() -> SimpleNamespace | None:
    """The C source's two entry points with their signatures: ``clip`` (norms, factors, bias
    sums) and ``weight_sum`` (one layer's); None where it cannot be built here."""
    library = native.load("linear_rows")
    if library is None:
        return None
    int64s, pointer = ctypes.POINTER(ctypes.c_int64), ctypes.c_void_p
    clip, weight_sum = library.trustlab_linear_rows_clip, library.trustlab_linear_rows_weight_sum
    clip.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.POINTER(pointer), int64s, int64s,
                     ctypes.c_double, ctypes.c_double, ctypes.c_double, ctypes.c_int32, pointer,
                     pointer]
    clip.restype = ctypes.c_double
    weight_sum.argtypes = [ctypes.c_int64, pointer, ctypes.c_int64, pointer, ctypes.c_int64,
                           pointer, pointer, pointer, pointer]
    weight_sum.restype = ctypes.c_int
    return SimpleNamespace(clip=clip, weight_sum=weight_sum)


def native_weight_sum(a: Tensor, g: Tensor, factors: Tensor) -> Tensor | None:
    """``sum_i factors[i] g_i^T a_i`` for one layer's (B, p) rows ``a`` and (B, d) ``g``,
    float32 on the CPU, through torch's own MKL sgemm in blocks of rescaled samples (no
    rescaled copy of the layer); None where that is not available (no compiler, no exported
    sgemm, or it failed its check, :func:`_blas`)."""
    blas = _blas() if native.enabled() and _float32_cpu(a, g) else None
    return None if blas is None else _weight_sum(a, g, factors, blas)


def _weight_sum(a: Tensor, g: Tensor, factors: Tensor, blas: tuple[int, int | None]) -> Tensor:
    a, g = a.contiguous(), g.contiguous()
    factors = factors.to(torch.float32).contiguous()
    out = g.new_empty(g.shape[1], a.shape[1])
    status = _kernels().weight_sum(g.shape[0], a.data_ptr(), a.shape[1], g.data_ptr(),
                                   g.shape[1], factors.data_ptr(), out.data_ptr(), *blas)
    if status != 0:
        raise MemoryError("the native weight sum could not allocate its scratch")
    return out


@functools.cache
def _blas() -> tuple[int, int | None] | None:
    """The addresses of MKL's ``sgemm_`` and ``MKL_Set_Num_Threads_Local`` in torch's own CPU
    library, where its wheel exports them (Linux x86-64 builds link MKL statically), once the
    kernel's weight sum through them has matched torch's on a small case (an ABI mismatch,
    64-bit integers say, fails it); None elsewhere."""
    for path in glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.*")):
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        if _kernels() is None or not hasattr(library, "sgemm_"):
            return None
        address = functools.partial(_address, library)
        blas = address("sgemm_"), address("MKL_Set_Num_Threads_Local")
        generator = torch.Generator().manual_seed(0)  # two blocks of samples, float32
        a, g, factors = (torch.rand(70, n, generator=generator, dtype=torch.float32)
                         for n in (3, 5, 1))
        want = (g * factors).t() @ a
        agrees = torch.allclose(_weight_sum(a, g, factors, blas), want, rtol=1e-5, atol=1e-6)
        return blas if agrees else None
    return None


def _address(library: ctypes.CDLL, name: str) -> int | None:
    function = getattr(library, name, None)
    return None if function is None else ctypes.cast(function, ctypes.c_void_p).value


def native_rows_available(layers: list[RowLayer]) -> bool:
    """Whether :func:`native_rows_clip` serves ``layers``: float32 on the CPU, a C compiler
    here, and ``TRUSTLAB_NATIVE`` not 0."""
    return (native.enabled() and all(_float32_cpu(layer.a, layer.g) for layer in layers)
            and _kernels() is not None)


def native_rows_clip(layers: list[RowLayer], max_grad_norm: float, scale: float, gamma: float,
                     cap: bool) -> RowsClipped | None:
    """Each sample's clip factor ``scale * C / (||grad_i|| + gamma)`` (capped at ``scale``
    when ``cap``: flat clipping; uncapped: automatic), ``grad_i`` the sample's gradient over
    all ``layers`` times ``scale``, and the bias sums weighted by them (the weight sums are
    :func:`native_weight_sum` or :func:`~trustlab.kernels.clip.weighted_weight_sum` of each
    layer's rows and the factors). None where the kernel does not serve ``layers``
    (:func:`native_rows_available`). The bias sums are views of one new tensor, the norms and
    factors of another, each part on a 64-byte line (a step's fixed cost is mostly calls like
    these, so this one makes few)."""
    if not native_rows_available(layers):
        return None
    a = [layer.a.contiguous() for layer in layers]
    g = [layer.g.contiguous() for layer in layers]
    parts = [TRAINS_WEIGHT * (layer.weight is not None) + TRAINS_BIAS * (layer.bias is not None)
             for layer in layers]
    sizes = [0 if layer.bias is None else rows.shape[1] for layer, rows in zip(layers, g)]
    batch = g[0].shape[0]
    padded = [_padded(n) for n in sizes]
    norms, sums = g[0].new_empty(2 * _padded(batch)), g[0].new_empty(sum(padded))
    total = _kernels().clip(len(layers), batch, native.pointers(a + g),
                            native.int64s([t.shape[1] for t in a] + [t.shape[1] for t in g]),
                            native.int64s(parts), max_grad_norm, scale, gamma, int(cap),
                            norms.data_ptr(), sums.data_ptr())
    biases = [part[:n] if n else None for part, n in zip(sums.split(padded), sizes)]
    return RowsClipped(norms[:batch], total, norms[_padded(batch):][:batch], biases)


def _padded(n: int) -> int:
    """``n`` floats rounded up to whole 64-byte lines (each part of the kernel's outputs starts
    on one: the noise kernel and the optimizer then read whole vectors)."""
    return (n + 15) // 16 * 16


def _float32_cpu(*tensors: Tensor) -> bool:
    return all(t.dtype == torch.float32 and t.is_cpu for t in tensors)
