"""The two POST routes' requests: a JSON body in (schemas.py checks its types), a CompletionRequest or ChatRequest
with SamplingParams out, checked against the served model and the server's limits.

Every field vLLM takes is honoured or, when its feature is missing, a 400 naming it (REFUSED); an unknown top-level
field is a 400 naming it too, where vLLM ignores it (tests/test_server_vllm_fields.py walks vLLM's list).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from pegboard.core.sampling_params import SamplingParams
from pegboard.server.errors import APIError
from pegboard.server.schemas import (INT64_MAX, ChatBody, CompletionBody, Message, SamplingBody, invalid,
                                     validate)
from pegboard.server.structured_outputs import grammar_request
from pegboard.plugins.tool_calling.tool_choice import ToolPlan, tool_grammar, tool_plan

MAX_LOGPROBS = 20  # --max-logprobs (vLLM's default); the engine computes at most this many
DEFAULT_MAX_PROMPTS = 128  # prompts in one /v1/completions request (--max-prompts-per-request)
DEFAULT_MAX_SEQUENCES = 256  # n x prompts in one request (--max-sequences-per-request): two default batches

_UNSUPPORTED = "is not supported by this server"
_OLDER_FUNCTIONS = "is OpenAI's older form of tool calling, not supported: send 'tools' and 'tool_choice'"
# vLLM's fields whose feature this server lacks: (the value, or a tuple of values, asking for nothing; why anything
# else is refused).
REFUSED: dict[str, tuple[Any, str]] = {
    **dict.fromkeys(("allowed_token_ids", "logprob_token_ids", "logits_processors", "prompt_embeds", "session_id",
                     "repetition_detection", "thinking_token_budget", "guided_whitespace_pattern"),
                    (None, _UNSUPPORTED)),
    **dict.fromkeys(("kv_transfer_params", "ec_transfer_params"), (None, "is not supported: no disaggregated serving")),
    "use_beam_search": (False, "is not supported: beam search is not implemented"),
    "length_penalty": (1.0, "applies to beam search, which is not implemented"),
    "watermarking": (False, _UNSUPPORTED), "bad_words": ([], _UNSUPPORTED),
    "spaces_between_special_tokens": (True, "is not supported: only true (the default) is"),
    "priority": (0, "is not supported: the scheduler is first come first served"),
    "cache_salt": (None, "is not supported: the prefix cache has no salts"),
    "vllm_xargs": (None, "is not supported: no extension reads it"),
    "stream_interval": (1, "is not supported: every token is streamed as it comes"),
    "routed_experts_prompt_start": (0, _UNSUPPORTED), "return_token_offsets": (False, _UNSUPPORTED),
    "return_mm_kwargs": (True, _UNSUPPORTED),
    "guided_decoding_backend": (None, "is not supported: the grammar plugins decide the backend"),
}
CHAT_REFUSED = {
    **REFUSED, **dict.fromkeys(("audio", "reasoning_effort", "media_io_kwargs", "mm_processor_kwargs"),
                               (None, _UNSUPPORTED)),
    "functions": (None, _OLDER_FUNCTIONS), "function_call": (("none", "auto"), _OLDER_FUNCTIONS),
    "modalities": (["text"], "only [\"text\"] is supported"),
    "include_reasoning": (True, _UNSUPPORTED), "echo": (False, _UNSUPPORTED),
    "chat_template": (None, "is refused: a request may not bring its own template (vLLM's default too)"),
}


@dataclass(frozen=True)
class ServedModel:
    """What validating a request needs to know about the served model."""

    names: tuple[str, ...]
    vocab_size: int
    max_model_len: int
    grammars: frozenset[str]
    longest_token_chars: int | None = None  # characters of the tokenizer's longest token (None: no tokenizer)
    tool_parser: str | None = None  # --tool-call-parser (with --enable-auto-tool-choice): tool_choice auto works

    def check_name(self, name: str | None) -> str:
        """The model a request names (default: the first served name); 404 when it is not served."""
        name = self.names[0] if name is None else name
        if name not in self.names:
            raise APIError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")
        return name


@dataclass(frozen=True)
class RequestLimits:
    """How much work one request may ask for (server flags); more is a 400 naming the field."""

    max_prompts: int = DEFAULT_MAX_PROMPTS
    max_sequences: int = DEFAULT_MAX_SEQUENCES  # n x prompts
    max_logprobs: int = MAX_LOGPROBS  # logprobs, top_logprobs, prompt_logprobs

    def check_sequences(self, n: int, num_prompts: int) -> None:
        """400 when n x prompts exceeds max_sequences (naming ``n`` when it is above 1, else ``prompt``)."""
        if n * num_prompts > self.max_sequences:
            asked = f"n={n} x {num_prompts} prompts" if num_prompts > 1 else f"n={n}"
            raise invalid("n" if n > 1 else "prompt",
                          f"asks for {n * num_prompts} sequences ({asked}); this server allows at most "
                          f"{self.max_sequences} per request (--max-sequences-per-request)")

    def check_logprobs(self, name: str, value: int | None) -> None:
        if value is not None and value > self.max_logprobs:
            raise invalid(name, f"must be at most {self.max_logprobs} (--max-logprobs), got {value}")


@dataclass(frozen=True)
class CompletionRequest:
    """A validated POST /v1/completions body."""

    model: str
    body: CompletionBody
    prompts: list[str | list[int]]
    params: SamplingParams

    @property
    def echo_only(self) -> bool:
        """max_tokens 0 with echo: answer with the prompt (and its logprobs) only."""
        return self.body.max_tokens == 0


@dataclass(frozen=True)
class ChatRequest:
    """A validated POST /v1/chat/completions body."""

    model: str
    body: ChatBody
    messages: list[dict[str, Any]]
    params: SamplingParams
    tools: ToolPlan = ToolPlan()


def parse_completion_request(body: dict[str, Any], model: ServedModel, limits: RequestLimits = RequestLimits()
                             ) -> CompletionRequest:
    """Validate a completions body."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)) and len(prompt) > limits.max_prompts:
        raise invalid("prompt", f"holds {len(prompt)} prompts; this server takes at most {limits.max_prompts} per "
                                "request (--max-prompts-per-request)")  # counted before any prompt is looked at
    refuse(body, REFUSED)
    request = validate(CompletionBody, body)
    name = model.check_name(request.model)
    prompts = _prompts(request.prompt, model.vocab_size)
    if request.max_tokens == 0 and not request.echo:
        raise invalid("max_tokens", "must be at least 1 (0 only with echo), got 0")
    if request.suffix:
        raise invalid("suffix", "is not supported")
    if request.best_of not in (None, request.n):
        raise invalid("best_of", "is not supported (it must be null or equal to n)")
    limits.check_sequences(request.n, len(prompts))
    limits.check_logprobs("logprobs", request.logprobs)
    prompt_logprobs = request.logprobs if request.prompt_logprobs is None and request.echo else request.prompt_logprobs
    params = _sampling_params(request, model, limits, max_tokens=request.max_tokens or 1, logprobs=request.logprobs,
                              prompt_logprobs=prompt_logprobs)
    return CompletionRequest(name, request, prompts, params)


