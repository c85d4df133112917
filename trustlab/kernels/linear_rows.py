"""Flat clipping of Linear layers that each saw one row per sample, in native calls.

The MLP case: every layer's per-sample weight gradient is the outer product ``g_i a_i^T``, so a
flush is the norms ``||a_i||^2 ||g_i||^2`` (plus ``||g_i||^2`` for the bias), the clip factors,
and per layer the bias sum and one GEMM on rescaled rows. The torch path takes some thirty
small torch calls for a three-layer MLP, whose dispatch costs more than their arithmetic at
these sizes. ``native/linear_rows.c`` adds a layer's norms into one buffer in one call
(:func:`add_row_sq_norms`; the engine makes it as the layer's output gradients arrive in the
backward pass, while they are in cache), turns the buffer into clip factors in one more
(:func:`native_rows_clip`), and forms each layer's clipped sums in one call per layer
(:func:`native_rows_sums`), on torch's threads: where torch's CPU library exports MKL's
``sgemm_``, each thread takes a share of the weight's rows and runs one single-threaded GEMM per
block of samples it has rescaled (adding them to its share of the bias sum), so no rescaled
copy of the layer is made. The engine's torch path (``LinearKernel.sq_norms``,
:func:`~trustlab.kernels.clip.clip_factors`, :func:`~trustlab.kernels.clip.weighted_weight_sum`)
is its reference.
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
from trustlab.kernels.clip import weighted_weight_sum

TRAINS_WEIGHT, TRAINS_BIAS = 1, 2  # as in the C source


@dataclass
class RowLayer:
    """A Linear layer's one call on (B, p) rows: activations, output gradients, and its weight
    and bias where they train (else None)."""

    a: Tensor
    g: Tensor
    weight: Tensor | None
    bias: Tensor | None

    @property
    def parts(self) -> int:
        """What trains, as the C source's flags."""
        return TRAINS_WEIGHT * (self.weight is not None) + TRAINS_BIAS * (self.bias is not None)


@dataclass
class RowsClipped:
    """Per-sample squared norms (of each sample's own loss gradient) and their sum (not finite
    when one is not: the factors are then not computed), and the clip factors."""

    sq_norms: Tensor
    total: float
    factors: Tensor


@functools.cache
def _kernels() -> SimpleNamespace | None:
    """The C source's entry points with their signatures: ``sq_norms`` (one layer's, added),
    ``factors`` and ``sums`` (one layer's weight and bias sums); None where it cannot be built
    here."""
    library = native.load("linear_rows")
    if library is None:
        return None
    i64, i32, f64, pointer = ctypes.c_int64, ctypes.c_int32, ctypes.c_double, ctypes.c_void_p
    sq_norms, factors, sums = (library.trustlab_linear_rows_sq_norms,
                               library.trustlab_linear_rows_factors,
                               library.trustlab_linear_rows_sums)
    sq_norms.argtypes = [i64, pointer, i64, pointer, i64, i32, pointer]
    sq_norms.restype = None
    factors.argtypes = [i64, pointer, f64, f64, f64, i32, pointer]
    factors.restype = f64
    sums.argtypes = [i64, pointer, i64, pointer, i64, pointer, pointer, pointer, pointer, pointer]
    sums.restype = ctypes.c_int
    return SimpleNamespace(sq_norms=sq_norms, factors=factors, sums=sums)


def native_rows_available(layers: list[RowLayer]) -> bool:
    """Whether the native calls serve ``layers``: float32 on the CPU, a C compiler here, and
    ``TRUSTLAB_NATIVE`` not 0."""
    return (native.enabled() and all(_float32_cpu(layer.a, layer.g) for layer in layers)
            and _kernels() is not None)


