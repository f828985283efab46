"""Vectorized torch dequantizers for GGUF tensors, bit-exact with gguf-py's numpy ones (which they replace for speed).

Each takes the raw bytes as a ``uint8`` tensor of shape ``[n_blocks, block_bytes]`` and returns float32
``[n_blocks, block_size]``; multiplies and adds run as separate ops in gguf-py's order so rounding matches.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from pegboard.core.errors import UnsupportedModelError

F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, BF16 = 0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 30
_FLOATS = {F32: torch.float32, F16: torch.float16, BF16: torch.bfloat16}
# A CPU tensor larger than this is dequantized a piece at a time into one buffer (``_cpu_empty``), so the
# intermediates stay small enough to reuse freed memory instead of faulting in fresh pages: whole
# 4096x4096 tensors took torch 10-40% longer than gguf's numpy code, in pieces torch is faster for every
# type (tests/cpu/bench_gguf_load.py; docs/benchmarks.md).
PIECE_VALUES = 1 << 20


def dequantize(raw: torch.Tensor, ggml_type: int, shape: tuple[int, ...], name: str = "?") -> torch.Tensor:
    """float32 values of shape ``shape`` from the flat ``uint8`` bytes of one GGUF tensor."""
    on_cpu = raw.device.type == "cpu"
    if ggml_type in _FLOATS:
        values = raw.view(_FLOATS[ggml_type])
        if not on_cpu:
            return values.to(torch.float32, copy=True).reshape(shape)
        return _cpu_empty(values.numel()).copy_(values).reshape(shape)
    block_size, block_bytes = block_layout(ggml_type, name)
    blocks = raw.view(-1, block_bytes)
    convert = _TORCH_DEQUANT.get(ggml_type)
    if convert is None:  # gguf-py's numpy code, on the CPU
        return torch.from_numpy(_numpy_dequantize(blocks.cpu().numpy(), ggml_type, name)).to(raw.device).reshape(shape)
    if not on_cpu or len(blocks) * block_size <= PIECE_VALUES:
        return convert(blocks).reshape(shape)
    out = _cpu_empty(len(blocks) * block_size).view(len(blocks), block_size)
    step = PIECE_VALUES // block_size
    for start in range(0, len(blocks), step):
        out[start : start + step] = convert(blocks[start : start + step])
    return out.reshape(shape)


def _cpu_empty(numel: int) -> torch.Tensor:
    """A float32 CPU buffer from numpy's allocator, which asks for transparent huge pages on large arrays:
    touching a fresh 64 MB one costs 5 ms here against 47 ms for ``torch.empty`` (4 kB page faults)."""
    return torch.from_numpy(np.empty(numel, dtype=np.float32))


def block_layout(ggml_type: int, name: str = "?") -> tuple[int, int]:
    """(values per block, bytes per block) of a ggml type; UnsupportedModelError for a type gguf-py does not know."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        return GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise UnsupportedModelError(
            f"GGUF tensor {name!r} has ggml type {ggml_type}, which neither pegboard nor the gguf package supports"
        ) from None


def _numpy_dequantize(blocks: np.ndarray, ggml_type: int, name: str) -> np.ndarray:
    from gguf import GGMLQuantizationType, quants

    qtype = GGMLQuantizationType(ggml_type)
    try:
        return quants.dequantize(blocks, qtype).astype(np.float32, copy=False)
    except NotImplementedError:
        raise UnsupportedModelError(
            f"GGUF tensor {name!r} is quantized as {qtype.name}, which pegboard cannot dequantize "
            f"(supported: {', '.join(supported_type_names())})"
        ) from None


def supported_type_names() -> list[str]:
    """Names of the ggml types that have a fast torch dequantizer here."""
    from gguf import GGMLQuantizationType

    return [GGMLQuantizationType(t).name for t in sorted([*_FLOATS, *_TORCH_DEQUANT])]


