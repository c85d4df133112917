"""The native fused flush of one-row Linear layers against the engine's torch path."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trustlab.errors import TrustlabError
from trustlab.kernels import (automatic_factors, clip_factors, linear_rows, row_sq_norms,
                              weighted_weight_sum)
from trustlab.privacy.tracker import GradSampleTracker

needs_native = pytest.mark.skipif(
    not linear_rows.native_rows_available([linear_rows.RowLayer(torch.zeros(1, 1),
                                                                torch.zeros(1, 1), None, None)]),
    reason="no C compiler here")


def _layers(batch, shapes, parts, seed=0):
    """RowLayers of the given (p, d) shapes whose weight and bias train as ``parts`` says."""
    torch.manual_seed(seed)
    return [linear_rows.RowLayer(torch.randn(batch, p), torch.randn(batch, d) * 0.05,
                                 torch.zeros(d, p) if w else None, torch.zeros(d) if b else None)
            for (p, d), (w, b) in zip(shapes, parts)]


def _torch_path(layers, max_grad_norm, scale, automatic):
    """The engine's torch ops: per-layer norms, factors, bias sums."""
    norms = sum(row_sq_norms(r.g) * ((r.weight is not None) * row_sq_norms(r.a)
                                     + (r.bias is not None)) for r in layers)
    norms = norms * scale ** 2
    rule = automatic_factors if automatic else clip_factors
    factors = rule(norms, max_grad_norm, scale)
    return norms, factors, [factors @ r.g if r.bias is not None else None for r in layers]


def _sums(layers, factors):
    """Each layer's native (weight sum, bias sum)."""
    return [linear_rows.native_rows_sums(r, factors) for r in layers]


@needs_native
@pytest.mark.parametrize("batch", [1, 7, 512])  # 512: the threads share the work
@pytest.mark.parametrize("automatic", [False, True], ids=["flat", "automatic"])
def test_native_clip_equals_the_torch_path(batch, automatic):
    # g narrower than a, wider, as wide; weight only, bias only, both, neither
    shapes = [(100, 256), (256, 256), (256, 2), (3, 9), (64, 5)]
    parts = [(True, True), (True, False), (True, True), (False, True), (False, False)]
    layers = _layers(batch, shapes, parts)
    got = linear_rows.native_rows_clip(layers, 0.8, float(batch), 0.01 if automatic else 1e-6,
                                       cap=not automatic)
    norms, factors, bias_sums = _torch_path(layers, 0.8, float(batch), automatic)
    torch.testing.assert_close(got.sq_norms, norms, rtol=1e-5, atol=0)
    torch.testing.assert_close(got.factors, factors, rtol=1e-5, atol=0)
    assert got.total == pytest.approx(norms.double().sum().item(), rel=1e-5)
    for layer, (weight, bias), want in zip(layers, _sums(layers, got.factors), bias_sums):
        assert (bias is None) == (want is None) and (weight is None) == (layer.weight is None)
        if bias is not None:
            torch.testing.assert_close(bias, want, rtol=1e-5, atol=1e-6)
        if weight is not None:
            torch.testing.assert_close(weight, weighted_weight_sum(layer.a, layer.g, factors),
                                       rtol=1e-5, atol=1e-6)


@needs_native
def test_norms_added_before_the_clip_count_as_its_layers():
    # the engine adds each layer's norms as its records arrive; the clip adds the rest
    layers = _layers(300, [(100, 256), (256, 256), (256, 2)], [(True, True)] * 3)
    partial = torch.zeros(300)
    for layer in layers[:2]:
        linear_rows.add_row_sq_norms(layer, partial)
    got = linear_rows.native_rows_clip(layers[2:], 1.0, 300.0, 1e-6, cap=True, norms=partial)
    whole = linear_rows.native_rows_clip(layers, 1.0, 300.0, 1e-6, cap=True)
    torch.testing.assert_close(got.sq_norms, whole.sq_norms, rtol=1e-6, atol=0)
    torch.testing.assert_close(got.factors, whole.factors, rtol=1e-6, atol=0)
    assert got.sq_norms is partial  # scaled in place: no second buffer


