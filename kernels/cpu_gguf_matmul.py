"""CPU matmul over weights kept in GGUF blocks (Q4_0, Q4_1, Q8_0), a C++ kernel (built on first use).

``pack_gguf_rows`` turns a tensor's raw GGUF blocks into ``PackedGGUFWeight``: the quants in GGUF's order with
scales and mins per output row, and all of them again in the integer kernel's dot layout (tiles of 16 rows
interleaved). ``packed_matmul(x, packed)`` is ``x @ dequantized.T`` by integer dot products (cpu_gguf_matmul.cpp:
x quantized to 16 bits per block of 32, an error under 2e-5 of the block's largest value, its products summed
exactly in int32 by AVX512-VNNI); ``packed_matmul_ref`` is its arithmetic in plain torch. The GGUF-order quants
are the references' (``dequantize_packed``) and the source of the dot layout. A float kernel that dequantized in
registers was slower at every row count measured (30 SmolLM2 layers, 2-core Xeon: 1 row 7.1 against 2.9 ms, 64
rows 72 against 41, 256 rows 264 against 152; 2-core AMD EPYC: 8.8 against 3.5, 111 against 60 at 64), so it was
removed. The sources are built on first use and cached (kernels/cpu_build.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from pegboard.kernels.cpu_build import compiled_ops

Q4_0, Q4_1, Q8_0 = 2, 3, 8  # ggml type ids
PACKED_TYPES = (Q4_0, Q4_1, Q8_0)
_BLOCK = 32
_LANES = 16  # weight rows per tile of the dot layout: one per 32-bit lane of a 512-bit register


@dataclass(frozen=True)
class PackedGGUFWeight:
    """One [N, K] weight in GGUF blocks: ``values`` nibbles uint8 [N, K/2] (4-bit) or int8 [N, K] (8-bit) in GGUF's
    order, ``scales`` and ``mins`` (4-bit only) float16 [N, K/32]; ``dot_values`` (built on first use) is all of
    them again in the integer kernel's dot layout."""

    bits: int
    values: torch.Tensor
    scales: torch.Tensor
    mins: torch.Tensor | None

    @property
    def shape(self) -> tuple[int, int]:
        n = self.values.shape[0]
        return n, self.scales.shape[1] * _BLOCK

    @cached_property
    def dot_values(self) -> torch.Tensor:
        """uint8 [ceil(N / 16), tile bytes]: tiles of 16 rows, their quants (8-bit: each + 128), scales and mins."""
        return _dot_layout(self)

    def nbytes(self) -> int:
        """Bytes held (both layouts)."""
        return sum(_size(t) for t in (self.values, self.dot_values, self.scales, self.mins))

    @cached_property
    def tensors(self) -> list[torch.Tensor]:
        """[dot_values, scales] as the C++ packed_linear takes them (the scales give it N)."""
        return [self.dot_values, self.scales]

    def read_bytes(self) -> int:
        """Bytes one product reads: the dot layout's quants, scales and mins."""
        return _size(self.dot_values)


