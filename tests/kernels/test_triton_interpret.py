"""The Triton kernels against their torch references, on the CPU through TRITON_INTERPRET=1.

The kernels are defined on first use, so setting the variable here (before any is built)
puts them in interpreter mode; the engine itself only calls them on CUDA tensors.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton", reason="triton is not installed")

from trustlab.kernels import chacha, clip, conv, embedding, linear, norm  # noqa: E402


@pytest.mark.parametrize("seq", [1, 5, 20])
def test_linear_ghost_and_direct_norms(seq):
    torch.manual_seed(seq)
    a, g = torch.randn(3, seq, 37), torch.randn(3, seq, 19)
    want = linear.per_sample_weight_grads(a, g).square().sum((1, 2))
    torch.testing.assert_close(linear.triton_ghost_sq_norms(a, g), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(linear.triton_direct_sq_norms(a, g), want, rtol=1e-4, atol=1e-4)


def _loop_conv_sq_norms(conv_layer: torch.nn.Module, x: torch.Tensor,
                        g: torch.Tensor) -> torch.Tensor:
    """Each sample's weight gradient by its own backward pass, squared and summed."""
    norms = []
    for i in range(len(x)):
        conv_layer.zero_grad()
        conv_layer(x[i:i + 1]).backward(g[i:i + 1])
        norms.append(conv_layer.weight.grad.square().sum())
    return torch.stack(norms)


@pytest.mark.parametrize("make_conv, size", [
    (lambda: torch.nn.Conv2d(4, 6, 3, padding=1), (7, 7)),
    (lambda: torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2), (9, 8)),
    (lambda: torch.nn.Conv2d(3, 20, (2, 3), stride=(2, 1), padding=(0, 2)), (6, 5)),
    (lambda: torch.nn.Conv2d(1, 18, 5, padding=2), (10, 10)),
    (lambda: torch.nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2), (11,)),
])
def test_conv_direct_norms_against_a_per_sample_loop(make_conv, size):
    """Stride, dilation, groups, padding, rectangular kernels, Conv1d; tiles that overrun the
    channels, positions and patches (masked), one input channel."""
    torch.manual_seed(len(size))
    layer = make_conv()
    _assert_conv_norms_match_the_loop(layer, torch.randn(3, layer.in_channels, *size))


def test_conv_direct_norms_on_strided_inputs():
    x = torch.randn(2, 6, 6, 4).permute(0, 3, 1, 2)  # channels last
    _assert_conv_norms_match_the_loop(torch.nn.Conv2d(4, 5, 3, padding=1), x)


def _assert_conv_norms_match_the_loop(layer: torch.nn.Module, x: torch.Tensor) -> None:
    g = torch.randn_like(layer(x))
    args = (layer.stride, layer.padding, layer.dilation, layer.groups)
    torch.testing.assert_close(conv.triton_conv_sq_norms(x, g, layer.weight.shape, args),
                               _loop_conv_sq_norms(layer, x, g), rtol=1e-4, atol=1e-4)


def test_embedding_norms_with_repeats():
    idx = torch.tensor([[1, 1, 3, 2, 1], [0, 4, 4, 4, 2]])
    g = torch.randn(2, 5, 6)
    torch.testing.assert_close(embedding.triton_embedding_sq_norms(idx, g),
                               embedding.embedding_sq_norms(idx, g), rtol=1e-4, atol=1e-4)


def test_affine_grads_on_strided_inputs():
    xhat, g = torch.randn(3, 6, 20).transpose(1, 2), torch.randn(3, 6, 20).transpose(1, 2)
    for got, want in zip(norm.triton_affine_grads(xhat, g), ((g * xhat).sum(1), g.sum(1))):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_scale_accumulate_and_noisy_write():
    x, w = torch.randn(5, 300), torch.rand(5)
    torch.testing.assert_close(clip.triton_scale_accumulate(x, w), w @ x, rtol=1e-5, atol=1e-5)
    s = torch.zeros(20000)
    out = clip.triton_noisy_write(s, 2.0, 4.0, seed=3)
    assert abs(out.std().item() - 0.5) < 0.02 and abs(out.mean().item()) < 0.02
    torch.testing.assert_close(clip.triton_noisy_write(s + 8, 0.0, 4.0, seed=3), s + 2)
    summed = torch.randn(3000)
    want = clip.triton_noisy_write(summed, 2.0, 4.0, seed=3)
    got = clip.triton_noisy_write(summed, 2.0, 4.0, seed=3, in_place=True)
    assert got.data_ptr() == summed.data_ptr()  # written over the sum
    torch.testing.assert_close(summed, want, rtol=0, atol=0)


def test_noisy_write_offsets_continue_one_stream():
    """A step's tensors take consecutive parts of one seed's stream (no shared noise between
    tensors), and 63-bit seeds are used whole: seeds differing only above bit 31 differ."""
    s = torch.zeros(3000)
    whole = clip.triton_noisy_write(s, 1.0, 1.0, seed=2**40 + 5)
    tail = clip.triton_noisy_write(s[:1000], 1.0, 1.0, seed=2**40 + 5, offset=2000)
    torch.testing.assert_close(tail, whole[2000:], rtol=0, atol=0)
    assert not torch.equal(whole[:1000], tail)
    assert not torch.equal(clip.triton_noisy_write(s, 1.0, 1.0, seed=5), whole)