@needs_native
def test_threads_change_nothing_and_share_torchs_openmp_runtime():
    layers = _layers(700, [(100, 256), (256, 3)], [(True, True)] * 2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = linear_rows.native_rows_clip(layers, 1.0, 700.0, 1e-6, cap=True)
        alone_sums = _sums(layers, alone.factors)
    finally:
        torch.set_num_threads(threads)
    shared = linear_rows.native_rows_clip(layers, 1.0, 700.0, 1e-6, cap=True)
    assert torch.equal(alone.factors, shared.factors)
    assert torch.equal(alone.sq_norms, shared.sq_norms)
    for one, both in zip(alone_sums, _sums(layers, shared.factors)):
        assert torch.equal(one[1], both[1])  # the bias sums: no reduction across threads
        torch.testing.assert_close(one[0], both[0], rtol=1e-6, atol=1e-7)  # MKL's blocking


@needs_native
def test_no_sample_exceeds_the_bound_and_small_ones_keep_their_size():
    layers = _layers(300, [(20, 30), (30, 4)], [(True, True)] * 2)
    for i in range(0, 300, 3):  # every third sample far inside the bound
        for r in layers:
            r.g[i] *= 1e-4
    got = linear_rows.native_rows_clip(layers, 1.0, 1.0, 1e-6, cap=True)
    clipped = got.factors * got.sq_norms.sqrt()
    assert clipped.max() <= 1.0 and clipped.min() > 0
    assert (got.factors[::3] == 1.0).all() and (got.factors < 1.0).sum() > 150


@needs_native
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_norm_shows_in_the_total(bad):
    layers = _layers(600, [(50, 60), (60, 3)], [(True, True)] * 2)
    layers[1].a[17, 2] = bad
    got = linear_rows.native_rows_clip(layers, 1.0, 1.0, 1e-6, cap=True)
    assert not math.isfinite(got.total) and not torch.isfinite(got.sq_norms[17])
    assert torch.isfinite(got.sq_norms[:17]).all()


def _mlp():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 40), nn.Tanh(),
                         nn.Linear(40, 3))


def _engine_sums(model, x, y, clipping, monkeypatch, native):
    monkeypatch.setenv("TRUSTLAB_NATIVE", native)
    model = copy.deepcopy(model)
    tracker = GradSampleTracker(model, 3.0, "mean", clipping=clipping, count_unclipped=True)
    tracker.attach()
    F.cross_entropy(model(x), y).backward()
    tracker.detach()
    names = {p: n for n, p in model.named_parameters()}
    return {names[p]: s for p, s in tracker.summed.items()}, tracker


@needs_native
@pytest.mark.parametrize("clipping", ["flat", "automatic"])
def test_the_engine_takes_the_native_path_for_an_mlp_with_the_same_result(clipping,
                                                                         monkeypatch):
    calls = []
    real_add, real_clip = linear_rows.add_row_sq_norms, linear_rows.native_rows_clip

    def add_spy(layer, norms):
        calls.append("add")
        real_add(layer, norms)

    def clip_spy(layers, *args, **kwargs):  # records the calls the native kernel served
        result = real_clip(layers, *args, **kwargs)
        if result is not None:
            calls.append(len(layers))
        return result
    monkeypatch.setattr("trustlab.privacy.tracker.add_row_sq_norms", add_spy)
    monkeypatch.setattr("trustlab.privacy.tracker.native_rows_clip", clip_spy)
    torch.manual_seed(0)
    x, y = torch.randn(200, 12) * torch.rand(200, 1) * 4, torch.randint(0, 3, (200,))
    model = _mlp()
    native, tracked = _engine_sums(model, x, y, clipping, monkeypatch, "1")
    # each layer's norms added in the backward pass as its records came, none left to the clip
    assert calls == ["add", "add", "add", 0]
    torch_path, reference = _engine_sums(model, x, y, clipping, monkeypatch, "0")
    assert len(calls) == 4  # TRUSTLAB_NATIVE=0: the torch path
    assert set(native) == set(torch_path) == {n for n, _ in model.named_parameters()}
    for name, want in torch_path.items():
        torch.testing.assert_close(native[name], want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tracked.last_sq_norms, reference.last_sq_norms, rtol=1e-5, atol=0)
    assert int(tracked.unclipped) == int(reference.unclipped)
    if clipping == "flat":
        assert 0 < int(tracked.unclipped) < 200  # some samples inside the bound, some clipped


@needs_native
def test_a_non_finite_gradient_on_the_native_path_gets_the_torch_paths_error(monkeypatch):
    x = torch.randn(50, 12)
    x[4, 0] = float("inf")
    messages = []
    for native in ("1", "0"):
        with pytest.raises(TrustlabError, match=r"non-finite .* in layer '\d' for samples \[4\]"
                           ) as error:
            _engine_sums(_mlp(), x, torch.zeros(50, dtype=torch.long), "flat", monkeypatch,
                         native)
        messages.append(str(error.value))
    assert messages[0] == messages[1]