def add_row_sq_norms(layer: RowLayer, norms: Tensor) -> None:
    """Add each sample's squared gradient norm over ``layer``'s training parameters,
    ``||a_i||^2 ||g_i||^2 + ||g_i||^2``, into ``norms`` (float32, (B,), contiguous), in one
    native call (the caller checked :func:`native_rows_available`)."""
    a, g = layer.a.contiguous(), layer.g.contiguous()
    _kernels().sq_norms(g.shape[0], a.data_ptr(), a.shape[1], g.data_ptr(), g.shape[1],
                        layer.parts, norms.data_ptr())


def native_rows_clip(layers: list[RowLayer], max_grad_norm: float, scale: float, gamma: float,
                     cap: bool, norms: Tensor | None = None) -> RowsClipped | None:
    """Each sample's clip factor ``scale * C / (||grad_i|| + gamma)`` (capped at ``scale``
    when ``cap``: flat clipping; uncapped: automatic), ``grad_i`` the sample's gradient over
    all layers times ``scale``: over ``layers`` and those whose norms :func:`add_row_sq_norms`
    already added into ``norms`` (written over). The clipped sums are then
    :func:`native_rows_sums` of each layer and the factors. None where the native calls do not
    serve ``layers`` (:func:`native_rows_available`)."""
    if not native_rows_available(layers):
        return None
    if norms is None:
        norms = torch.zeros(layers[0].g.shape[0] if layers else 0, dtype=torch.float32)
    for layer in layers:
        add_row_sq_norms(layer, norms)
    factors = torch.empty_like(norms)
    total = _kernels().factors(norms.shape[0], norms.data_ptr(), max_grad_norm, scale, gamma,
                               int(cap), factors.data_ptr())
    return RowsClipped(norms, total, factors)


def native_rows_sums(layer: RowLayer, factors: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """``layer``'s clipped sums ``(sum_i f_i g_i^T a_i, sum_i f_i g_i)`` for the factors ``f``
    (None for a part that does not train), in one native call: the weight sum through torch's
    own MKL sgemm, in blocks of rescaled samples (no rescaled copy of the layer), or, where that
    is not available (no exported sgemm, or it failed its check, :func:`_blas`), through
    torch's GEMM (:func:`~trustlab.kernels.clip.weighted_weight_sum`). The caller checked
    :func:`native_rows_available`."""
    blas = _blas()
    weight, bias = _sums(layer, factors, blas if layer.weight is not None else None)
    if layer.weight is not None and weight is None:
        weight = weighted_weight_sum(layer.a, layer.g, factors)
    return weight, bias


def _sums(layer: RowLayer, factors: Tensor, blas: tuple[int, int | None] | None
          ) -> tuple[Tensor | None, Tensor | None]:
    """The native call: the weight sum where ``blas`` is given, the bias sum where it trains."""
    a, g = layer.a.contiguous(), layer.g.contiguous()
    batch, p, d = g.shape[0], a.shape[1], g.shape[1]
    weight = g.new_empty(d, p) if blas is not None else None
    bias = g.new_empty(d) if layer.bias is not None else None
    if weight is None and bias is None:
        return None, None
    factors = factors.to(torch.float32).contiguous()
    sgemm, set_threads = blas if blas is not None else (None, None)
    status = _kernels().sums(batch, a.data_ptr(), p, g.data_ptr(), d, factors.data_ptr(),
                             _pointer(weight), _pointer(bias), sgemm, set_threads)
    if status != 0:
        raise MemoryError("the native clipped sums could not allocate their scratch")
    return weight, bias


def _pointer(tensor: Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


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
        weight, _ = _sums(RowLayer(a, g, None, None), factors.flatten(), blas)
        return blas if torch.allclose(weight, want, rtol=1e-5, atol=1e-6) else None
    return None


def _address(library: ctypes.CDLL, name: str) -> int | None:
    function = getattr(library, name, None)
    return None if function is None else ctypes.cast(function, ctypes.c_void_p).value


def _float32_cpu(*tensors: Tensor) -> bool:
    return all(t.dtype == torch.float32 and t.is_cpu for t in tensors)
