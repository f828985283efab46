"""kernels/cpu_decode_attention.cpp: decode rows attending straight over the paged KV cache by block table, as the
torch backend's decode rows do on the packed CPU path; each row matches SDPA over its context gathered by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pegboard.kernels.cpu_build import compiled_ops

BLOCK = 4


def gathered_sdpa(q, k_cache, v_cache, table, length, scale=None):
    """One request's attention over its context gathered from the cache (the plain-torch reference)."""
    slots = torch.tensor([table[t // BLOCK] * BLOCK + t % BLOCK for t in range(length)])
    k, v = k_cache[slots].transpose(0, 1)[None], v_cache[slots].transpose(0, 1)[None]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return F.scaled_dot_product_attention(q[None, :, None], k, v, scale=scale, enable_gqa=True)[0, :, 0]


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
# 64 and 128 with up to 4 and 2 query heads a KV head: the kernel's register loop; 24 (not a multiple of 16 lanes)
# and 8 query heads a KV head: its general one
@pytest.mark.parametrize("heads, kv_heads, head_dim", [(9, 3, 64), (4, 4, 64), (4, 2, 128), (4, 4, 24), (8, 1, 64)])
def test_each_row_matches_sdpa_over_its_own_blocks(heads, kv_heads, head_dim, cache_dtype):
    k_cache = torch.randn(64, kv_heads, head_dim).to(cache_dtype)
    v_cache = torch.randn(64, kv_heads, head_dim).to(cache_dtype)
    tables = [[5, 2, 9, 0, 0], [1, 3, 4, 6, 7], [11, 0, 0, 0, 0]]  # scattered blocks, padded with 0
    lens = [10, 17, 1]  # a partial last block, a full table's worth, one token
    q = torch.randn(3, heads, head_dim)
    out = compiled_ops().paged_decode_attention(q, k_cache, v_cache, torch.tensor(tables, dtype=torch.int32),
                                                torch.tensor(lens, dtype=torch.int32), BLOCK, head_dim ** -0.5)
    for b in range(3):
        expected = gathered_sdpa(q[b], k_cache.float(), v_cache.float(), tables[b], lens[b])  # the same values
        torch.testing.assert_close(out[b], expected, rtol=1e-5, atol=1e-5)


def test_peaked_scores_keep_their_softmax():
    """Scores tens apart (most exponentials far below float32's smallest normal) still give SDPA's weights."""
    k_cache, v_cache = torch.randn(32, 1, 16) * 6, torch.randn(32, 1, 16)
    q = torch.randn(1, 1, 16) * 6
    table, length = [3, 1, 0, 0], 13
    out = compiled_ops().paged_decode_attention(q, k_cache, v_cache, torch.tensor([table], dtype=torch.int32),
                                                torch.tensor([length], dtype=torch.int32), BLOCK, 1.0)
    torch.testing.assert_close(out[0], gathered_sdpa(q[0], k_cache, v_cache, table, length, 1.0), rtol=1e-5, atol=1e-5)


def test_a_context_longer_than_its_block_table_is_refused():
    cache = torch.randn(16, 2, 16)
    table, length = torch.tensor([[1]], dtype=torch.int32), torch.tensor([5], dtype=torch.int32)  # 5 tokens, 1 block
    with pytest.raises(RuntimeError, match="outside its block table"):
        compiled_ops().paged_decode_attention(torch.randn(1, 2, 16), cache, cache, table, length, BLOCK, 0.25)
