"""The worker's own state of the requests it runs, kept by request id from the scheduler's diffs (no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pegboard.core.messages import SchedulerOutput
from pegboard.core.sampling_params import SamplingParams


@dataclass(eq=False)  # compared and hashed by identity
class CachedRequestState:
    """One request as the worker knows it: its tokens on the host, its blocks, what its steps left pending.

    It has what samplers and logits processors read of a request (ids, parameters, token counts).
    """

    request_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_id: int | None
    block_ids: list[int]
    num_computed_tokens: int
    num_pending_tokens: int = 0  # sampled by a launched step, not yet on the host
    num_prompt_logprobs: int = 0  # prompt positions whose logprobs were computed (they survive a preemption)
    spec_rows: int = 0  # rows (1 + proposed tokens) the latest step sampled for it
    all_token_ids: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.all_token_ids = self.prompt_token_ids + self.output_token_ids

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    def append_tokens(self, token_ids: tuple[int, ...] | list[int]) -> None:
        """Tokens of a launched step reached the host."""
        self.output_token_ids.extend(token_ids)
        self.all_token_ids.extend(token_ids)


class BatchState:
    """Every request the worker holds, updated from each step's SchedulerOutput."""

    def __init__(self) -> None:
        self.requests: dict[str, CachedRequestState] = {}

    def update(self, scheduled: SchedulerOutput) -> tuple[list[CachedRequestState], list[str]]:
        """Apply a step's diffs; returns the requests it has not held before, and the ids it forgot (finished)."""
        forgotten = [r for r in scheduled.finished_request_ids if self.requests.pop(r, None) is not None]
        added = []
        for new in scheduled.new_requests:
            old = self.requests.get(new.request_id)  # resumed after a preemption: keep what it computed once
            state = self.requests[new.request_id] = CachedRequestState(
                new.request_id, list(new.prompt_token_ids), list(new.output_token_ids), new.sampling_params,
                new.eos_token_id, list(new.block_ids), new.num_computed_tokens,
                num_prompt_logprobs=old.num_prompt_logprobs if old is not None else 0)
            if old is None:
                added.append(state)
        for cached in scheduled.cached_requests:
            state = self.requests[cached.request_id]
            state.block_ids.extend(cached.new_block_ids)
            state.num_computed_tokens = cached.num_computed_tokens
        return added, forgotten
