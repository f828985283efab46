"""The front end's side of outputs: EngineCoreOutputs (token ids) in, RequestOutputs (text) out.

It owns everything textual - incremental detokenizing, stop strings, logprob text and bytes - and the fan-out
of a request with n choices into n engine-core sequences. A sequence a stop string ends is reported for the
caller to abort in the core. Every RequestOutput is a snapshot: it shares no list the processor keeps growing.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pegboard.core.detokenizer import IncrementalDetokenizer
from pegboard.core.errors import InvalidParameterError
from pegboard.core.messages import EngineCoreOutput, EngineCoreOutputs, EngineCoreRequest, TokenLogprobs
from pegboard.core.outputs import CompletionOutput, Logprob, PositionLogprobs, RequestMetrics, RequestOutput
from pegboard.core.sampling_params import SamplingParams
from pegboard.core.token_bytes import TokenBytes

RECENT_CORE_IDS = 65536  # core ids remembered for reuse: far more sequences than can be in flight at once


class _Sequence:
    """One of a request's n choices, as the front end builds it."""

    def __init__(self, request_id: str, index: int, detokenizer: IncrementalDetokenizer, params: SamplingParams,
                 arrival_time: float) -> None:
        self.request_id = request_id
        self.index = index
        self.detokenizer = detokenizer
        self.params = params
        self.token_ids: list[int] = []
        self.logprobs: list[PositionLogprobs] | None = [] if params.logprobs is not None else None
        self.cumulative_logprob = 0.0
        self.finish_reason: str | None = None
        self.stop_reason: int | str | None = None
        self.metrics = RequestMetrics(arrival_time=arrival_time)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class _Group:
    """A user request: its prompt and its n sequences."""

    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int], params: SamplingParams,
                 final_output_only: bool) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.final_output_only = final_output_only
        self.sequences: list[_Sequence] = []
        self.prompt_logprobs: list[PositionLogprobs | None] | None = (
            [None] if params.prompt_logprobs is not None else None)
        self.num_cached_tokens = 0
        self.error: str | None = None

    @property
    def finished(self) -> bool:
        sequences = self.sequences
        if len(sequences) == 1:  # (most requests: no generator to build)
            return sequences[0].finish_reason is not None
        return all(s.finish_reason is not None for s in sequences)


@dataclass
class ProcessedOutputs:
    """What one EngineCoreOutputs became."""

    request_outputs: list[RequestOutput] = field(default_factory=list)
    abort_ids: list[str] = field(default_factory=list)  # core sequences a stop string or a failure ended
    time_to_first_token: list[float] = field(default_factory=list)  # seconds, sequences that got their first token
    inter_token_latency: list[float] = field(default_factory=list)  # seconds since each other sequence's last token


