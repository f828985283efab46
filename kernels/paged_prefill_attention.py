"""Causal varlen attention for prefill and chunked prefill over the paged KV cache (flash-attention style).

Request b's new tokens are rows query_start_loc[b]..query_start_loc[b+1]-1 of q, and they are the
last q_len positions of its context_lens[b]-token context, whose K/V (new tokens included) are
already in the cache. One program handles a tile of BLOCK_M query rows of one request: TOKENS
consecutive tokens times HEADS query heads that share one KV head (GQA packing: each gathered KV
tile serves all of them). It first sweeps the keys every row may see (no causal mask), then the
diagonal band with the causal mask, keeping an online softmax in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pegboard.kernels._paged import LOG2E, M_INIT, gather_kv_tile, online_softmax_step
from pegboard.kernels._utils import (check_int32_vector, check_out, check_paged_attention, check_same_device,
                                     dot_in_fp32, dot_precision)
from pegboard.kernels.reference import paged_prefill_attention_ref  # noqa: F401  (the reference, beside the kernel)

MAX_HEADS_PER_TILE = 8


@triton.jit(do_not_specialize=["stride_tb"])  # one compiled variant whatever the step's shapes
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, tables_ptr, query_start_ptr, context_lens_ptr, qk_scale,
    stride_qt, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh, stride_ot, stride_oh, stride_tb,
    GROUP: tl.constexpr, HEADS: tl.constexpr, TOKENS: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    head_block = tl.program_id(1)
    seq = tl.program_id(2)
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    t0 = tile * TOKENS  # first token of this tile, counted within the request's new tokens
    if t0 >= q_len:
        return
    ctx = tl.load(context_lens_ptr + seq)
    first_head = head_block * HEADS

    # Row r of the tile is token t0 + r // HEADS, query head first_head + r % HEADS.
    rows = tl.arange(0, BLOCK_M)
    tok = t0 + rows // HEADS
    heads = first_head + rows % HEADS
    row_ok = (rows < TOKENS * HEADS) & (tok < q_len)
    q_pos = ctx - q_len + tok  # [M] absolute position of each row's token
    offs_d = tl.arange(0, HEAD_DIM)
    q_rows = (q_start + tok).to(tl.int64)
    q = tl.load(q_ptr + q_rows[:, None] * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)  # [M, D]

    kv_head = first_head // GROUP
    k_head = k_ptr + kv_head * stride_kh
    v_head = v_ptr + kv_head * stride_vh
    table = tables_ptr + seq * stride_tb
    m_i = tl.full([BLOCK_M], M_INIT, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    first_pos = ctx - q_len + t0  # the tile's earliest query sees keys 0..first_pos
    last_pos = ctx - q_len + tl.minimum(t0 + TOKENS, q_len) - 1  # its latest sees 0..last_pos
    open_end = (first_pos + 1) // BLOCK_N * BLOCK_N  # whole tiles visible to every row
    for n0 in range(0, open_end, BLOCK_N):
        k, v, pos, valid = gather_kv_tile(k_head, v_head, table, n0, open_end, stride_ks, stride_vs,
                                          BLOCK_N, BLOCK_SIZE, HEAD_DIM)
        m_i, l_i, acc = online_softmax_step(q, k, v, valid[None, :], m_i, l_i, acc, qk_scale, DOT_FP32, PRECISION)
    for n0 in range(open_end, last_pos + 1, BLOCK_N):
        k, v, pos, valid = gather_kv_tile(k_head, v_head, table, n0, last_pos + 1, stride_ks, stride_vs,
                                          BLOCK_N, BLOCK_SIZE, HEAD_DIM)
        causal = (pos[None, :] <= q_pos[:, None]) & valid[None, :]
        m_i, l_i, acc = online_softmax_step(q, k, v, causal, m_i, l_i, acc, qk_scale, DOT_FP32, PRECISION)

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(out_ptr + q_rows[:, None] * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


def _heads_per_tile(group: int) -> int:
    """Query heads packed into one tile: the largest divisor of the GQA group up to MAX_HEADS_PER_TILE."""
    return max(h for h in range(1, min(group, MAX_HEADS_PER_TILE) + 1) if group % h == 0)


def _tile_config(head_dim: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps): 128x64 tiles for 16-bit inputs, smaller for head dim 256. fp32 (exact
    fp32 dots, a correctness path) takes small tiles over 8 warps: the ieee dot needs many registers."""
    if dtype == torch.float32:
        return (64, 32, 8) if head_dim <= 128 else (32, 32, 8)
    if head_dim <= 64:
        return 128, 64, 4
    if head_dim <= 128:
        return 128, 64, 8
    return 64, 32, 4


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            block_tables: torch.Tensor, query_start_loc: torch.Tensor,
                            context_lens: torch.Tensor, *, block_size: int, scale: float,
                            max_query_len: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of each request's new tokens over its paged context: q [T, H, D] -> out [T, H, D]."""
    # q: [T, H, D] (requests back to back); k_cache, v_cache: [S, Hkv, D] (one layer, new tokens written);
    # block_tables: [B, max_blocks] int32; query_start_loc: [B+1] int32; context_lens: [B] int32.
    # max_query_len: the longest request's new tokens (read from query_start_loc, a host sync, if None).
    num_tokens = q.shape[0]
    batch = context_lens.shape[0]
    num_heads, num_kv_heads, head_dim = check_paged_attention(q, k_cache, v_cache, block_tables, batch)
    check_int32_vector("context_lens", context_lens, batch)
    check_int32_vector("query_start_loc", query_start_loc, batch + 1)
    check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables,
                      query_start_loc=query_start_loc, context_lens=context_lens)
    out = check_out(out, q)
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max()) if batch else 0
    if num_tokens == 0 or max_query_len == 0:
        return out

    group = num_heads // num_kv_heads
    heads = _heads_per_tile(group)
    block_m, block_n, num_warps = _tile_config(head_dim, q.dtype)
    tokens = block_m // heads
    grid = (triton.cdiv(max_query_len, tokens), num_heads // heads, batch)
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, block_tables, query_start_loc, context_lens, scale * LOG2E,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        out.stride(0), out.stride(1), block_tables.stride(0),
        GROUP=group, HEADS=heads, TOKENS=tokens, HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_SIZE=block_size, DOT_FP32=dot_in_fp32(q.dtype, q.device), PRECISION=dot_precision(q.dtype),
        num_warps=num_warps)
    return out
