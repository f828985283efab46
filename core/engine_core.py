"""EngineCore: token ids in, token ids out. It owns the scheduler, the KV blocks and the executor; it never sees
text. One ``step()`` schedules, launches the model and applies the results (or, with async scheduling,
launches step k+1 before it applies step k). It runs in the caller's process or in its own (core_process.py)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import cast

from pegboard.core.batch_defaults import default_max_num_batched_tokens
from pegboard.core.config import EngineConfig
from pegboard.core.errors import InvalidParameterError, PluginError, is_device_failure
from pegboard.core.grammar_compiler import GrammarCompiler
from pegboard.core.interfaces import BlockAllocator, Executor, LaunchingExecutor, Proposer
from pegboard.core.model_info import ModelInfo, check_prompt
from pegboard.core.messages import (EngineCoreOutput, EngineCoreOutputs, EngineCoreRequest, EngineGauges,
                                    RunnerOutput, SchedulerOutput, SchedulerStats)
from pegboard.core.model_files import ModelFiles, pick_loader, resolve_model
from pegboard.core.plugins import Board, load_board
from pegboard.core.request import Request, RequestStatus
from pegboard.core.launched_step import LaunchedStep
from pegboard.core.scheduler import Scheduler
from pegboard.core.settings import check_settings
from pegboard.core.structured_outputs_config import check_backend, structured_outputs_backend
from pegboard.core.tokenizer_loading import shared_tokenizer

logger = logging.getLogger("pegboard.engine")
GRAMMAR_POLL_SECONDS = 0.005  # an idle loop waits this long for a compiling grammar before it steps again


def check_features(config: EngineConfig, board: Board) -> None:
    """Fail at start, naming the missing plugin, when a setting asks for a feature nothing provides."""

    def need(registry, name: str, setting: str) -> None:
        if name not in registry:
            available = ", ".join(registry.names()) or "none"
            raise PluginError(f"{setting} needs a {registry.family.replace('_', ' ')[:-1]} plugin named {name!r}, "
                              f"and no loaded plugin provides one (available: {available})")

    if config.quantization:
        need(board.quantization_schemes, config.quantization, f"quantization={config.quantization!r}")
    need(board.block_allocators, config.block_allocator, f"block_allocator={config.block_allocator!r}")
    need(board.executors, config.executor, f"executor={config.executor!r}")
    check_backend(config, board.grammars)
    if config.speculative_model or config.num_speculative_tokens:
        need(board.proposers, proposer_name(config, board), f"speculative_model={config.speculative_model!r}")
        if not config.num_speculative_tokens:
            raise InvalidParameterError("speculative decoding needs num_speculative_tokens >= 1",
                                        param="num_speculative_tokens")
    if config.tensor_parallel_size > 1 or config.pipeline_parallel_size > 1:
        if config.executor == "uniproc":
            raise PluginError(f"tensor_parallel_size={config.tensor_parallel_size}, pipeline_parallel_size="
                              f"{config.pipeline_parallel_size}: parallelism needs a multi-process executor plugin "
                              f"(executor=NAME); the loaded executors are: {', '.join(board.executors.names())}")


def proposer_name(config: EngineConfig, board: Board) -> str:
    """``[ngram]`` -> the ngram proposer; a registered proposer's name -> it; any other model -> ``draft``."""
    if config.speculative_model in (None, "[ngram]"):
        return "ngram"
    return config.speculative_model if config.speculative_model in board.proposers else "draft"


@dataclass(frozen=True)
class _StepInFlight:
    """A step on the device whose tokens the core has not applied yet."""

    scheduled: SchedulerOutput
    launched: LaunchedStep  # its tokens, on their way to the host


