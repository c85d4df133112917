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

from trustlab.kernels import clip, embedding, linear, norm  # noqa: E402


@pytest.mark.parametrize("seq", [1, 5, 20])
def test_linear_ghost_and_direct_norms(seq):
    torch.manual_seed(seq)
    a, g = torch.randn(3, seq, 37), torch.randn(3, seq, 19)
    want = linear.per_sample_weight_grads(a, g).square().sum((1, 2))
    torch.testing.assert_close(linear.triton_ghost_sq_norms(a, g), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(linear.triton_direct_sq_norms(a, g), want, rtol=1e-4, atol=1e-4)


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


def test_noisy_write_offsets_continue_one_stream():
    """A step's tensors take consecutive parts of one seed's stream (no shared noise between
    tensors), and 63-bit seeds are used whole: seeds differing only above bit 31 differ."""
    s = torch.zeros(3000)
    whole = clip.triton_noisy_write(s, 1.0, 1.0, seed=2**40 + 5)
    tail = clip.triton_noisy_write(s[:1000], 1.0, 1.0, seed=2**40 + 5, offset=2000)
    torch.testing.assert_close(tail, whole[2000:], rtol=0, atol=0)
    assert not torch.equal(whole[:1000], tail)
    assert not torch.equal(clip.triton_noisy_write(s, 1.0, 1.0, seed=5), whole)
