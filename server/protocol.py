"""The two POST schemas: a JSON body in, a validated CompletionRequest or ChatRequest (with SamplingParams) out.

Fields the server does not know are ignored (as vLLM does, so clients that send newer OpenAI fields keep
working); known fields whose feature is missing (tools, suffix, best_of, audio, a response_format without a
grammar plugin) are a 400 naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pegboard.core.grammar_processor import GRAMMAR_FIELD
from pegboard.core.sampling_params import SamplingParams
from pegboard.server.errors import APIError
from pegboard.server.fields import (INT64_MAX, INT64_MIN, get_bool, get_int, get_number, get_object, get_str,
                                    get_token_ids, invalid, is_int, is_number, is_token_ids)

MAX_N = 128
MAX_LOGPROBS = 20
DEFAULT_MAX_PROMPTS = 128  # prompts in one /v1/completions request (--max-prompts-per-request)
DEFAULT_MAX_SEQUENCES = 256  # n x prompts in one request (--max-sequences-per-request): two default batches
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
# vLLM's guided-decoding extras -> the grammar kind a plugin registers for them.
GUIDED_FIELDS = {"guided_json": "json_schema", "guided_regex": "regex", "guided_choice": "choice"}


@dataclass(frozen=True)
class ServedModel:
    """What validating a request needs to know about the served model."""

    names: tuple[str, ...]
    vocab_size: int
    max_model_len: int
    grammars: frozenset[str]
    longest_token_chars: int | None = None  # characters of the tokenizer's longest token (None: no tokenizer)

    def check_name(self, body: dict[str, Any]) -> str:
        """The model a request names (default: the first served name); 404 when it is not served."""
        name = get_str(body, "model", self.names[0])
        if name not in self.names:
            raise APIError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")
        return name


@dataclass(frozen=True)
class RequestLimits:
    """How much work one request may ask for (server flags); more is a 400 naming the field."""

    max_prompts: int = DEFAULT_MAX_PROMPTS
    max_sequences: int = DEFAULT_MAX_SEQUENCES  # n x prompts

    def check_sequences(self, n: int, num_prompts: int) -> None:
        """400 when n x prompts exceeds max_sequences (naming ``n`` when it is above 1, else ``prompt``)."""
        if n * num_prompts > self.max_sequences:
            asked = f"n={n} x {num_prompts} prompts" if num_prompts > 1 else f"n={n}"
            raise invalid("n" if n > 1 else "prompt",
                          f"asks for {n * num_prompts} sequences ({asked}); this server allows at most "
                          f"{self.max_sequences} per request (--max-sequences-per-request)")


@dataclass(frozen=True)
class CompletionRequest:
    """A validated POST /v1/completions body."""

    model: str
    prompts: list[str | list[int]]
    params: SamplingParams
    stream: bool
    include_usage: bool
    echo: bool
    echo_only: bool  # max_tokens 0 with echo: answer with the prompt (and its logprobs) only
    return_token_ids: bool


@dataclass(frozen=True)
class ChatRequest:
    """A validated POST /v1/chat/completions body."""

    model: str
    messages: list[dict[str, str]]
    add_generation_prompt: bool
    params: SamplingParams
    stream: bool
    include_usage: bool
    return_token_ids: bool


def parse_completion_request(body: dict[str, Any], model: ServedModel, limits: RequestLimits = RequestLimits()
                             ) -> CompletionRequest:
    """Validate a completions body."""
    name = model.check_name(body)
    prompts = _prompts(body.get("prompt"), model.vocab_size, limits.max_prompts)
    echo = get_bool(body, "echo", False)
    max_tokens = get_int(body, "max_tokens", 16, lo=0 if echo else 1)
    logprobs = get_int(body, "logprobs", None, lo=0, hi=MAX_LOGPROBS)
    if body.get("suffix"):
        raise invalid("suffix", "is not supported")
    n = get_int(body, "n", 1, lo=1, hi=MAX_N)
    if get_int(body, "best_of", n, lo=1, hi=MAX_N) != n:
        raise invalid("best_of", "is not supported (it must be null or equal to n)")
    limits.check_sequences(n, len(prompts))
    params = _sampling_params(body, model, n=n, max_tokens=max_tokens or 1, logprobs=logprobs,
                              prompt_logprobs=logprobs if echo else None)
    stream, include_usage = _stream_fields(body)
    return CompletionRequest(name, prompts, params, stream, include_usage, echo, max_tokens == 0,
                             get_bool(body, "return_token_ids", False))


def parse_chat_request(body: dict[str, Any], model: ServedModel, limits: RequestLimits = RequestLimits()
                       ) -> ChatRequest:
    """Validate a chat completions body."""
    name = model.check_name(body)
    messages = parse_messages(body.get("messages"))
    _reject_tools(body)
    max_tokens = get_int(body, "max_completion_tokens", None, lo=1)
    if max_tokens is None:
        max_tokens = get_int(body, "max_tokens", None, lo=1)
    top_logprobs = get_int(body, "top_logprobs", None, lo=0, hi=MAX_LOGPROBS)
    if not get_bool(body, "logprobs", False):
        if top_logprobs is not None:
            raise invalid("top_logprobs", "needs 'logprobs' set to true")
    elif top_logprobs is None:
        top_logprobs = 0
    n = get_int(body, "n", 1, lo=1, hi=MAX_N)
    limits.check_sequences(n, 1)
    params = _sampling_params(body, model, n=n, max_tokens=max_tokens, logprobs=top_logprobs, prompt_logprobs=None)
    stream, include_usage = _stream_fields(body)
    return ChatRequest(name, messages, get_bool(body, "add_generation_prompt", True), params, stream,
                       include_usage, get_bool(body, "return_token_ids", False))


def _prompts(value: object, vocab_size: int, max_prompts: int) -> list[str | list[int]]:
    """A string, a list of strings, a list of token ids, or a list of at most ``max_prompts`` of either
    (counted before any prompt is looked at, so a million prompts cost no more than their count)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and isinstance(value[0], (str, list)) and len(value) > max_prompts:
        raise invalid("prompt", f"holds {len(value)} prompts; this server takes at most {max_prompts} per request "
                                "(--max-prompts-per-request)")
    if isinstance(value, list) and value:
        if all(isinstance(p, str) for p in value):
            return list(value)
        if all(is_int(t) for t in value):
            if is_token_ids(value, vocab_size):
                return [value]
        elif all(isinstance(p, list) and p and is_token_ids(p, vocab_size) for p in value):
            return list(value)
    if value is None:
        raise invalid("prompt", "is required")
    raise invalid("prompt", "must be a string, a non-empty list of strings, a list of token ids in "
                            f"[0, {vocab_size}), or a non-empty list of non-empty token-id lists")


