"""Paged attention in plain torch: gathers each request's context from the block table and runs SDPA."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pegboard.core.attention import BatchLayout, KVCacheSpec


@dataclass
class PrefillSpan:
    """One request with several new tokens: its rows in the batch and its context's cache slots."""

    start: int
    end: int
    slots: torch.Tensor | None  # [ctx] cache slots; None when the context is just the new tokens
    mask: torch.Tensor | None  # [q, ctx] bool, True = attend; None for plain causal


@dataclass
class TorchAttentionMetadata:
    """Per-step metadata shared by all layers."""

    slot_mapping: torch.Tensor  # [T]
    decode_rows: torch.Tensor | slice | None  # rows of single-token requests in the batch
    decode_slots: torch.Tensor | None  # [Bd, Lmax] cache slots of their contexts
    decode_mask: torch.Tensor | None  # [Bd, 1, 1, Lmax] bool
    prefills: list[PrefillSpan]


class TorchAttentionBackend:
    """Reference paged attention: correct everywhere, fast enough on CPU."""

    name = "torch"

    def __init__(self, spec: KVCacheSpec, *, num_heads: int, scale: float, device: torch.device) -> None:
        self.spec = spec
        self.num_heads = num_heads
        self.scale = scale
        self.device = device
        num_slots = spec.num_blocks * spec.block_size
        shape = (spec.num_layers, num_slots, spec.num_kv_heads, spec.head_dim)
        self.k_cache = torch.zeros(shape, dtype=spec.dtype, device=device)
        self.v_cache = torch.zeros(shape, dtype=spec.dtype, device=device)

    def build_metadata(self, layout: BatchLayout) -> TorchAttentionMetadata:
        """Split the batch into single-token requests (batched) and multi-token spans (one SDPA each)."""
        decode_idx, decode_ctx, decode_tables = [], [], []
        prefills: list[PrefillSpan] = []
        start = 0
        for q_len, ctx, table in zip(layout.query_lens, layout.context_lens, layout.block_tables):
            if q_len == 1:
                decode_idx.append(start)
                decode_ctx.append(ctx)
                decode_tables.append(table)
            elif ctx == q_len:
                prefills.append(PrefillSpan(start, start + q_len, None, None))
            else:
                slots = self._slots([table], ctx)[0]
                q_pos = torch.arange(ctx - q_len, ctx, device=self.device)
                mask = torch.arange(ctx, device=self.device)[None, :] <= q_pos[:, None]
                prefills.append(PrefillSpan(start, start + q_len, slots, mask))
            start += q_len

        decode_rows = decode_slots = decode_mask = None
        if decode_idx:
            max_ctx = max(decode_ctx)
            decode_slots = self._slots(decode_tables, max_ctx)
            lens = torch.tensor(decode_ctx, device=self.device)
            decode_mask = (torch.arange(max_ctx, device=self.device)[None, :] < lens[:, None])[:, None, None, :]
            if decode_idx == list(range(len(decode_idx))):
                decode_rows = slice(0, len(decode_idx))
            else:
                decode_rows = torch.tensor(decode_idx, device=self.device)
        return TorchAttentionMetadata(layout.slot_mapping, decode_rows, decode_slots, decode_mask, prefills)

    def _slots(self, tables: list[list[int]], length: int) -> torch.Tensor:
        """Cache slots of positions 0..length-1 for each block table: [B, length] (padding points at slot 0)."""
        bs = self.spec.block_size
        num_blocks = -(-length // bs)
        padded = [t[:num_blocks] + [0] * (num_blocks - len(t[:num_blocks])) for t in tables]
        table = torch.tensor(padded, dtype=torch.long, device=self.device)  # [B, nb]
        pos = torch.arange(length, device=self.device)
        return table[:, pos // bs] * bs + pos % bs

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                metadata: TorchAttentionMetadata) -> torch.Tensor:
        """Write k, v into the cache, then attend. q: [T, H, D], k/v: [T, Hkv, D] -> [T, H, D]."""
        k_cache, v_cache = self.k_cache[layer], self.v_cache[layer]  # [S, Hkv, D]
        k_cache.index_copy_(0, metadata.slot_mapping, k)
        v_cache.index_copy_(0, metadata.slot_mapping, v)
        out = torch.empty_like(q)
        if metadata.decode_rows is not None:
            # q_d: [Bd, H, 1, D]; k_d/v_d: [Bd, Hkv, L, D]
            q_d = q[metadata.decode_rows].unsqueeze(2)
            k_d = k_cache[metadata.decode_slots].transpose(1, 2)
            v_d = v_cache[metadata.decode_slots].transpose(1, 2)
            o = F.scaled_dot_product_attention(q_d, k_d, v_d, attn_mask=metadata.decode_mask,
                                               scale=self.scale, enable_gqa=True)
            out[metadata.decode_rows] = o.squeeze(2)
        for span in metadata.prefills:
            q_p = q[span.start:span.end].transpose(0, 1)  # [H, q, D]
            if span.slots is None:
                k_p = k[span.start:span.end].transpose(0, 1)  # [Hkv, q, D]
                v_p = v[span.start:span.end].transpose(0, 1)
            else:
                k_p = k_cache[span.slots].transpose(0, 1)  # [Hkv, ctx, D]
                v_p = v_cache[span.slots].transpose(0, 1)
            o = F.scaled_dot_product_attention(q_p, k_p, v_p, attn_mask=span.mask, is_causal=span.mask is None,
                                               scale=self.scale, enable_gqa=True)
            out[span.start:span.end] = o.transpose(0, 1)
        return out