@needs_native
def test_without_gnu_openmp_the_kernels_run_on_one_thread_with_the_same_results(monkeypatch,
                                                                                 tmp_path):
    from trustlab.kernels import native, philox

    layers = _layers(700, [(100, 256), (256, 3)], [(True, True)] * 2)
    sums = [torch.randn(300, 200), torch.randn(7)]
    threaded = linear_rows.native_rows_clip(layers, 1.0, 700.0, 1e-6, cap=True)
    threaded_bias = linear_rows.native_rows_sums(layers[0], threaded.factors)[1]
    noise = philox.native_noisy_write(sums, 1.0, 0.5, key=3)
    monkeypatch.setenv("TRUSTLAB_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_gnu_openmp_loaded", lambda: False)
    caches = (native.load, linear_rows._kernels, philox._kernel)
    for cache in caches:
        cache.cache_clear()
    try:
        alone = linear_rows.native_rows_clip(layers, 1.0, 700.0, 1e-6, cap=True)
        assert torch.equal(alone.factors, threaded.factors)
        assert torch.equal(linear_rows.native_rows_sums(layers[0], alone.factors)[1],
                           threaded_bias)
        for got, want in zip(philox.native_noisy_write(sums, 1.0, 0.5, key=3), noise):
            assert torch.equal(got, want)
        assert len(list(tmp_path.rglob("*.so"))) == 2  # built apart from the threaded ones
    finally:
        for cache in caches:
            cache.cache_clear()


def test_rows_the_kernel_does_not_serve_get_none(monkeypatch):
    float64 = _layers(5, [(4, 3)], [(True, True)])
    float64[0].g = float64[0].g.double()
    assert linear_rows.native_rows_clip(float64, 1.0, 1.0, 1e-6, cap=True) is None
    monkeypatch.setenv("TRUSTLAB_NATIVE", "0")
    assert linear_rows.native_rows_clip(_layers(5, [(4, 3)], [(True, True)]), 1.0, 1.0, 1e-6,
                                        cap=True) is None


@pytest.mark.parametrize("native", ["1", "0"], ids=["native", "torch"])
def test_each_layers_records_are_freed_once_its_sum_is_formed(native, monkeypatch):
    """The flush forms the clipped weight sums smallest layer first and drops each layer's
    records before the next GEMM: the output gradients of the layers summed before the
    largest are gone when its GEMM runs (a caller holding the records kept them all, and the
    MLP's peak rose from 1.25x to 1.43x non-private)."""
    import trustlab.kernels.linear as linear
    import trustlab.privacy.tracker as tracker_module
    import weakref

    seen, alive_at_last, sizes = [], [], []  # each layer's g, in the order summed

    def note(a, g):
        if not any(ref() is g for ref in seen):
            alive_at_last[:] = [ref() is not None for ref in seen]
            seen.append(weakref.ref(g))
            sizes.append(a.nbytes + g.nbytes)

    def torch_spy(a, g, weights):
        note(a, g)
        return real_torch(a, g, weights)

    def native_spy(row, factors):
        note(row.a, row.g)
        return real_native(row, factors)
    real_torch, real_native = linear.weighted_weight_sum, tracker_module.native_rows_sums
    monkeypatch.setattr(linear, "weighted_weight_sum", torch_spy)
    monkeypatch.setattr(tracker_module, "native_rows_sums", native_spy)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 64), nn.ReLU(),
                          nn.Linear(64, 3))
    _engine_sums(model, torch.randn(50, 12), torch.randint(0, 3, (50,)), "flat", monkeypatch,
                 native)
    assert len(seen) == 3 and alive_at_last == [False, False]
    # smallest first: at small batches the sums are as large as the records, and summing the
    # largest layer first raised the MLP's peak at B=128 from 1.00x to 1.16x non-private
    assert sizes == sorted(sizes)


def _torch_exports_sgemm() -> bool:
    import ctypes
    import glob
    import os
    paths = glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.*"))
    return any(hasattr(ctypes.CDLL(path), "sgemm_") for path in paths)


needs_blas = pytest.mark.skipif(not linear_rows.native_rows_available([]) or
                                not _torch_exports_sgemm(),
                                reason="no C compiler, or torch's CPU library exports no sgemm")


@needs_blas
def test_the_kernels_weight_sums_pass_their_check_against_torch():
    # the kernel's GEMMs through torch's sgemm are used only once they match torch's own on a
    # small case (an ABI mismatch, ILP64 integers say, would fail it and fall back)
    assert linear_rows._blas() is not None


