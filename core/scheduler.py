"""Token-level continuous batching with chunked prefill, preemption by recompute and proposed tokens (no torch).

Prefill and decode are one rule: each request has ``num_tokens`` (prompt + generated) and
``num_computed_tokens`` (already in the KV cache); every step hands each running request up to
``num_tokens - num_computed_tokens`` new tokens from a shared token budget, plus the tokens a proposer
guessed (speculative decoding), whose KV slots the step computes too.

The scheduler is the one owner of a step's update: ``update_from_output`` appends the tokens a step produced,
rewinds the KV of rejected proposals, stops requests on token ids and lengths, and frees their blocks.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from pegboard.core.interfaces import BlockAllocator
from pegboard.core.messages import (CachedRequestData, EngineCoreOutput, NewRequestData, RunnerOutput,
                                    SchedulerOutput)
from pegboard.core.request import Request, RequestStatus

# Proposes tokens to follow each request's tokens (speculative decoding): one tuple per request, () for none.
Propose = Callable[[list[Request]], list[tuple[int, ...]]]


class Scheduler:
    """Decides each step's batch under ``max_num_batched_tokens`` and ``max_num_seqs``, and applies its results."""

    def __init__(self, block_manager: BlockAllocator, *, max_num_seqs: int, max_num_batched_tokens: int,
                 propose: Propose | None = None, num_spec_tokens: int = 0) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.propose = propose
        self.num_spec_tokens = num_spec_tokens if propose is not None else 0
        self.requests: dict[str, Request] = {}  # every unfinished request, by id
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions_total = 0
        self._blocks_sent: dict[str, int] = {}  # request id -> blocks of its table the worker holds (none: send whole)
        self._on_worker: set[str] = set()  # requests whose state the worker holds (preempted ones too)
        self._finished_ids: set[str] = set()  # finished since the last step: the worker forgets them next step
        self._num_steps = 0  # steps planned so far

    def add_request(self, request: Request) -> None:
        """Queue a request (its length was checked by the engine)."""
        request.status = RequestStatus.WAITING
        request.added_after_step = self._num_steps
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def has_finished_requests(self) -> bool:
        """Requests finished since the last step, whose state the worker still holds."""
        return bool(self._finished_ids)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    # ---- one step ----------------------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        """Pick this step's requests: running ones first (preempting the newest when blocks run out), then
        waiting ones while budget, sequence slots and blocks last; then advance them as if the step ran.

        A request whose step reaches the end of its sequence gets a pending token (sampled, not yet here).
        """
        budget = self.max_num_batched_tokens
        scheduled: dict[str, int] = {}
        spec: dict[str, tuple[int, ...]] = {}
        preempted = 0

        queue = deque(r for r in self.running if not r.has_final_token_pending)
        while queue and budget > 0:
            request = queue.popleft()
            tokens = min(request.num_scheduled_tokens - request.num_computed_tokens, budget)
            proposed = request.spec_token_ids[:max(0, budget - tokens)] if tokens == 1 else ()
            while not self.block_manager.allocate_slots(request, tokens + len(proposed)):
                victim = queue.pop() if queue else request
                self._preempt(victim)
                preempted += 1
                if victim is request:
                    break
            else:
                scheduled[request.request_id] = tokens + len(proposed)
                if proposed:
                    spec[request.request_id] = proposed
                budget -= tokens + len(proposed)

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
                scheduled[request.request_id] = tokens
                budget -= tokens
        return self._commit(_decodes_first(scheduled), spec, preempted)

    def _commit(self, scheduled: dict[str, int], spec: dict[str, tuple[int, ...]], preempted: int
                ) -> SchedulerOutput:
        """The step as the worker sees it (whole state for requests it does not hold, block diffs for the rest);
        every scheduled request then moves past the tokens its step computes, and one that reaches the end
        of its sequence gets a pending token (sampled, not yet here)."""
        new, cached = [], []
        prompt_tokens = 0
        for request_id, tokens in scheduled.items():
            request = self.requests[request_id]
            table = request.block_table
            start = request.num_computed_tokens
            sent = self._blocks_sent.get(request_id)
            if sent is None:
                new.append(NewRequestData(request_id, tuple(request.prompt_token_ids), tuple(request.output_token_ids),
                                          request.sampling_params, request.eos_token_id, tuple(table), start))
            else:
                cached.append(CachedRequestData(request_id, tuple(table[sent:]), start))
            self._blocks_sent[request_id] = len(table)
            self._on_worker.add(request_id)
            prompt_tokens += max(0, min(start + tokens, request.num_prompt_tokens) - start)
            samples = request.samples_after(tokens - len(spec.get(request_id, ())))
            request.num_computed_tokens = start + tokens
            if samples:
                request.num_pending_tokens += 1
            self.block_manager.on_tokens_computed(request)
        finished, self._finished_ids = frozenset(self._finished_ids), set()
        self._num_steps += 1
        return SchedulerOutput(tuple(new), tuple(cached), scheduled, spec, finished, preempted, prompt_tokens,
                               step=self._num_steps)

    def _preempt(self, request: Request) -> None:
        """Free the request's blocks and send it back to the front of the queue to recompute later."""
        self.running.remove(request)
        self.block_manager.free(request)
        self._blocks_sent.pop(request.request_id, None)  # resumed, it is sent whole again
        request.num_computed_tokens = 0
        request.spec_token_ids = ()
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions_total += 1
        self.waiting.appendleft(request)

    def update_from_output(self, scheduled: SchedulerOutput, output: RunnerOutput) -> list[EngineCoreOutput]:
        """Apply a step's results: tokens appended, rejected proposals rewound, stops found, blocks freed."""
        outputs = []
        logprobs = output.logprobs or (None,) * len(output.request_ids)
        sampled = set(output.request_ids)
        growing: list[Request] = []  # unfinished requests that gained tokens: the proposer's next inputs
        for request_id, token_ids, rows in zip(output.request_ids, output.token_ids, logprobs):
            request = self.requests.get(request_id)
            if request is None or request.added_after_step >= scheduled.step:  # finished or aborted while the
                continue  # step ran (its id maybe taken by a newer request): its tokens are discarded
            proposed = len(scheduled.spec_token_ids.get(request_id, ()))
            request.num_computed_tokens -= proposed - (len(token_ids) - 1)  # the KV of rejected proposals
            new_ids = self._append(request, token_ids)
            outputs.append(EngineCoreOutput(
                request_id, new_ids, None if rows is None else tuple(rows[:len(new_ids)]),
                output.prompt_logprobs.get(request_id), self._finish_reason(request), request.stop_reason,
                request.num_cached_tokens, queue_time=self._queue_time(request)))
            if not request.is_finished:
                growing.append(request)
        if self.propose is not None and growing:
            for request, proposed in zip(growing, self.propose(growing)):
                request.spec_token_ids = proposed
        for request_id, rows in output.prompt_logprobs.items():  # prompt chunks that sampled nothing yet
            request = self.requests.get(request_id)
            if request_id not in sampled and request is not None and request.added_after_step < scheduled.step:
                outputs.append(EngineCoreOutput(request_id, (), None, rows))
        return outputs

    def _append(self, request: Request, token_ids: tuple[int, ...]) -> tuple[int, ...]:
        """Append tokens until one stops the request (its full blocks are hashed before they are freed);
        returns those appended."""
        status = None
        for count, token_id in enumerate(token_ids, 1):
            request.append_token(token_id)
            status = self._stop_status(request, token_id)
            if status is not None:
                token_ids = token_ids[:count]
                break
        self.block_manager.on_tokens_computed(request)
        if status is not None:
            self.finish(request, status)
        return token_ids

    def _stop_status(self, request: Request, token_id: int) -> RequestStatus | None:
        params = request.sampling_params
        if request.num_output_tokens >= params.min_tokens:
            if token_id == request.eos_token_id and not params.ignore_eos:
                request.stop_reason = None
                return RequestStatus.FINISHED_STOPPED
            if token_id in params.stop_token_ids:
                request.stop_reason = token_id
                return RequestStatus.FINISHED_STOPPED
        if request.num_output_tokens >= request.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        return None

    @staticmethod
    def _finish_reason(request: Request) -> str | None:
        return request.status.value if request.is_finished else None

    @staticmethod
    def _queue_time(request: Request) -> float | None:
        """Seconds from arrival to first schedule, told once (with the request's first output)."""
        if request.num_output_tokens > 1 or request.metrics.first_scheduled_time is None:
            return None
        return request.metrics.first_scheduled_time - request.metrics.arrival_time

    def finish(self, request: Request, status: RequestStatus) -> None:
        """Mark a request finished (or aborted) and release its blocks; safe to call twice."""
        if request.is_finished:
            return
        request.status = status
        request.metrics.finished_time = time.monotonic()
        if request in self.running:
            self.running.remove(request)
        else:
            try:
                self.waiting.remove(request)
            except ValueError:
                pass
        self.block_manager.free(request)
        self.requests.pop(request.request_id, None)
        self._blocks_sent.pop(request.request_id, None)
        if request.request_id in self._on_worker:
            self._on_worker.discard(request.request_id)
            self._finished_ids.add(request.request_id)

    def finish_requests(self, request_ids: list[str], status: RequestStatus) -> list[Request]:
        """Finish the given unfinished requests (unknown ids are skipped); returns those finished."""
        finished = [self.requests[r] for r in request_ids if r in self.requests]
        for request in finished:
            self.finish(request, status)
        return finished


def _decodes_first(scheduled: dict[str, int]) -> dict[str, int]:
    """The step's batch with its one-token rows (decodes) first, the rest after in their order: attention
    backends run a mixed step's leading decodes through their decode kernel."""
    if all(n == 1 for n in scheduled.values()) or all(n > 1 for n in scheduled.values()):
        return scheduled
    return {r: n for r, n in sorted(scheduled.items(), key=lambda item: item[1] > 1)}


def fake_model_output(scheduler: Scheduler, scheduled: SchedulerOutput, token_id: int = 7) -> RunnerOutput:
    """What a model that always says ``token_id`` would answer to a step: drives the scheduler alone (tests,
    scheduler benchmarks) with no torch and no worker."""
    sampled = tuple(r for r in scheduled.num_scheduled_tokens if scheduler.requests[r].num_pending_tokens)
    return RunnerOutput(sampled, ((token_id,),) * len(sampled))
