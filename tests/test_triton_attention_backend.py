"""The Triton attention backend on a step that mixes decodes with a prefill chunk (Triton interpreter on CPU)."""

from __future__ import annotations

import dataclasses
import os

import pytest

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels' @triton.jit runs, at import
pytest.importorskip("triton")

from pegboard.core.attention import BatchLayout, KVCacheSpec  # noqa: E402
from pegboard.plugins.triton_attention_backend import TritonAttentionBackend  # noqa: E402

BLOCK = 4


def mixed_layout(device: torch.device) -> BatchLayout:
    """Two decodes, a 3-token prefill chunk, then one more decode (behind the chunk: attended as a prefill)."""
    query_lens, context_lens = [1, 1, 3, 1], [5, 9, 7, 3]
    tables = [[0, 1], [2, 3, 4], [5, 6], [7]]
    slots = [table[p // BLOCK] * BLOCK + p % BLOCK
             for table, q, ctx in zip(tables, query_lens, context_lens) for p in range(ctx - q, ctx)]
    return BatchLayout(query_lens=query_lens, context_lens=context_lens, block_tables=tables,
                       slot_mapping=torch.tensor(slots, device=device), num_tokens=sum(query_lens),
                       max_query_len=max(query_lens), max_context_len=max(context_lens))


def test_leading_decodes_take_the_decode_kernel_and_match_the_prefill_kernel():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = KVCacheSpec(num_layers=1, num_kv_heads=2, head_dim=16, block_size=BLOCK, num_blocks=8, dtype=torch.float32)
    backend = TritonAttentionBackend(spec, num_heads=4, scale=0.25, device=device)
    torch.manual_seed(0)
    backend.k_cache.normal_()  # the cached context of every request
    backend.v_cache.normal_()
    layout = mixed_layout(device)
    metadata = backend.build_metadata(layout)
    assert metadata.split is not None and metadata.split.num_decodes == 2
    q = torch.randn(layout.num_tokens, 4, 16, device=device)
    k, v = (torch.randn(layout.num_tokens, 2, 16, device=device) for _ in range(2))
    split = backend.forward(0, q, k, v, metadata)
    whole = backend.forward(0, q, k, v, dataclasses.replace(metadata, split=None))  # every row as a prefill
    torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-5)
