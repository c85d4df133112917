"""ChaCha20 (RFC 8439) key stream: secure mode's noise at GPU speed.

Secure mode draws its noise from a cryptographic stream. On the host that is SHAKE-256
(:mod:`trustlab.privacy.secure`); its output blocks are sequential, so on a GPU the stream is
ChaCha20 instead, whose 64-byte blocks are independent (block counter): one Triton program
computes a tile of blocks. The pure-torch path (all blocks at once, 32-bit words held in int64)
is the reference the kernel is tested against, with the RFC's test vector.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch
from torch import Tensor

from trustlab.kernels.registry import use_triton

CONSTANTS = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"
MASK = 0xFFFFFFFF
# (a, b, c, d) of the quarter rounds of one double round: four columns, then four diagonals
QUARTER_ROUNDS = ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),
                  (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14))


def key_words(key: bytes) -> list[int]:
    """The 256-bit key as eight little-endian 32-bit words."""
    if len(key) != 32:
        raise ValueError(f"ChaCha20 needs a 32-byte key, got {len(key)} bytes")
    return [int.from_bytes(key[i:i + 4], "little") for i in range(0, 32, 4)]


def chacha20_words(key: bytes, nonce: int, n_blocks: int, counter: int = 0,
                   device: torch.device | str = "cpu") -> Tensor:
    """The key stream of ``n_blocks`` 64-byte blocks from block ``counter`` under the 96-bit
    ``nonce``, as (n_blocks, 16) 32-bit words in int64 (Triton on CUDA, torch elsewhere)."""
    if counter + n_blocks > 2**32:
        raise ValueError("ChaCha20's 32-bit block counter would wrap: use another nonce")
    words = key_words(key) + [(nonce >> (32 * i)) & MASK for i in range(3)]
    if use_triton(torch.empty(0, device=device)):
        return triton_chacha20_words(words, n_blocks, counter, device)
    return torch_chacha20_words(words, n_blocks, counter, device)


def torch_chacha20_words(words: list[int], n_blocks: int, counter: int,
                         device: torch.device | str = "cpu") -> Tensor:
    """Reference: every block at once, the state as 16 rows of int64 lanes."""
    state = [torch.full((n_blocks,), v, dtype=torch.int64, device=device)
             for v in (*CONSTANTS, *words[:8])]
    state.append(torch.arange(counter, counter + n_blocks, dtype=torch.int64, device=device))
    state += [torch.full((n_blocks,), v, dtype=torch.int64, device=device) for v in words[8:]]
    x = [s.clone() for s in state]

    def rotl(v: Tensor, r: int) -> Tensor:
        return ((v << r) & MASK) | (v >> (32 - r))

    for _ in range(10):
        for a, b, c, d in QUARTER_ROUNDS:
            x[a] = (x[a] + x[b]) & MASK
            x[d] = rotl(x[d] ^ x[a], 16)
            x[c] = (x[c] + x[d]) & MASK
            x[b] = rotl(x[b] ^ x[c], 12)
            x[a] = (x[a] + x[b]) & MASK
            x[d] = rotl(x[d] ^ x[a], 8)
            x[c] = (x[c] + x[d]) & MASK
            x[b] = rotl(x[b] ^ x[c], 7)
    return torch.stack([(xi + si) & MASK for xi, si in zip(x, state)], dim=1)


@functools.cache
def _triton() -> SimpleNamespace:
    import triton
    import triton.language as tl

    @triton.jit
    def chacha20(out_ptr, k0, k1, k2, k3, k4, k5, k6, k7, n0, n1, n2, counter, n_blocks,
                 BLOCK: tl.constexpr):
        # the 4x4 state as rows a, b, c, d of (BLOCK, 4) lanes: a column round is one
        # quarter round on the rows; a diagonal round rotates b, c, d by 1, 2, 3 lanes first
        idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        lane = tl.arange(0, 4)[None, :]
        keep = (idx < n_blocks)[:, None] & (lane < 4)
        zero = (idx[:, None] * 0 + lane * 0).to(tl.uint32)
        a = zero + tl.where(lane == 0, 0x61707865, tl.where(lane == 1, 0x3320646E, tl.where(
            lane == 2, 0x79622D32, 0x6B206574))).to(tl.uint32)
        b = zero + tl.where(lane == 0, k0, tl.where(lane == 1, k1, tl.where(
            lane == 2, k2, k3))).to(tl.uint32)
        c = zero + tl.where(lane == 0, k4, tl.where(lane == 1, k5, tl.where(
            lane == 2, k6, k7))).to(tl.uint32)
        d = zero + tl.where(lane == 0, (idx[:, None] + counter).to(tl.uint32), tl.where(
            lane == 1, n0, tl.where(lane == 2, n1, n2)).to(tl.uint32))
        xa, xb, xc, xd = a, b, c, d
        shape = zero.to(tl.int32)  # gather indices need the rows' full (BLOCK, 4) shape
        by1, by2, by3 = shape + (lane + 1) % 4, shape + (lane + 2) % 4, shape + (lane + 3) % 4
        for half in tl.static_range(20):  # 10 double rounds: columns, then diagonals
            if half % 2 == 1:
                xb, xc, xd = (tl.gather(xb, by1, axis=1), tl.gather(xc, by2, axis=1),
                              tl.gather(xd, by3, axis=1))
            xa += xb
            xd ^= xa
            xd = (xd << 16) | (xd >> 16)
            xc += xd
            xb ^= xc
            xb = (xb << 12) | (xb >> 20)
            xa += xb
            xd ^= xa
            xd = (xd << 8) | (xd >> 24)
            xc += xd
            xb ^= xc
            xb = (xb << 7) | (xb >> 25)
            if half % 2 == 1:
                xb, xc, xd = (tl.gather(xb, by3, axis=1), tl.gather(xc, by2, axis=1),
                              tl.gather(xd, by1, axis=1))
        row = out_ptr + idx[:, None] * 16 + lane
        tl.store(row, (xa + a).to(tl.int64) & 0xFFFFFFFF, mask=keep)
        tl.store(row + 4, (xb + b).to(tl.int64) & 0xFFFFFFFF, mask=keep)
        tl.store(row + 8, (xc + c).to(tl.int64) & 0xFFFFFFFF, mask=keep)
        tl.store(row + 12, (xd + d).to(tl.int64) & 0xFFFFFFFF, mask=keep)

    return SimpleNamespace(chacha20=chacha20)


def triton_chacha20_words(words: list[int], n_blocks: int, counter: int,
                          device: torch.device | str, block: int = 128) -> Tensor:
    """Triton: one program per ``block`` ChaCha20 blocks, the 16-word state in registers."""
    import triton

    out = torch.empty(n_blocks, 16, dtype=torch.int64, device=device)
    if n_blocks:
        _triton().chacha20[(triton.cdiv(n_blocks, block),)](out, *words, counter, n_blocks,
                                                            BLOCK=block)
    return out