class EngineCore:
    """The scheduler, the KV block manager and the executor of one model."""

    def __init__(self, config: EngineConfig, board: Board | None = None) -> None:
        self.config = config
        self.board = board or load_board(config.plugins)
        check_settings(config, self.board)
        check_features(config, self.board)
        self.files: ModelFiles = resolve_model(self.board.model_sources, config.model, revision=config.revision)
        _, loader = pick_loader(self.board.model_loaders, self.files, config.load_format)
        self.hf_config = loader.load_config(self.files)
        self.max_model_len = self._max_model_len()
        self.max_num_batched_tokens = (config.max_num_batched_tokens
                                       or default_max_num_batched_tokens(config.device, self.max_model_len))
        config.max_num_batched_tokens = self.max_num_batched_tokens  # resolved for the executor
        self.executor: Executor = self.board.executors.build(
            config.executor, config, self.board, self.files, loader, self.hf_config, self.max_model_len)
        self.block_manager: BlockAllocator = self.board.block_allocators.build(
            config.block_allocator, self.executor.num_kv_blocks, config.block_size)
        self.proposer = self._proposer()
        self.scheduler = Scheduler(self.block_manager, max_num_seqs=config.max_num_seqs,
                                   max_num_batched_tokens=self.max_num_batched_tokens,
                                   propose=self._propose if self.proposer else None,
                                   num_spec_tokens=config.num_speculative_tokens or 0)
        self._overlap = self._async_scheduling()
        self._in_flight: _StepInFlight | None = None
        self.grammar_compiler = GrammarCompiler(self.board.grammars, vocab_size=self.hf_config.vocab_size,
                                                tokenizer=lambda: shared_tokenizer(config, self.board, self.files),
                                                backend=structured_outputs_backend(config.structured_outputs_config))

    # ---- set-up ------------------------------------------------------------------------------------------

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

    def _async_scheduling(self) -> bool:
        """Overlap each step's host work with the device's: on by default where the device queues work.

        Speculative decoding turns it off: how many tokens a step accepts decides the next step's inputs."""
        wanted = self.config.async_scheduling
        if wanted and not self.executor.supports_launch:
            raise InvalidParameterError(f"async_scheduling needs an executor that launches steps; "
                                        f"{self.config.executor!r} only runs them", param="async_scheduling")
        if wanted is False or not self.executor.supports_launch or self.proposer is not None:
            return False  # (async_scheduling=True with speculative decoding is refused by check_settings)
        return bool(wanted) or cast(LaunchingExecutor, self.executor).queues_work

    def _proposer(self) -> Proposer | None:
        if not self.config.num_speculative_tokens:
            return None
        return self.board.proposers.build(proposer_name(self.config, self.board), config=self.config,
                                          num_speculative_tokens=self.config.num_speculative_tokens)

    def _propose(self, requests: list[Request]) -> list[tuple[int, ...]]:
        """Proposed tokens for the requests whose sampling a verification keeps exact; () for the others."""
        plain = [r for r in requests if _verifiable(r)]
        drafts = dict(zip((r.request_id for r in plain), self.proposer.propose(plain))) if plain else {}
        k = self.scheduler.num_spec_tokens
        return [tuple(drafts.get(r.request_id, ()))[:k] for r in requests]

    @property
    def model_info(self) -> ModelInfo:
        manager = self.block_manager
        return ModelInfo(name=self.files.name, vocab_size=self.hf_config.vocab_size, max_model_len=self.max_model_len,
                         max_sequence_len=self.max_sequence_len, max_num_seqs=self.config.max_num_seqs,
                         max_num_batched_tokens=self.max_num_batched_tokens, num_kv_blocks=manager.num_blocks,
                         block_size=manager.block_size, eos_token_id=self._config_eos())

    def _config_eos(self) -> int | None:
        eos = getattr(self.hf_config, "eos_token_id", None)
        return eos[0] if isinstance(eos, list) else eos

    @property
    def max_sequence_len(self) -> int:
        """The longest sequence (prompt plus output) one request can reach: max_model_len, or less when the whole
        KV cache holds fewer tokens (the last token generated is never written to it)."""
        manager = self.block_manager
        return min(self.max_model_len, manager.num_blocks * manager.block_size + 1)

    # ---- requests ----------------------------------------------------------------------------------------

    def add_request(self, request: EngineCoreRequest) -> None:
        """Check and queue one sequence."""
        ids = request.prompt_token_ids
        if request.request_id in self.scheduler.requests or self.grammar_compiler.holds(request.request_id):
            raise InvalidParameterError(f"request id {request.request_id!r} is already in use", param="request_id")
        check_prompt(ids, self.model_info)
        params = request.sampling_params
        max_tokens = self.max_sequence_len - len(ids)
        if params.max_tokens is not None:
            max_tokens = min(max_tokens, params.max_tokens)
        queued = Request(request.request_id, list(ids), params, eos_token_id=request.eos_token_id,
                         max_tokens=max_tokens, arrival_time=request.arrival_time)
        if not self.grammar_compiler.submit(queued):  # a request whose grammar compiles waits for it there
            self.scheduler.add_request(queued)

    def abort_requests(self, request_ids: list[str]) -> None:
        """Stop requests now and free their blocks; unknown or finished ids are ignored."""
        for request in self.grammar_compiler.abort(request_ids):
            request.status = RequestStatus.FINISHED_ABORTED
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)
        self._flush_finished()

    def has_unfinished_requests(self) -> bool:
        """Work is left: requests to run, or a step in flight."""
        return (self.scheduler.has_unfinished_requests() or self._in_flight is not None
                or len(self.grammar_compiler) > 0)

    def _flush_finished(self) -> None:
        """Once idle, tell the worker at once which finished requests to forget (no step would carry it)."""
        if not self.has_unfinished_requests() and self.scheduler.has_finished_requests():
            self._launch(self.scheduler.schedule())

    # ---- one step ----------------------------------------------------------------------------------------

    def step(self) -> EngineCoreOutputs:
        """Schedule and launch one model step; return what the step before it (or this one) produced.

        With async scheduling the tokens of a step arrive one call later: each call launches a step, then
        applies the one launched before it while the device computes the new one.
        """
        started = time.perf_counter()
        failed: list[EngineCoreOutput] = self._admit_compiled()
        scheduled = self.scheduler.schedule()
        launched = None
        if not scheduled.is_empty:
            try:
                launched = _StepInFlight(scheduled, self._launch(scheduled))
            except Exception as exc:
                failed += self._fail(scheduled, exc)
        elif scheduled.finished_request_ids:  # nothing to run: the worker still learns whom to forget
            self._launch(scheduled)
        previous, self._in_flight = self._in_flight, None
        outputs = self._collect(previous, started) if previous is not None else None
        if launched is not None:
            if self._overlap:
                self._in_flight = launched
            else:
                outputs = self._merge(outputs, self._collect(launched, started))
        self._flush_finished()
        if failed:
            outputs = self._merge(outputs, EngineCoreOutputs(tuple(failed)))
        if outputs is None:
            if scheduled.is_empty and len(self.grammar_compiler):  # only grammars to wait for: do not spin
                self.grammar_compiler.wait(GRAMMAR_POLL_SECONDS)
            return EngineCoreOutputs((), None, self.gauges())
        return EngineCoreOutputs(outputs.outputs, outputs.stats, self.gauges())

    def gauges(self) -> EngineGauges:
        """How full the core is now."""
        scheduler = self.scheduler
        return EngineGauges(scheduler.num_running, scheduler.num_waiting + len(self.grammar_compiler),
                            self.block_manager.usage)

    def _admit_compiled(self) -> list[EngineCoreOutput]:
        """Requests whose grammar finished compiling go to the scheduler; those whose compile failed end here."""
        failed = []
        for request, error in self.grammar_compiler.ready():
            if error is None:
                self.scheduler.add_request(request)
                continue
            request.status = RequestStatus.FINISHED_ERROR
            if not isinstance(error, InvalidParameterError):
                logger.error("compiling the grammar of request %s failed: %s: %s", request.request_id,
                             type(error).__name__, error)
            failed.append(EngineCoreOutput(request.request_id, (), finish_reason="error",
                                           error=f"the request's grammar could not be compiled: {error}"))
        return failed

    def _launch(self, scheduled: SchedulerOutput) -> LaunchedStep:
        if self.executor.supports_launch:  # checked at start: a LaunchingExecutor
            return cast(LaunchingExecutor, self.executor).launch(scheduled)
        result = self.executor.execute(scheduled)  # an executor without launch(): a finished step
        return LaunchedStep(lambda: result)

    def _collect(self, step: _StepInFlight, started: float) -> EngineCoreOutputs:
        """Wait for a launched step's tokens and apply them; a step that raises fails its own requests only."""
        try:
            result: RunnerOutput = step.launched.result()
            outputs = self.scheduler.update_from_output(step.scheduled, result)
        except Exception as exc:
            return EngineCoreOutputs(tuple(self._fail(step.scheduled, exc)))
        proposed = sum(len(t) for t in step.scheduled.spec_token_ids.values())
        accepted = sum(len(t) - 1 for r, t in zip(result.request_ids, result.token_ids)
                       if r in step.scheduled.spec_token_ids)
        stats = SchedulerStats(
            step_time=time.perf_counter() - started, num_prompt_tokens=step.scheduled.num_prompt_tokens,
            num_generation_tokens=sum(len(o.new_token_ids) for o in outputs),
            num_preempted=step.scheduled.num_preempted, num_batched_tokens=step.scheduled.total_num_scheduled_tokens,
            num_spec_proposed=proposed, num_spec_accepted=accepted)
        return EngineCoreOutputs(tuple(outputs), stats)

    def _fail(self, scheduled: SchedulerOutput, exc: Exception) -> list[EngineCoreOutput]:
        """End every request of a step that raised with an error output and free its blocks; the engine serves
        on. A device failure (the device is unusable) is raised instead: nothing can be served any more."""
        if is_device_failure(exc):
            raise exc
        failed = self.scheduler.finish_requests(list(scheduled.num_scheduled_tokens), RequestStatus.FINISHED_ERROR)
        logger.error("a step of %d requests failed, ending them: %s: %s", len(failed), type(exc).__name__, exc)
        logger.debug("traceback of the failed step", exc_info=exc)
        message = f"the engine step computing this request failed ({type(exc).__name__})"
        return [EngineCoreOutput(r.request_id, (), finish_reason="error", error=message) for r in failed]

    @staticmethod
    def _merge(first: EngineCoreOutputs | None, second: EngineCoreOutputs) -> EngineCoreOutputs:
        if first is None:
            return second
        return EngineCoreOutputs(first.outputs + second.outputs, second.stats or first.stats)


def _verifiable(request: Request) -> bool:
    """Proposals are verified by sampling each position alone: not for penalties (counts change inside the step),
    rows still under min_tokens, or prompt logprobs."""
    params = request.sampling_params
    return (not any(params.penalties_used) and request.num_output_tokens >= params.min_tokens
            and params.prompt_logprobs is None)
