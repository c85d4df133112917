"""Fused per-sample-gradient kernels (Triton) and their pure-torch references.

One module per layer family registers a :class:`LayerKernel` for its module types; the DP
engine stays generic and looks kernels up with :func:`kernel_for`. Triton runs on CUDA tensors,
the torch path elsewhere. On the CPU, native C kernels (built by :mod:`trustlab.kernels.native`
where a compiler exists) draw the step's noise (:mod:`trustlab.kernels.philox`) and clip MLPs'
one-row Linear layers: their norms as the backward pass records them, then one call per layer
for its clipped sums, the weight's through torch's own MKL where it is exported
(:mod:`trustlab.kernels.linear_rows`). Imports nothing of trustlab.
"""

from trustlab.kernels import conv, embedding, linear, norm  # noqa: F401  (registration)
from trustlab.kernels.clip import (AUTO_S_GAMMA, CLIP_EPS, automatic_factors, clip_factors,
                                   draw_key, noisy_write, scale_accumulate, step_key,
                                   weighted_weight_sum)
from trustlab.kernels.linear import row_sq_norms
from trustlab.kernels.linear_rows import (add_row_sq_norms, native_rows_available,
                                          native_rows_clip, native_rows_sums)
from trustlab.kernels.registry import (LayerKernel, Record, data_key, kernel_for,
                                       overridden_methods, own_class, register_kernel,
                                       registered_base, shared_results, supported_types)
from trustlab.kernels.vmap import VmapKernel, register_vmap_kernel

__all__ = ["AUTO_S_GAMMA", "CLIP_EPS", "LayerKernel", "Record", "VmapKernel",
           "add_row_sq_norms", "automatic_factors", "clip_factors", "data_key", "draw_key",
           "kernel_for", "native_rows_available", "native_rows_clip", "native_rows_sums",
           "noisy_write", "overridden_methods", "own_class", "register_kernel",
           "register_vmap_kernel", "registered_base", "row_sq_norms", "scale_accumulate",
           "shared_results", "step_key", "supported_types", "weighted_weight_sum"]
