"""The default token budget of one engine step (``max_num_batched_tokens``) when the flag is not given.

On CPU a step's time grows with its prompt tokens, and every running stream waits for the whole step: a small
prefill chunk keeps their inter-token latency low for nearly the same prefill rate (measured in
docs/benchmarks.md, "Prefill chunk on CPU"). On other devices: max(2048, max_model_len), capped at 8192.
"""

from __future__ import annotations

CPU_MAX_NUM_BATCHED_TOKENS = 256  # measured: docs/benchmarks.md, "Prefill chunk on CPU"


def default_max_num_batched_tokens(device: str, max_model_len: int) -> int:
    """Tokens per step for ``device`` (an EngineConfig.device value) when none were asked for."""
    from pegboard.core.devices import resolve_device  # imports torch: only engines that run a model need it

    if resolve_device(device).type == "cpu":
        return CPU_MAX_NUM_BATCHED_TOKENS
    return max(2048, min(max_model_len, 8192))
