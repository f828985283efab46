"""kernels/cpu_decode_attention.cpp: one query row attending over a context in place, as the torch backend's
lone request does on the packed CPU path; it matches SDPA with grouped KV heads to float32 rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pegboard.kernels.cpu_build import compiled_ops


@pytest.mark.parametrize("heads, kv_heads, head_dim, length", [(9, 3, 64, 1), (9, 3, 64, 300), (4, 4, 24, 17)])
def test_one_row_matches_sdpa(heads, kv_heads, head_dim, length):  # 24: a head size that is not 16 lanes
    q = torch.randn(1, heads, head_dim)
    k, v = torch.randn(length, kv_heads, head_dim), torch.randn(length, kv_heads, head_dim)
    out = compiled_ops().decode_attention(q, k, v, head_dim ** -0.5)
    want = F.scaled_dot_product_attention(q[:, :, None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                          scale=head_dim ** -0.5, enable_gqa=True)[:, :, 0]
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_a_context_that_is_not_contiguous_is_refused():
    k = torch.randn(8, 4, 2, 16)[:, :, 0]  # [L, Hkv, D] with a stride gap
    with pytest.raises(RuntimeError, match="contiguous float32"):
        compiled_ops().decode_attention(torch.randn(1, 4, 16), k, k, 0.25)
