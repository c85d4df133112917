"""Flat clipping of Linear layers that each saw one row per sample, fused in one native call.

The MLP case: every layer's per-sample weight gradient is the outer product ``g_i a_i^T``, so a
flush is the norms ``||a_i||^2 ||g_i||^2`` (plus ``||g_i||^2`` for the bias), the clip factors,
the bias sums and one GEMM per layer on rescaled rows. The torch path takes some thirty small
torch calls for a three-layer MLP, whose dispatch costs more than their arithmetic at these
sizes; ``native/linear_rows.c`` computes the norms, factors and bias sums of all layers in one
call, on torch's threads (the GEMMs stay torch's). The engine's torch path
(``LinearKernel.sq_norms``, :func:`~trustlab.kernels.clip.clip_factors`) is its reference.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from trustlab.kernels import native

TRAINS_WEIGHT, TRAINS_BIAS = 1, 2  # as in the C source


@dataclass
class RowLayer:
    """A Linear layer's one call on (B, p) rows: activations, output gradients, and which of
    its weight and bias train."""

    a: Tensor
    g: Tensor
    weight: bool
    bias: bool


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
def _kernel() -> Callable[..., float] | None:
    library = native.load("linear_rows")
    if library is None:
        return None
    clip = library.trustlab_linear_rows_clip
    pointers = ctypes.POINTER(ctypes.c_void_p)
    widths = ctypes.POINTER(ctypes.c_int64)
    clip.argtypes = [ctypes.c_int64, ctypes.c_int64, pointers, widths, pointers, widths,
                     ctypes.POINTER(ctypes.c_int32), ctypes.c_double, ctypes.c_double,
                     ctypes.c_double, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p,
                     pointers]
    clip.restype = ctypes.c_double
    return clip


def native_rows_available(layers: list[RowLayer]) -> bool:
    """Whether :func:`native_rows_clip` serves ``layers``: float32 on the CPU, a C compiler
    here, and ``TRUSTLAB_NATIVE`` not 0."""
    return (native.enabled() and all(t.is_cpu and t.dtype == torch.float32
                                     for layer in layers for t in (layer.a, layer.g))
            and _kernel() is not None)


def native_rows_clip(layers: list[RowLayer], max_grad_norm: float, scale: float, gamma: float,
                     cap: bool) -> RowsClipped:
    """Each sample's clip factor ``scale * C / (||grad_i|| + gamma)`` (capped at ``scale``
    when ``cap``: flat clipping; uncapped: automatic), ``grad_i`` the sample's gradient over
    all ``layers`` times ``scale``, and the bias sums weighted by them (the weight sums are
    :func:`~trustlab.kernels.clip.weighted_weight_sum` of each layer's rows and the factors).
    Needs :func:`native_rows_available`."""
    a = [layer.a.contiguous() for layer in layers]
    g = [layer.g.contiguous() for layer in layers]
    a_widths, g_widths = (native.int64s([t.shape[1] for t in ts]) for ts in (a, g))
    bias = [gl.new_empty(gl.shape[1]) if layer.bias else None for layer, gl in zip(layers, g)]
    parts = [TRAINS_WEIGHT * layer.weight + TRAINS_BIAS * layer.bias for layer in layers]
    sq_norms, factors = g[0].new_empty(g[0].shape[0]), g[0].new_empty(g[0].shape[0])
    total = _kernel()(len(layers), g[0].shape[0], native.pointers(a), a_widths,
                      native.pointers(g), g_widths, (ctypes.c_int32 * len(parts))(*parts),
                      max_grad_norm, scale, gamma, int(cap), sq_norms.data_ptr(),
                      factors.data_ptr(), native.pointers(bias))
    return RowsClipped(sq_norms, total, factors, bias)
