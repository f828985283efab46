"""POST /v1/chat/completions: messages through the chat template, n choices, chat-shaped logprobs."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from pegboard.core.outputs import CompletionOutput, RequestOutput
from pegboard.server.body import read_json
from pegboard.server.generation import Generation
from pegboard.server.logprobs import chat_logprobs
from pegboard.server.protocol import ChatRequest, parse_chat_request
from pegboard.server.state import ServerState, state_of
from pegboard.server.streaming import ChunkWriter, respond, usage
from pegboard.server.tokenize import chat_prompt, check_context


async def create_chat_completion(request: Request) -> Response:
    """Validate, apply the chat template, check the context length, then generate (streamed or whole)."""
    state = state_of(request)
    parsed = parse_chat_request(await read_json(request), state.model, state.limits)
    prompt = await chat_prompt(state, parsed.messages, parsed.add_generation_prompt)
    check_context(state, len(prompt.token_ids), parsed.params.max_tokens, "messages")
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    generation = Generation(state.engine, [prompt.token_ids], parsed.params, request_id)
    return await respond(request, generation, ChatWriter(state, parsed, request_id), parsed.stream)


class ChatWriter(ChunkWriter):
    """Shapes chat choices: a role chunk per choice first, then content deltas."""

    object_name = "chat.completion.chunk"

    def __init__(self, state: ServerState, parsed: ChatRequest, request_id: str) -> None:
        super().__init__(request_id, parsed.model, parsed.params.n, parsed.params.stop, parsed.include_usage)
        self.state = state
        self.parsed = parsed

    def start(self) -> list[dict[str, Any]]:
        role = {"role": "assistant", "content": ""}
        return [self.envelope([{"index": i, "delta": role, "logprobs": None, "finish_reason": None}])
                for i in range(self.n)]

    def choice(self, index: int, output: RequestOutput, completion: CompletionOutput, text: str, first: int,
               last: int) -> dict[str, Any]:
        logprobs = None
        if self.parsed.params.logprobs is not None:
            content = chat_logprobs(completion.token_ids[first:last], (completion.logprobs or [])[first:last],
                                    self.parsed.params.logprobs, self.state.bytes_of)
            logprobs = {"content": content, "refusal": None}
        choice = {"index": index, "delta": {"content": text} if text else {}, "logprobs": logprobs,
                  "finish_reason": completion.finish_reason, "stop_reason": completion.stop_reason}
        if self.parsed.return_token_ids:
            choice["token_ids"] = completion.token_ids[first:last]
        return choice

    def response(self, outputs: list[RequestOutput]) -> dict[str, Any]:
        choices = []
        for choice in self.all_choices(outputs):
            content = choice.pop("delta").get("content", "")
            choices.append({"index": choice.pop("index"), "message": {"role": "assistant", "content": content},
                            **choice})
        body = {"id": self.request_id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": choices, "usage": usage(outputs)}
        if self.parsed.return_token_ids:
            body["prompt_token_ids"] = outputs[0].prompt_token_ids
        return body
