"""The step both paged-attention kernels share: gather one KV tile through the block table and fold
it into a running (flash-attention) softmax.

Scores live in the log2 domain: ``qk_scale = scale * log2(e)``, so ``exp2`` replaces ``exp``.
The running max starts at a large finite negative number instead of -inf, so a row that has
seen only masked keys keeps ``m = -1e30``, ``l = 0``, ``acc = 0`` and never produces NaN.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634
# Running max before any key: finite, so exp2(M_INIT - M_INIT) = 1, not NaN. A constexpr so kernels may read it.
M_INIT = tl.constexpr(-1.0e30)


@triton.jit
def gather_kv_tile(k_ptr, v_ptr, table_ptr, n0, kv_end, stride_ks, stride_vs,
                   BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr):
    """K and V ([BLOCK_N, HEAD_DIM]) of context positions n0..n0+BLOCK_N-1, zeros at or past kv_end.

    k_ptr / v_ptr point at one KV head of slot 0; table_ptr at the request's block-table row.
    """
    pos = n0 + tl.arange(0, BLOCK_N)  # [N] context positions
    valid = pos < kv_end
    block = tl.load(table_ptr + pos // BLOCK_SIZE, mask=valid, other=0)
    slot = block.to(tl.int64) * BLOCK_SIZE + pos % BLOCK_SIZE  # [N] cache rows
    offs_d = tl.arange(0, HEAD_DIM)
    k = tl.load(k_ptr + slot[:, None] * stride_ks + offs_d[None, :], mask=valid[:, None], other=0.0)
    v = tl.load(v_ptr + slot[:, None] * stride_vs + offs_d[None, :], mask=valid[:, None], other=0.0)
    return k, v, pos, valid


@triton.jit
def online_softmax_step(q, k, v, visible, m_i, l_i, acc, qk_scale,
                        DOT_FP32: tl.constexpr, PRECISION: tl.constexpr):
    """Fold one tile into the running softmax of every query row.

    q: [M, D]; k, v: [N, D]; visible: [M, N] (or broadcastable) bool; m_i, l_i: [M] fp32;
    acc: [M, D] fp32 (unnormalised output). Returns the updated (m_i, l_i, acc).
    """
    if DOT_FP32:
        s = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision=PRECISION)
    else:
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
    s = tl.where(visible, s * qk_scale, float("-inf"))  # [M, N]
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)  # rescales what was accumulated under the old max
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    p = p.to(v.dtype)  # round P to the cache dtype, as a tensor-core PV product does
    if DOT_FP32:
        pv = tl.dot(p.to(tl.float32), v.to(tl.float32), input_precision=PRECISION)
    else:
        pv = tl.dot(p, v, input_precision=PRECISION)
    acc = acc * alpha[:, None] + pv
    return m_new, l_i, acc
