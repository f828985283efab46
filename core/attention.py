"""The attention-backend interface: one flat token batch over a paged KV cache.

The model runner describes each step's batch once as a ``BatchLayout``; the backend turns it
into its own metadata (``build_metadata``), and every attention layer then calls
``backend.forward(layer, q, k, v, metadata)``, which writes the new keys and values into the
cache and attends over each request's whole context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class BatchLayout:
    """One step's batch: requests in order, each with ``query_lens[i]`` new tokens after
    ``context_lens[i] - query_lens[i]`` cached ones."""

    query_lens: list[int]  # new tokens per request
    context_lens: list[int]  # cached + new tokens per request
    block_tables: list[list[int]]  # KV blocks per request
    slot_mapping: torch.Tensor  # [T] int64: cache slot of each new token
    num_tokens: int  # T = sum(query_lens)
    max_query_len: int
    max_context_len: int


@dataclass
class KVCacheSpec:
    """Shape of the paged KV cache."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    num_blocks: int
    dtype: torch.dtype

    def bytes_per_block(self) -> int:
        """Bytes of keys and values of one block across all layers."""
        element = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.block_size * self.num_kv_heads * self.head_dim * element


@runtime_checkable
class AttentionBackend(Protocol):
    """Paged attention plus KV-cache writes; registered through ``register_attention_backends``."""

    name: str
    supports_cuda_graphs: bool  # True: a CudaGraphAttentionBackend, whose decode steps CUDA graphs may capture

    def __init__(self, spec: KVCacheSpec, *, num_heads: int, scale: float, device: torch.device) -> None:
        """Allocate the KV cache for ``spec`` on ``device``."""

    def build_metadata(self, layout: BatchLayout) -> Any:
        """Per-step metadata, built once and shared by every layer."""

    def forward(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, metadata: Any) -> torch.Tensor:
        """Store k, v ([T, Hkv, D]) of ``layer`` in the cache and return attention output [T, H, D] for q."""


@runtime_checkable
class CudaGraphAttentionBackend(AttentionBackend, Protocol):
    """A backend that declares ``supports_cuda_graphs``: its decode metadata can live in persistent tensors."""

    def decode_metadata(self, slot_mapping: torch.Tensor, block_tables: torch.Tensor,
                        context_lens: torch.Tensor) -> Any:
        """Metadata of a decode-only batch over persistent tensors that graph replays refill (slot -1: padding)."""


@dataclass
class AttentionContext:
    """The explicit per-step object a model's attention layers receive."""

    backend: AttentionBackend
    metadata: Any

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.backend.forward(layer, q, k, v, self.metadata)
