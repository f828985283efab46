"""Token-level continuous batching with chunked prefill and preemption by recompute (no torch).

Prefill and decode are one rule: each request has ``num_tokens`` (prompt + generated) and
``num_computed_tokens`` (already in the KV cache); every step hands each running request
up to ``num_tokens - num_computed_tokens`` new tokens from a shared token budget.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from pegboard.core.block_manager import BlockManager
from pegboard.core.request import Request, RequestStatus


@dataclass(frozen=True)
class SchedulerOutput:
    """What one step computes: requests in batch order and how many new tokens each gets."""

    requests: tuple[Request, ...]
    num_new_tokens: tuple[int, ...]
    num_preempted: int = 0

    @property
    def num_batched_tokens(self) -> int:
        return sum(self.num_new_tokens)

    @property
    def is_empty(self) -> bool:
        return not self.requests


class Scheduler:
    """Decides each step's batch under ``max_num_batched_tokens`` and ``max_num_seqs``."""

    def __init__(self, block_manager: BlockManager, *, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions_total = 0

    def add_request(self, request: Request) -> None:
        """Queue a request (its length was checked by the engine)."""
        request.status = RequestStatus.WAITING
        self.waiting.append(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    def schedule(self) -> SchedulerOutput:
        """Pick this step's requests: running ones first (preempting the newest when blocks run out), then
        waiting ones while budget, sequence slots and blocks last."""
        budget = self.max_num_batched_tokens
        scheduled: list[Request] = []
        num_new: list[int] = []
        preempted = 0

        queue = deque(r for r in self.running if not r.has_final_token_pending)
        while queue and budget > 0:
            request = queue.popleft()
            tokens = min(request.num_scheduled_tokens - request.num_computed_tokens, budget)
            while not self.block_manager.allocate_slots(request, tokens):
                victim = queue.pop() if queue else request
                self._preempt(victim)
                preempted += 1
                if victim is request:
                    break
            else:
                scheduled.append(request)
                num_new.append(tokens)
                budget -= tokens

        if not preempted:
            now = time.monotonic()
            while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
                request = self.waiting[0]  # waiting requests hold no blocks
                if request.num_pending_tokens:  # preempted while its last token was in flight: next step
                    break
                cached = self.block_manager.match_prefix(request)
                request.num_computed_tokens = cached
                tokens = min(request.num_tokens - cached, budget)
                if not self.block_manager.allocate_slots(request, tokens):
                    self.block_manager.free(request)  # give back the prefix blocks (they stay cached)
                    request.num_computed_tokens = 0
                    break
                self.waiting.popleft()
                request.status = RequestStatus.RUNNING
                if request.metrics.first_scheduled_time is None:
                    request.metrics.first_scheduled_time = now
                    request.num_cached_tokens = cached
                self.running.append(request)
                scheduled.append(request)
                num_new.append(tokens)
                budget -= tokens
        return SchedulerOutput(tuple(scheduled), tuple(num_new), preempted)

    def _preempt(self, request: Request) -> None:
        """Free the request's blocks and send it back to the front of the queue to recompute later."""
        self.running.remove(request)
        self.block_manager.free(request)
        request.num_computed_tokens = 0
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions_total += 1
        self.waiting.appendleft(request)

    def on_step_launched(self, output: SchedulerOutput) -> None:
        """Advance every scheduled request by the tokens the step computes, as soon as the step is launched;
        a request whose step reaches the end of its sequence gets a pending token (sampled, not yet here)."""
        for request, tokens in zip(output.requests, output.num_new_tokens):
            samples = request.samples_after(tokens)
            request.num_computed_tokens += tokens
            if samples:
                request.num_pending_tokens += 1
            self.block_manager.on_tokens_computed(request)

    def finish(self, request: Request, status: RequestStatus) -> None:
        """Mark a request finished (or aborted) and release its blocks; safe to call twice."""
        if request.is_finished:
            return
        request.status = status
        if request in self.running:
            self.running.remove(request)
        else:
            try:
                self.waiting.remove(request)
            except ValueError:
                pass
        self.block_manager.free(request)
