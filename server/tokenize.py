"""Prompts to token ids (off the event loop), the context-length check, and POST /tokenize and /detokenize."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any

from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment
from starlette.requests import Request
from starlette.responses import JSONResponse

from pegboard.server.body import read_json
from pegboard.server.errors import APIError
from pegboard.server.protocol import ChatRequest, CompletionRequest, chat_messages
from pegboard.server.schemas import DetokenizeBody, TokenizeBody, invalid, validate
from pegboard.server.state import ServerState, state_of

RENDER_ARGUMENTS = frozenset({"messages", "add_generation_prompt", "continue_final_message", "documents", "tools",
                              "chat_template", "tokenize"})  # apply_chat_template's own arguments


@dataclass(frozen=True)
class PromptInput:
    """One prompt as the engine gets it, and its text where the request gave one."""

    token_ids: list[int]
    text: str | None


async def completion_prompts(state: ServerState, parsed: CompletionRequest) -> list[PromptInput]:
    """Tokenize string prompts (with special tokens unless ``add_special_tokens`` is false, as ``LLM.generate``);
    token ids pass through; then ``truncate_prompt_tokens``."""
    body = parsed.body
    if any(isinstance(p, str) for p in parsed.prompts):
        _need_tokenizer(state, "prompt", "send the prompt as token ids")
    prompts = [PromptInput(await _encode(state, p, body.add_special_tokens, "prompt"), p) if isinstance(p, str)
               else PromptInput(p, None) for p in parsed.prompts]
    return [truncated(prompt, body.truncate_prompt_tokens, body.truncation_side, state) for prompt in prompts]


async def chat_prompt(state: ServerState, parsed: ChatRequest) -> PromptInput:
    """The chat template applied to the messages, tokenized without special tokens unless ``add_special_tokens``
    (as ``LLM.chat`` does), then ``truncate_prompt_tokens``."""
    body = parsed.body
    plan = parsed.tools
    text = await render_chat(state, parsed.messages, body.add_generation_prompt, body.continue_final_message,
                             body.chat_template_kwargs, body.documents, list(plan.tools) or None,
                             plan.must_reach_model)
    prompt = PromptInput(await _encode(state, text, body.add_special_tokens, "messages"), text)
    return truncated(prompt, body.truncate_prompt_tokens, body.truncation_side, state)


def truncated(prompt: PromptInput, keep: int | None, side: str, state: ServerState) -> PromptInput:
    """The prompt cut to its last (``side`` "left") or first ``keep`` tokens (-1: max_model_len), as vLLM does."""
    keep = state.model.max_model_len if keep == -1 else keep
    if keep is None or len(prompt.token_ids) <= keep:
        return prompt
    ids = prompt.token_ids[len(prompt.token_ids) - keep:] if side == "left" else prompt.token_ids[:keep]
    return PromptInput(ids, None)  # the text is the tokens' now (echo decodes them)


async def render_chat(state: ServerState, messages: list[dict[str, Any]], add_generation_prompt: bool,
                      continue_final_message: bool = False, template_kwargs: dict[str, Any] | None = None,
                      documents: list[dict[str, str]] | None = None, tools: list[dict[str, Any]] | None = None,
                      tools_must_reach: bool = True) -> str:
    """The prompt text the chat template makes of ``messages`` (and ``tools``); a template error, or a template
    variable asked for that the template never reads (``chat_template_kwargs``, ``documents``, ``tools`` unless
    a tool choice constrains the output anyway: ``tools_must_reach`` false), is a 400."""
    tokenizer = _need_tokenizer(state, "messages", "use /v1/completions with token ids")
    template = state.chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise invalid("messages", "cannot be used: the model has no chat template (start the server with "
                                  "--chat-template)")
    kwargs = dict(template_kwargs or {})
    asked = [(name, "chat_template_kwargs") for name in kwargs]
    for name, value, needed in (("documents", documents, True), ("tools", tools, tools_must_reach)):
        if value is not None:
            kwargs[name] = value
            asked += [(name, name)] if needed else []
    for name, param in asked:
        if name in RENDER_ARGUMENTS and param == "chat_template_kwargs":
            raise invalid(param, f"cannot set {name!r}: it has its own request field")
        if name not in template_variables(template):
            raise invalid(param, f"sets {name!r}, which the chat template does not use" if param != name else
                          f"cannot reach the model: the chat template does not use {name!r}")
    try:
        return await asyncio.to_thread(tokenizer.apply_chat_template, messages, chat_template=template,
                                       tokenize=False, add_generation_prompt=add_generation_prompt,
                                       continue_final_message=continue_final_message, **kwargs)
    except Exception as exc:  # the template may raise on purpose (e.g. roles must alternate)
        raise invalid("messages", f"were rejected by the chat template: {exc}") from None


@functools.lru_cache(maxsize=8)
def template_variables(template: str) -> frozenset[str]:
    """The variables a Jinja chat template reads from its caller."""
    return frozenset(meta.find_undeclared_variables(ImmutableSandboxedEnvironment(
        extensions=["jinja2.ext.loopcontrols"]).parse(template)))


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
    body = validate(TokenizeBody, await read_json(request))
    state.model.check_name(body.model)
    if body.messages is not None:
        tools = [tool.model_dump(exclude_none=True) for tool in body.tools] if body.tools else None
        text = await render_chat(state, chat_messages(body.messages), body.add_generation_prompt,
                                 body.continue_final_message, body.chat_template_kwargs, tools=tools)
    elif body.prompt is not None:
        text = body.prompt
    else:
        raise invalid("prompt", "is required (or send 'messages')")
    _need_tokenizer(state, "prompt", "this server cannot tokenize")
    special = body.add_special_tokens if body.add_special_tokens is not None else body.messages is None
    ids = await _encode(state, text, special, "messages" if body.messages is not None else "prompt")
    strs = state.tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs else None
    return JSONResponse({"count": len(ids), "max_model_len": state.model.max_model_len, "tokens": ids,
                         "token_strs": strs})


async def detokenize(request: Request) -> JSONResponse:
    """POST /detokenize (vLLM's shape): ``{"tokens": [ids]}`` -> ``{"prompt": text}``."""
    state = state_of(request)
    body = validate(DetokenizeBody, await read_json(request))
    state.model.check_name(body.model)
    if any(t >= state.model.vocab_size for t in body.tokens):
        raise invalid("tokens", f"must be a list of token ids in [0, {state.model.vocab_size})")
    _need_tokenizer(state, "tokens", "this server cannot detokenize")
    return JSONResponse({"prompt": await asyncio.to_thread(decode, state, body.tokens)})


def _need_tokenizer(state: ServerState, param: str, hint: str) -> Any:
    if state.tokenizer is None:
        raise invalid(param, f"needs a tokenizer, and this server runs without one: {hint}")
    return state.tokenizer


async def _encode(state: ServerState, text: str, add_special_tokens: bool, param: str) -> list[int]:
    """Token ids of ``text`` (off the event loop), after the character-length check."""
    check_prompt_chars(state, text, param)
    return list(await asyncio.to_thread(lambda: state.tokenizer(text, add_special_tokens=add_special_tokens)
                                        .input_ids))
