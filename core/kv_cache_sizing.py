"""How many KV blocks the cache gets: an explicit count, else kv_cache_memory_gb, else the device's budget."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import torch

from pegboard.core.attention import KVCacheSpec
from pegboard.core.config import DEFAULT_GPU_MEMORY_UTILIZATION, EngineConfig
from pegboard.core.errors import InvalidParameterError
from pegboard.core.profile_run import activation_peak

logger = logging.getLogger("pegboard.runner")

CPU_KV_CACHE_GB = 4.0


def size_kv_cache(model: torch.nn.Module, make_backend: Callable[[KVCacheSpec], Any], dtype: torch.dtype,
                  sampler: Any, config: EngineConfig, device: torch.device, block_size: int,
                  max_model_len: int) -> KVCacheSpec:
    """Size the KV cache: explicit block count, else kv_cache_memory_gb, else the memory budget (on CUDA: what
    gpu_memory_utilization leaves after the weights and the measured activation peak; 4 GiB on CPU), capped
    at what max_num_seqs requests of max_model_len tokens could ever use."""
    attn = model.layers[0].self_attn
    spec = KVCacheSpec(num_layers=len(model.layers), num_kv_heads=attn.num_kv_heads,
                       head_dim=attn.head_dim, block_size=block_size, num_blocks=0, dtype=dtype)
    per_block = spec.bytes_per_block()
    most_useful = config.max_num_seqs * -(-max_model_len // block_size)
    if device.type == "cuda":  # also compiles the kernels before the first request
        started = time.perf_counter()
        peak = activation_peak(model, make_backend, spec, sampler,
                               max_num_batched_tokens=config.max_num_batched_tokens,
                               max_num_seqs=config.max_num_seqs, max_model_len=max_model_len)
        logger.info("profile run (largest prefill and decode batches, kernel compilation) in %.1f s",
                    time.perf_counter() - started)
        free, total = torch.cuda.mem_get_info(device)
        weights = torch.cuda.memory_allocated(device)
        outside_torch = (total - free) - torch.cuda.memory_reserved(device)
        utilization = config.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION
        budget = total * utilization - outside_torch - weights - peak
        logger.info("GPU memory: %.2f GiB weights, %.2f GiB activation peak at %d batched tokens, "
                    "%.2f GiB outside torch; %.2f GiB left for the KV cache", weights / 2**30, peak / 2**30,
                    config.max_num_batched_tokens, outside_torch / 2**30, max(budget, 0) / 2**30)
    if config.num_kv_blocks is not None:
        spec.num_blocks = config.num_kv_blocks
    elif device.type == "cuda" and config.kv_cache_memory_gb is None:
        spec.num_blocks = min(max(int(budget // per_block), 0), most_useful)
    else:
        gb = config.kv_cache_memory_gb or CPU_KV_CACHE_GB
        spec.num_blocks = min(int(gb * 2**30 // per_block), most_useful)
    if spec.num_blocks * block_size < max_model_len:
        raise InvalidParameterError(
            f"the KV cache holds {spec.num_blocks * block_size} tokens, fewer than max_model_len "
            f"({max_model_len}): give it more memory or lower max_model_len", param="max_model_len")
    logger.info("KV cache: %d blocks of %d tokens (%.2f GiB, %s); max concurrency at max_model_len: %.1f",
                spec.num_blocks, block_size, spec.num_blocks * per_block / 2**30,
                str(spec.dtype).removeprefix("torch."),
                spec.num_blocks * block_size / max_model_len)
    return spec
