"""The KV cache's dtype from ``kv_cache_dtype``: ``auto`` is the model's, except on the packed CPU path, float16."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pegboard.core.errors import InvalidParameterError

if TYPE_CHECKING:
    import torch

KV_CACHE_DTYPES = ("float32", "float16", "bfloat16")  # torch dtypes by name (torch imported on use)


def check_kv_cache_dtype_name(setting: str) -> None:
    """Refuse, by name, a value that is neither ``auto`` nor a dtype a KV cache can hold (fp8 is not implemented)."""
    if setting != "auto" and setting not in KV_CACHE_DTYPES:
        raise InvalidParameterError(
            f"kv_cache_dtype={setting!r}: quantized (fp8) KV caches are not implemented; pass auto (the model's "
            f"dtype; float16 on the packed CPU path) or one of {', '.join(KV_CACHE_DTYPES)}", param="kv_cache_dtype")


def resolve_kv_cache_dtype(setting: str, model_dtype: torch.dtype, *, packed_cpu: bool,
                           attention_backend: str) -> torch.dtype:
    """The dtype the cache holds. ``auto`` on the packed CPU path is float16, as llama.cpp's default: its decode
    attention reads half the bytes (the path is not bit-exact anyway); an explicit dtype other than the model's
    needs the torch backend, which converts on write and read."""
    import torch

    check_kv_cache_dtype_name(setting)
    if setting == "auto":
        return torch.float16 if packed_cpu else model_dtype
    dtype = getattr(torch, setting)
    if dtype != model_dtype and attention_backend != "torch":
        raise InvalidParameterError(
            f"kv_cache_dtype={setting!r} differs from the model's dtype ({str(model_dtype).removeprefix('torch.')}), "
            f"which the {attention_backend!r} attention backend does not convert: pass auto or use "
            "--attention-backend torch", param="kv_cache_dtype")
    if packed_cpu and dtype == torch.bfloat16:
        raise InvalidParameterError("kv_cache_dtype='bfloat16': the packed CPU path's decode attention reads float32 "
                                    "or float16 caches; pass auto (float16) or float32", param="kv_cache_dtype")
    return dtype
