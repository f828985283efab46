"""POST /v1/completions: one engine request per prompt, n choices each, echo, legacy and prompt logprobs."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from pegboard.core.outputs import CompletionOutput, RequestOutput
from pegboard.server.body import read_json
from pegboard.server.generation import Generation
from pegboard.server.logprobs import TextOffset, completion_logprobs, merge_completion_logprobs, prompt_logprobs
from pegboard.server.protocol import CompletionRequest, parse_completion_request
from pegboard.server.state import ServerState, state_of
from pegboard.server.streaming import ChunkWriter, respond
from pegboard.server.tokenize import PromptInput, check_context, completion_prompts, decode


async def create_completion(request: Request) -> Response:
    """Validate, tokenize, check the context length, then generate (streamed or whole)."""
    state = state_of(request)
    parsed = parse_completion_request(await read_json(request), state.model, state.limits)
    prompts = await completion_prompts(state, parsed)
    for prompt in prompts:
        check_context(state, len(prompt.token_ids), None if parsed.echo_only else parsed.params.max_tokens,
                      "prompt")
    request_id = f"cmpl-{uuid.uuid4().hex}"
    writer = CompletionWriter(state, parsed, prompts, f"cmpl-{parsed.body.request_id}" if parsed.body.request_id
                              else request_id)
    generation = Generation(state.engine, [p.token_ids for p in prompts], parsed.params, request_id,
                            final_output_only=not parsed.body.stream)
    return await respond(request, generation, writer, parsed.body.stream)


class CompletionWriter(ChunkWriter):
    """Shapes completion choices; a choice's first part carries the echoed prompt."""

    object_name = "text_completion"

    def __init__(self, state: ServerState, parsed: CompletionRequest, prompts: list[PromptInput],
                 response_id: str) -> None:
        super().__init__(response_id, parsed.model, parsed.params, parsed.body.stream_options,
                         sum(len(p.token_ids) for p in prompts))
        self.state = state
        self.parsed = parsed
        self.prompts = prompts
        self.count_completion = not parsed.echo_only
        self.offsets: dict[int, TextOffset] = {}  # choice index -> text offset of its next token

    def choice(self, index: int, output: RequestOutput, completion: CompletionOutput, text: str, first: int,
               last: int) -> dict[str, Any]:
        parsed, body = self.parsed, self.parsed.body
        if parsed.echo_only:
            text, first, last = "", 0, 0
        head = index not in self.offsets
        offset = self.offsets.setdefault(index, TextOffset())
        logprobs = None
        by_id = body.return_tokens_as_token_ids
        if head and body.echo:
            prompt = self.prompts[index // self.n]
            text = (prompt.text if prompt.text is not None else decode(self.state, prompt.token_ids)) + text
            if parsed.params.logprobs is not None:
                positions = output.prompt_logprobs or [None] * len(output.prompt_token_ids)
                logprobs = completion_logprobs(output.prompt_token_ids, positions, offset, self.state.bytes_of, by_id)
        if parsed.params.logprobs is not None:
            positions = (completion.logprobs or [])[first:last]
            part = completion_logprobs(completion.token_ids[first:last], positions, offset, self.state.bytes_of,
                                       by_id)
            logprobs = part if logprobs is None else merge_completion_logprobs(logprobs, part)
        finish, stop_reason = completion.finish_reason, completion.stop_reason
        if finish and parsed.echo_only:  # the one token generated is not part of the answer
            finish, stop_reason = "length", None
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish,
                  "stop_reason": stop_reason}
        if body.prompt_logprobs is not None:  # never streamed
            choice["prompt_logprobs"] = prompt_logprobs(output.prompt_logprobs or [])
        if body.return_token_ids:
            choice["token_ids"] = completion.token_ids[first:last]
            if head:
                choice["prompt_token_ids"] = output.prompt_token_ids
        return choice

    def response(self, outputs: list[RequestOutput]) -> dict[str, Any]:
        choices = self.all_choices(outputs)
        return {"id": self.request_id, "object": self.object_name, "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage()}
