"""Scatter new keys and values into the paged KV cache by slot mapping (slot -1 = padded token, skipped)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pegboard.kernels._utils import check, check_last_dim_contiguous, check_same_device, next_power_of_2
from pegboard.kernels.reference import kv_cache_write_ref  # noqa: F401  (the reference, beside the kernel)


@triton.jit
def _kv_cache_write_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh, stride_kcs, stride_kch, stride_vcs, stride_vch,
    NUM_HEADS: tl.constexpr, BLOCK_H: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + token).to(tl.int64)
    if slot < 0:
        return
    offs_h = tl.arange(0, BLOCK_H)[:, None]
    offs_d = tl.arange(0, BLOCK_D)[None, :]
    mask = (offs_h < NUM_HEADS) & (offs_d < HEAD_DIM)  # [H, D]
    k = tl.load(k_ptr + token * stride_kt + offs_h * stride_kh + offs_d, mask=mask)
    v = tl.load(v_ptr + token * stride_vt + offs_h * stride_vh + offs_d, mask=mask)
    tl.store(k_cache_ptr + slot * stride_kcs + offs_h * stride_kch + offs_d, k, mask=mask)
    tl.store(v_cache_ptr + slot * stride_vcs + offs_h * stride_vch + offs_d, v, mask=mask)


def kv_cache_write(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor) -> None:
    """k_cache[slot_mapping[t]] = k[t] and v_cache[slot_mapping[t]] = v[t] for every t with slot >= 0."""
    # k, v: [T, Hkv, D] (any token/head strides, e.g. views of a fused QKV output);
    # k_cache, v_cache: [S, Hkv, D] (one layer); slot_mapping: [T] int64 (or int32)
    check(k.dim() == 3 and k.shape == v.shape,
          f"k and v must both be [T, Hkv, D], got {tuple(k.shape)} and {tuple(v.shape)}")
    num_tokens, num_heads, head_dim = k.shape
    check(k_cache.dim() == 3 and k_cache.shape == v_cache.shape and k_cache.shape[1:] == k.shape[1:],
          f"caches must be [num_slots, {num_heads}, {head_dim}], got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    check(k.dtype == v.dtype == k_cache.dtype == v_cache.dtype,
          f"dtypes differ: k {k.dtype}, v {v.dtype}, caches {k_cache.dtype}/{v_cache.dtype}")
    check(slot_mapping.dtype in (torch.int64, torch.int32) and slot_mapping.shape == (num_tokens,)
          and slot_mapping.is_contiguous(),
          f"slot_mapping must be contiguous int64 [T={num_tokens}], "
          f"got {slot_mapping.dtype} {tuple(slot_mapping.shape)}")
    for name, t in (("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
        check_last_dim_contiguous(name, t)
    check_same_device(k=k, v=v, k_cache=k_cache, v_cache=v_cache, slot_mapping=slot_mapping)
    if num_tokens == 0:
        return
    _kv_cache_write_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        NUM_HEADS=num_heads, BLOCK_H=next_power_of_2(num_heads), HEAD_DIM=head_dim,
        BLOCK_D=next_power_of_2(head_dim), num_warps=4 if num_heads * head_dim >= 1024 else 1)