class _SeqModel(torch.nn.Module):
    """Embedding, LayerNorm, a sequence Linear and a Linear head: every Triton dispatch."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(7, 6, padding_idx=0)
        self.norm = torch.nn.LayerNorm(6)
        self.proj = torch.nn.Linear(6, 5)
        self.head = torch.nn.Linear(5, 3)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.proj(self.norm(self.emb(idx)))).mean(1))


def _private_step_grads(noise_multiplier: float, model: torch.nn.Module | None = None,
                        inputs: torch.Tensor | None = None) -> list[torch.Tensor]:
    """One DP step's gradients of ``model`` (default: the sequence model) on ``inputs``."""
    from torch.utils.data import DataLoader, TensorDataset

    from trustlab.privacy import make_private

    torch.manual_seed(0)
    if model is None:
        model, inputs = _SeqModel(), torch.randint(0, 7, (6, 4))
    y = torch.randint(0, 3, (len(inputs),))
    model, opt, _ = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                 DataLoader(TensorDataset(inputs, y), batch_size=len(inputs)),
                                 noise_multiplier=noise_multiplier, max_grad_norm=0.3,
                                 target_delta=1e-5, poisson_sampling=False, noise_seed=1)
    torch.nn.functional.cross_entropy(model(inputs), y).backward()
    opt.step()
    return [p.grad.clone() for p in model.parameters()]


def test_engine_on_the_triton_path_matches_the_torch_path(monkeypatch):
    """A whole DP step with every kernel dispatched to Triton (as on CUDA) gives the torch
    path's clipped sums, and its noise is one Philox stream over all parameters in order,
    seeded by the first step's key (from the optimizer's generator's first draw)."""
    want = _private_step_grads(0.0)
    for module in (clip, embedding, linear, norm):
        monkeypatch.setattr(module, "use_triton", lambda t: True)
    for got, ref in zip(_private_step_grads(0.0), want):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    noise = torch.cat([(g - r).flatten() for g, r in zip(_private_step_grads(50.0), want)])
    base_key = int(torch.randint(0, 2**63 - 1, (), generator=torch.Generator().manual_seed(1)))
    seed = clip.step_key(base_key, 0)
    stream = clip.triton_noisy_write(torch.zeros(len(noise)), 50.0 * 0.3, 6.0, seed)
    torch.testing.assert_close(noise, stream, rtol=1e-4, atol=1e-4)


def test_conv_engine_on_the_triton_path_matches_the_torch_path(monkeypatch):
    """Conv layers whose per-sample gradients are not kept (KEEP_LIMIT 0: large layers) get
    their norms from the Triton kernel on CUDA; the clipped sums equal the torch path's."""
    def model_and_inputs() -> tuple[torch.nn.Module, torch.Tensor]:
        torch.manual_seed(3)
        model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, stride=2, padding=1),
                                    torch.nn.ReLU(), torch.nn.Conv2d(4, 6, 3, groups=2),
                                    torch.nn.Flatten(), torch.nn.Linear(6 * 3 * 3, 3))
        return model, torch.randn(5, 2, 9, 9)

    monkeypatch.setattr(conv, "KEEP_LIMIT_ELEMS", 0)
    want = _private_step_grads(0.0, *model_and_inputs())
    calls = []
    monkeypatch.setattr(conv, "use_triton", lambda t: True)
    monkeypatch.setattr(conv, "triton_conv_sq_norms", _counted(conv.triton_conv_sq_norms, calls))
    for got, ref in zip(_private_step_grads(0.0, *model_and_inputs()), want):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    assert len(calls) == 2  # both conv layers went through the kernel


def _counted(fn, calls: list):
    def wrapper(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)
    return wrapper


def test_chacha20_kernel_matches_the_torch_path():
    """Several programs (300 blocks in tiles of 128, the last one partial), key and nonce words
    with the top bit set, a counter offset."""
    words = [0xFFFFFFFF - 7 * i for i in range(8)] + [0x80000001, 0xDEADBEEF, 7]
    torch.testing.assert_close(chacha.triton_chacha20_words(words, 300, 5, "cpu"),
                               chacha.torch_chacha20_words(words, 300, 5), rtol=0, atol=0)


def test_tensors_of_two_kinds_get_keys_of_their_own(monkeypatch):
    """Each dtype's tensors are written apart, their offsets each starting at 0: under one
    seed the first tensor of each kind would get the same noise."""
    monkeypatch.setattr(clip, "use_triton", lambda t: True)
    sums = [torch.zeros(300), torch.zeros(300, dtype=torch.float64)]
    single, double = clip.noisy_write(sums, 1.0, 1.0, None, key=77)
    assert single.dtype == torch.float32 and double.dtype == torch.float64  # as the sums
    assert single.abs().sum() > 0 and double.abs().sum() > 0
    assert not torch.allclose(single.double(), double, atol=1e-3)
