"""Every Triton kernel compiles for the H100 (sm_90) and the A100 (sm_80) on this GPU-less
machine (``triton_compile_check.py``, run in a process of its own).

The interpreter tests (``test_triton_interpret.py``) check what the kernels compute; this
checks what the interpreter cannot: that the GPU compiler accepts them (types, ``tl.dot``
shapes and precisions, layouts), so a first CUDA run does not fail on a compile error.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from triton_compile_check import CAPABILITIES, KERNELS, kernel_id

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed")
CHECK = Path(__file__).with_name("triton_compile_check.py")


@pytest.fixture(scope="module")
def compiled() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = CHECK.parents[2]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(CHECK)], capture_output=True, text=True,
                          env=env, cwd=root, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("capability", CAPABILITIES)
@pytest.mark.parametrize("kernel", [kernel_id(m, n) for m, n, *_ in KERNELS])
def test_kernel_compiles_for_nvidia_gpus(compiled, kernel, capability):
    assert compiled[f"{kernel}@sm_{capability}"] == "ok"
