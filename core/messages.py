"""The step contract: frozen, picklable messages keyed by request id that cross every boundary (no torch).

    front end  --EngineCoreRequest / abort ids-->  engine core  --SchedulerOutput-->  worker (ModelRunner)
               <--------EngineCoreOutputs-------               <---RunnerOutput----

Nothing crosses as a live object: the scheduler sends the worker *diffs* (a request's prompt, parameters and
blocks the first time it is scheduled, then only new blocks and counts), the worker keeps its own batch state
keyed by request id, and it answers with a list of token ids per request (k + 1 with k proposed tokens).
The engine core deals in token ids only; text (detokenizing, stop strings, logprob text) is the front end's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pegboard.core.sampling_params import SamplingParams

# One position's logprobs: ((token_id, logprob, rank), ...), the chosen or target token first, then the top-k.
TokenLogprobs = tuple[tuple[int, float, int], ...]


# ---- front end -> engine core ------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineCoreRequest:
    """One sequence to generate (a user request with n choices is n of these, fanned out by the front end)."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling_params: SamplingParams
    eos_token_id: int | None
    arrival_time: float  # time.monotonic() of the front end's host


# ---- engine core -> worker -----------------------------------------------------------------------------


@dataclass(frozen=True)
class NewRequestData:
    """A request the worker has not seen, or one resumed after preemption (its state is then replaced)."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    output_token_ids: tuple[int, ...]  # generated before a preemption (recomputed now); () for a new request
    sampling_params: SamplingParams
    eos_token_id: int | None
    block_ids: tuple[int, ...]
    num_computed_tokens: int  # tokens already in the KV cache (a prefix-cache hit)


@dataclass(frozen=True)
class CachedRequestData:
    """A request the worker already holds: the blocks it gained since its last step."""

    request_id: str
    new_block_ids: tuple[int, ...]
    num_computed_tokens: int  # before this step


@dataclass(frozen=True)
class SchedulerOutput:
    """One step for the worker: which requests compute how many tokens, in batch order."""

    new_requests: tuple[NewRequestData, ...]
    cached_requests: tuple[CachedRequestData, ...]
    # request id -> tokens this step computes for it, in batch order: one-token rows (decodes) first
    num_scheduled_tokens: dict[str, int]
    # request id -> proposed tokens (speculative decoding) whose KV slots this step also computes
    spec_token_ids: dict[str, tuple[int, ...]] = field(default_factory=dict)
    finished_request_ids: frozenset[str] = frozenset()  # the worker forgets their state
    num_preempted: int = 0
    num_prompt_tokens: int = 0  # of the scheduled tokens, those of prompts (prefill), for the stats
    step: int = 0  # the scheduler's count of steps planned, this one included

    @property
    def total_num_scheduled_tokens(self) -> int:
        return sum(self.num_scheduled_tokens.values())

    @property
    def is_empty(self) -> bool:
        return not self.num_scheduled_tokens


# ---- worker -> engine core -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunnerOutput:
    """What one step produced, for the requests whose step reached the end of their sequence."""

    request_ids: tuple[str, ...]
    # per request: the tokens it gained, 1 + the proposed tokens accepted (a proposal's first mismatch is
    # replaced by the sampled token, so at least one)
    token_ids: tuple[tuple[int, ...], ...]
    logprobs: tuple[tuple[TokenLogprobs, ...], ...] | None = None  # per request, one entry per token gained
    # request id -> logprobs of prompt tokens computed this step, in prompt order
    prompt_logprobs: dict[str, tuple[TokenLogprobs, ...]] = field(default_factory=dict)


# ---- engine core -> front end --------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineCoreOutput:
    """What one step did to one request: the tokens it gained and, once it finished, why."""

    request_id: str
    new_token_ids: tuple[int, ...]
    new_logprobs: tuple[TokenLogprobs, ...] | None = None  # one entry per new token
    new_prompt_logprobs: tuple[TokenLogprobs, ...] | None = None
    finish_reason: str | None = None  # "stop", "length", "abort", "error"; None while it runs
    stop_reason: int | None = None  # the stop token id that ended it (stop strings are the front end's)
    num_cached_tokens: int = 0  # prompt tokens found in the prefix cache
    queue_time: float | None = None  # seconds from arrival to first schedule, with a request's first token
    error: str | None = None  # with finish_reason "error": what the client is told

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class EngineGauges:
    """How full the engine core is right now."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float  # 0.0 to 1.0


@dataclass(frozen=True)
class SchedulerStats:
    """What one step did, for observers (metrics)."""

    step_time: float  # seconds the core spent on the step
    num_prompt_tokens: int  # prefill tokens computed
    num_generation_tokens: int  # tokens sampled
    num_preempted: int
    num_batched_tokens: int
    num_spec_proposed: int = 0  # proposed tokens verified
    num_spec_accepted: int = 0  # of those, accepted


@dataclass(frozen=True)
class EngineCoreOutputs:
    """One step's outputs, as one message."""

    outputs: tuple[EngineCoreOutput, ...]
    stats: SchedulerStats | None = None  # None for steps that did not run the model (aborts, errors)
    gauges: EngineGauges | None = None  # the core's state once the step (or the aborts) were applied
