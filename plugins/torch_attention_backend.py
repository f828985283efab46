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
    slots: torch.Tensor | slice | None  # [ctx] cache slots (a slice: consecutive blocks, read in place); None
    # when the context is just the new tokens
    mask: torch.Tensor | None  # [q, ctx] bool, True = attend; None for plain causal


@dataclass
class DecodeGroup:
    """Single-token requests of similar context length, attended together in one padded SDPA call."""

    rows: torch.Tensor | slice  # their rows in the batch
    slots: torch.Tensor | slice  # [B, L] cache slots of their contexts (padded); a slice: one request whose
    # context fills consecutive blocks, read in place without a gather
    mask: torch.Tensor | None  # [B, 1, 1, L] bool, True = attend; None when no padding


@dataclass
class PagedDecodes:
    """Every single-token request of the step, for a kernel that reads the paged cache by block table."""

    rows: torch.Tensor | slice  # their rows in the batch
    tables: torch.Tensor  # [B, blocks] int32, padded with 0
    lens: torch.Tensor  # [B] int32 context lengths


@dataclass
class TorchAttentionMetadata:
    """Per-step metadata shared by all layers."""

    slot_mapping: torch.Tensor  # [T]
    decodes: list[DecodeGroup]
    prefills: list[PrefillSpan]
    paged: PagedDecodes | None = None  # the decode rows, when the backend has a paged decode kernel (then no decodes)


