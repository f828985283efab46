"""Paged attention for decode (one query token per sequence), split-KV (flash-decoding) with GQA packing.

Pass 1 runs one program per (sequence, KV head, split): it loads the query rows of every query head
that shares the KV head (GQA group, padded to >= 16 rows for tl.dot), walks its chunk of the
context in BLOCK_N-token tiles gathered through the block table, and keeps an online softmax.
With one split it writes the normalised output directly; otherwise it writes partial stats
(max, sum, unnormalised acc) and pass 2 merges the splits of each (sequence, head).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pegboard.kernels._paged import LOG2E, M_INIT, gather_kv_tile, online_softmax_step
from pegboard.kernels._utils import (check, check_int32_vector, check_out, check_paged_attention, check_same_device,
                                     dot_in_fp32, dot_precision, next_power_of_2, sm_count)
from pegboard.kernels.reference import paged_decode_attention_ref  # noqa: F401  (the reference, beside the kernel)

MAX_SPLITS = 64
MIN_TOKENS_PER_SPLIT = 256
PROGRAMS_PER_SM = 4
MERGE_BLOCK_S = 16  # the merge kernel's smallest split tile: one compiled variant for 2..16 splits


@triton.jit(do_not_specialize=["num_splits", "stride_tb"])  # one compiled variant whatever the step's shapes
def _decode_split_kernel(
    q_ptr, k_ptr, v_ptr, tables_ptr, context_lens_ptr,
    out_ptr, part_m_ptr, part_l_ptr, part_acc_ptr,
    qk_scale, num_splits, num_heads,
    stride_qb, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh, stride_tb, stride_ob, stride_oh,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, DIRECT: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    ctx = tl.load(context_lens_ptr + seq)
    # Each split takes an equal, BLOCK_N-aligned share of this sequence's own context.
    chunk = tl.cdiv(tl.cdiv(ctx, num_splits), BLOCK_N) * BLOCK_N
    start = split * chunk
    end = tl.minimum(start + chunk, ctx)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, HEAD_DIM)
    heads = kv_head * GROUP + offs_g  # [G] query heads sharing this KV head
    head_ok = offs_g < GROUP
    q = tl.load(q_ptr + seq * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=head_ok[:, None], other=0.0)  # [G, D]

    k_head = k_ptr + kv_head * stride_kh
    v_head = v_ptr + kv_head * stride_vh
    table = tables_ptr + seq * stride_tb
    m_i = tl.full([BLOCK_G], M_INIT, tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        k, v, pos, valid = gather_kv_tile(k_head, v_head, table, n0, end, stride_ks, stride_vs,
                                          BLOCK_N, BLOCK_SIZE, HEAD_DIM)
        m_i, l_i, acc = online_softmax_step(q, k, v, valid[None, :], m_i, l_i, acc, qk_scale, DOT_FP32, PRECISION)

    if DIRECT:
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # an empty context (padded row) gives zeros
        tl.store(out_ptr + seq * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=head_ok[:, None])
    else:
        part = (seq * num_heads + heads) * num_splits + split  # [G] rows of the [B, H, S] partials
        tl.store(part_m_ptr + part, m_i, mask=head_ok)
        tl.store(part_l_ptr + part, l_i, mask=head_ok)
        tl.store(part_acc_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=head_ok[:, None])


@triton.jit(do_not_specialize=["num_splits"])  # one compiled variant whatever the step's shapes
def _decode_merge_kernel(
    out_ptr, part_m_ptr, part_l_ptr, part_acc_ptr, num_splits, num_heads, stride_ob, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    split_ok = offs_s < num_splits
    part = (seq * num_heads + head) * num_splits + offs_s  # [S]
    m = tl.load(part_m_ptr + part, mask=split_ok, other=float("-inf"))
    total = tl.load(part_l_ptr + part, mask=split_ok, other=0.0)
    acc = tl.load(part_acc_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], mask=split_ok[:, None], other=0.0)
    weight = tl.exp2(m - tl.max(m, 0))  # [S] each split's softmax mass relative to the global max
    denom = tl.sum(weight * total, 0)
    out = tl.sum(weight[:, None] * acc, 0) / tl.where(denom > 0, denom, 1.0)  # [D]
    tl.store(out_ptr + seq * stride_ob + head * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty))


def default_num_splits(batch: int, num_kv_heads: int, max_context: int, device: torch.device) -> int:
    """Splits per sequence: enough (sequence, KV head, split) programs to give every SM
    PROGRAMS_PER_SM of them, but no split shorter than MIN_TOKENS_PER_SPLIT tokens of the longest
    possible context, and at most MAX_SPLITS. Depends on shapes only, so CUDA graphs can capture it."""
    want = -(-PROGRAMS_PER_SM * sm_count(device) // max(batch * num_kv_heads, 1))
    cap = max(1, -(-max_context // MIN_TOKENS_PER_SPLIT))
    return max(1, min(want, cap, MAX_SPLITS))


def _tile_config(head_dim: int, dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK_N, num_warps): 64-token tiles; 32 for head dim 256 or fp32 (exact fp32 dots need more registers)."""
    return (32, 4) if head_dim > 128 or dtype == torch.float32 else (64, 4)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, *, block_size: int,
                           scale: float, out: torch.Tensor | None = None,
                           num_splits: int | None = None) -> torch.Tensor:
    """Attention of one new token per sequence over its paged context: q [B, H, D] -> out [B, H, D]."""
    # q: [B, H, D]; k_cache, v_cache: [S, Hkv, D] (one layer); block_tables: [B, max_blocks] int32;
    # context_lens: [B] int32 (0 = padded row, output zeros)
    batch = q.shape[0]
    num_heads, num_kv_heads, head_dim = check_paged_attention(q, k_cache, v_cache, block_tables, batch)
    check_int32_vector("context_lens", context_lens, batch)
    check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables, context_lens=context_lens)
    out = check_out(out, q)
    if batch == 0:
        return out

    group = num_heads // num_kv_heads
    if num_splits is None:
        num_splits = default_num_splits(batch, num_kv_heads, block_tables.shape[1] * block_size, q.device)
    check(num_splits >= 1, f"num_splits must be >= 1, got {num_splits}")
    direct = num_splits == 1
    if direct:
        part_m = part_l = part_acc = out  # unused
    else:
        part_m = torch.empty((batch, num_heads, num_splits), dtype=torch.float32, device=q.device)
        part_l = torch.empty_like(part_m)
        part_acc = torch.empty((batch, num_heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
    block_n, num_warps = _tile_config(head_dim, q.dtype)
    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, context_lens, out, part_m, part_l, part_acc,
        scale * LOG2E, num_splits, num_heads,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=group, BLOCK_G=max(16, next_power_of_2(group)), HEAD_DIM=head_dim, BLOCK_N=block_n,
        BLOCK_SIZE=block_size, DIRECT=direct, DOT_FP32=dot_in_fp32(q.dtype, q.device),
        PRECISION=dot_precision(q.dtype), num_warps=num_warps)
    if not direct:
        _decode_merge_kernel[(batch, num_heads)](
            out, part_m, part_l, part_acc, num_splits, num_heads, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, BLOCK_S=max(MERGE_BLOCK_S, next_power_of_2(num_splits)), num_warps=4)
    return out