def parse_chat_request(body: dict[str, Any], model: ServedModel, limits: RequestLimits = RequestLimits()
                       ) -> ChatRequest:
    """Validate a chat completions body."""
    refuse(body, CHAT_REFUSED)
    request = validate(ChatBody, body)
    name = model.check_name(request.model)
    messages = chat_messages(request.messages)
    if request.continue_final_message and request.add_generation_prompt:
        raise invalid("continue_final_message", "cannot be used with add_generation_prompt (set it to false)")
    max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    if not request.logprobs and request.top_logprobs is not None:
        raise invalid("top_logprobs", "needs 'logprobs' set to true")
    top_logprobs = (request.top_logprobs or 0) if request.logprobs else None
    limits.check_sequences(request.n, 1)
    limits.check_logprobs("top_logprobs", top_logprobs)
    params = _sampling_params(request, model, limits, max_tokens=max_tokens, logprobs=top_logprobs,
                              prompt_logprobs=request.prompt_logprobs)
    tools = tool_plan(request, model.tool_parser)
    grammar = tool_grammar(tools, model.grammars, params.extra)
    if grammar:
        params = replace(params, extra={**params.extra, **grammar})
    return ChatRequest(name, request, messages, params, tools)


def refuse(body: dict[str, Any], refused: dict[str, tuple[Any, str]]) -> None:
    """400 for the first field asking for a missing feature (null or the field's default asks for nothing)."""
    for name, (default, why) in refused.items():
        value = body.get(name)
        accepted = default if isinstance(default, tuple) else (default,)
        if value is not None and not any(value == a and isinstance(value, bool) == isinstance(a, bool)
                                         for a in accepted):
            raise invalid(name, why)


