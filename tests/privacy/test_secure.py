"""secure_mode: draws from keyed SHAKE-256 against a naive reference, the noise's distribution,
no seeds, no saved key (its noise scale σ·C: test_engine_optimizer)."""

from __future__ import annotations

import hashlib
import io
import math
import struct

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dp_reference import train_steps
from trustlab.errors import ConfigError
from trustlab.kernels.chacha import chacha20_words
from trustlab.privacy import make_private
from trustlab.privacy.secure import SecureRandom

KEY = bytes(range(32))


def _setup(**kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    data = TensorDataset(torch.randn(64, 5), torch.randint(0, 2, (64,)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    args = dict(noise_multiplier=1.0, max_grad_norm=1.0, target_delta=1e-5, secure_mode=True)
    return make_private(model, opt, DataLoader(data, batch_size=16), **{**args, **kwargs})


def test_uniforms_are_the_top_53_bits_of_the_keyed_stream():
    random = SecureRandom(KEY)
    for counter in range(2):  # each draw reads a new block SHAKE-256(key || counter)
        block = hashlib.shake_256(KEY + counter.to_bytes(16, "little")).digest(8 * 5)
        want = [(w >> 11) / 2**53 for w in struct.unpack("<5Q", block)]
        assert random.uniform(5).tolist() == want


def test_chacha20_key_stream_is_rfc_8439s():
    """RFC 8439 §2.3.2: key 00..1f, nonce 00:00:00:09:00:00:00:4a:00:00:00:00, block 1."""
    nonce = int.from_bytes(bytes.fromhex("000000090000004a00000000"), "little")
    block = chacha20_words(bytes(range(32)), nonce, 1, counter=1)[0].tolist()
    assert b"".join(w.to_bytes(4, "little") for w in block).hex() == (
        "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
        "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e")


def test_gpu_uniforms_are_the_top_53_bits_of_the_chacha20_stream():
    """The CUDA stream, run here through its torch path: draw k reads nonce k from block 0."""
    random = SecureRandom(KEY)
    for nonce in range(2):
        stream = b"".join(w.to_bytes(4, "little")
                          for w in chacha20_words(KEY, nonce, 2).flatten().tolist())
        want = [(w >> 11) / 2**53 for w in struct.unpack("<13Q", stream[:8 * 13])]
        assert random._chacha_uniform(13, "cpu").tolist() == want


def test_normals_are_halved_sums_of_four_box_muller_normals():
    n, std = 3, 0.7
    u = SecureRandom(KEY).uniform(4 * n).tolist()
    pairs = 2 * n  # radii from the first half of the uniforms, angles from the second
    z = ([math.sqrt(-2 * math.log(1 - u[k])) * math.cos(2 * math.pi * u[pairs + k])
          for k in range(pairs)] +
         [math.sqrt(-2 * math.log(1 - u[k])) * math.sin(2 * math.pi * u[pairs + k])
          for k in range(pairs)])
    want = [std * sum(z[j * n + i] for j in range(4)) / 2 for i in range(n)]
    torch.testing.assert_close(SecureRandom(KEY).normal(n, std),
                               torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=0)


def test_normals_are_gaussian():
    draws = SecureRandom(KEY).normal(20000, 1.0).numpy()
    assert stats.kstest(draws, "norm").pvalue > 1e-3
    assert abs(draws.std() - 1) < 4 / math.sqrt(2 * 20000)


def test_noise_and_batches_do_not_follow_torch_seeds():
    runs = []
    for _ in range(2):
        model, opt, loader = _setup()  # torch.manual_seed(0) inside
        sizes = train_steps(model, opt, loader)
        runs.append((sizes, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] != runs[1][0]
    assert not torch.equal(runs[0][1][0], runs[1][1][0])


def test_secure_mode_refuses_a_noise_seed():
    with pytest.raises(ConfigError, match="secure_mode"):
        _setup(noise_seed=0)


def test_state_dict_keeps_no_key_and_resumes_only_in_secure_mode():
    model, opt, loader = _setup(poisson_sampling=False)
    train_steps(model, opt, [(torch.randn(16, 5), torch.randint(0, 2, (16,)))] * 2)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    assert opt.secure_random._key not in buffer.getvalue()
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    _, resumed, _ = _setup(poisson_sampling=False)
    resumed.load_state_dict(saved)
    assert resumed.steps == 2 and resumed.epsilon(1e-5) == pytest.approx(opt.epsilon(1e-5))
    _, plain, _ = _setup(poisson_sampling=False, secure_mode=False)
    with pytest.raises(ConfigError, match="secure_mode=True"):
        plain.load_state_dict(saved)


def test_a_secure_step_clips_like_a_plain_one():
    """Noise off, the secure and the plain engine give the same step."""
    x, y = torch.randn(16, 5), torch.randint(0, 2, (16,))
    grads = []
    for secure in (True, False):
        model, opt, _ = _setup(noise_multiplier=0.0, poisson_sampling=False, secure_mode=secure)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