def parse_messages(value: object) -> list[dict[str, str]]:
    """Chat messages as {"role", "content"} with text content (content parts joined by newlines)."""
    if not isinstance(value, list) or not value:
        raise invalid("messages", "must be a non-empty list of messages")
    messages = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid(where, "must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise invalid(f"{where}.role", f"must be one of {', '.join(CHAT_ROLES)}")
        content = _content(message.get("content"), f"{where}.content", nullable=role == "assistant")
        entry = {"role": "system" if role == "developer" else role, "content": content}
        name = message.get("name")
        if name is not None:
            if not isinstance(name, str):
                raise invalid(f"{where}.name", "must be a string")
            entry["name"] = name
        messages.append(entry)
    return messages


def _content(value: object, where: str, nullable: bool) -> str:
    if isinstance(value, str) or (value is None and nullable):
        return value or ""
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        texts = [p.get("text") for p in value if p.get("type") == "text"]
        if len(texts) == len(value) and all(isinstance(t, str) for t in texts):
            return "\n".join(texts)
        raise invalid(where, "parts must all be {\"type\": \"text\", \"text\": ...} (only text is supported)")
    raise invalid(where, "must be a string or a list of text parts")


def _reject_tools(body: dict[str, Any]) -> None:
    """Tool calling and audio are not supported: asking for them is an error rather than silently ignored."""
    for name in ("tools", "functions", "audio"):
        if body.get(name):
            raise invalid(name, "is not supported by this server")
    for name in ("tool_choice", "function_call"):
        if body.get(name) not in (None, "none", "auto"):
            raise invalid(name, "is not supported by this server (only \"none\" or \"auto\" without tools)")
    if body.get("modalities") not in (None, ["text"]):
        raise invalid("modalities", "only [\"text\"] is supported")


def _stream_fields(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = get_bool(body, "stream", False)
    options = get_object(body, "stream_options")
    if options is not None and not stream:
        raise invalid("stream_options", "is only allowed when 'stream' is true")
    return stream, get_bool(options or {}, "include_usage", False)


def _sampling_params(body: dict[str, Any], model: ServedModel, *, n: int, max_tokens: int | None,
                     logprobs: int | None, prompt_logprobs: int | None) -> SamplingParams:
    """The sampling fields both endpoints share (OpenAI's plus vLLM's extras)."""
    get_str(body, "user")  # accepted (and unused) when it is a string
    return SamplingParams(
        n=n, max_tokens=max_tokens, logprobs=logprobs, prompt_logprobs=prompt_logprobs,
        temperature=get_number(body, "temperature", 1.0, lo=0),
        top_p=get_number(body, "top_p", 1.0, lo=0, hi=1, lo_open=True),
        top_k=get_int(body, "top_k", 0, lo=-1),
        min_p=get_number(body, "min_p", 0.0, lo=0, hi=1),
        repetition_penalty=get_number(body, "repetition_penalty", 1.0, lo=0, lo_open=True),
        presence_penalty=get_number(body, "presence_penalty", 0.0, lo=-2, hi=2),
        frequency_penalty=get_number(body, "frequency_penalty", 0.0, lo=-2, hi=2),
        logit_bias=_logit_bias(body.get("logit_bias"), model.vocab_size),
        seed=get_int(body, "seed", None, lo=INT64_MIN, hi=INT64_MAX - n),
        min_tokens=get_int(body, "min_tokens", 0, lo=0, hi=max_tokens or INT64_MAX),
        stop=_stop(body.get("stop")),
        stop_token_ids=get_token_ids(body, "stop_token_ids", model.vocab_size),
        include_stop_str_in_output=get_bool(body, "include_stop_str_in_output", False),
        ignore_eos=get_bool(body, "ignore_eos", False),
        skip_special_tokens=get_bool(body, "skip_special_tokens", True),
        extra=_guided_decoding(body, model.grammars))


def _logit_bias(value: object, vocab_size: int) -> dict[int, float] | None:
    """{"token id": bias in [-100, 100]}."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid("logit_bias", "must be an object mapping token ids to biases")
    bias = {}
    for key, amount in value.items():
        try:
            token = int(key)
        except ValueError:
            token = -1
        if not 0 <= token < vocab_size:
            raise invalid("logit_bias", f"keys must be token ids in [0, {vocab_size}), got {key[:20]!r}")
        if not is_number(amount) or not -100 <= amount <= 100:
            raise invalid("logit_bias", f"values must be numbers in [-100, 100], got {str(amount)[:20]}")
        bias[token] = float(amount)
    return bias


def _stop(value: object) -> list[str]:
    """A string or a list of non-empty strings."""
    stops = [value] if isinstance(value, str) else value if value is not None else []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise invalid("stop", "must be a non-empty string or a list of non-empty strings")
    return stops


def _guided_decoding(body: dict[str, Any], grammars: frozenset[str]) -> dict[str, Any]:
    """``response_format`` / vLLM's ``guided_*`` as the engine's grammar request (``extra["grammar"]``), if a
    grammar plugin takes its kind."""
    specs = [(field, kind, body[field]) for field, kind in GUIDED_FIELDS.items() if body.get(field) is not None]
    response_format = get_object(body, "response_format")
    if response_format is not None:
        kind = response_format.get("type")
        if kind == "json_schema":
            schema = get_object(response_format, "json_schema")
            spec = get_object(schema or {}, "schema")
            if spec is None:
                raise invalid("response_format", "of type json_schema needs json_schema.schema (an object)")
            specs.append(("response_format", "json_schema", spec))
        elif kind == "json_object":
            if "json_object" in grammars or "json_schema" not in grammars:
                specs.append(("response_format", "json_object", {}))
            else:
                specs.append(("response_format", "json_schema", {"type": "object"}))
        elif kind != "text":
            raise invalid("response_format", "type must be text, json_object or json_schema")
    if not specs:
        return {}
    if len(specs) > 1:
        raise invalid(specs[1][0], f"cannot be combined with '{specs[0][0]}'")
    field, kind, spec = specs[0]
    if kind not in grammars:
        raise invalid(field, f"needs a grammar plugin that registers {kind!r} (register_grammars); "
                             f"loaded grammars: {', '.join(sorted(grammars)) or 'none'}")
    return {GRAMMAR_FIELD: {"kind": kind, "spec": spec}}  # the engine compiles and enforces it per request
