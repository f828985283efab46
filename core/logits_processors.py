"""Logits processors with a request lifecycle: added, tokens accepted, removed; applied to a step's rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence, runtime_checkable

from pegboard.core.interfaces import require
from pegboard.core.sampling_params import SamplingParams

if TYPE_CHECKING:
    import torch


class HasRequestId(Protocol):
    request_id: str


@runtime_checkable
class LogitsProcessor(Protocol):
    """A batch-wise logits edit that follows each request it applies to, from added to removed."""

    # apply() reads every token accepted before: a step then waits for the previous step's tokens to reach the
    # host while one of its requests is in the batch (async scheduling stays on for all other batches)
    follows_tokens: bool

    def add_request(self, request_id: str, params: SamplingParams, prompt_token_ids: Sequence[int]) -> bool:
        """Start following a request; True when this processor edits its logits (else it is not told more)."""

    def accept_tokens(self, request_id: str, token_ids: Sequence[int]) -> None:
        """The request gained these tokens (in order)."""

    def remove_request(self, request_id: str) -> None:
        """The request finished; forget it."""

    def apply(self, logits: torch.Tensor, request_ids: Sequence[str]) -> torch.Tensor:
        """Edit ``logits`` [N, V] (row i belongs to ``request_ids[i]``, a request with 1 + k proposed tokens has
        k + 1 rows); called only for steps holding one of its requests."""


class LogitsProcessors:
    """The loaded processors and which requests each follows; costs nothing for requests none follows."""

    def __init__(self, processors: list[LogitsProcessor]) -> None:
        for processor in processors:
            require(processor, LogitsProcessor, kind="logits processor")
        self.processors = processors
        self._following: dict[str, list[LogitsProcessor]] = {}  # request id -> the processors that follow it

    def __bool__(self) -> bool:
        return bool(self.processors)

    def add_request(self, request_id: str, params: SamplingParams, prompt_token_ids: Sequence[int]) -> None:
        """Offer a new request to every processor."""
        following = [p for p in self.processors if p.add_request(request_id, params, prompt_token_ids)]
        if following:
            self._following[request_id] = following

    def follows(self, request_id: str) -> bool:
        """Whether a processor that reads accepted tokens follows the request."""
        return any(p.follows_tokens for p in self._following.get(request_id, ()))

    def apply(self, logits: torch.Tensor, rows: Sequence[HasRequestId]) -> torch.Tensor:
        """Let each processor following a request among the rows (one per logits row) edit the logits."""
        if not self._following:
            return logits
        request_ids = [row.request_id for row in rows]
        involved = {id(p): p for r in request_ids for p in self._following.get(r, ())}
        for processor in involved.values():
            logits = processor.apply(logits, request_ids)
        return logits

    def accept_tokens(self, request_id: str, token_ids: Sequence[int]) -> None:
        for processor in self._following.get(request_id, ()):
            processor.accept_tokens(request_id, token_ids)

    def remove_requests(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            for processor in self._following.pop(request_id, ()):
                processor.remove_request(request_id)
