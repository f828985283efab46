"""LLMEngine: text in, RequestOutputs out. The front end (tokenizer, output processor, observers) over an engine
core that deals in token ids only; one ``step()`` = one core step, its outputs detokenized and assembled."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from pegboard.core.config import EngineConfig
from pegboard.core.grammar_processor import check_grammar
from pegboard.core.model_info import ModelInfo, check_prompt
from pegboard.core.errors import InvalidParameterError
from pegboard.core.messages import EngineCoreOutputs, EngineGauges
from pegboard.core.load_settings import loading_with
from pegboard.core.output_processor import OutputProcessor
from pegboard.core.outputs import RequestOutput
from pegboard.core.plugins import Board, load_board
from pegboard.core.sampling_params import SamplingParams
from pegboard.core.structured_outputs_config import structured_outputs_backend
from pegboard.core.tokenizer_loading import load_tokenizer

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
    num_spec_proposed: int = 0  # proposed tokens verified (speculative decoding)
    num_spec_accepted: int = 0


class LLMEngine:
    """The front end of one engine core: tokenizes, validates, detokenizes, tells the observers.

    ``core`` is the engine core itself (in this process, the default) or a client of one in another process
    (core_client.py); either answers add_request / abort_requests / step / has_unfinished_requests.
    """

    def __init__(self, config: EngineConfig, board: Board | None = None, core: Any = None) -> None:
        started = time.perf_counter()
        self.config = config
        self.board = board or load_board(config.plugins)
        if core is None:
            from pegboard.core.engine_core import EngineCore  # a front end over a core process never imports it

            with loading_with(config):
                core = EngineCore(config, self.board)
        self.core = core
        self.files = self.core.files
        self.model_info: ModelInfo = self.core.model_info
        self.tokenizer = None if config.skip_tokenizer_init else self._load_tokenizer()
        self.eos_token_id = self._eos_token_id()
        self.output_processor = OutputProcessor(self.tokenizer)
        self.grammar_backend = structured_outputs_backend(config.structured_outputs_config)
        self.gauges: EngineGauges = self.core.gauges()  # as of the last step or abort, for metrics scrapes
        self._observe_steps = self.board.has_observers("on_step_end")
        self._observe_finished = self.board.has_observers("on_request_finished")
        self._failed_observers: set[str] = set()
        self.startup_seconds = time.perf_counter() - started
        logger.info("engine ready in %.1f s: %s, max_model_len=%d", self.startup_seconds, self.files.name,
                    self.max_model_len)
        self.board.pm.hook.on_engine_start(engine=self)

    def _load_tokenizer(self) -> Any:
        return load_tokenizer(self.config, self.board, self.files)

    def _eos_token_id(self) -> int | None:
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            return self.tokenizer.eos_token_id
        return self.model_info.eos_token_id

    @property
    def max_model_len(self) -> int:
        return self.model_info.max_model_len

    @property
    def max_num_batched_tokens(self) -> int:
        return self.model_info.max_num_batched_tokens

    # the in-process core's parts, for tests and profiling scripts (a core in another process has none)
    scheduler = property(lambda self: self.core.scheduler)
    block_manager = property(lambda self: self.core.block_manager)
    executor = property(lambda self: self.core.executor)

    # ---- requests in -------------------------------------------------------------------------------------

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
        if isinstance(prompt, str):
            text, ids = prompt, self.tokenize(prompt, add_special_tokens)
        else:
            text, ids = None, list(prompt)
        check_prompt(ids, self.model_info)
        if params.stop and self.tokenizer is None:
            raise InvalidParameterError("stop strings need a tokenizer, and this engine has none (skip_tokenizer_init, "
                                        "or the model ships none): stop on stop_token_ids instead", param="stop")
        check_grammar(params, self.board.grammars, self.grammar_backend)  # refused here: no grammar, a bad spec
        requests = self.output_processor.add_request(request_id, text, ids, params, self.eos_token_id,
                                                     arrival_time=arrival_time, final_output_only=final_output_only)
        try:
            for request in requests:
                self.core.add_request(request)
        except Exception:
            self.abort_request(request_id)
            raise

    def abort_request(self, request_id: str) -> None:
        """Stop a request now and free its blocks; unknown ids are ignored."""
        self.core.abort_requests(self.output_processor.abort_request(request_id))
        self.gauges = self.core.gauges()

    def has_unfinished_requests(self) -> bool:
        return self.core.has_unfinished_requests()

    # ---- one step ----------------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one core step; return the outputs of the requests that advanced (see EngineCore.step)."""
        return self.process(self.core.step())

    def process(self, outputs: EngineCoreOutputs) -> list[RequestOutput]:
        """Turn one core step's outputs into RequestOutputs; sequences a stop string ended are aborted in the core."""
        processed = self.output_processor.process(outputs)
        if processed.abort_ids:
            self.core.abort_requests(processed.abort_ids)
        if outputs.gauges is not None:
            self.gauges = outputs.gauges
        if outputs.stats is not None:
            s, g = outputs.stats, self.gauges
            stats = StepStats(
                step_time=s.step_time, num_running=g.num_running, num_waiting=g.num_waiting,
                kv_cache_usage=g.kv_cache_usage, num_prompt_tokens=s.num_prompt_tokens,
                num_generation_tokens=s.num_generation_tokens, num_preempted=s.num_preempted,
                num_batched_tokens=s.num_batched_tokens, time_to_first_token=processed.time_to_first_token,
                inter_token_latency=processed.inter_token_latency, num_spec_proposed=s.num_spec_proposed,
                num_spec_accepted=s.num_spec_accepted)
            if self._observe_steps:
                self._observe("on_step_end", stats=stats)
        if self._observe_finished:
            for output in processed.request_outputs:
                if output.finished:
                    self._observe("on_request_finished", output=output)
        return processed.request_outputs

    def _observe(self, hook: str, **kwargs: object) -> None:
        """Call an observer hook; an observer that raises is logged (once per hook), never fatal to the step."""
        try:
            getattr(self.board.pm.hook, hook)(engine=self, **kwargs)
        except Exception as exc:
            if hook not in self._failed_observers:
                self._failed_observers.add(hook)
                logger.error("an %s observer raised %s: %s (logged once; the engine goes on)", hook,
                             type(exc).__name__, exc, exc_info=exc)