def _half(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The fp16 scalar at byte ``start`` of every block, as float32 ``[n_blocks, 1]``."""
    return blocks[:, start : start + 2].view(torch.float16).float()


def _shifted(data: torch.Tensor, shifts: tuple[int, ...], width: int) -> torch.Tensor:
    """Bit fields: ``[nb, n*width]`` bytes -> ``[nb, n * len(shifts) * width]``, each run of width bytes shifted in turn."""
    shift = torch.tensor(shifts, dtype=torch.uint8, device=data.device).view(1, 1, -1, 1)
    return (data.reshape(data.shape[0], -1, 1, width) >> shift).reshape(data.shape[0], -1)


def _scaled(quants: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None = None) -> torch.Tensor:
    """``quants * scale (+ offset)`` in float32, computed as gguf-py does (one rounding per op)."""
    out = quants.to(torch.float32).mul_(scale)
    return out if offset is None else out.add_(offset)


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    q = (_shifted(blocks[:, 2:], (0, 4), 16) & 0xF).view(torch.int8) - 8
    return _scaled(q, _half(blocks, 0))


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    q = _shifted(blocks[:, 4:], (0, 4), 16) & 0xF
    return _scaled(q, _half(blocks, 0), _half(blocks, 2))


def _five_bit(blocks: torch.Tensor, high_at: int) -> torch.Tensor:
    """Q5_0 / Q5_1 quants: 32 low nibbles (values j and j + 16 share byte j) and their fifth bits, a 32-bit word at
    byte ``high_at``, bit j for value j."""
    low = _shifted(blocks[:, high_at + 4:], (0, 4), 16) & 0xF
    high = _shifted(blocks[:, high_at:high_at + 4], tuple(range(8)), 1) & 1
    return low | (high << 4)


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    return _scaled(_five_bit(blocks, 2).view(torch.int8) - 16, _half(blocks, 0))


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:
    return _scaled(_five_bit(blocks, 4), _half(blocks, 0), _half(blocks, 2))


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    return _scaled(blocks[:, 2:].view(torch.int8), _half(blocks, 0))


def _k_scale_min(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eight 6-bit scales and mins packed into 12 bytes (Q4_K, Q5_K), as float32 ``[nb, 8, 1]``."""
    d, m, md = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1)
    return sc.float().unsqueeze(-1), mn.float().unsqueeze(-1)


def _k_quant(blocks: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Q4_K / Q5_K: ``d*scale * q - dmin*min`` per 32-value sub-block."""
    nb = blocks.shape[0]
    sc, mn = _k_scale_min(blocks[:, 4:16])
    d = _half(blocks, 0).unsqueeze(-1) * sc
    dm = _half(blocks, 2).unsqueeze(-1) * mn
    return _scaled(q.view(nb, 8, 32), d).sub_(dm).view(nb, 256)


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    return _k_quant(blocks, _shifted(blocks[:, 16:144], (0, 4), 32) & 0xF)


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    low = _shifted(blocks[:, 48:176], (0, 4), 32) & 0xF
    high = _shifted(blocks[:, 16:48], tuple(range(8)), 32) & 1
    return _k_quant(blocks, low | (high << 4))


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    nb = blocks.shape[0]
    d = (_half(blocks, 208) * blocks[:, 192:208].view(torch.int8).float()).view(nb, 16, 1)
    low = (_shifted(blocks[:, 0:128], (0, 4), 64) & 0xF).view(nb, -1, 32)
    high = (_shifted(blocks[:, 128:192], (0, 2, 4, 6), 32) & 3).view(nb, -1, 32)
    q = (low | (high << 4)).view(torch.int8) - 32
    return _scaled(q.view(nb, 16, 16), d).view(nb, 256)


_TORCH_DEQUANT: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    Q4_0: _q4_0, Q4_1: _q4_1, Q5_0: _q5_0, Q5_1: _q5_1, Q8_0: _q8_0, Q4_K: _q4_k, Q5_K: _q5_k, Q6_K: _q6_k,
}
