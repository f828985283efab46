"""Paged attention on CUDA with the Triton kernels of pegboard.kernels (decode: split-KV; prefill: varlen).

A step that mixes decodes with prefill chunks runs its leading one-token rows (the scheduler puts decodes
first) through the split-KV decode kernel and the rest through the prefill kernel: a decode row in the
prefill kernel fills a 128-row tile with one token's heads and walks its whole context in one program.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from pegboard.core.attention import BatchLayout, KVCacheSpec
from pegboard.core.errors import InvalidParameterError
from pegboard.core.staging import HostStaging, padded_rows
from pegboard.kernels.kv_cache_write import kv_cache_write
from pegboard.kernels.paged_decode_attention import paged_decode_attention
from pegboard.kernels.paged_prefill_attention import paged_prefill_attention


@dataclass(frozen=True)
class DecodePrefillSplit:
    """A mixed step's batch cut in two: its leading one-token rows (decodes) and the rest (prefill chunks)."""

    num_decodes: int
    decode_block_tables: torch.Tensor  # [num_decodes, max_blocks] int32
    decode_context_lens: torch.Tensor  # [num_decodes] int32
    prefill_block_tables: torch.Tensor  # [B - num_decodes, max_blocks] int32
    prefill_context_lens: torch.Tensor  # [B - num_decodes] int32
    prefill_query_start_loc: torch.Tensor  # [B - num_decodes + 1] int32, from 0


@dataclass
class TritonAttentionMetadata:
    """Per-step device tensors shared by all layers."""

    slot_mapping: torch.Tensor  # [T] int64
    block_tables: torch.Tensor  # [B, max_blocks] int32
    context_lens: torch.Tensor  # [B] int32
    query_start_loc: torch.Tensor  # [B + 1] int32
    max_query_len: int  # 1: every request decodes one token
    split: DecodePrefillSplit | None = None  # a step with prefill chunks whose batch starts with decodes


class TritonAttentionBackend:
    """KV write + paged decode / prefill attention kernels over a [layers, slots, Hkv, D] cache."""

    name = "triton"
    supports_cuda_graphs = True  # decode_metadata() over persistent tensors

    def __init__(self, spec: KVCacheSpec, *, num_heads: int, scale: float, device: torch.device) -> None:
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":  # the interpreter runs on CPU
            raise InvalidParameterError(f"attention_backend='triton' needs a CUDA device, and this engine runs on "
                                        f"{device.type}: use the torch backend", param="attention_backend")
        self.spec = spec
        self.num_heads = num_heads
        self.scale = scale
        self.device = device
        shape = (spec.num_layers, spec.num_blocks * spec.block_size, spec.num_kv_heads, spec.head_dim)
        self.k_cache = torch.zeros(shape, dtype=spec.dtype, device=device)
        self.v_cache = torch.zeros(shape, dtype=spec.dtype, device=device)
        self._staging = HostStaging(device, torch.int32)
        self._no_query_starts = torch.zeros(1, dtype=torch.int32, device=device)

    def build_metadata(self, layout: BatchLayout) -> TritonAttentionMetadata:
        """Pack the step's block tables and lengths into device tensors (one host-to-device copy each)."""
        width = max(len(t) for t in layout.block_tables)
        tables = padded_rows(layout.block_tables, width)
        starts = [0]
        for n in layout.query_lens:
            starts.append(starts[-1] + n)
        decodes = _leading_decodes(layout.query_lens) if layout.max_query_len > 1 else 0
        # The prefill rows' lengths and tables get segments of their own: a slice at row `decodes` would start
        # at an unaligned address in some steps, and Triton would compile the kernel again for it.
        context_lens, query_start_loc, prefill_starts, flat_tables, prefill_lens, prefill_tables = (
            self._staging.upload(layout.context_lens, starts, [s - decodes for s in starts[decodes:]] if decodes
                                 else [], tables, layout.context_lens[decodes:] if decodes else [],
                                 tables[decodes:] if decodes else tables[:0]))
        block_tables = flat_tables.view(len(tables), width)
        split = DecodePrefillSplit(decodes, block_tables[:decodes], context_lens[:decodes],
                                   prefill_tables.view(len(tables) - decodes, width), prefill_lens,
                                   prefill_starts) if decodes else None
        return TritonAttentionMetadata(
            slot_mapping=layout.slot_mapping, context_lens=context_lens, query_start_loc=query_start_loc,
            block_tables=block_tables, max_query_len=layout.max_query_len, split=split)

    def decode_metadata(self, slot_mapping: torch.Tensor, block_tables: torch.Tensor,
                        context_lens: torch.Tensor) -> TritonAttentionMetadata:
        """Metadata of a decode-only batch over persistent tensors (what CUDA graphs capture)."""
        return TritonAttentionMetadata(slot_mapping=slot_mapping, block_tables=block_tables,
                                       context_lens=context_lens, query_start_loc=self._no_query_starts,
                                       max_query_len=1)

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                metadata: TritonAttentionMetadata) -> torch.Tensor:
        """Write k, v into the cache, then attend. q: [T, H, D], k/v: [T, Hkv, D] -> [T, H, D]."""
        k_cache, v_cache = self.k_cache[layer], self.v_cache[layer]
        kv_cache_write(k, v, k_cache, v_cache, metadata.slot_mapping)
        m, split = metadata, metadata.split
        if m.max_query_len == 1:
            return paged_decode_attention(q, k_cache, v_cache, m.block_tables, m.context_lens,
                                          block_size=self.spec.block_size, scale=self.scale)
        if split is None:
            return paged_prefill_attention(q, k_cache, v_cache, m.block_tables, m.query_start_loc, m.context_lens,
                                           block_size=self.spec.block_size, scale=self.scale,
                                           max_query_len=m.max_query_len)
        d = split.num_decodes
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        paged_decode_attention(q[:d], k_cache, v_cache, split.decode_block_tables, split.decode_context_lens,
                               block_size=self.spec.block_size, scale=self.scale, out=out[:d])
        paged_prefill_attention(q[d:], k_cache, v_cache, split.prefill_block_tables, split.prefill_query_start_loc,
                                split.prefill_context_lens, block_size=self.spec.block_size, scale=self.scale,
                                max_query_len=m.max_query_len, out=out[d:])
        return out


def _leading_decodes(query_lens: list[int]) -> int:
    """How many rows at the front of the batch have one new token each."""
    count = 0
    for n in query_lens:
        if n != 1:
            break
        count += 1
    return count
