"""Request: one sequence moving through the scheduler (pure Python, no torch)."""

from __future__ import annotations

import enum
import time

from pegboard.core.outputs import RequestMetrics
from pegboard.core.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    """Where a request is in its life."""

    WAITING = "waiting"
    WAITING_FOR_GRAMMAR = "waiting_for_grammar"  # its grammar is compiling (core/grammar_compiler.py)
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"
    FINISHED_ERROR = "error"  # the step that computed it failed (the engine kept serving the others)

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATUSES


FINISHED_STATUSES = frozenset((RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH,
                               RequestStatus.FINISHED_ABORTED, RequestStatus.FINISHED_ERROR))


class Request:
    """One sequence in the engine core: prompt ids, generated ids, how many of them the KV cache holds, its blocks.

    A user request with ``n > 1`` is n of these (the front end fans them out and merges their outputs).
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        *,
        eos_token_id: int | None = None,
        max_tokens: int,
        arrival_time: float | None = None,
    ) -> None:
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.all_token_ids = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.eos_token_id = eos_token_id
        self.max_tokens = max_tokens
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0
        self.num_pending_tokens = 0  # sampled by a step still running on the device, not yet in all_token_ids
        self.spec_token_ids: tuple[int, ...] = ()  # proposed to follow the sequence, verified by its next step
        self.added_after_step = 0  # steps the scheduler had planned when it arrived (older steps are not its)
        self.block_table: list[int] = []
        self.num_cached_tokens = 0  # prompt tokens found in the prefix cache
        self.num_preemptions = 0
        self.stop_reason: int | str | None = None
        self.metrics = RequestMetrics(arrival_time=arrival_time or time.monotonic())

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens."""
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_scheduled_tokens(self) -> int:
        """Tokens the sequence will have once the pending ones arrive: what a step may compute up to."""
        return len(self.all_token_ids) + self.num_pending_tokens

    def samples_after(self, num_new_tokens: int) -> bool:
        """Whether a step computing ``num_new_tokens`` more tokens reaches the sequence's end, and so samples."""
        return self.num_computed_tokens + num_new_tokens == self.num_scheduled_tokens

    @property
    def has_final_token_pending(self) -> bool:
        """The step in flight samples this request's last allowed token: nothing more to compute."""
        return self.num_pending_tokens > 0 and self.num_output_tokens + self.num_pending_tokens >= self.max_tokens

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    def append_token(self, token_id: int) -> None:
        """Add one generated token (the arrival of a pending one, when a step was in flight)."""
        if self.num_pending_tokens:
            self.num_pending_tokens -= 1
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, status={self.status.value}, prompt={self.num_prompt_tokens}, "
                f"out={self.num_output_tokens}, computed={self.num_computed_tokens})")