def _size(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def pack_gguf_rows(raw: torch.Tensor, ggml_type: int, shape: tuple[int, int]) -> PackedGGUFWeight:
    """The kernel's layout of a [N, K] tensor from its flat GGUF bytes (``raw``: uint8, rows of whole blocks)."""
    n, k = shape
    if ggml_type not in PACKED_TYPES or k % _BLOCK:
        raise ValueError(f"ggml type {ggml_type} with {k} columns has no packed CPU kernel")
    nb = k // _BLOCK
    if ggml_type == Q8_0:
        blocks = raw.view(n, nb, 34)
        scales = blocks[:, :, 0:2].contiguous().view(torch.float16).view(n, nb)
        return PackedGGUFWeight(8, blocks[:, :, 2:].reshape(n, k).view(torch.int8), scales, None)
    head = 2 if ggml_type == Q4_0 else 4
    blocks = raw.view(n, nb, head + 16)
    scales = blocks[:, :, 0:2].contiguous().view(torch.float16).view(n, nb)
    if ggml_type == Q4_0:
        mins = scales * -8  # (q - 8) * d == q * d + (-8 d), exactly: -8 d is exact in float16
    else:
        mins = blocks[:, :, 2:4].contiguous().view(torch.float16).view(n, nb)
    return PackedGGUFWeight(4, blocks[:, :, head:].reshape(n, k // 2), scales, mins)


def quantize_rows_q8(w: torch.Tensor) -> PackedGGUFWeight:
    """float32 [N, K] -> 8-bit blocks of 32 values with one float16 scale each (Q8_0's format, max |w| / 127 a
    block): for layers whose GGUF type has no kernel of its own (K-quants, Q5_*, IQ*), an error under one scale
    step a value."""
    n, k = w.shape
    if k % _BLOCK:
        raise ValueError(f"{k} columns are not whole blocks of {_BLOCK}")
    blocks = w.detach().float().reshape(n, k // _BLOCK, _BLOCK)
    scales = (blocks.abs().amax(-1) / 127).half()
    inverse = torch.where(scales > 0, 1 / scales.float(), torch.zeros_like(scales, dtype=torch.float32))
    quants = torch.round(blocks * inverse[..., None]).clamp_(-127, 127).to(torch.int8)
    return PackedGGUFWeight(8, quants.view(n, k), scales, None)


def quantize_rows_q4(w: torch.Tensor) -> PackedGGUFWeight:
    """float32 [N, K] -> 4-bit blocks of 32 values with a float16 scale and min each (Q4_1's format: a block's range
    in 15 steps from its minimum), for ``cpu_weights="int4"``: an error under half a step a value, plus the float16
    rounding of the scale and min."""
    n, k = w.shape
    if k % _BLOCK:
        raise ValueError(f"{k} columns are not whole blocks of {_BLOCK}")
    blocks = w.detach().float().reshape(n, k // _BLOCK, _BLOCK)
    low = blocks.amin(-1).half()
    scales = ((blocks.amax(-1) - low.float()) / 15).half()
    inverse = torch.where(scales > 0, 1 / scales.float(), torch.zeros_like(scales, dtype=torch.float32))
    quants = torch.round((blocks - low.float()[..., None]) * inverse[..., None]).clamp_(0, 15).to(torch.uint8)
    nibbles = quants[..., :_BLOCK // 2] | (quants[..., _BLOCK // 2:] << 4)  # GGUF's order: value j and j + 16
    return PackedGGUFWeight(4, nibbles.reshape(n, k // 2), scales, low)


def _dot_layout(w: PackedGGUFWeight) -> torch.Tensor:
    """The dot layout (cpu_gguf_matmul.cpp): rows padded to tiles of 16; per tile, block by block, word L (4 bytes)
    of the 16 rows side by side; then the tile's scales block by block, then its mins."""
    n, nb = w.values.shape[0], w.scales.shape[1]
    tiles = -(-n // _LANES)
    pad = tiles * _LANES - n
    quants = w.values.view(torch.uint8) ^ 0x80 if w.bits == 8 else w.values  # 8-bit: q + 128, vpdpbusd's unsigned
    words = w.bits * _BLOCK // 32  # 4-byte words a block of one row
    parts = [quants.view(n, nb, words, 4), w.scales.view(torch.uint8).view(n, nb, 1, 2)]
    if w.mins is not None:
        parts.append(w.mins.view(torch.uint8).view(n, nb, 1, 2))
    laid = []
    for part in parts:
        part = torch.nn.functional.pad(part, (0, 0, 0, 0, 0, 0, 0, pad))  # zero rows: zero outputs
        # [tiles, 16, nb, words, bytes] -> [tiles, nb, words, 16, bytes]
        laid.append(part.view(tiles, _LANES, *part.shape[1:]).permute(0, 2, 3, 1, 4).reshape(tiles, -1))
    return torch.cat(laid, dim=1).contiguous()


def concat_packed(parts: list[PackedGGUFWeight]) -> PackedGGUFWeight:
    """Several weights of the same kind stacked along N (packed shards: q, k, v; gate, up)."""
    first = parts[0]
    if any(p.bits != first.bits or p.shape[1] != first.shape[1] for p in parts):
        raise ValueError("packed shards differ in kind or width")
    mins = None if first.mins is None else torch.cat([p.mins for p in parts])
    return PackedGGUFWeight(first.bits, torch.cat([p.values for p in parts]), torch.cat([p.scales for p in parts]),
                            mins)


def _quants(w: PackedGGUFWeight) -> torch.Tensor:
    """The integer quants in GGUF's value order, float32 [N, K/32, 32]."""
    n = w.values.shape[0]
    if w.bits == 8:
        return w.values.view(n, -1, _BLOCK).float()
    nibbles = w.values.view(n, -1, 16)
    return torch.cat([nibbles & 0xF, nibbles >> 4], dim=-1).float()


def dequantize_packed(w: PackedGGUFWeight) -> torch.Tensor:
    """The weights in float32 [N, K], bit-equal to plugins/gguf_dequant.py's values."""
    n, k = w.shape
    q = _quants(w) * w.scales.float()[:, :, None]
    return (q if w.bits == 8 else q + w.mins.float()[:, :, None]).view(n, k)


_LEVELS = 32512.0  # 127 * 256: a 16-bit value's high byte stays a signed byte (cpu_gguf_matmul.cpp)


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (16-bit values as float32 [M, K/32, 32], scales [M, K/32, 1]): per block, max |x| / 32512."""
    blocks = x.view(x.shape[0], -1, _BLOCK)
    amax = blocks.abs().amax(-1, keepdim=True)
    inverse = torch.where(amax > 0, _LEVELS / amax, torch.zeros_like(amax))
    return torch.round(blocks * inverse).clamp_(-_LEVELS, _LEVELS), amax / _LEVELS


def packed_matmul_ref(x: torch.Tensor, w: PackedGGUFWeight) -> torch.Tensor:
    """``packed_matmul``'s arithmetic in plain torch: x quantized to 16 bits per block against the integer quants,
    scaled per block, a 4-bit block's mins times the float32 sum of its block of x."""
    xq, x_scale = quantize_activations(x)
    dots = torch.einsum("mbk,nbk->mnb", xq.double(), _quants(w).double())  # exact integers
    out = (dots * (x_scale.squeeze(-1)[:, None, :].double() * w.scales.double()[None])).sum(-1)
    if w.bits == 4:
        out += x.view(x.shape[0], -1, _BLOCK).sum(-1).double() @ w.mins.double().T
    return out.float()


def packed_matmul(x: torch.Tensor, w: PackedGGUFWeight) -> torch.Tensor:
    """x: float32 [M, K] -> [M, N] float32, through the integer kernel."""
    return compiled_ops().packed_linear(x.contiguous(), w.tensors, None)
