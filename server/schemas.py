"""The request bodies of the POST routes as pydantic models: OpenAI's fields and vLLM's extras, their JSON types
and fixed bounds (what depends on the served model is checked in protocol.py), and /openapi.json made of them.

JSON types are exact (``true`` is not 1, ``"2"`` is not 2), numbers finite, and ``null`` means the default, as in
OpenAI's API. A field the route does not know is a 400 naming it, where OpenAI and vLLM ignore it (vLLM logs a
warning): a request that believes it asked for something is told it did not. vLLM's fields that this server
cannot honour are refused by name too (protocol.py: REFUSED).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.json_schema import models_json_schema

from pegboard import __version__
from pegboard.core.errors import invalid

INT64_MIN, INT64_MAX = -2**63, 2**63 - 1
MAX_N = 128
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
TokenId = Annotated[int, Field(ge=0)]
Text = Annotated[str, Field(min_length=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]


class Strict(BaseModel):
    """Exact JSON types, finite numbers, no unknown keys; ``null`` takes the default."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class StreamOptions(Strict):
    include_usage: bool = False  # a last chunk with empty choices and the usage
    continuous_usage_stats: bool = False  # the usage so far in every chunk too (needs include_usage)


class JsonSchemaFormat(Strict):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None  # the grammar enforces the schema either way


class ResponseFormat(Strict):
    type: str  # text, json_object, json_schema or structural_tag (structured_outputs.py)
    json_schema: JsonSchemaFormat | None = None
    structures: list[dict[str, Any]] | None = None  # structural_tag (vLLM's legacy form)
    triggers: list[str] | None = None
    format: Any = None  # structural_tag (vLLM's current form)


class StructuredOutputs(Strict):
    """vLLM's StructuredOutputsParams: one constraint, plus options."""

    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None  # lark EBNF
    json_object: bool | None = None
    structural_tag: str | None = None
    disable_any_whitespace: bool = False
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None
    disable_fallback: bool = False


class SamplingBody(Strict):
    """The fields both generating routes share."""

    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    structural_tag: str | None = None
    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1)
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    seed: Int64 | None = None
    stop: Text | list[Text] = []
    stop_token_ids: list[TokenId] = []
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    skip_special_tokens: bool = True
    prompt_logprobs: int | None = Field(None, ge=0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    return_token_ids: bool = False
    return_tokens_as_token_ids: bool = False  # logprobs name tokens "token_id:N"
    truncate_prompt_tokens: int | None = Field(None, ge=-1)  # keep this many prompt tokens (-1: max_model_len)
    truncation_side: Literal["left", "right"] = "left"
    request_id: str | None = None  # the response id is "cmpl-" / "chatcmpl-" + this
    user: str | None = None  # names the end user (for the operator's logs); no effect on the output


class CompletionBody(SamplingBody):
    """POST /v1/completions."""

    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    max_tokens: int = Field(16, ge=0, le=INT64_MAX)  # 0 only with echo
    logprobs: int | None = Field(None, ge=0)
    echo: bool = False
    best_of: int | None = Field(None, ge=1, le=MAX_N)  # only null or n
    suffix: str | None = None  # only null or ""
    add_special_tokens: bool = True


class TextPart(Strict):
    type: Literal["text"]
    text: str


FunctionName = Annotated[str, Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")]  # OpenAI's rule for a function's name


class FunctionDefinition(Strict):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema (absent: no parameters)
    strict: bool | None = None  # a required or named tool choice enforces the schema either way


class Tool(Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Strict):
    name: str


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: NamedFunction


class CalledFunction(Strict):
    name: str
    arguments: str  # JSON text


class ToolCall(Strict):
    """A call an assistant message in the history made."""

    id: str
    type: Literal["function"]
    function: CalledFunction


class Message(Strict):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None  # null only for an assistant
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's calls
    tool_call_id: str | None = None  # a tool message answers this call


class ChatBody(SamplingBody):
    """POST /v1/chat/completions."""

    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=INT64_MAX)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT64_MAX)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0)
    add_generation_prompt: bool = True
    continue_final_message: bool = False  # the model continues the last message (needs add_generation_prompt false)
    add_special_tokens: bool = False
    chat_template_kwargs: dict[str, Any] = {}  # each key must be a variable the chat template uses
    documents: list[dict[str, str]] | None = None  # the chat template must use 'documents'
    return_prompt_text: bool = False
    tools: list[Tool] | None = Field(None, min_length=1)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None  # default: auto with tools
    parallel_tool_calls: bool | None = None  # only with tools; false: at most one call


