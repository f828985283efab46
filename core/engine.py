"""LLMEngine: requests in, RequestOutputs out; one ``step()`` = schedule, run the model, update."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from pegboard.core.config import EngineConfig
from pegboard.core.detokenizer import IncrementalDetokenizer
from pegboard.core.errors import InvalidParameterError, PromptTooLongError, is_device_failure
from pegboard.core.model_files import pick_loader, resolve_model
from pegboard.core.outputs import CompletionOutput, Logprob, PositionLogprobs, RequestOutput
from pegboard.core.plugins import Board, load_board
from pegboard.core.request import Request, RequestStatus
from pegboard.core.runner_output import LaunchedStep, RunnerOutput, TokenLogprobs
from pegboard.core.sampling_params import SamplingParams
from pegboard.core.scheduler import Scheduler, SchedulerOutput

logger = logging.getLogger("pegboard.engine")


@dataclass
class StepStats:
    """What one engine step did, for observers (metrics)."""

    step_time: float
    num_running: int
    num_waiting: int
    kv_cache_usage: float
    num_prompt_tokens: int  # prefill tokens computed this step
    num_generation_tokens: int  # tokens sampled this step
    num_preempted: int
    num_batched_tokens: int
    time_to_first_token: list[float] = field(default_factory=list)  # seconds, requests that got their first token
    inter_token_latency: list[float] = field(default_factory=list)  # seconds since each other request's last token


def _prompt_tokens(scheduled) -> int:
    """Prompt tokens among a step's scheduled tokens (call before num_computed_tokens advances)."""
    return sum(max(0, min(r.num_computed_tokens + n, r.num_prompt_tokens) - r.num_computed_tokens)
               for r, n in zip(scheduled.requests, scheduled.num_new_tokens))


def check_features(config: EngineConfig, board: Board) -> None:
    """Fail at start, naming the missing plugin, when a setting asks for a feature nothing provides."""
    from pegboard.core.errors import PluginError

    def need(registry, name: str, setting: str) -> None:
        if name not in registry:
            available = ", ".join(registry.names()) or "none"
            raise PluginError(f"{setting} needs a {registry.family.replace('_', ' ')[:-1]} plugin named {name!r}, "
                              f"and no loaded plugin provides one (available: {available})")

    if config.quantization:
        need(board.quantization_schemes, config.quantization, f"quantization={config.quantization!r}")
    need(board.block_allocators, config.block_allocator, f"block_allocator={config.block_allocator!r}")
    need(board.executors, config.executor, f"executor={config.executor!r}")
    if config.speculative_model or config.num_speculative_tokens:
        name = "ngram" if config.speculative_model == "[ngram]" else "draft"
        need(board.proposers, name, f"speculative_model={config.speculative_model!r}")
        raise PluginError("speculative decoding proposers are registered, but the engine does not verify "
                          "speculative tokens yet")
    if config.tensor_parallel_size > 1 or config.pipeline_parallel_size > 1:
        if config.executor == "uniproc":
            raise PluginError("tensor/pipeline parallelism needs a multi-process executor plugin; the loaded "
                              f"executors are: {', '.join(board.executors.names())}")


@dataclass(frozen=True)
class _StepInFlight:
    """A step on the device whose tokens the engine has not applied yet."""

    scheduled: SchedulerOutput
    sampled: list[Request]  # the requests the step samples a token for, in the runner's row order
    launched: LaunchedStep  # its tokens, on their way to the host
    prompt_tokens: int  # for StepStats


class _Group:
    """A user request: its prompt and its n sequences (each a scheduler Request)."""

    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int], params: SamplingParams,
                 final_output_only: bool) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.final_output_only = final_output_only
        # penalties count the tokens so far and prompt logprobs resume where they stopped: both read the
        # host's copy of the sequence, so the previous step must be collected before the next is launched
        self.needs_host_history = params.prompt_logprobs is not None or any(params.penalties_used)
        self.children: list[Request] = []
        self.detokenizers: list[IncrementalDetokenizer] = []

    @property
    def finished(self) -> bool:
        return all(child.is_finished for child in self.children)

    @property
    def wants_output(self) -> bool:
        return not self.final_output_only or self.finished


