"""Compile every Triton kernel for NVIDIA GPUs without one: Triton's compiler and the ptxas
shipped in its wheel turn each kernel into a cubin for each compute capability.

    python tests/kernels/triton_compile_check.py   # prints {"linear.ghost@sm_90": "ok", ...}

Run it in a process without ``TRITON_INTERPRET``: Triton decides at import whether its own
``tl`` functions are interpreted, so interpreter runs and compiles cannot share a process.
"""

from __future__ import annotations

import json
import warnings

from trustlab.kernels import chacha, clip, conv, embedding, linear, norm

F32, I32 = "*fp32", "i32"
CAPABILITIES = (90, 80)  # H100, A100

# (module, kernel, argument types in order, constexpr values): the types a launch by the
# module's wrapper passes (int32 sizes and strides; 63-bit seeds and 32-bit key words)
KERNELS = [
    (linear, "ghost", [F32, F32, F32] + [I32] * 5, {"BT": 16, "BK": 32}),
    (linear, "direct", [F32, F32, F32] + [I32] * 5, {"BT": 16, "BD": 32, "BP": 32}),
    (conv, "direct", [F32, F32, F32] + [I32] * 20, {"BO": 16, "BT": 32, "BK": 32}),
    (embedding, "ghost", ["*i64", F32, F32, I32, I32], {"BT": 16, "BD": 32}),
    (norm, "affine", [F32] * 4 + [I32] * 8, {"BT": 16, "BC": 32}),
    (clip, "accumulate", [F32, F32, F32, I32, I32], {"BN": 256}),
    (clip, "noisy", [F32, F32, I32, "fp32", "fp32", "i64", I32], {"BN": 1024}),
    (chacha, "chacha20", ["*i64"] + ["u32"] * 11 + [I32, I32], {"BLOCK": 128}),
]


def kernel_id(module, name: str) -> str:
    return f"{module.__name__.rsplit('.', 1)[1]}.{name}"


def compile_kernel(module, name: str, types: list[str], constexprs: dict,
                   capability: int) -> str:
    """"ok" when the kernel compiles to a cubin for ``sm_<capability>``, else the error."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = getattr(module._triton(), name)
    runtime_args = [a for a in kernel.arg_names if a not in constexprs]
    if len(runtime_args) != len(types):
        return f"{len(types)} types for the arguments {runtime_args}"
    signature = {**dict(zip(runtime_args, types)), **dict.fromkeys(constexprs, "constexpr")}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Triton's notice about its FP-fusion default
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature,
                                                constexprs=constexprs),
                                      target=GPUTarget("cuda", capability, 32))
    except Exception as err:  # noqa: BLE001 - reported, not raised: one line per kernel
        return f"{type(err).__name__}: {err}"
    ok = compiled.asm.get("cubin") and f".target sm_{capability}" in compiled.asm["ptx"]
    return "ok" if ok else "no cubin for the target"


def compile_all() -> dict[str, str]:
    return {f"{kernel_id(module, name)}@sm_{cap}": compile_kernel(module, name, types, consts, cap)
            for module, name, types, consts in KERNELS for cap in CAPABILITIES}


if __name__ == "__main__":
    print(json.dumps(compile_all(), indent=1))
