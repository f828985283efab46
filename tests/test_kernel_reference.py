"""The paged-attention references (kernels/reference.py) agree with dense causal SDPA: the kernel tests'
ground truth is sound. Runs without triton."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pegboard.kernels.reference import (kv_cache_write_ref, paged_decode_attention_ref, paged_prefill_attention_ref,
                                        paged_slots)


def dense_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention over one whole sequence in fp64: q [L, H, D], k/v [L, Hkv, D] -> [L, H, D]."""
    group = q.shape[1] // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)
    v = v.double().repeat_interleave(group, dim=1)
    o = F.scaled_dot_product_attention(q.double().transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                       is_causal=True, scale=scale)
    return o.transpose(0, 1)


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (8, 2), (8, 1)])
def test_paged_references_match_dense_causal_sdpa(num_heads: int, num_kv_heads: int) -> None:
    torch.manual_seed(0)
    block_size, head_dim, scale = 4, 16, 0.3
    lengths = [1, 9, 12, 23]
    tables = torch.randperm(40).to(torch.int32).view(len(lengths), 10)  # shuffled, non-contiguous blocks
    k_cache = torch.randn(40 * block_size, num_kv_heads, head_dim)
    v_cache = torch.randn_like(k_cache)
    qs = [torch.randn(n, num_heads, head_dim) for n in lengths]
    ks = [torch.randn(n, num_kv_heads, head_dim) for n in lengths]
    vs = [torch.randn(n, num_kv_heads, head_dim) for n in lengths]
    for b, n in enumerate(lengths):
        kv_cache_write_ref(ks[b], vs[b], k_cache, v_cache, paged_slots(tables[b], n, block_size))
    dense = [dense_causal(qs[b], ks[b], vs[b], scale) for b in range(len(lengths))]
    lens = torch.tensor(lengths, dtype=torch.int32)

    # Decode: the last token of each sequence.
    out = paged_decode_attention_ref(torch.stack([q[-1] for q in qs]), k_cache, v_cache, tables, lens,
                                     block_size=block_size, scale=scale)
    torch.testing.assert_close(out.double(), torch.stack([d[-1] for d in dense]), atol=1e-5, rtol=1e-5)

    # Prefill of whole sequences, and chunked prefill of the last `new` tokens after cached ones.
    for new in (lengths, [1, 3, 12, 5]):
        starts = torch.tensor([0] + new).cumsum(0).to(torch.int32)
        q = torch.cat([qs[b][-n:] for b, n in enumerate(new)])
        out = paged_prefill_attention_ref(q, k_cache, v_cache, tables, starts, lens, block_size=block_size, scale=scale)
        torch.testing.assert_close(out.double(), torch.cat([dense[b][-n:] for b, n in enumerate(new)]),
                                   atol=1e-5, rtol=1e-5)


def test_decode_reference_gives_zeros_for_empty_context() -> None:
    q = torch.randn(2, 4, 16)
    cache = torch.randn(32, 2, 16)
    out = paged_decode_attention_ref(q, cache, cache, torch.zeros(2, 2, dtype=torch.int32),
                                     torch.tensor([0, 5], dtype=torch.int32), block_size=16, scale=0.25)
    assert out[0].abs().max() == 0 and out[1].abs().max() > 0
