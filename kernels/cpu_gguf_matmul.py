"""CPU matmul over weights kept in GGUF blocks (Q4_0, Q4_1, Q8_0), dequantized in registers (C++, built on first use).

``pack_gguf_rows`` turns a tensor's raw GGUF blocks into ``PackedGGUFWeight`` (values, scales, mins laid out
per output row); ``packed_matmul(x, packed)`` is ``x @ dequantized.T`` in float32. The C++ source
(cpu_gguf_matmul.cpp, AVX-512 where the compiler targets it) is built on first use and cached on disk
(kernels/cpu_build.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pegboard.kernels.cpu_build import compiled_ops

Q4_0, Q4_1, Q8_0 = 2, 3, 8  # ggml type ids
PACKED_TYPES = (Q4_0, Q4_1, Q8_0)
_BLOCK = 32


@dataclass(frozen=True)
class PackedGGUFWeight:
    """One [N, K] weight in GGUF blocks: ``values`` uint8 nibbles [N, K/2] (4-bit) or int8 [N, K] (8-bit),
    ``scales`` and ``mins`` (4-bit only) float16 [N, K/32]."""

    bits: int
    values: torch.Tensor
    scales: torch.Tensor
    mins: torch.Tensor | None

    @property
    def shape(self) -> tuple[int, int]:
        n = self.values.shape[0]
        return n, self.scales.shape[1] * _BLOCK

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.scales, self.mins) if t is not None)


def pack_gguf_rows(raw: torch.Tensor, ggml_type: int, shape: tuple[int, int]) -> PackedGGUFWeight:
    """The kernel's layout of a [N, K] tensor from its flat GGUF bytes (``raw``: uint8, rows of whole blocks)."""
    n, k = shape
    if ggml_type not in PACKED_TYPES or k % _BLOCK:
        raise ValueError(f"ggml type {ggml_type} with {k} columns has no packed CPU kernel")
    nb = k // _BLOCK
    if ggml_type == Q8_0:
        blocks = raw.view(n, nb, 34)
        scales = blocks[:, :, 0:2].contiguous().view(torch.float16).view(n, nb)
        return PackedGGUFWeight(8, blocks[:, :, 2:].contiguous().view(torch.int8).view(n, k), scales, None)
    head = 2 if ggml_type == Q4_0 else 4
    blocks = raw.view(n, nb, head + 16)
    scales = blocks[:, :, 0:2].contiguous().view(torch.float16).view(n, nb)
    if ggml_type == Q4_0:
        mins = scales * -8  # (q - 8) * d == q * d + (-8 d), exactly: -8 d is exact in float16
    else:
        mins = blocks[:, :, 2:4].contiguous().view(torch.float16).view(n, nb)
    return PackedGGUFWeight(4, blocks[:, :, head:].contiguous().view(n, k // 2), scales, mins)


def concat_packed(parts: list[PackedGGUFWeight]) -> PackedGGUFWeight:
    """Several weights of the same kind stacked along N (packed shards: q, k, v; gate, up)."""
    first = parts[0]
    if any(p.bits != first.bits or p.shape[1] != first.shape[1] for p in parts):
        raise ValueError("packed shards differ in kind or width")
    mins = None if first.mins is None else torch.cat([p.mins for p in parts])
    return PackedGGUFWeight(first.bits, torch.cat([p.values for p in parts]), torch.cat([p.scales for p in parts]),
                            mins)


def dequantize_packed(w: PackedGGUFWeight) -> torch.Tensor:
    """The plain-torch reference: float32 [N, K], bit-equal to plugins/gguf_dequant.py's values."""
    n, k = w.shape
    if w.bits == 8:
        q = w.values.view(n, -1, _BLOCK).float()
        return (q * w.scales.float()[:, :, None]).view(n, k)
    low, high = w.values.view(n, -1, 16) & 0xF, w.values.view(n, -1, 16) >> 4
    q = torch.cat([low, high], dim=-1).float()  # [N, K/32, 32]
    return (q * w.scales.float()[:, :, None] + w.mins.float()[:, :, None]).view(n, k)


def packed_matmul_ref(x: torch.Tensor, w: PackedGGUFWeight) -> torch.Tensor:
    """x [M, K] @ dequantized [N, K]^T in plain torch."""
    return x @ dequantize_packed(w).T


def packed_matmul(x: torch.Tensor, w: PackedGGUFWeight) -> torch.Tensor:
    """x: float32 [M, K] -> [M, N] float32, through the compiled kernel."""
    ops = compiled_ops()
    x = x.contiguous()
    if w.bits == 4:
        return ops.q4_matmul(x, w.values, w.scales, w.mins)
    return ops.q8_matmul(x, w.values, w.scales)