def _prompts(value: str | list, vocab_size: int) -> list[str | list[int]]:
    """A string, a list of strings, a list of token ids, or a list of token-id lists."""
    if isinstance(value, str):
        return [value]
    if value and isinstance(value[0], int):
        value = [value]
    if value and all(isinstance(p, str) or (p and all(t < vocab_size for t in p)) for p in value):
        return list(value)
    raise invalid("prompt", "must be a string, a non-empty list of strings, a list of token ids in "
                            f"[0, {vocab_size}), or a non-empty list of non-empty token-id lists")


def chat_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Messages as the chat template takes them: text content (parts joined by newlines), developer as system;
    an assistant's ``tool_calls`` with their arguments as objects (as vLLM and transformers' templates take
    them), a tool message's ``tool_call_id``."""
    entries = []
    for i, message in enumerate(messages):
        if message.content is None and message.role != "assistant":
            raise invalid(f"messages[{i}].content", "is required")
        if message.tool_calls is not None and message.role != "assistant":
            raise invalid(f"messages[{i}].tool_calls", "belong to an assistant message")
        if (message.tool_call_id is None) == (message.role == "tool"):
            raise invalid(f"messages[{i}].tool_call_id", "is required" if message.role == "tool"
                          else "belongs to a tool message")
        content = message.content or ""
        entry: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role,
                                 "content": content if isinstance(content, str)
                                 else "\n".join(part.text for part in content)}
        if message.name is not None:
            entry["name"] = message.name
        if message.tool_calls is not None:
            entry["tool_calls"] = [_history_call(call, f"messages[{i}].tool_calls[{j}]")
                                   for j, call in enumerate(message.tool_calls)]
        if message.tool_call_id is not None:
            entry["tool_call_id"] = message.tool_call_id
        entries.append(entry)
    return entries


def _history_call(call: Any, where: str) -> dict[str, Any]:
    """A call of the history for the template: its arguments parsed (a JSON object)."""
    try:
        arguments = json.loads(call.function.arguments)
    except ValueError as exc:
        raise invalid(f"{where}.function.arguments", f"is not JSON: {exc}") from None
    if not isinstance(arguments, dict):
        raise invalid(f"{where}.function.arguments", "must be a JSON object")
    return {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": arguments}}


def _sampling_params(request: SamplingBody, model: ServedModel, limits: RequestLimits, *, max_tokens: int | None,
                     logprobs: int | None, prompt_logprobs: int | None) -> SamplingParams:
    """The sampling fields both routes share, checked against the model (token ids) and the limits."""
    limits.check_logprobs("prompt_logprobs", request.prompt_logprobs)
    if request.prompt_logprobs is not None and request.stream:
        raise invalid("prompt_logprobs", "is not available when 'stream' is true")
    options = request.stream_options
    if options is not None and not request.stream:
        raise invalid("stream_options", "is only allowed when 'stream' is true")
    if options is not None and options.continuous_usage_stats and not options.include_usage:
        raise invalid("stream_options", "continuous_usage_stats needs include_usage set to true")
    if request.seed is not None and request.seed > INT64_MAX - request.n:
        raise invalid("seed", f"must be at most {INT64_MAX - request.n} with n={request.n}, got {request.seed}")
    if max_tokens is not None and request.min_tokens > max_tokens:
        raise invalid("min_tokens", f"({request.min_tokens}) must not exceed max_tokens ({max_tokens})")
    if request.truncate_prompt_tokens is not None and request.truncate_prompt_tokens > model.max_model_len:
        raise invalid("truncate_prompt_tokens", f"must be at most max_model_len ({model.max_model_len}) or -1")
    for name, ids in (("stop_token_ids", request.stop_token_ids),
                      ("logit_bias", [int(k) if k.isascii() and k.isdigit() else -1 for k in request.logit_bias or {}])):
        if any(not 0 <= t < model.vocab_size for t in ids):
            raise invalid(name, f"must name token ids in [0, {model.vocab_size})")
    return SamplingParams(
        n=request.n, max_tokens=max_tokens, logprobs=logprobs, prompt_logprobs=prompt_logprobs,
        temperature=request.temperature, top_p=request.top_p, top_k=request.top_k, min_p=request.min_p,
        repetition_penalty=request.repetition_penalty, presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty, logit_bias=request.logit_bias, seed=request.seed,
        min_tokens=request.min_tokens, stop=request.stop, stop_token_ids=list(request.stop_token_ids),
        include_stop_str_in_output=request.include_stop_str_in_output, ignore_eos=request.ignore_eos,
        skip_special_tokens=request.skip_special_tokens, extra=grammar_request(request, model.grammars))
