"""The native CPU noise kernel against its torch reference, Random123's Philox answers and the
normal distribution; the native kernels' build, fallback and threads."""

from __future__ import annotations

import logging
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scipy import stats

from trustlab.kernels import clip, native, philox

needs_native = pytest.mark.skipif(not philox.native_available(torch.zeros(1)),
                                  reason="no C compiler: the native kernel is not built")
U64 = 2**64


@pytest.mark.parametrize("counter, key, words", [
    # Random123's kat_vectors for philox4x32_10: counter words (c0, c1, c2, c3), key (k0, k1)
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_reference_philox_gives_random123s_answers(counter, key, words):
    low = counter[0] | counter[1] << 32
    low -= U64 if low >= 2**63 else 0  # int64 holds the 64-bit counter's bits
    got = philox.philox_words(torch.tensor([low]), counter[2] | counter[3] << 32,
                              key[0] | key[1] << 32)
    assert got[0].tolist() == list(words)


@needs_native
@pytest.mark.parametrize("n, key, stream", [(1, 0, 0), (255, 5, 1), (256, 2**63 + 7, 3),
                                            (1000, 123, 2**40), (92_162, U64 - 1, U64 - 1)])
def test_native_normals_equal_the_reference(n, key, stream):
    got, = philox.native_noisy_write([torch.zeros(n)], 1.0, 1.0, key, stream)
    # the same words; log, cos and sin differ from torch's by a few ulps
    torch.testing.assert_close(got, philox.philox_normals(n, key, stream), rtol=1e-5, atol=1e-5)


@needs_native
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 flags")
@pytest.mark.parametrize("flags", ["-mno-avx512f", "-mno-avx512f -mno-avx2"],
                         ids=["avx2", "portable"])
def test_the_narrower_builds_draw_the_same_words(flags, monkeypatch, tmp_path):
    # the Philox blocks have one vector form per instruction set and a portable loop: each
    # build gives the reference's normals
    monkeypatch.setenv("TRUSTLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TRUSTLAB_NATIVE_CFLAGS", flags)
    for cache in (native.load, philox._kernel):
        cache.cache_clear()
    try:
        got, = philox.native_noisy_write([torch.zeros(3000)], 1.0, 1.0, 2**63 + 7, 2**40 + 3)
        assert len(list(tmp_path.rglob("philox_noise-*.so"))) == 1  # built with the flags
    finally:
        monkeypatch.delenv("TRUSTLAB_NATIVE_CFLAGS")
        for cache in (native.load, philox._kernel):
            cache.cache_clear()
    want = philox.philox_normals(3000, 2**63 + 7, 2**40 + 3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_native
def test_native_write_adds_scaled_noise_to_the_sum():
    torch.manual_seed(0)
    summed = torch.randn(3, 700)
    got, = philox.native_noisy_write([summed], 2.5, 1 / 8, key=11, first_stream=4)
    want = (summed.flatten() + 2.5 * philox.philox_normals(2100, 11, 4)) / 8
    torch.testing.assert_close(got, want.view(3, 700), rtol=1e-5, atol=1e-5)
    assert not torch.equal(got, philox.native_noisy_write([summed], 2.5, 1 / 8, 11, 5)[0])


@needs_native
def test_native_write_in_place_writes_over_contiguous_sums_only():
    torch.manual_seed(0)
    sums = [torch.randn(3, 700), torch.randn(256), torch.randn(40, 30).t()]  # the last strided
    want = philox.native_noisy_write(sums, 2.5, 1 / 8, key=11)
    kept = sums[2].clone()
    got = philox.native_noisy_write(sums, 2.5, 1 / 8, key=11, in_place=True)
    assert got[0] is sums[0] and got[1] is sums[1]  # written over, no new tensor
    assert got[2] is not sums[2] and torch.equal(sums[2], kept)  # a copy is written instead
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)

@needs_native
def test_native_write_gives_each_tensor_of_one_call_its_own_stream():
    # sizes around the 256-normal chunk, an empty tensor, and enough for the threads to share
    sums = [torch.randn(3, 700), torch.randn(0), torch.randn(256), torch.randn(1),
            torch.randn(40_000), torch.randn(0)]
    got = philox.native_noisy_write(sums, 0.5, 2.0, key=2**63 + 1, first_stream=7)
    for k, (s, g) in enumerate(zip(sums, got)):
        want = (s.flatten() + 0.5 * philox.philox_normals(s.numel(), 2**63 + 1, 7 + k)) * 2.0
        torch.testing.assert_close(g, want.view_as(s), rtol=1e-5, atol=1e-5)


@needs_native
def test_native_write_serves_many_tensors_in_one_call():
    # a model's parameter count sets the kernel's chunk table (heap, not stack)
    sums = [torch.full((k % 3,), float(k)) for k in range(20_000)]
    got = philox.native_noisy_write(sums, 1.0, 1.0, key=3)
    for k in (0, 1, 2, 9_998, 19_999):
        want = sums[k] + philox.philox_normals(sums[k].numel(), 3, k)
        torch.testing.assert_close(got[k], want, rtol=1e-5, atol=1e-5)


@needs_native
def test_native_normals_are_standard_normal_and_streams_independent():
    n = 400_000
    z, other = philox.native_noisy_write([torch.zeros(n), torch.zeros(n)], 1.0, 1.0,
                                         key=2**62 + 3)
    z, other = z.double(), other.double()
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-4
    assert abs(z.mean()) < 5 / math.sqrt(n) and abs(z.std() - 1) < 5 / math.sqrt(2 * n)
    assert abs(torch.corrcoef(torch.stack([z, other]))[0, 1]) < 5 / math.sqrt(n)


@needs_native
def test_engine_write_uses_one_fresh_key_per_step_and_a_stream_per_tensor():
    sums = [torch.ones(3, 4), torch.zeros(10)]
    got = clip.noisy_write(sums, 0.7, 4.0, torch.Generator().manual_seed(9))
    key = int(torch.randint(0, 2**63 - 1, (), generator=torch.Generator().manual_seed(9)))
    for stream, (s, out) in enumerate(zip(sums, got)):
        want = (s.flatten() + 0.7 * philox.philox_normals(s.numel(), key, stream)) / 4
        torch.testing.assert_close(out, want.view_as(s), rtol=1e-5, atol=1e-5)


@needs_native
def test_a_given_step_key_is_the_one_used():
    sums = [torch.ones(3, 4), torch.zeros(10)]
    got = clip.noisy_write(sums, 0.7, 4.0, None, key=12345)
    for stream, (s, out) in enumerate(zip(sums, got)):
        want = (s.flatten() + 0.7 * philox.philox_normals(s.numel(), 12345, stream)) / 4
        torch.testing.assert_close(out, want.view_as(s), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("base", [0, 2**63 - 1, 0x9E3779B97F4A7C15 ^ 5])
def test_step_keys_are_distinct_63_bit_keys(base):
    # one base key, a million steps: no two steps share a key (so no two share noise)
    keys = [clip.step_key(base, step) for step in range(10**6)]
    assert len(set(keys)) == len(keys) and all(0 <= k < 2**63 for k in keys)
    assert clip.step_key(base, 7) == clip.step_key(base, 7)  # reproducible


def test_off_switch_and_other_dtypes_use_torchs_sampler(monkeypatch):
    monkeypatch.setenv("TRUSTLAB_NATIVE", "0")
    assert not philox.native_available(torch.zeros(1))
    sums = [torch.zeros(50)]
    got = clip.noisy_write(sums, 1.0, 1.0, torch.Generator().manual_seed(1))
    torch.testing.assert_close(got[0], torch.randn(50, generator=torch.Generator().manual_seed(1)))
    monkeypatch.delenv("TRUSTLAB_NATIVE")
    assert not philox.native_available(torch.zeros(1, dtype=torch.float64))


def test_a_failed_build_falls_back_and_leaves_no_partial_file(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("TRUSTLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    native.load.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger=native.__name__):
            assert native.load("philox_noise") is None
        assert "torch path" in caplog.text
        assert not list(tmp_path.rglob("*.so*"))
    finally:
        native.load.cache_clear()


@needs_native
def test_a_build_is_cached_by_source_and_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("TRUSTLAB_CACHE_DIR", str(tmp_path))
    native.load.cache_clear()
    try:
        assert native.load("philox_noise") is not None
        built = sorted(p.name for p in tmp_path.rglob("*"))
        assert built == ["native", built[1]] and built[1].startswith("philox_noise-")
        assert built[1].endswith(".so")
    finally:
        native.load.cache_clear()


@needs_native
def test_loading_the_kernel_keeps_subnormal_numbers(tmp_path):
    """A library linked with -ffast-math sets flush-to-zero for the whole process when loaded
    (gcc's crtfastmath.o): every later float op in torch, numpy and Python changed."""
    check = ("from trustlab.kernels import native; "
             "assert native.load('philox_noise', fast_math=True); "
             "tiny = float.fromhex('0x1p-1074'); assert tiny * 1.5 > 0, 'flushed to zero'; "
             "import torch; t = torch.tensor([1e-40]); assert (t * 1.5).item() > 0")
    _run_with_fresh_builds(check, tmp_path)


@needs_native
@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/maps")
def test_the_kernels_share_torchs_openmp_runtime(tmp_path):
    """Two OpenMP runtimes would each keep a team of threads: twice as many as cores."""
    check = ("import torch\n"
             "def runtimes():\n"
             "    return {l.split()[-1] for l in open('/proc/self/maps') if 'gomp' in l}\n"
             "before = runtimes()\n"
             "from trustlab.kernels import native\n"
             "assert native.load('linear_rows') and native.load('philox_noise', fast_math=True)\n"
             "assert runtimes() == before, (before, runtimes())\n")
    _run_with_fresh_builds(check, tmp_path)


def _run_with_fresh_builds(check: str, cache: Path) -> None:
    """Run the Python code ``check`` in a new process whose kernels are built afresh."""
    env = {**os.environ, "TRUSTLAB_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
