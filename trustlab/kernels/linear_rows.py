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
def _kernel() -> Callable[..., float] | None:
    library = native.load("linear_rows")
    if library is None:
        return None
    clip = library.trustlab_linear_rows_clip
    int64s = ctypes.POINTER(ctypes.c_int64)
    clip.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.POINTER(ctypes.c_void_p), int64s,
                     int64s, ctypes.c_double, ctypes.c_double, ctypes.c_double, ctypes.c_int32,
                     ctypes.c_void_p]
    clip.restype = ctypes.c_double
    return clip


def native_rows_available(layers: list[RowLayer]) -> bool:
    """Whether :func:`native_rows_clip` serves ``layers``: float32 on the CPU, a C compiler
    here, and ``TRUSTLAB_NATIVE`` not 0."""
    return (native.enabled() and all(_float32_cpu(layer) for layer in layers)
            and _kernel() is not None)


def native_rows_clip(layers: list[RowLayer], max_grad_norm: float, scale: float, gamma: float,
                     cap: bool) -> RowsClipped | None:
    """Each sample's clip factor ``scale * C / (||grad_i|| + gamma)`` (capped at ``scale``
    when ``cap``: flat clipping; uncapped: automatic), ``grad_i`` the sample's gradient over
    all ``layers`` times ``scale``, and the bias sums weighted by them (the weight sums are
    :func:`~trustlab.kernels.clip.weighted_weight_sum` of each layer's rows and the factors).
    None where the kernel does not serve ``layers`` (:func:`native_rows_available`). All the
    results are views of one new tensor; a step's fixed cost is mostly calls like these, so
    this one makes few."""
    kernel = _kernel()
    if kernel is None or not native.enabled():
        return None
    a, g, widths, parts, bias_widths = [], [], [], [], []
    for layer in layers:
        if not _float32_cpu(layer):
            return None
        a.append(layer.a.contiguous())
        g.append(layer.g.contiguous())
        parts.append(TRAINS_WEIGHT * (layer.weight is not None)
                     + TRAINS_BIAS * (layer.bias is not None))
        bias_widths.append(0 if layer.bias is None else g[-1].shape[1])
    widths = [t.shape[1] for t in a] + [t.shape[1] for t in g]
    batch = g[0].shape[0]
    out = g[0].new_empty(2 * batch + sum(bias_widths))
    total = kernel(len(layers), batch, native.pointers(a + g), native.int64s(widths),
                   native.int64s(parts), max_grad_norm, scale, gamma, int(cap), out.data_ptr())
    sq_norms, factors, *biases = out.split([batch, batch, *bias_widths])
    return RowsClipped(sq_norms, total, factors,
                       [b if layer.bias is not None else None for b, layer in zip(biases, layers)])


def _float32_cpu(layer: RowLayer) -> bool:
    a, g = layer.a, layer.g
    return a.dtype == torch.float32 and g.dtype == torch.float32 and a.is_cpu and g.is_cpu
