"""POST /v1/chat/completions: messages through the chat template, n choices, chat-shaped logprobs."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from pegboard.core.outputs import CompletionOutput, RequestOutput
from pegboard.server.body import read_json
from pegboard.server.generation import Generation
from pegboard.server.logprobs import chat_logprobs, prompt_logprobs
from pegboard.server.protocol import ChatRequest, parse_chat_request
from pegboard.server.state import ServerState, state_of
from pegboard.server.streaming import ChunkWriter, respond
from pegboard.server.tokenize import PromptInput, chat_prompt, check_context
from pegboard.plugins.tool_calling.choice_tools import ChoiceTools, message_of


async def create_chat_completion(request: Request) -> Response:
    """Validate, apply the chat template, check the context length, then generate (streamed or whole)."""
    state = state_of(request)
    parsed = parse_chat_request(await read_json(request), state.model, state.limits)
    prompt = await chat_prompt(state, parsed)
    check_context(state, len(prompt.token_ids), parsed.params.max_tokens, "messages")
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    writer = ChatWriter(state, parsed, prompt, f"chatcmpl-{parsed.body.request_id}" if parsed.body.request_id
                        else request_id)
    generation = Generation(state.engine, [prompt.token_ids], parsed.params, request_id,
                            final_output_only=not parsed.body.stream)
    return await respond(request, generation, writer, parsed.body.stream)


class ChatWriter(ChunkWriter):
    """Shapes chat choices: a role chunk per choice first, then content and tool-call deltas."""

    object_name = "chat.completion.chunk"

    def __init__(self, state: ServerState, parsed: ChatRequest, prompt: PromptInput, response_id: str) -> None:
        super().__init__(response_id, parsed.model, parsed.params, parsed.body.stream_options, len(prompt.token_ids))
        self.state = state
        self.parsed = parsed
        self.prompt = prompt
        # --response-role answers a generation prompt; a continued message keeps its own role (as in vLLM)
        self.role = state.response_role if parsed.body.add_generation_prompt else parsed.messages[-1]["role"]
        self.tools: dict[int, ChoiceTools] = {}  # per choice index

    def start(self) -> list[dict[str, Any]]:
        role = {"role": self.role, "content": ""}
        chunks = [self.envelope([{"index": i, "delta": role, "logprobs": None, "finish_reason": None}])
                  for i in range(self.n)]
        chunks[0].update(self._prompt_fields())  # the prompt's ids and text come once, first
        return chunks

    def _prompt_fields(self) -> dict[str, Any]:
        body = self.parsed.body
        return {**({"prompt_token_ids": self.prompt.token_ids} if body.return_token_ids else {}),
                **({"prompt_text": self.prompt.text} if body.return_prompt_text else {})}

    def choice(self, index: int, output: RequestOutput, completion: CompletionOutput, text: str, first: int,
               last: int) -> dict[str, Any]:
        logprobs = None
        if self.parsed.params.logprobs is not None:
            content = chat_logprobs(completion.token_ids[first:last], (completion.logprobs or [])[first:last],
                                    self.parsed.params.logprobs, self.state.bytes_of,
                                    self.parsed.body.return_tokens_as_token_ids)
            logprobs = {"content": content, "refusal": None}
        tools = self.tools.setdefault(index, ChoiceTools(self.parsed.tools, self.state.tool_parser))
        delta = tools.delta(text, completion.finish_reason is not None)
        choice = {"index": index, "delta": delta, "logprobs": logprobs,
                  "finish_reason": tools.finish_reason(completion.finish_reason),
                  "stop_reason": completion.stop_reason}
        if self.parsed.body.return_token_ids:
            choice["token_ids"] = completion.token_ids[first:last]
        return choice

    def response(self, outputs: list[RequestOutput]) -> dict[str, Any]:
        choices = []
        for choice in self.all_choices(outputs):
            message = message_of(self.role, choice.pop("delta"))
            choices.append({"index": choice.pop("index"), "message": message, **choice})
        body = {"id": self.request_id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage(), **self._prompt_fields()}
        if self.parsed.body.prompt_logprobs is not None:
            body["prompt_logprobs"] = prompt_logprobs(outputs[0].prompt_logprobs or [])
        return body
