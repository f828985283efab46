"""Host-side helpers shared by the kernel wrappers: argument checks, launch heuristics, interpreter quirks."""

from __future__ import annotations

import functools

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(n - 1, 0).bit_length()


def check(condition: bool, message: str) -> None:
    """Raise ValueError(message) unless condition holds."""
    if not condition:
        raise ValueError(message)


def check_float(name: str, t: torch.Tensor) -> None:
    """t is fp16, bf16 or fp32."""
    check(t.dtype in FLOAT_DTYPES, f"{name} must be float16, bfloat16 or float32, got {t.dtype}")


def check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    """t's last dimension has stride 1 (the kernels vectorise along it)."""
    check(t.stride(-1) == 1 or t.shape[-1] == 1,
          f"{name} must have a contiguous last dimension, got strides {t.stride()}")


def check_same_device(**tensors: torch.Tensor) -> None:
    """All tensors live on one device."""
    devices = {name: t.device for name, t in tensors.items()}
    check(len(set(devices.values())) == 1, f"tensors on different devices: {devices}")


def check_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: torch.Tensor) -> None:
    """logits [N, V] float, bitmask [R, >= ceil(V / 32)] int32, rows [R] int64, all on one device."""
    check(logits.dim() == 2, f"logits must be [N, V], got {tuple(logits.shape)}")
    check_float("logits", logits)
    check_last_dim_contiguous("logits", logits)
    words = -(-logits.shape[1] // 32)
    check(bitmask.dtype == torch.int32 and bitmask.dim() == 2 and bitmask.shape[1] >= words,
          f"bitmask must be int32 [R, >= {words}], got {bitmask.dtype} {tuple(bitmask.shape)}")
    check_last_dim_contiguous("bitmask", bitmask)
    check(rows.dtype == torch.int64 and rows.shape == (bitmask.shape[0],), f"rows must be int64 [{bitmask.shape[0]}]")
    check_same_device(logits=logits, bitmask=bitmask, rows=rows)


def check_int32_vector(name: str, t: torch.Tensor, length: int) -> None:
    """t is a contiguous int32 [length] tensor."""
    check(t.dtype == torch.int32 and t.shape == (length,) and t.is_contiguous(),
          f"{name} must be contiguous int32 [{length}], got {t.dtype} {tuple(t.shape)}")


def check_paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          block_tables: torch.Tensor, batch: int) -> tuple[int, int, int]:
    """Checks both paged-attention wrappers share; returns (num_heads, num_kv_heads, head_dim)."""
    check(q.dim() == 3, f"q must be 3-D [tokens, H, D], got {tuple(q.shape)}")
    _, num_heads, head_dim = q.shape
    check(k_cache.dim() == 3 and k_cache.shape == v_cache.shape, "k_cache and v_cache must both be "
          f"[num_slots, Hkv, D] (one layer), got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    num_kv_heads = k_cache.shape[1]
    check(k_cache.shape[2] == head_dim, f"cache head dim {k_cache.shape[2]} != query head dim {head_dim}")
    check(num_heads % num_kv_heads == 0, f"query heads {num_heads} not a multiple of KV heads {num_kv_heads}")
    check(16 <= head_dim <= 256 and head_dim == next_power_of_2(head_dim),
          f"head dim must be a power of two in 16..256, got {head_dim}")
    check_float("q", q)
    check(k_cache.dtype == v_cache.dtype == q.dtype,
          f"dtypes differ: q {q.dtype}, caches {k_cache.dtype}/{v_cache.dtype}")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        check_last_dim_contiguous(name, t)
    check(block_tables.dtype == torch.int32 and block_tables.dim() == 2 and block_tables.shape[0] == batch
          and block_tables.stride(1) == 1, f"block_tables must be int32 [B={batch}, max_blocks] with contiguous "
          f"rows, got {block_tables.dtype} {tuple(block_tables.shape)}")
    return num_heads, num_kv_heads, head_dim


def check_out(out: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """`out` checked against `like` (same shape and dtype, contiguous last dim), or a new contiguous tensor."""
    if out is None:
        return torch.empty(like.shape, dtype=like.dtype, device=like.device)
    check(out.shape == like.shape and out.dtype == like.dtype,
          f"out must be {tuple(like.shape)} {like.dtype}, got {tuple(out.shape)} {out.dtype}")
    check_last_dim_contiguous("out", out)
    return out


def dot_in_fp32(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the kernels' tl.dot operands go in as fp32.

    fp32 inputs always do (with input_precision="ieee", no TF32). bf16 inputs do only under the
    CPU interpreter, whose tl.dot multiplies bf16 bit patterns as integers (triton-lang/triton#11584).
    """
    return dtype == torch.float32 or (dtype == torch.bfloat16 and device.type == "cpu")


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: exact fp32 products for fp32 inputs, the tensor-core default otherwise."""
    return "ieee" if dtype == torch.float32 else "tf32"


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors on a CUDA device; 1 elsewhere (the interpreter runs programs one by one)."""
    if device.type != "cuda":
        return 1
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
