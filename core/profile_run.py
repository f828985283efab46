"""The start-up profile run on CUDA: the largest batches once, on a throwaway KV cache.

It measures the activation peak that the KV cache must leave room for, and it makes Triton compile
the kernel variants of prefill and decode before the first request rather than during it.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from pegboard.core.attention import AttentionBackend, AttentionContext, BatchLayout, KVCacheSpec
from pegboard.core.interfaces import Sampler
from pegboard.core.worker_state import CachedRequestState
from pegboard.core.sampling_params import SamplingParams

# The sampler's costliest path (a full-vocabulary sort) for every row of the decode batch.
_PROFILE_SAMPLING = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=1)


def activation_peak(model: torch.nn.Module, make_backend: Callable[[KVCacheSpec], AttentionBackend],
                    spec: KVCacheSpec, sampler: Sampler, *, max_num_batched_tokens: int, max_num_seqs: int,
                    max_model_len: int) -> int:
    """Bytes allocated above the weights while running a full prefill step and a full decode step."""
    bs = spec.block_size
    lengths = _prefill_lengths(max_num_batched_tokens, max_model_len)
    tables, next_block = [], 0
    for n in lengths:
        blocks = -(-n // bs)
        tables.append(list(range(next_block, next_block + blocks)))
        next_block += blocks
    backend = make_backend(dataclasses.replace(spec, num_blocks=next_block))
    device = next(model.parameters()).device  # a backend's own attributes are not part of its interface
    torch.cuda.synchronize(device)
    cache_bytes = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)

    positions = [p for n in lengths for p in range(n)]
    slots = [t[p // bs] * bs + p % bs for n, t in zip(lengths, tables) for p in range(n)]
    _step(model, backend, sampler, device, lengths, lengths, tables, positions, slots, min(max_num_seqs, len(lengths)))
    decodes = min(max_num_seqs, max_num_batched_tokens)
    _step(model, backend, sampler, device, [1] * decodes, [1] * decodes, [[0]] * decodes, [0] * decodes, [0] * decodes,
          decodes)
    longest = lengths[0]  # one long decode: the split-KV variant of the decode kernel
    _step(model, backend, sampler, device, [1], [longest], tables[:1], [longest - 1], [slots[longest - 1]], 1)

    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - cache_bytes
    del backend
    torch.cuda.empty_cache()
    return peak


def _prefill_lengths(budget: int, max_model_len: int) -> list[int]:
    """Prompts of at most max_model_len tokens (minus one to leave room to generate) filling the budget."""
    longest = max(1, max_model_len - 1)
    lengths = []
    while budget > 0:
        lengths.append(min(budget, longest))
        budget -= lengths[-1]
    return lengths


@torch.inference_mode()
def _step(model, backend, sampler, device, query_lens, context_lens, tables, positions, slots, num_sampled) -> None:
    layout = BatchLayout(query_lens=query_lens, context_lens=context_lens, block_tables=tables,
                         slot_mapping=torch.tensor(slots, dtype=torch.long, device=device),
                         num_tokens=len(positions), max_query_len=max(query_lens),
                         max_context_len=max(context_lens))
    ids = torch.zeros(len(positions), dtype=torch.long, device=device)
    hidden = model(ids, torch.tensor(positions, dtype=torch.long, device=device),
                   AttentionContext(backend, backend.build_metadata(layout)))
    logits = model.compute_logits(hidden[:num_sampled])
    requests = [CachedRequestState(f"profile-{i}", [0], [], _PROFILE_SAMPLING, None, [0], 0)
                for i in range(num_sampled)]
    sampler.sample(logits, requests)
    sampler.free([r.request_id for r in requests])
