"""kernels/cpu_rotary.cpp rotates the q and k heads of qkv rows in place, bit-equal to the model's torch rotary."""

from __future__ import annotations

import pytest
import torch

from pegboard.kernels.cpu_build import compiled_ops
from pegboard.plugins.llama_model import _rotate_half

HEADS, KV_HEADS, HEAD_DIM, POSITIONS = 9, 3, 64, 512


def tables() -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (10000 ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM))
    freqs = torch.arange(POSITIONS).float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


@pytest.mark.parametrize("tokens", [1, 5, 130])
def test_in_place_rotation_is_bit_equal_to_torch(tokens):
    cos, sin = tables()
    qkv = torch.randn(tokens, (HEADS + 2 * KV_HEADS) * HEAD_DIM)
    positions = torch.randint(0, POSITIONS, (tokens,))
    q, k, v = (t.clone() for t in qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], -1))
    c, s = cos[positions][:, None], sin[positions][:, None]
    want_q = (q.view(tokens, HEADS, HEAD_DIM) * c + _rotate_half(q.view(tokens, HEADS, HEAD_DIM)) * s).view_as(q)
    want_k = (k.view(tokens, KV_HEADS, HEAD_DIM) * c + _rotate_half(k.view(tokens, KV_HEADS, HEAD_DIM)) * s).view_as(k)
    compiled_ops().rotary_qk_(qkv, positions, cos, sin, HEADS + KV_HEADS, HEAD_DIM)
    assert torch.equal(qkv[:, :HEADS * HEAD_DIM], want_q)
    assert torch.equal(qkv[:, HEADS * HEAD_DIM:(HEADS + KV_HEADS) * HEAD_DIM], want_k)
    assert torch.equal(qkv[:, (HEADS + KV_HEADS) * HEAD_DIM:], v)  # v untouched


def test_a_position_beyond_the_table_is_refused():
    cos, sin = tables()
    with pytest.raises(RuntimeError, match="beyond the table"):
        compiled_ops().rotary_qk_(torch.zeros(1, 15 * HEAD_DIM), torch.tensor([POSITIONS]), cos, sin, 12, HEAD_DIM)