class OutputProcessor:
    """Detokenizes and assembles the outputs of every live request; ``tokenizer`` may be None (token ids only)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.groups: dict[str, _Group] = {}
        self._sequences: dict[str, tuple[_Group, _Sequence]] = {}  # core request id -> its group and sequence
        self._recent_core_ids: OrderedDict[str, int] = OrderedDict()  # core id -> times used, least recent first

    @cached_property
    def token_bytes(self) -> TokenBytes | None:
        """Each token's exact bytes, from the vocabulary (None without a tokenizer)."""
        return None if self.tokenizer is None else TokenBytes(self.tokenizer)

    def add_request(self, request_id: str, prompt: str | None, prompt_token_ids: list[int], params: SamplingParams,
                    eos_token_id: int | None, *, arrival_time: float | None = None, final_output_only: bool = False
                    ) -> list[EngineCoreRequest]:
        """Follow a new request; returns its n sequences for the engine core (seeds offset per choice)."""
        if request_id in self.groups:
            raise InvalidParameterError(f"request id {request_id!r} is already in use", param="request_id")
        arrival = arrival_time or time.monotonic()
        group = _Group(request_id, prompt, prompt_token_ids, params, final_output_only)
        requests = []
        for index in range(params.n):
            child_params = params
            if params.n > 1 and params.seed is not None:
                child_params = params.clone(seed=params.seed + index)
            child_id = self._fresh_core_id(request_id if params.n == 1 else f"{request_id}#{index}")
            detokenizer = IncrementalDetokenizer(self.tokenizer, prompt_token_ids, params.skip_special_tokens,
                                                 params.stop, params.include_stop_str_in_output)
            sequence = _Sequence(child_id, index, detokenizer, child_params, arrival)
            group.sequences.append(sequence)
            self._sequences[child_id] = (group, sequence)
            requests.append(EngineCoreRequest(child_id, tuple(prompt_token_ids), child_params, eos_token_id, arrival))
        self.groups[request_id] = group
        return requests

    def _fresh_core_id(self, core_id: str) -> str:
        """``core_id``, or ``core_id@k`` when a recent sequence had it: a step still in flight for the earlier one
        (or its outputs still on their way from a core process) can then never reach the new one."""
        uses = self._recent_core_ids.pop(core_id, 0)
        self._recent_core_ids[core_id] = uses + 1
        if len(self._recent_core_ids) > RECENT_CORE_IDS:
            self._recent_core_ids.popitem(last=False)
        return core_id if not uses else f"{core_id}@{uses}"

    def abort_request(self, request_id: str) -> list[str]:
        """Forget a request; returns its unfinished core sequences (to abort in the core)."""
        group = self.groups.pop(request_id, None)
        if group is None:
            return []
        for sequence in group.sequences:
            self._sequences.pop(sequence.request_id, None)
        return [s.request_id for s in group.sequences if not s.finished]

    def has_unfinished_requests(self) -> bool:
        return bool(self.groups)

    def process(self, outputs: EngineCoreOutputs) -> ProcessedOutputs:
        """Apply one step's outputs; RequestOutputs of the requests it advanced (finished ones are forgotten)."""
        now = time.monotonic()
        processed = ProcessedOutputs()
        touched: dict[str, _Group] = {}
        for output in outputs.outputs:
            entry = self._sequences.get(output.request_id)
            if entry is None or entry[1].finished:  # aborted or stopped meanwhile: discarded
                continue
            group, sequence = entry
            touched[group.request_id] = group
            if output.error is not None:
                self._fail(group, output.error, processed)
                continue
            self._apply(group, sequence, output, now, processed)
        for group in touched.values():
            finished = group.finished
            if finished:
                processed.request_outputs.append(self._request_output(group))
                self.abort_request(group.request_id)
            elif not group.final_output_only:
                processed.request_outputs.append(self._request_output(group))
        return processed

    def _apply(self, group: _Group, sequence: _Sequence, output: EngineCoreOutput, now: float,
               processed: ProcessedOutputs) -> None:
        """One sequence's new tokens: logprobs, text, stop strings, then the core's finish reason."""
        if output.new_prompt_logprobs and sequence.index == 0:
            group.prompt_logprobs.extend(self._logprob_dicts(row, group.params.prompt_logprobs)
                                         for row in output.new_prompt_logprobs)
        if sequence.index == 0:
            group.num_cached_tokens = output.num_cached_tokens
        if output.queue_time is not None:
            sequence.metrics.first_scheduled_time = sequence.metrics.arrival_time + output.queue_time
        if not output.new_token_ids:
            if output.finished:
                sequence.finish_reason, sequence.stop_reason = output.finish_reason, output.stop_reason
            return
        metrics = sequence.metrics
        if metrics.first_token_time is None:
            metrics.first_token_time = now
            processed.time_to_first_token.append(now - metrics.arrival_time)
        else:
            processed.inter_token_latency.append(now - metrics.last_token_time)
        metrics.last_token_time = now
        rows = output.new_logprobs or (None,) * len(output.new_token_ids)
        for count, (token_id, row) in enumerate(zip(output.new_token_ids, rows), 1):
            sequence.token_ids.append(token_id)
            if row is not None and sequence.logprobs is not None:
                sequence.cumulative_logprob += row[0][1]
                sequence.logprobs.append(self._logprob_dicts(row, sequence.params.logprobs))
            stop_string = sequence.detokenizer.add_tokens(
                [token_id], check_stop=len(sequence.token_ids) >= sequence.params.min_tokens)
            last = count == len(output.new_token_ids)
            if last and output.finished:  # the core's reason (a stop token, EOS, the length) wins
                sequence.finish_reason, sequence.stop_reason = output.finish_reason, output.stop_reason
            elif stop_string is not None:
                sequence.finish_reason, sequence.stop_reason = "stop", stop_string
                processed.abort_ids.append(sequence.request_id)
                break
        if sequence.finished:
            metrics.finished_time = now

    def _fail(self, group: _Group, message: str, processed: ProcessedOutputs) -> None:
        """A failed step ended one of the request's sequences: the whole request ends with the error."""
        group.error = message
        for sequence in group.sequences:
            if not sequence.finished:
                sequence.finish_reason = "error"
                processed.abort_ids.append(sequence.request_id)  # the core already ended the failed one

    def _logprob_dicts(self, row: TokenLogprobs, k: int) -> PositionLogprobs:
        """The chosen token plus the top-k, as {token_id: Logprob} with each token's text and exact bytes."""
        entries = row[:1] + row[1:1 + k]
        token_bytes = self.token_bytes
        return {token: Logprob(value, rank, self._decode_token(token),
                               None if token_bytes is None else token_bytes(token))
                for token, value, rank in entries}

    def _decode_token(self, token_id: int) -> str | None:
        return None if self.tokenizer is None else self.tokenizer.decode([token_id])

    def _request_output(self, group: _Group) -> RequestOutput:
        """A snapshot of the request: copies of every list that keeps growing (the prompt's ids, which never
        change, are one list shared by the request's snapshots)."""
        completions = []
        for sequence in group.sequences:
            completions.append(CompletionOutput(
                index=sequence.index, text=sequence.detokenizer.text, token_ids=list(sequence.token_ids),
                cumulative_logprob=sequence.cumulative_logprob if sequence.logprobs is not None else None,
                logprobs=None if sequence.logprobs is None else list(sequence.logprobs),
                finish_reason=sequence.finish_reason, stop_reason=sequence.stop_reason))
        first = group.sequences[0]
        return RequestOutput(
            request_id=group.request_id, prompt=group.prompt, prompt_token_ids=group.prompt_token_ids,
            outputs=completions, finished=group.finished,
            prompt_logprobs=None if group.prompt_logprobs is None else list(group.prompt_logprobs),
            metrics=_copied(first.metrics), num_cached_tokens=group.num_cached_tokens,
            error=group.error)


def _copied(metrics: RequestMetrics) -> RequestMetrics:
    """A copy of a sequence's timestamps (field by field: a few times faster than copy.copy)."""
    return RequestMetrics(metrics.arrival_time, metrics.first_scheduled_time, metrics.first_token_time,
                          metrics.last_token_time, metrics.finished_time)
