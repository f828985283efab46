"""Server-sent events: per-choice text deltas that never show a possible partial stop string, chunk envelopes
with usage (OpenAI's last chunk, vLLM's continuous usage), the event loop over a Generation, and a response that
always closes its stream."""

from __future__ import annotations

import json
import time
from typing import Any, AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from pegboard.core.outputs import CompletionOutput, RequestOutput
from pegboard.core.sampling_params import SamplingParams
from pegboard.server.errors import as_api_error, error_body
from pegboard.server.generation import Generation, unless_disconnected
from pegboard.server.schemas import StreamOptions

DONE = "data: [DONE]\n\n"


def sse(data: dict[str, Any]) -> str:
    """One ``data:`` event."""
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


class SSEResponse(StreamingResponse):
    """An event stream that closes (aborts) its generation however the response ends, disconnects included."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], generation: Generation) -> None:
        super().__init__(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.generation = generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            await self.generation.aclose()


class ChoiceStream:
    """One choice's sent text and tokens; the last ``hold_back`` characters wait (a stop string may begin there)."""

    def __init__(self, hold_back: int) -> None:
        self.hold_back = hold_back
        self.text_sent = 0
        self.tokens_sent = 0
        self.finished = False

    def advance(self, output: CompletionOutput) -> tuple[str, int, int] | None:
        """(new text, first new token, end of new tokens), or None when there is nothing to send."""
        if self.finished:
            return None
        finished = output.finish_reason is not None
        end = len(output.text) if finished else len(output.text) - self.hold_back
        text = output.text[self.text_sent:end] if end > self.text_sent else ""
        first, last = self.tokens_sent, len(output.token_ids)
        if not text and first == last and not finished:
            return None
        self.text_sent = max(self.text_sent, end)
        self.tokens_sent = last
        self.finished = finished
        return text, first, last


class ChunkWriter:
    """Turns RequestOutputs into chunks (one per advanced choice, index = prompt * n + sequence, as in vLLM)."""

    object_name = ""
    count_completion = True  # whether usage counts the completion tokens

    def __init__(self, response_id: str, model: str, params: SamplingParams, options: StreamOptions | None,
                 prompt_tokens: int) -> None:
        self.request_id = response_id
        self.model = model
        self.created = int(time.time())
        self.n = params.n
        self.hold_back = max((len(s) for s in params.stop), default=1) - 1
        self.include_usage = options is not None and options.include_usage
        self.continuous_usage = options is not None and options.continuous_usage_stats
        self.prompt_tokens = prompt_tokens
        self.streams: dict[int, ChoiceStream] = {}
        self.latest: dict[int, RequestOutput] = {}

    def envelope(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        """A chunk around some choices (with include_usage: ``"usage": null``, or the usage so far with
        continuous_usage_stats)."""
        chunk = {"id": self.request_id, "object": self.object_name, "created": self.created, "model": self.model,
                 "choices": choices}
        if self.include_usage:
            chunk["usage"] = self.usage() if self.continuous_usage else None
        return {**chunk, **extra}

    def usage(self) -> dict[str, int]:
        """OpenAI's usage object so far: prompt tokens once per prompt, completion tokens of every choice."""
        completion = sum(len(c.token_ids) for o in self.latest.values() for c in o.outputs) * self.count_completion
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}

    def start(self) -> list[dict[str, Any]]:
        """Chunks to send before any output."""
        return []

    def chunks(self, prompt_index: int, output: RequestOutput) -> list[dict[str, Any]]:
        """The chunks one new output of one prompt makes."""
        self.latest[prompt_index] = output
        chunks = []
        for completion in output.outputs:
            index = prompt_index * self.n + completion.index
            stream = self.streams.setdefault(index, ChoiceStream(self.hold_back))
            step = stream.advance(completion)
            if step is not None:
                chunks.append(self.envelope([self.choice(index, output, completion, *step)]))
        return chunks

    def choice(self, index: int, output: RequestOutput, completion: CompletionOutput, text: str, first: int,
               last: int) -> dict[str, Any]:
        """One choice: its delta in a chunk, or all of it in a whole response (subclasses)."""
        raise NotImplementedError

    def response(self, outputs: list[RequestOutput]) -> dict[str, Any]:
        """The whole (non-streaming) response for every prompt's finished output (subclasses)."""
        raise NotImplementedError

    def all_choices(self, outputs: list[RequestOutput]) -> list[dict[str, Any]]:
        """Every finished choice, in index order."""
        self.latest = dict(enumerate(outputs))
        return [self.choice(p * self.n + c.index, o, c, c.text, 0, len(c.token_ids))
                for p, o in enumerate(outputs) for c in o.outputs]

    def finish(self) -> list[dict[str, Any]]:
        """Chunks after the last output: the usage chunk when asked for."""
        if not self.include_usage:
            return []
        return [self.envelope([], usage=self.usage())]


async def event_stream(generation: Generation, writer: ChunkWriter) -> AsyncIterator[str]:
    """The events of a started Generation, then ``data: [DONE]``; a later error becomes an error event."""
    try:
        for chunk in writer.start():
            yield sse(chunk)
        async for prompt_index, output in generation.outputs():
            for chunk in writer.chunks(prompt_index, output):
                yield sse(chunk)
        for chunk in writer.finish():
            yield sse(chunk)
    except Exception as exc:
        error = as_api_error(exc)
        yield sse(error_body(error.status, error.message, error.param, error.code))
    yield DONE


async def respond(request: Request, generation: Generation, writer: ChunkWriter, stream: bool) -> Response:
    """The whole response when done, or a stream once every prompt has output (errors keep their status)."""
    if not stream:
        try:
            return JSONResponse(writer.response(await unless_disconnected(request, generation.final_outputs())))
        finally:
            await generation.aclose()
    try:
        await unless_disconnected(request, generation.started())
    except BaseException:
        await generation.aclose()
        raise
    return SSEResponse(event_stream(generation, writer), generation)
