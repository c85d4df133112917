"""Native CPU kernels: C sources under ``kernels/native`` compiled on first use, loaded with ctypes.

A source is built once per machine with the system C compiler (``$CC``, else ``cc``) for the
CPU it runs on (``-march=native``, then any flags in ``$TRUSTLAB_NATIVE_CFLAGS``: say
``-mno-avx512f`` to build for a narrower CPU) and cached under ``$TRUSTLAB_CACHE_DIR`` (else
``~/.cache/trustlab``) in a file named by a hash of the source, the flags, the compiler and the
CPU, written atomically (processes building at once each rename a complete file into place).
Where no compiler works :func:`load` returns None, and under ``TRUSTLAB_NATIVE=0``
:func:`enabled` is False; the callers then use their torch path. Only libraries this module
built are loaded (no downloaded binaries).

The kernels split their work over threads with OpenMP where torch runs GNU OpenMP (Linux):
linked against ``libgomp.so.1``, they share the runtime torch has already loaded (the dynamic
loader matches the name), and with it torch's thread pool and ``torch.set_num_threads``.
Elsewhere they run on one thread. Each kernel's result does not depend on the number of
threads.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCES = Path(__file__).parent / "native"
FLAGS = ("-O3", "-march=native", "-fPIC")
# for the sources that ask for it (glibc's vector logf, cosf, sinf need it); only when
# compiling: linked with it, gcc adds crtfastmath.o, whose constructor sets flush-to-zero for the
# whole process on load
FAST_MATH = "-ffast-math"
LINK_FLAGS = ("-shared", "-lm")
GNU_OPENMP = "libgomp.so.1"
logger = logging.getLogger(__name__)


def enabled() -> bool:
    """Whether native kernels may be used (``TRUSTLAB_NATIVE=0`` turns them off)."""
    return os.environ.get("TRUSTLAB_NATIVE", "1") != "0"


@functools.cache
def load(name: str, fast_math: bool = False) -> ctypes.CDLL | None:
    """The compiled library of ``native/<name>.c``, built on first use (with ``-ffast-math``
    when ``fast_math``: never for code that must see NaN and inf); None when it cannot be built
    here (the reason is logged)."""
    source = SOURCES / f"{name}.c"
    threads = "-fopenmp" if _gnu_openmp_loaded() else "-fopenmp-simd"
    flags = (*FLAGS, threads, *([FAST_MATH] if fast_math else []),
             *shlex.split(os.environ.get("TRUSTLAB_NATIVE_CFLAGS", "")))
    link_flags = (*LINK_FLAGS, threads)
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        logger.info("no C compiler (cc or $CC): %s uses its torch path", name)
        return None
    text = source.read_bytes()
    key = hashlib.sha256(b"\0".join([text, " ".join(flags + link_flags).encode(),
                                     compiler.encode(), _cpu_identity()])).hexdigest()[:20]
    target = _cache_dir() / f"{name}-{key}.so"
    try:
        if not target.exists():
            _build(compiler, flags, link_flags, source, target)
        return ctypes.CDLL(str(target))
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", "") or error
        logger.info("native kernel %s not built (%s): torch path used", name, detail)
        return None


def pointers(tensors: list | tuple) -> ctypes.Array:
    """A C array of the tensors' data pointers (NULL for None), for a kernel's ``float **``."""
    return (ctypes.c_void_p * len(tensors))(*(None if t is None else t.data_ptr()
                                              for t in tensors))


def int64s(values: list[int]) -> ctypes.Array:
    """A C array of ``int64_t``."""
    return (ctypes.c_int64 * len(values))(*values)


def _build(compiler: str, flags: tuple[str, ...], link_flags: tuple[str, ...], source: Path,
           target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, suffix=".so.partial")
    os.close(handle)
    obj = partial + ".o"
    try:
        for command in ([compiler, *flags, "-c", str(source), "-o", obj],
                        [compiler, obj, "-o", partial, *link_flags]):
            subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
        os.replace(partial, target)
    finally:
        for path in (obj, partial):
            if os.path.exists(path):
                os.unlink(path)


def _gnu_openmp_loaded() -> bool:
    """Whether this process already runs GNU OpenMP (torch's ``libgomp.so.1`` on Linux): the
    kernels then link it and share its threads. Elsewhere they are built single-threaded
    (``-fopenmp-simd``), since a second OpenMP runtime would keep a second team of threads."""
    try:
        with open("/proc/self/maps") as maps:
            return any(line.rstrip().endswith("/" + GNU_OPENMP) for line in maps)
    except OSError:
        return False


def _cache_dir() -> Path:
    root = os.environ.get("TRUSTLAB_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "trustlab")
    return Path(root) / "native"


def _cpu_identity() -> bytes:
    """What ``-march=native`` builds for: the machine and, on Linux, the CPU's feature flags (a
    cache shared by several machines keeps one build per kind of CPU)."""
    flags = b""
    try:
        with open("/proc/cpuinfo", "rb") as info:
            flags = next((line for line in info if line.startswith((b"flags", b"Features"))), b"")
    except OSError:
        pass
    return platform.machine().encode() + flags
