"""Rotary position embedding (rotate-half layout) on q and k from a [P, D] cos/sin table, in place or not.

One program per token rotates all of its query and key heads: with x = [x1, x2] (halves of D),
out = [x1 * cos1 - x2 * sin1, x2 * cos2 + x1 * sin2]. The table values are rounded to q's dtype
first (as the model does), the products are taken in fp32 and rounded once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pegboard.kernels._utils import check, check_float, check_last_dim_contiguous, check_same_device, next_power_of_2
from pegboard.kernels.reference import rotary_ref  # noqa: F401  (the reference, beside the kernel)


@triton.jit
def _rotate_heads(x_ptr, out_ptr, stride_xh, stride_oh, cos1, sin1, cos2, sin2,
                  NUM_HEADS: tl.constexpr, BLOCK_H: tl.constexpr, HALF: tl.constexpr, BLOCK_HALF: tl.constexpr):
    """Rotate NUM_HEADS heads of one token: x_ptr / out_ptr point at head 0; cos/sin halves are [1, BLOCK_HALF]."""
    offs_h = tl.arange(0, BLOCK_H)[:, None]
    offs_j = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (offs_h < NUM_HEADS) & (offs_j < HALF)
    x1 = tl.load(x_ptr + offs_h * stride_xh + offs_j, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + offs_h * stride_xh + HALF + offs_j, mask=mask, other=0.0).to(tl.float32)
    o1 = x1 * cos1 - x2 * sin1
    o2 = x2 * cos2 + x1 * sin2
    tl.store(out_ptr + offs_h * stride_oh + offs_j, o1.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + offs_h * stride_oh + HALF + offs_j, o2.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, q_out_ptr, k_out_ptr, positions_ptr, cos_ptr, sin_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_qot, stride_qoh, stride_kot, stride_koh,
    stride_cos, stride_sin,
    NUM_Q_HEADS: tl.constexpr, NUM_K_HEADS: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr,
    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions_ptr + token).to(tl.int64)
    offs_j = tl.arange(0, BLOCK_HALF)[None, :]
    j_ok = offs_j < HALF
    dtype = q_out_ptr.dtype.element_ty
    cos = cos_ptr + pos * stride_cos
    sin = sin_ptr + pos * stride_sin
    cos1 = tl.load(cos + offs_j, mask=j_ok, other=0.0).to(dtype).to(tl.float32)
    cos2 = tl.load(cos + HALF + offs_j, mask=j_ok, other=0.0).to(dtype).to(tl.float32)
    sin1 = tl.load(sin + offs_j, mask=j_ok, other=0.0).to(dtype).to(tl.float32)
    sin2 = tl.load(sin + HALF + offs_j, mask=j_ok, other=0.0).to(dtype).to(tl.float32)
    _rotate_heads(q_ptr + token * stride_qt, q_out_ptr + token * stride_qot, stride_qh, stride_qoh,
                  cos1, sin1, cos2, sin2, NUM_Q_HEADS, BLOCK_HQ, HALF, BLOCK_HALF)
    _rotate_heads(k_ptr + token * stride_kt, k_out_ptr + token * stride_kot, stride_kh, stride_koh,
                  cos1, sin1, cos2, sin2, NUM_K_HEADS, BLOCK_HK, HALF, BLOCK_HALF)


def rotary_embedding(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                     sin: torch.Tensor, *, inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k by their tokens' positions: returns (q, k) rotated (the inputs themselves if inplace)."""
    # positions: [T] int; q: [T, H, D]; k: [T, Hkv, D] (any token/head strides); cos, sin: [P, D] (any float dtype)
    check(q.dim() == 3 and k.dim() == 3 and q.shape[0] == k.shape[0] and q.shape[2] == k.shape[2],
          f"q must be [T, H, D] and k [T, Hkv, D], got {tuple(q.shape)} and {tuple(k.shape)}")
    num_tokens, num_q_heads, head_dim = q.shape
    check(head_dim % 2 == 0, f"head dim must be even, got {head_dim}")
    check_float("q", q)
    check(k.dtype == q.dtype, f"q and k dtypes differ: {q.dtype} vs {k.dtype}")
    check(cos.dim() == 2 and cos.shape == sin.shape and cos.shape[1] == head_dim,
          f"cos and sin must be [P, {head_dim}], got {tuple(cos.shape)} and {tuple(sin.shape)}")
    check(positions.shape == (num_tokens,) and not positions.is_floating_point() and positions.is_contiguous(),
          f"positions must be contiguous int [T={num_tokens}], got {positions.dtype} {tuple(positions.shape)}")
    for name, t in (("q", q), ("k", k), ("cos", cos), ("sin", sin)):
        check_last_dim_contiguous(name, t)
    check_same_device(positions=positions, q=q, k=k, cos=cos, sin=sin)
    q_out = q if inplace else torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = k if inplace else torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if num_tokens == 0:
        return q_out, k_out
    half = head_dim // 2
    num_k_heads = k.shape[1]
    _rotary_kernel[(num_tokens,)](
        q, k, q_out, k_out, positions, cos, sin,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), q_out.stride(0), q_out.stride(1),
        k_out.stride(0), k_out.stride(1), cos.stride(0), sin.stride(0),
        NUM_Q_HEADS=num_q_heads, NUM_K_HEADS=num_k_heads, BLOCK_HQ=next_power_of_2(num_q_heads),
        BLOCK_HK=next_power_of_2(num_k_heads), HALF=half, BLOCK_HALF=next_power_of_2(half),
        num_warps=4 if num_q_heads * head_dim >= 2048 else 1)
    return q_out, k_out
