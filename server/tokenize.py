"""Prompts to token ids (off the event loop), the context-length check, and POST /tokenize and /detokenize."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from pegboard.server.body import read_json
from pegboard.server.errors import APIError
from pegboard.server.fields import get_bool, get_token_ids, invalid
from pegboard.server.protocol import parse_messages
from pegboard.server.state import ServerState, state_of


@dataclass(frozen=True)
class PromptInput:
    """One prompt as the engine gets it, and its text where the request gave one."""

    token_ids: list[int]
    text: str | None


async def completion_prompts(state: ServerState, prompts: list[str | list[int]]) -> list[PromptInput]:
    """Tokenize string prompts (with special tokens, as ``LLM.generate`` does); token ids pass through."""
    if any(isinstance(p, str) for p in prompts):
        _need_tokenizer(state, "prompt", "send the prompt as token ids")
    return [PromptInput(await _encode(state, p, True, "prompt"), p) if isinstance(p, str)
            else PromptInput(p, None) for p in prompts]


async def chat_prompt(state: ServerState, messages: list[dict[str, str]], add_generation_prompt: bool
                      ) -> PromptInput:
    """The chat template applied to the messages, tokenized without special tokens (as ``LLM.chat`` does)."""
    text = await render_chat(state, messages, add_generation_prompt)
    return PromptInput(await _encode(state, text, False, "messages"), text)


async def render_chat(state: ServerState, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    """The prompt text the chat template makes of ``messages``; a template error is a 400."""
    tokenizer = _need_tokenizer(state, "messages", "use /v1/completions with token ids")
    template = state.chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise invalid("messages", "cannot be used: the model has no chat template (start the server with "
                                  "--chat-template)")
    try:
        return await asyncio.to_thread(tokenizer.apply_chat_template, messages, chat_template=template,
                                       tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # the template may raise on purpose (e.g. roles must alternate)
        raise invalid("messages", f"were rejected by the chat template: {exc}") from None


def check_context(state: ServerState, num_prompt_tokens: int, max_tokens: int | None, param: str) -> None:
    """400 when the prompt plus the tokens asked for cannot fit in max_model_len."""
    limit = state.model.max_model_len
    wanted = num_prompt_tokens + (max_tokens or 1)
    if num_prompt_tokens == 0:
        raise invalid(param, "is empty")
    if wanted > limit:
        asked = f"{max_tokens} in the completion" if max_tokens else "at least 1 in the completion"
        raise APIError(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                            f"{wanted} tokens ({num_prompt_tokens} in the {param}, {asked}). Please reduce the "
                            f"length of the {param} or completion.",
                       param="max_tokens" if max_tokens and num_prompt_tokens < limit else param,
                       code="context_length_exceeded")


def check_prompt_chars(state: ServerState, text: str, param: str) -> None:
    """400 before tokenizing when the text has more characters than max_model_len tokens can hold (each token
    spells at most as many characters as the tokenizer's longest token): an oversized prompt costs its bytes,
    not a tokenization."""
    model = state.model
    if model.longest_token_chars is not None and len(text) > model.max_model_len * model.longest_token_chars:
        raise APIError(400, f"This model's maximum context length is {model.max_model_len} tokens, and the {param} "
                            f"has {len(text)} characters, more than that many tokens can spell (at most "
                            f"{model.longest_token_chars} characters each, the tokenizer's longest token). Please "
                            f"reduce the length of the {param}.",
                       param=param, code="context_length_exceeded")


def decode(state: ServerState, token_ids: list[int]) -> str:
    """Text of token ids (``token_id:N`` strings without a tokenizer)."""
    if state.tokenizer is None:
        return "".join(f"token_id:{t}" for t in token_ids)
    return state.tokenizer.decode(token_ids)


async def tokenize(request: Request) -> JSONResponse:
    """POST /tokenize (vLLM's shape): ``prompt`` or ``messages`` -> ``{"count", "max_model_len", "tokens"}``."""
    state = state_of(request)
    body = await read_json(request)
    state.model.check_name(body)
    if body.get("messages") is not None:
        text = await render_chat(state, parse_messages(body["messages"]),
                                 get_bool(body, "add_generation_prompt", True))
        special = get_bool(body, "add_special_tokens", False)
    elif isinstance(body.get("prompt"), str):
        text, special = body["prompt"], get_bool(body, "add_special_tokens", True)
    else:
        raise invalid("prompt", "must be a string (or send 'messages')")
    _need_tokenizer(state, "prompt", "this server cannot tokenize")
    ids = await _encode(state, text, special, "messages" if body.get("messages") is not None else "prompt")
    strs = state.tokenizer.convert_ids_to_tokens(ids) if get_bool(body, "return_token_strs", False) else None
    return JSONResponse({"count": len(ids), "max_model_len": state.model.max_model_len, "tokens": ids,
                         "token_strs": strs})


async def detokenize(request: Request) -> JSONResponse:
    """POST /detokenize (vLLM's shape): ``{"tokens": [ids]}`` -> ``{"prompt": text}``."""
    state = state_of(request)
    body = await read_json(request)
    state.model.check_name(body)
    ids = get_token_ids(body, "tokens", state.model.vocab_size)
    if ids is None:
        raise invalid("tokens", "is required")
    _need_tokenizer(state, "tokens", "this server cannot detokenize")
    return JSONResponse({"prompt": await asyncio.to_thread(decode, state, ids)})


def _need_tokenizer(state: ServerState, param: str, hint: str) -> Any:
    if state.tokenizer is None:
        raise invalid(param, f"needs a tokenizer, and this server runs without one: {hint}")
    return state.tokenizer


async def _encode(state: ServerState, text: str, add_special_tokens: bool, param: str) -> list[int]:
    """Token ids of ``text`` (off the event loop), after the character-length check."""
    check_prompt_chars(state, text, param)
    return list(await asyncio.to_thread(lambda: state.tokenizer(text, add_special_tokens=add_special_tokens)
                                        .input_ids))