class TorchAttentionBackend:
    """Reference paged attention: correct everywhere, fast enough on CPU."""

    name = "torch"
    supports_cuda_graphs = False  # its metadata is built on the host every step

    def __init__(self, spec: KVCacheSpec, *, num_heads: int, scale: float, device: torch.device) -> None:
        self.spec = spec
        self.num_heads = num_heads
        self.scale = scale
        self.device = device
        # set by the runner on the packed CPU path (kernels/cpu_decode_attention.cpp): the decode rows attend over
        # the paged cache by block table in one C++ call; not bit-equal to SDPA, so the exact float32 path keeps SDPA
        self.cpu_paged_decode = None
        num_slots = spec.num_blocks * spec.block_size
        shape = (spec.num_layers, num_slots, spec.num_kv_heads, spec.head_dim)
        # Padded gathers read slots no request wrote, so those must hold finite values. A large CPU
        # allocation is mapped fresh from the OS, already zeroed, so it need not be touched up front
        # (zeroing 4 GiB costs seconds of start-up); small ones may reuse freed heap memory.
        large = spec.bytes_per_block() * spec.num_blocks >= 2**30
        alloc = torch.empty if device.type == "cpu" and large else torch.zeros
        self.k_cache = alloc(shape, dtype=spec.dtype, device=device)
        self.v_cache = alloc(shape, dtype=spec.dtype, device=device)

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
                slots = self._consecutive(table, ctx) or self._slots([table], ctx)[0]
                q_pos = torch.arange(ctx - q_len, ctx, device=self.device)
                mask = torch.arange(ctx, device=self.device)[None, :] <= q_pos[:, None]
                prefills.append(PrefillSpan(start, start + q_len, slots, mask))
            start += q_len

        if self.cpu_paged_decode is not None and decode_idx:
            return TorchAttentionMetadata(layout.slot_mapping, [], prefills,
                                          self._paged(decode_idx, decode_ctx, decode_tables))
        decodes = [self._decode_group([decode_idx[i] for i in group], [decode_ctx[i] for i in group],
                                      [decode_tables[i] for i in group])
                   for group in _length_groups(decode_ctx)]
        return TorchAttentionMetadata(layout.slot_mapping, decodes, prefills)

    def _paged(self, rows: list[int], lens: list[int], tables: list[list[int]]) -> PagedDecodes:
        """The step's decode rows with their block tables (cut to the longest context's blocks) and lengths."""
        width = max(-(-n // self.spec.block_size) for n in lens)
        padded = [t[:width] + [0] * (width - len(t[:width])) for t in tables]
        batch_rows = (slice(rows[0], rows[0] + len(rows)) if rows == list(range(rows[0], rows[0] + len(rows)))
                      else torch.tensor(rows, device=self.device))
        return PagedDecodes(batch_rows, torch.tensor(padded, dtype=torch.int32), torch.tensor(lens, dtype=torch.int32))

    def _decode_group(self, rows: list[int], lens: list[int], tables: list[list[int]]) -> DecodeGroup:
        max_ctx = max(lens)
        if len(rows) == 1:
            run = self._consecutive(tables[0], max_ctx)
            if run is not None:
                return DecodeGroup(slice(rows[0], rows[0] + 1), run, None)
        slots = self._slots(tables, max_ctx)
        mask = None
        if min(lens) != max_ctx:
            lens_t = torch.tensor(lens, device=self.device)
            mask = (torch.arange(max_ctx, device=self.device)[None, :] < lens_t[:, None])[:, None, None, :]
        if rows == list(range(rows[0], rows[0] + len(rows))):
            return DecodeGroup(slice(rows[0], rows[0] + len(rows)), slots, mask)
        return DecodeGroup(torch.tensor(rows, device=self.device), slots, mask)

    def _consecutive(self, table: list[int], length: int) -> slice | None:
        """The cache slots of positions 0..length-1 as one slice when their blocks are consecutive, else None."""
        bs = self.spec.block_size
        used = table[:-(-length // bs)]
        if used != list(range(used[0], used[0] + len(used))):
            return None
        return slice(used[0] * bs, used[0] * bs + length)

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
        """Write k, v into the cache, then attend. q: [T, H, D], k/v: [T, Hkv, D] -> [T, H, D]. A cache of another
        dtype than q's (``kv_cache_dtype``) is converted on write and on read."""
        k_cache, v_cache = self.k_cache[layer], self.v_cache[layer]  # [S, Hkv, D]
        k_cache.index_copy_(0, metadata.slot_mapping, k.to(k_cache.dtype))
        v_cache.index_copy_(0, metadata.slot_mapping, v.to(v_cache.dtype))
        paged = metadata.paged
        if paged is not None:
            o = self.cpu_paged_decode(q[paged.rows], k_cache, v_cache, paged.tables, paged.lens,
                                      self.spec.block_size, self.scale)
            if not metadata.prefills:  # the whole batch is decode rows
                return o
        only = metadata.decodes[0] if len(metadata.decodes) == 1 and not metadata.prefills else None
        whole = only is not None and isinstance(only.rows, slice) and only.rows == slice(0, q.shape[0])
        out = None if whole else torch.empty_like(q)
        if paged is not None:
            out[paged.rows] = o
        for group in metadata.decodes:
            # q_d: [B, H, 1, D]; k_d/v_d: [B, Hkv, L, D]
            q_d = q[group.rows].unsqueeze(2)
            if isinstance(group.slots, slice):  # one request, its context in place: [1, Hkv, L, D]
                k_d = k_cache[group.slots].transpose(0, 1)[None]
                v_d = v_cache[group.slots].transpose(0, 1)[None]
            else:
                k_d = _gather(k_cache, group.slots).transpose(1, 2)
                v_d = _gather(v_cache, group.slots).transpose(1, 2)
            k_d, v_d = k_d.to(q.dtype), v_d.to(q.dtype)
            o = F.scaled_dot_product_attention(q_d, k_d, v_d, attn_mask=group.mask, scale=self.scale,
                                               enable_gqa=True)
            if out is None:  # the whole batch is this group: its output is the layer's
                return o.squeeze(2)
            out[group.rows] = o.squeeze(2)
        for span in metadata.prefills:
            # 4-D inputs: torch's CPU flash kernel takes only those; with 3-D ones SDPA falls back to the math
            # kernel, which materialises every score (4-6x slower for long prompts)
            q_p = q[span.start:span.end].transpose(0, 1)[None]  # [1, H, q, D]
            if span.slots is None:
                k_p = k[span.start:span.end].transpose(0, 1)[None]  # [1, Hkv, q, D]
                v_p = v[span.start:span.end].transpose(0, 1)[None]
            else:
                k_p = _read(k_cache, span.slots).to(q.dtype).transpose(0, 1)[None]  # [1, Hkv, ctx, D]
                v_p = _read(v_cache, span.slots).to(q.dtype).transpose(0, 1)[None]
            o = F.scaled_dot_product_attention(q_p, k_p, v_p, attn_mask=span.mask, is_causal=span.mask is None,
                                               scale=self.scale, enable_gqa=True)
            out[span.start:span.end] = o[0].transpose(0, 1)
        return out


def _read(cache: torch.Tensor, slots: torch.Tensor | slice) -> torch.Tensor:
    """The cache rows of ``slots``: a view for a slice, else a gather."""
    return cache[slots] if isinstance(slots, slice) else _gather(cache, slots)


def _gather(cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """cache[slots] for a [S, Hkv, D] cache, as one row copy per slot (faster than advanced indexing)."""
    rows = cache.view(cache.shape[0], -1).index_select(0, slots.reshape(-1))
    return rows.view(*slots.shape, *cache.shape[1:])


def _length_groups(lengths: list[int], min_fill: float = 0.7, max_groups: int = 4) -> list[list[int]]:
    """Indices of requests grouped by context length (longest first) so each padded gather wastes little."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups) == max_groups or lengths[i] >= min_fill * lengths[groups[-1][0]]):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups
