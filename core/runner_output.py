"""RunnerOutput: what one model step hands back to the engine (plain Python lists, no tensors)."""

from __future__ import annotations

from dataclasses import dataclass, field

# One position's logprobs: [(token_id, logprob, rank)], the chosen/target token first, then the top-k.
TokenLogprobs = list[tuple[int, float, int]]


@dataclass(frozen=True)
class RunnerOutput:
    """New tokens (and logprobs) of the requests whose step reached the end of their sequence."""

    request_ids: tuple[str, ...]
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprobs, ...] | None = None
    # request id -> logprobs of prompt tokens computed this step, in prompt order
    prompt_logprobs: dict[str, list[TokenLogprobs]] = field(default_factory=dict)