@needs_blas
@pytest.mark.parametrize("batch", [1, 7, 65, 513])  # around the 64-sample blocks
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("p, d", [(5, 1), (7, 2), (1, 3), (100, 256), (256, 256), (256, 2)])
@pytest.mark.parametrize("parts", [(True, True), (True, False), (False, True)],
                         ids=["both", "weight", "bias"])
def test_native_sums_equal_torchs_gemm(batch, threads, p, d, parts):
    # outputs 1, 2 and 3 wide (split over two threads: none, one each), a 1-wide input, the
    # reference MLP's layers
    layer = _layers(batch, [(p, d)], [parts])[0]
    factors = torch.rand(batch)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        weight, bias = linear_rows.native_rows_sums(layer, factors)
    finally:
        torch.set_num_threads(before)
    # against float64, to float32's rounding of 513-term sums: 1e-5 of the largest entry
    a, g, f = layer.a.double(), layer.g.double(), factors.double()
    for got, want, trains in ((weight, weighted_weight_sum(a, g, f), parts[0]),
                              (bias, f @ g, parts[1])):
        assert (got is not None) == trains
        if trains:
            torch.testing.assert_close(got.double(), want, rtol=1e-5,
                                       atol=1e-5 * want.abs().max())


@needs_native
def test_the_sums_of_an_empty_batch_are_zero():
    torch.manual_seed(0)
    torch.randn(64, 64).sum()  # leave freed memory behind for the outputs
    layer = linear_rows.RowLayer(torch.randn(0, 64), torch.randn(0, 64), torch.zeros(64, 64),
                                 torch.zeros(64))
    weight, bias = linear_rows.native_rows_sums(layer, torch.rand(0))
    assert torch.equal(weight, torch.zeros(64, 64)) and torch.equal(bias, torch.zeros(64))


@needs_native
def test_without_sgemm_the_weight_sums_are_left_to_torch(monkeypatch):
    monkeypatch.setattr(linear_rows, "_blas", lambda: None)
    gemms = []
    monkeypatch.setattr(linear_rows, "weighted_weight_sum",
                        lambda *args: gemms.append(args) or weighted_weight_sum(*args))
    layer = _layers(5, [(3, 2)], [(True, True)])[0]
    factors = torch.rand(5)
    weight, bias = linear_rows.native_rows_sums(layer, factors)
    assert len(gemms) == 1  # the weight by torch's GEMM, the bias still native
    torch.testing.assert_close(weight, weighted_weight_sum(layer.a, layer.g, factors))
    torch.testing.assert_close(bias, factors @ layer.g)


@needs_blas
@pytest.mark.parametrize("batch", [20, 200])
def test_the_engine_forms_the_weight_sums_natively_with_the_torch_paths_result(batch,
                                                                             monkeypatch):
    gemms = []
    real = linear_rows.weighted_weight_sum

    def spy(*args):
        gemms.append(args)
        return real(*args)
    monkeypatch.setattr(linear_rows, "weighted_weight_sum", spy)
    torch.manual_seed(1)
    x, y = torch.randn(batch, 12) * 3, torch.randint(0, 3, (batch,))
    model = _mlp()
    native, tracker = _engine_sums(model, x, y, "flat", monkeypatch, "1")
    assert not gemms  # every weight sum native
    # the norms kept for inspection hold their own memory, not the gradients' (which they
    # would keep alive into the next step)
    assert tracker.last_sq_norms.untyped_storage().nbytes() <= 4 * 2 * (batch + 16)
    reference, _ = _engine_sums(model, x, y, "flat", monkeypatch, "0")
    for name, want in reference.items():
        torch.testing.assert_close(native[name], want, rtol=1e-5, atol=1e-6)


class _TwiceOnRows(nn.Module):
    """A Linear applied twice to one-row inputs: its norms added as its first record came are
    not its per-sample norms (those of the sum of its two uses)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.first, self.mid, self.out = nn.Linear(12, 16), nn.Linear(16, 16), nn.Linear(16, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.mid(torch.tanh(self.mid(self.first(x))))))


@needs_native
def test_a_linear_used_twice_on_rows_is_clipped_as_the_torch_path_clips_it(monkeypatch):
    torch.manual_seed(0)
    x, y = torch.randn(60, 12) * 3, torch.randint(0, 3, (60,))
    native, tracked = _engine_sums(_TwiceOnRows(), x, y, "flat", monkeypatch, "1")
    reference, torch_path = _engine_sums(_TwiceOnRows(), x, y, "flat", monkeypatch, "0")
    for name, want in reference.items():
        torch.testing.assert_close(native[name], want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tracked.last_sq_norms, torch_path.last_sq_norms, rtol=1e-5,
                               atol=0)
