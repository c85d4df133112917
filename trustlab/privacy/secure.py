"""``secure_mode``: the noise and the Poisson masks from a cryptographically secure stream.

torch's CPU generator (Mersenne Twister) is fast but predictable: 624 outputs give away its
state. In secure mode every draw comes from a stream keyed with 256 bits of the operating
system's CSPRNG, each draw a new part of it: on the host ``SHAKE-256(key || counter)``, on a
GPU ChaCha20 under that key with the counter as nonce (:mod:`trustlab.kernels.chacha`: its
blocks are independent, so a GPU computes them in parallel). With ``distributed=True`` rank 0's
key is broadcast, so all ranks draw the same noise and masks. A Gaussian value is the
sum of four Box–Muller normals in float64, halved: Holohan & Braghin (2021, §5.1, n = 2), the
defence Opacus's secure mode uses against the floating-point attacks on a single Gaussian draw
(Mironov 2012; Jin et al. 2022). The key is never saved: a resumed run draws a new one.
"""

from __future__ import annotations

import hashlib
import math
import secrets

import torch
from torch import Tensor

from trustlab.kernels.chacha import chacha20_words

KEY_BYTES = 32
SUMMANDS = 4  # Gaussians summed per noise value (2n with n = 2); their sum is halved


class SecureRandom:
    """Uniform and Gaussian float64 draws from the stream keyed with ``key`` (default: 256
    fresh bits from the OS): SHAKE-256 on the host, ChaCha20 on CUDA. The same key gives the
    same sequence of draws on the same kind of device."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = secrets.token_bytes(KEY_BYTES) if key is None else key
        self._counter = 0

    def _next_counter(self) -> int:
        self._counter += 1
        return self._counter - 1

    def uniform(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        """``n`` draws of U[0, 1) on the grid of 2^-53 (the top 53 bits of each little-endian
        64-bit word of the stream), float64 on ``device``."""
        if n == 0:
            return torch.zeros(0, dtype=torch.float64, device=device)
        if torch.device(device).type == "cuda":
            return self._chacha_uniform(n, device)
        block = hashlib.shake_256(self._key + self._next_counter().to_bytes(16, "little"))
        words = torch.frombuffer(bytearray(block.digest(8 * n)), dtype=torch.int64)
        return ((words >> 11) & ((1 << 53) - 1)).double().mul_(2.0 ** -53)

    def _chacha_uniform(self, n: int, device: torch.device | str) -> Tensor:
        """The GPU stream: ChaCha20 blocks of this draw's nonce, 8 words of 64 bits each."""
        words = chacha20_words(self._key, self._next_counter(), -(-n // 8), device=device)
        low, high = words[:, 0::2].reshape(-1)[:n], words[:, 1::2].reshape(-1)[:n]
        return ((high << 21) | (low >> 11)).double().mul_(2.0 ** -53)

    def normal(self, n: int, std: float, device: torch.device | str = "cpu") -> Tensor:
        """``n`` draws of N(0, std²), each the halved sum of four Box–Muller normals."""
        pairs = SUMMANDS * n // 2
        u = self.uniform(2 * pairs, device)
        radius = torch.log1p(-u[:pairs]).mul_(-2.0).sqrt_()  # 1 - u in (0, 1]: finite log
        angle = u[pairs:].mul(2.0 * math.pi)
        normals = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])
        return normals.view(SUMMANDS, n).sum(0).mul_(std / math.sqrt(SUMMANDS))
