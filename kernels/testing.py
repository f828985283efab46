"""Random inputs for the kernel tests and the GPU check script (no triton import)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PagedCache:
    """A random paged KV cache and block tables for requests of the given context lengths."""

    k_cache: torch.Tensor  # [L, S, Hkv, D]: tests pass a layer view such as k_cache[1]
    v_cache: torch.Tensor
    block_tables: torch.Tensor  # [B, max_blocks] int32: shuffled blocks, unused entries point at random blocks
    context_lens: torch.Tensor  # [B] int32
    block_size: int

    def slots(self, b: int, start: int, end: int) -> torch.Tensor:
        """Cache slots of request b's positions start..end-1: [end - start] int64."""
        pos = torch.arange(start, end, device=self.block_tables.device)
        return self.block_tables[b].long()[pos // self.block_size] * self.block_size + pos % self.block_size


def random_paged_cache(context_lens: list[int], *, num_kv_heads: int, head_dim: int, block_size: int,
                       dtype: torch.dtype, device: torch.device | str, num_layers: int = 2,
                       spare_blocks: int = 3, extra_table_width: int = 1) -> PagedCache:
    """Random (never zero) K/V in a cache whose blocks are handed out to the requests in shuffled order."""
    need = [-(-n // block_size) for n in context_lens]
    width = max(need + [1]) + extra_table_width
    num_blocks = sum(need) + spare_blocks
    order = torch.randperm(num_blocks)
    tables = torch.randint(0, num_blocks, (len(context_lens), width), dtype=torch.int32)
    used = 0
    for b, n in enumerate(need):
        tables[b, :n] = order[used:used + n].to(torch.int32)
        used += n
    shape = (num_layers, num_blocks * block_size, num_kv_heads, head_dim)
    return PagedCache(k_cache=torch.randn(shape, dtype=dtype, device=device),
                      v_cache=torch.randn(shape, dtype=dtype, device=device),
                      block_tables=tables.to(device),
                      context_lens=torch.tensor(context_lens, dtype=torch.int32, device=device),
                      block_size=block_size)


def query_start_loc(query_lens: list[int], device: torch.device | str) -> torch.Tensor:
    """Cumulative query offsets [B+1] int32."""
    return torch.tensor([0] + query_lens, device=device).cumsum(0).to(torch.int32)


def strided_view(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str,
                 pad: int = 3) -> torch.Tensor:
    """Random [T, ...] tensor whose token rows are strided, like q/k/v views into a fused QKV output."""
    inner = 1
    for n in shape[1:]:
        inner *= n
    wide = torch.randn(shape[0], inner + pad, dtype=dtype, device=device)
    return wide[:, pad:].view(shape)