class LLMEngine:
    """The engine core: owns the board, tokenizer, scheduler and executor."""

    def __init__(self, config: EngineConfig, board: Board | None = None) -> None:
        started = time.perf_counter()
        self.config = config
        self.board = board or load_board(config.plugins)
        check_features(config, self.board)
        self.files = resolve_model(self.board.model_sources, config.model, revision=config.revision)
        _, loader = pick_loader(self.board.model_loaders, self.files, config.load_format)
        self.hf_config = loader.load_config(self.files)
        self.tokenizer = None if config.skip_tokenizer_init else loader.load_tokenizer(self.files)
        self.max_model_len = self._max_model_len()
        self.max_num_batched_tokens = config.max_num_batched_tokens or max(2048, min(self.max_model_len, 8192))
        config.max_num_batched_tokens = self.max_num_batched_tokens  # resolved for the executor
        self.executor = self.board.executors.get(config.executor)(
            config, self.board, self.files, loader, self.hf_config, self.max_model_len)
        self.block_manager = self.board.block_allocators.get(config.block_allocator)(
            self.executor.num_kv_blocks, config.block_size)
        self.scheduler = Scheduler(self.block_manager, max_num_seqs=config.max_num_seqs,
                                   max_num_batched_tokens=self.max_num_batched_tokens)
        self.eos_token_id = self._eos_token_id()
        self.groups: dict[str, _Group] = {}
        self.requests: dict[str, Request] = {}
        self._overlap = self._async_scheduling()
        self._in_flight: _StepInFlight | None = None
        self._num_host_history_requests = 0  # live groups that need each step collected before the next
        self._observe_steps = self.board.has_observers("on_step_end")
        self._observe_finished = self.board.has_observers("on_request_finished")
        self._failed_observers: set[str] = set()
        self.startup_seconds = time.perf_counter() - started
        logger.info("engine ready in %.1f s: %s, max_model_len=%d", self.startup_seconds, self.files.name,
                    self.max_model_len)
        self.board.pm.hook.on_engine_start(engine=self)

    def _async_scheduling(self) -> bool:
        """Overlap each step's host work with the device's: on by default where the device queues work."""
        wanted = self.config.async_scheduling
        if wanted is False or not hasattr(self.executor, "launch"):
            return False
        if getattr(self.executor, "needs_host_history", False):
            if wanted:
                logger.warning("async scheduling is off: the loaded logits processors read every step's tokens")
            return False
        return bool(wanted) or bool(getattr(self.executor, "queues_work", False))

    def _max_model_len(self) -> int:
        limit = getattr(self.hf_config, "max_position_embeddings", None) or 2048
        window = getattr(self.hf_config, "sliding_window", None)
        if window and getattr(self.hf_config, "use_sliding_window", True) and window < limit:
            logger.warning("the model attends within a sliding window of %d tokens, which the attention backends "
                           "do not implement: contexts are capped at %d tokens", window, window)
            limit = window
        if self.config.max_model_len is None:
            return limit
        if self.config.max_model_len > limit:
            raise InvalidParameterError(
                f"max_model_len {self.config.max_model_len} exceeds the model's context length {limit}",
                param="max_model_len")
        return self.config.max_model_len

    def _eos_token_id(self) -> int | None:
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            return self.tokenizer.eos_token_id
        eos = getattr(self.hf_config, "eos_token_id", None)
        return eos[0] if isinstance(eos, list) else eos

    # ---- requests in -------------------------------------------------------------------------

    def tokenize(self, prompt: str, add_special_tokens: bool = True) -> list[int]:
        if self.tokenizer is None:
            raise InvalidParameterError("this engine has no tokenizer: pass prompt token ids", param="prompt")
        return self.tokenizer(prompt, add_special_tokens=add_special_tokens).input_ids

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams | None = None,
                    *, add_special_tokens: bool = True, arrival_time: float | None = None,
                    final_output_only: bool = False) -> None:
        """Validate and queue a request (a string prompt is tokenized, token ids are used as they are);
        with ``final_output_only`` steps return its output only once it has finished."""
        params = params or SamplingParams()
        if request_id in self.groups:
            raise InvalidParameterError(f"request id {request_id!r} is already in use", param="request_id")
        if isinstance(prompt, str):
            text, ids = prompt, self.tokenize(prompt, add_special_tokens)
        else:
            text, ids = None, list(prompt)
        self._check_prompt(ids)
        max_tokens = self.max_model_len - len(ids)
        if params.max_tokens is not None:
            max_tokens = min(max_tokens, params.max_tokens)
        group = _Group(request_id, text, ids, params, final_output_only)
        for index in range(params.n):
            child_params = params
            if params.n > 1 and params.seed is not None:
                child_params = params.clone(seed=params.seed + index)
            child_id = request_id if params.n == 1 else f"{request_id}#{index}"
            child = Request(child_id, ids, child_params, eos_token_id=self.eos_token_id, max_tokens=max_tokens,
                            parent_id=request_id, index=index, arrival_time=arrival_time)
            group.children.append(child)
            group.detokenizers.append(IncrementalDetokenizer(
                self.tokenizer, ids, params.skip_special_tokens, params.stop, params.include_stop_str_in_output))
            self.requests[child_id] = child
        self.groups[request_id] = group
        self._num_host_history_requests += group.needs_host_history
        for child in group.children:
            self.scheduler.add_request(child)

    def _check_prompt(self, ids: list[int]) -> None:
        if not ids:
            raise InvalidParameterError("the prompt is empty", param="prompt")
        if len(ids) >= self.max_model_len:
            raise PromptTooLongError(
                f"the prompt has {len(ids)} tokens but max_model_len is {self.max_model_len} "
                f"(prompt plus at least one generated token must fit)")
        vocab = self.hf_config.vocab_size
        if not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
            raise InvalidParameterError(f"prompt token ids must be integers in [0, {vocab})", param="prompt")

    def abort_request(self, request_id: str) -> None:
        """Stop a request now and free its blocks; unknown ids are ignored."""
        group = self.groups.pop(request_id, None)
        if group is None:
            return
        self._num_host_history_requests -= group.needs_host_history
        for child in group.children:
            self.scheduler.finish(child, RequestStatus.FINISHED_ABORTED)
            self.requests.pop(child.request_id, None)
        self.executor.free([child.request_id for child in group.children])

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests() or self._in_flight is not None

    # ---- one step ----------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Schedule and launch one model step; return outputs of the requests that got new tokens.

        With async scheduling the tokens of a step arrive one call later: each call launches a step, then
        collects the one launched before it while the device computes the new one. A request whose next
        step needs its last token on the host (penalties, prompt logprobs) makes the call collect first.
        """
        started = time.perf_counter()
        outputs: list[RequestOutput] = []
        if self._in_flight is not None and self._num_host_history_requests:
            outputs = self._collect(self._in_flight, started)
            self._in_flight = None
        scheduled = self.scheduler.schedule()
        launched = None
        if not scheduled.is_empty:
            prompt_tokens = _prompt_tokens(scheduled) if self._observe_steps else 0
            sampled = [r for r, n in zip(scheduled.requests, scheduled.num_new_tokens) if r.samples_after(n)]
            try:
                launched = _StepInFlight(scheduled, sampled, self._launch(scheduled), prompt_tokens)
            except Exception as exc:
                outputs += self._fail_step(scheduled, exc)
            else:
                self.scheduler.on_step_launched(scheduled)
        if self._in_flight is not None:
            outputs += self._collect(self._in_flight, started)
            self._in_flight = None
        if launched is not None:
            if self._overlap:
                self._in_flight = launched
            else:
                outputs += self._collect(launched, started)
        return outputs

    def _collect(self, step: _StepInFlight, started: float) -> list[RequestOutput]:
        """Wait for a launched step's tokens and apply them; a step that raises fails its own requests only."""
        try:
            return self._apply(step, step.launched.result(), started)
        except Exception as exc:
            return self._fail_step(step.scheduled, exc)

    def _apply(self, step: _StepInFlight, result: RunnerOutput, started: float) -> list[RequestOutput]:
        """Apply a step's tokens: stops, detokenizing, outputs, observers."""
        now = time.monotonic()
        for request_id, rows in result.prompt_logprobs.items():
            request = self.requests.get(request_id)
            if request is not None:
                request.prompt_logprobs.extend(self._logprob_dicts(row, request.sampling_params.prompt_logprobs)
                                               for row in rows)
        touched: dict[str, _Group] = {}
        ttft: list[float] = []
        itl: list[float] = []
        logprobs = result.logprobs or [None] * len(step.sampled)
        for request, token_id, row in zip(step.sampled, result.token_ids, logprobs):
            if request.is_finished:  # stopped or aborted while this step ran: its token is discarded
                continue
            group = self.groups[request.parent_id]
            request.append_token(token_id)
            self.block_manager.on_tokens_computed(request)
            metrics = request.metrics
            if metrics.first_token_time is None:
                metrics.first_token_time = now
                ttft.append(now - metrics.arrival_time)
            else:
                itl.append(now - metrics.last_token_time)
            metrics.last_token_time = now
            if row is not None and request.logprobs is not None:
                request.cumulative_logprob += row[0][1]
                request.logprobs.append(self._logprob_dicts(row, request.sampling_params.logprobs))
            status = self._stop_status(request, token_id)
            stop_string = group.detokenizers[request.index].add_tokens(
                [token_id], check_stop=request.num_output_tokens >= request.sampling_params.min_tokens)
            if status is None and stop_string is not None:
                status, request.stop_reason = RequestStatus.FINISHED_STOPPED, stop_string
            if status is not None:
                self.scheduler.finish(request, status)
                request.metrics.finished_time = now
            touched[group.request_id] = group
        outputs = [self._output(group) for group in touched.values() if group.wants_output]
        self._retire_finished(outputs)
        if self._observe_steps:
            self._observe("on_step_end", stats=StepStats(
                step_time=time.perf_counter() - started, num_running=self.scheduler.num_running,
                num_waiting=self.scheduler.num_waiting, kv_cache_usage=self.block_manager.usage,
                num_prompt_tokens=step.prompt_tokens, num_generation_tokens=len(ttft) + len(itl),
                num_preempted=step.scheduled.num_preempted, num_batched_tokens=step.scheduled.num_batched_tokens,
                time_to_first_token=ttft, inter_token_latency=itl))
        return outputs

    def _fail_step(self, scheduled: SchedulerOutput, exc: Exception) -> list[RequestOutput]:
        """End every request of a step that raised with an error output and free its blocks; the engine serves
        on. A device failure (the device is unusable) is raised instead: nothing can be served any more."""
        if is_device_failure(exc):
            raise exc
        groups = {r.parent_id: self.groups[r.parent_id] for r in scheduled.requests if r.parent_id in self.groups}
        logger.error("a step of %d requests failed, ending them: %s: %s", len(groups), type(exc).__name__, exc)
        logger.debug("traceback of the failed step", exc_info=exc)
        message = f"the engine step computing this request failed ({type(exc).__name__})"
        now = time.monotonic()
        outputs = []
        for group in groups.values():
            for child in group.children:
                if not child.is_finished:
                    self.scheduler.finish(child, RequestStatus.FINISHED_ERROR)
                    child.metrics.finished_time = now
            output = self._output(group)
            output.error = message
            outputs.append(output)
        self._retire_finished(outputs)
        return outputs

    def _launch(self, scheduled: SchedulerOutput) -> LaunchedStep:
        launch = getattr(self.executor, "launch", None)
        if launch is not None:
            return launch(scheduled)
        result = self.executor.execute(scheduled)  # an executor without launch(): a finished step
        return LaunchedStep(lambda: result)

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

    def _logprob_dicts(self, row: TokenLogprobs, k: int) -> PositionLogprobs:
        """The chosen token plus the top-k, as {token_id: Logprob}."""
        entries = row[:1] + row[1:1 + k]
        return {token: Logprob(value, rank, self._decode_token(token)) for token, value, rank in entries}

    def _decode_token(self, token_id: int) -> str | None:
        return None if self.tokenizer is None else self.tokenizer.decode([token_id])

    def _output(self, group: _Group) -> RequestOutput:
        outputs = []
        for child, detok in zip(group.children, group.detokenizers):
            finish = child.status.value if child.is_finished else None
            outputs.append(CompletionOutput(
                index=child.index, text=detok.text, token_ids=list(child.output_token_ids),
                cumulative_logprob=child.cumulative_logprob if child.logprobs is not None else None,
                logprobs=child.logprobs, finish_reason=finish, stop_reason=child.stop_reason))
        first = group.children[0]
        return RequestOutput(request_id=group.request_id, prompt=group.prompt,
                             prompt_token_ids=group.prompt_token_ids, outputs=outputs, finished=group.finished,
                             prompt_logprobs=first.prompt_logprobs, metrics=first.metrics,
                             num_cached_tokens=first.num_cached_tokens)

    def _retire_finished(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            if not output.finished:
                continue
            group = self.groups.pop(output.request_id)
            self._num_host_history_requests -= group.needs_host_history
            for child in group.children:
                self.requests.pop(child.request_id, None)
            self.executor.free([child.request_id for child in group.children])
            if self._observe_finished:
                self._observe("on_request_finished", output=output)

    def _observe(self, hook: str, **kwargs: object) -> None:
        """Call an observer hook; an observer that raises is logged (once per hook), never fatal to the step."""
        try:
            getattr(self.board.pm.hook, hook)(engine=self, **kwargs)
        except Exception as exc:
            if hook not in self._failed_observers:
                self._failed_observers.add(hook)
                logger.error("an %s observer raised %s: %s (logged once; the engine goes on)", hook,
                             type(exc).__name__, exc, exc_info=exc)
