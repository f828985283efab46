"""Piecewise CUDA graphs for steps with prefill chunks: the token buckets, and how a forward is cut at its
attention calls (the capture itself needs a GPU: tests/gpu/check_graphs.py)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from pegboard.core.piecewise_graphs import _PieceCutter, token_buckets


def test_buckets_start_at_16_end_at_the_token_budget_and_bound_the_padding():
    buckets = token_buckets(8192)
    assert buckets[0] == 16 and buckets[-1] == 8192 and buckets == sorted(set(buckets))
    for n in range(257, 8193):  # below 256 tokens the GEMMs read the weights in the same time, padded or not
        bucket = next(b for b in buckets if b >= n)
        assert bucket - n < (128 if n <= 2048 else 512)
    assert token_buckets(100)[-1] == 100 and token_buckets(3000)[-1] == 3000


def test_each_attention_call_hands_its_inputs_over_and_reads_the_shared_output():
    owner = SimpleNamespace(q=torch.zeros(8, 2, 4), k=torch.zeros(8, 1, 4), v=torch.zeros(8, 1, 4),
                            out=torch.full((8, 2, 4), 5.0))
    cutter = _PieceCutter(owner)  # not capturing: the warm-up forward
    q, k, v = torch.ones(3, 2, 4), torch.full((3, 1, 4), 2.0), torch.full((3, 1, 4), 3.0)
    for layer in (0, 1):
        out = cutter(layer, q * (layer + 1), k, v)
    assert cutter.layers == [0, 1] and out.shape == (3, 2, 4) and out.data_ptr() == owner.out.data_ptr()
    assert torch.equal(owner.q[:3], q * 2) and torch.equal(owner.k[:3], k) and torch.equal(owner.v[:3], v)
    assert not owner.q[3:].any()  # rows past the step's tokens are left alone