class TokenizeBody(Strict):
    """POST /tokenize (vLLM's): a prompt, or messages through the chat template."""

    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = Field(None, min_length=1)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] = {}
    tools: list[Tool] | None = Field(None, min_length=1)  # given to the chat template with the messages
    add_special_tokens: bool | None = None  # default: true for a prompt, false for messages
    return_token_strs: bool = False


class DetokenizeBody(Strict):
    """POST /detokenize (vLLM's)."""

    model: str | None = None
    tokens: list[TokenId]


Schema = TypeVar("Schema", bound=BaseModel)
_PATH_PART = re.compile(r"[a-z_][a-z0-9_]*")  # a field name; pydantic's union members ("str", "list[int]") are not
_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def validate(schema: type[Schema], body: dict[str, Any]) -> Schema:
    """The body as ``schema``; the first problem is a 400 naming its field (``messages[0].role``)."""
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        errors = [(*_field_of(error["loc"]), error) for error in exc.errors(include_url=False)]
        param = errors[0][0]
        if errors[0][2]["type"] == "missing" and not errors[0][1]:
            raise invalid(param, "is required") from None
        if errors[0][2]["type"] == "extra_forbidden" and len(errors[0][2]["loc"]) == 1:  # a top-level field
            raise invalid(param, "is not a field of this route (refused rather than ignored)") from None
        # a field of several types fails once per type: say what each wanted
        wanted = ", or ".join(f"{f'at {rest}: ' if rest else ''}{error['msg'][0].lower()}{error['msg'][1:]}"
                              for name, rest, error in errors[:3] if name == param)
        raise invalid(param, f"is invalid ({wanted}), got {_show(errors[0][2]['input'])}") from None


def _field_of(loc: tuple[int | str, ...]) -> tuple[str, str]:
    """(the field a pydantic error location names, the rest of it inside a type of a union)."""
    path = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
        elif _PATH_PART.fullmatch(part) and part not in _TYPE_NAMES:
            path += f".{part}" if path else part
        else:
            return path, "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[i + 1:]).lstrip(".")
    return path, ""


def _show(value: object) -> str:
    """A short rendering of a bad value for an error message."""
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__.replace("dict", "object")
    return text if len(text) <= 40 else text[:37] + "..."


def openapi_schema() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the POST routes, their bodies generated from the models above."""
    routes = {"/v1/completions": CompletionBody, "/v1/chat/completions": ChatBody, "/tokenize": TokenizeBody,
              "/detokenize": DetokenizeBody}
    refs, components = models_json_schema([(model, "validation") for model in routes.values()],
                                          ref_template="#/components/schemas/{model}")
    error = {"description": "OpenAI's error object: {\"error\": {\"message\", \"type\", \"param\", \"code\"}}"}
    paths = {path: {"post": {"requestBody": {"required": True, "content": {"application/json": {
        "schema": refs[(model, "validation")]}}}, "responses": {"200": {"description": "OK"}, "400": error}}}
             for path, model in routes.items()}
    return {"openapi": "3.1.0", "info": {"title": "Pegboard OpenAI-compatible server", "version": __version__},
            "paths": paths, "components": {"schemas": components.get("$defs", {})}}
