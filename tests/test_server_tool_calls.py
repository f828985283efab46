"""Tool calling through the official openai client on the tiny server: tools reach the chat template, a required
or named tool choice is enforced by a JSON-schema grammar and answered as ``tool_calls`` (whole and streamed), auto
goes through the server's tool parser, and what cannot be honoured is a 400 naming the field.

The grammar here is a stand-in: it forces the smallest instance of the schema it is given (and records the schema),
so the tests see both what the server asks the engine for and how it shapes what comes back. The test at the end
runs against a real ``json_schema`` backend when a loaded plugin registers one.
"""

from __future__ import annotations

import json

import openai
import pytest

from pegboard.core.async_engine import AsyncLLMEngine
from pegboard.core.config import EngineConfig
from pegboard.core.hookspecs import hookimpl
from pegboard.core.plugins import load_board
from pegboard.core.tool_calls import ParsedToolCall, ToolParse
from pegboard.server.app import build_app
from pegboard.plugins.tool_calling.tool_choice import required_schema
from pegboard.server.uvicorn_server import serving_in_thread
from tiny_server import board_with_fake_grammars

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
           "required": ["city", "unit"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time"}}]
TEMPLATE = ("{% for t in tools or [] %}[tool {{ t['function']['name'] }}]{% endfor %}"
            "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
            "{% for c in m.get('tool_calls') or [] %}<call {{ c['function']['name'] }} "
            "{{ c['function']['arguments']['city'] }}>{% endfor %}"
            "{% if m.get('tool_call_id') %}<answers {{ m['tool_call_id'] }}>{% endif %}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant: {% endif %}")
USER = [{"role": "user", "content": "Weather in Paris?"}]


def smallest_instance(schema: dict, defs: dict | None = None) -> object:
    """The smallest value of a schema (a stand-in grammar's output)."""
    defs = schema.get("$defs", defs or {})
    if "$ref" in schema:
        return smallest_instance(defs[schema["$ref"].split("/")[-1]], defs)
    if "enum" in schema:
        return schema["enum"][0]
    if "anyOf" in schema:
        return smallest_instance({**schema["anyOf"][0], "type": schema.get("type")}, defs)
    if schema.get("type") == "array":
        return [smallest_instance(schema["items"], defs) for _ in range(schema.get("minItems", 0))]
    if schema.get("type") == "string":
        return "x"
    properties = schema.get("properties", {})
    return {name: smallest_instance(properties[name], defs) for name in schema.get("required", [])}


class ForcedText:
    """Allows exactly the tokens of one text, then the end."""

    supports_bitmask = False

    def __init__(self, token_ids: list[int]) -> None:
        self.token_ids, self.accepted = token_ids, 0

    def allowed_token_ids(self) -> list[int]:
        return self.token_ids[self.accepted:self.accepted + 1]

    def accept(self, token_id: int) -> None:
        self.accepted += 1

    def is_finished(self) -> bool:
        return self.accepted >= len(self.token_ids)


class SmallestInstanceGrammar:
    """A stand-in json_schema grammar: forces the schema's smallest instance (spelled by ``tokenizer``); remembers
    each schema."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.schemas: list[dict] = []

    def validate(self, spec) -> None:
        """Every schema is fine (the interface of the structured-outputs backends asks for this check)."""

    def compile(self, spec, *, vocab_size, tokenizer=None):
        self.schemas.append(spec)
        text = json.dumps(smallest_instance(spec))
        return ForcedText((tokenizer or self.tokenizer).encode(text, add_special_tokens=False))


class WholeOutputParser:
    """A throwaway tool parser: the whole output is one call of the first tool, its text the argument."""

    def __init__(self, *, tools):
        self.name, self.text = tools[0]["name"], ""

    def feed(self, text: str) -> ToolParse:
        self.text += text
        return ToolParse()

    def finish(self) -> ToolParse:
        return ToolParse("", (ParsedToolCall(self.name, json.dumps({"said": self.text})),))


class Plugins:
    def __init__(self, tokenizer) -> None:
        self.grammar = SmallestInstanceGrammar(tokenizer)

    @hookimpl
    def register_grammars(self, register):
        register("json_schema", self.grammar)

    @hookimpl
    def register_tool_parsers(self, register):
        register("whole-output", WholeOutputParser)


def serve_tiny(model, plugins, template=TEMPLATE, **app_options):
    """The tiny chat model served with ``plugins`` (and ``template``, None: the model's): yields an openai client."""
    config = EngineConfig(model=str(model), load_format="dummy", device="cpu", max_num_seqs=4, num_kv_blocks=128)
    engine = AsyncLLMEngine.from_config(config, board_with_fake_grammars(*plugins))
    try:
        with serving_in_thread(build_app(engine, ("tiny",), chat_template=template, **app_options)) as url:
            yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def eos_chat_model(tiny_chat_model, tmp_path_factory):
    """The tiny chat model whose tokenizer has a (special) end-of-sequence token, "~", so a grammar can end."""
    import shutil

    from transformers import AutoTokenizer

    path = shutil.copytree(tiny_chat_model, tmp_path_factory.mktemp("eos") / "model")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.add_special_tokens({"eos_token": "~"})
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def plugins(eos_chat_model):
    from transformers import AutoTokenizer

    return Plugins(AutoTokenizer.from_pretrained(eos_chat_model))


@pytest.fixture(scope="module")
def client(eos_chat_model, plugins):
    yield from serve_tiny(eos_chat_model, [plugins], tool_call_parser="whole-output")


@pytest.fixture(scope="module")
def plain_client(eos_chat_model):
    """No grammar plugin, no tool parser."""
    yield from serve_tiny(eos_chat_model, [])


def chat(client, **fields):
    fields = {"model": "tiny", "messages": USER, "max_tokens": 100, "temperature": 0, **fields}
    return client.chat.completions.create(**fields)


def streamed(client, **fields):
    """(the tool calls assembled from the deltas as OpenAI's docs do, content, finish_reason, the raw deltas)."""
    calls: dict[int, dict] = {}
    content, finish, deltas = "", None, []
    for chunk in chat(client, stream=True, **fields):
        for choice in chunk.choices:
            deltas.append(choice.delta)
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for part in choice.delta.tool_calls or []:
                call = calls.setdefault(part.index, {"id": part.id, "name": part.function.name, "arguments": ""})
                call["arguments"] += part.function.arguments or ""
    return [calls[i] for i in sorted(calls)], content, finish, deltas


# ---- the schemas a tool choice asks for ------------------------------------------------------------------------


def test_required_asks_for_an_array_of_calls_of_the_given_functions():
    schema = required_schema([tool["function"] for tool in TOOLS])
    assert schema == {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": [
        {"properties": {"name": {"type": "string", "enum": ["get_weather"]}, "parameters": WEATHER},
         "required": ["name", "parameters"]},
        {"properties": {"name": {"type": "string", "enum": ["get_time"]},
                        "parameters": {"type": "object", "properties": {}}},
         "required": ["name", "parameters"]}]}}
    assert required_schema([TOOLS[0]["function"]], parallel=False)["maxItems"] == 1


def test_required_gathers_the_functions_defs_at_the_top():
    point = {"$defs": {"P": {"type": "number"}}, "type": "object", "properties": {"x": {"$ref": "#/$defs/P"}}}
    schema = required_schema([{"name": "a", "parameters": point}, {"name": "b", "parameters": point}])
    assert schema["$defs"] == {"P": {"type": "number"}}
    assert "$defs" not in schema["items"]["anyOf"][0]["properties"]["parameters"]


# ---- required and named -----------------------------------------------------------------------------------------


def test_required_answers_tool_calls_in_openais_shape(client, plugins):
    answer = chat(client, tools=TOOLS, tool_choice="required")
    assert plugins.grammar.schemas[-1] == required_schema([tool["function"] for tool in TOOLS])
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("chatcmpl-tool-")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "x", "unit": "c"}


def test_a_named_function_is_constrained_to_its_parameters_and_finishes_with_stop(client, plugins):
    answer = chat(client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert plugins.grammar.schemas[-1] == WEATHER
    choice = answer.choices[0]
    assert choice.finish_reason == "stop" and choice.message.content is None  # OpenAI's and vLLM's for named
    [call] = choice.message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "x", "unit": "c"})


def test_a_function_without_parameters_takes_an_empty_object(client):
    answer = chat(client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert answer.choices[0].message.tool_calls[0].function.arguments == "{}"


def test_parallel_tool_calls_false_allows_one_call(client, plugins):
    chat(client, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    assert plugins.grammar.schemas[-1]["maxItems"] == 1


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}],
                         ids=["required", "named"])
def test_streamed_tool_calls_assemble_to_the_whole_answer(client, tool_choice):
    whole = chat(client, tools=TOOLS, tool_choice=tool_choice).choices[0]
    calls, content, finish, deltas = streamed(client, tools=TOOLS, tool_choice=tool_choice)
    assert [(c["name"], c["arguments"]) for c in calls] == [
        (c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    assert all(c["id"].startswith("chatcmpl-tool-") for c in calls)
    assert content == "" and finish == whole.finish_reason
    firsts = [part for delta in deltas for part in delta.tool_calls or [] if part.id]
    assert [part.type for part in firsts] == ["function"] * len(calls)  # id, type and name come once, first


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}],
                         ids=["required", "named"])
def test_the_arguments_stream_as_they_are_generated(client, tool_choice):
    _, _, _, deltas = streamed(client, tools=TOOLS, tool_choice=tool_choice)
    parts = [part for delta in deltas for part in delta.tool_calls or []]
    assert len(parts) > 2 and all(part.index == 0 for part in parts)  # pieces as tokens come, not one at the end
    assert parts[0].function.name == "get_weather" and all(p.id is None for p in parts[1:])


# ---- auto and none ------------------------------------------------------------------------------------------


def test_auto_finds_calls_with_the_servers_tool_parser(client):
    choice = chat(client, tools=TOOLS, max_tokens=3).choices[0]  # tool_choice defaults to auto with tools
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and "said" in json.loads(call.function.arguments)
    assert choice.finish_reason == "length"  # cut off: kept, as vLLM does ("tool_calls" replaces only "stop")
    calls, _, finish, _ = streamed(client, tools=TOOLS, tool_choice="auto", max_tokens=3)
    assert [c["arguments"] for c in calls] == [call.function.arguments] and finish == "length"


def test_none_gives_the_template_the_tools_and_parses_nothing(client):
    answer = chat(client, tools=TOOLS, tool_choice="none", max_tokens=3,
                  extra_body={"return_prompt_text": True})
    assert answer.model_extra["prompt_text"].startswith("[tool get_weather][tool get_time]user:")
    assert answer.choices[0].message.tool_calls is None and answer.choices[0].finish_reason == "length"


def test_the_history_of_calls_and_tool_answers_reaches_the_template(client):
    messages = [*USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"}]
    answer = chat(client, messages=messages, max_tokens=1, extra_body={"return_prompt_text": True})
    # (transformers renders with trim_blocks: no newline after a block tag)
    assert "assistant: <call get_weather Paris>tool: 18 C<answers call_1>" in answer.model_extra["prompt_text"]


def test_tokenize_renders_the_tools_too(client):
    import httpx2

    url = str(client.base_url).removesuffix("/v1/")
    count = [httpx2.post(f"{url}/tokenize", json={"messages": USER, **extra}, timeout=60).json()["count"]
             for extra in ({}, {"tools": TOOLS})]
    assert count[1] == count[0] + len("[tool get_weather][tool get_time]")  # one token per byte


# ---- refusals -----------------------------------------------------------------------------------------------


def refusal(client, **fields) -> tuple[str, str]:
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, **fields)
    return caught.value.body["param"], caught.value.body["message"]


@pytest.mark.parametrize("fields, param", [
    ({"tool_choice": "required"}, "tool_choice"),  # no tools
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": [TOOLS[0], TOOLS[0]], "tool_choice": "required"}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ({"messages": [{"role": "tool", "content": "18 C"}]}, "messages[0].tool_call_id"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"functions": [{"name": "f"}]}, "functions"),
])
def test_what_cannot_be_honoured_is_a_400_naming_the_field(client, fields, param):
    assert refusal(client, **fields)[0] == param


def test_auto_without_a_tool_parser_names_the_flags(plain_client):
    param, message = refusal(plain_client, tools=TOOLS)
    assert param == "tool_choice" and "--enable-auto-tool-choice" in message and "--tool-call-parser" in message


def test_required_without_a_json_schema_grammar_is_refused(plain_client):
    param, message = refusal(plain_client, tools=TOOLS, tool_choice="required")
    assert param == "tool_choice" and "json_schema" in message


def test_tools_a_template_never_reads_are_refused_unless_the_choice_constrains_the_output(eos_chat_model, plugins):
    for client in serve_tiny(eos_chat_model, [plugins], template=None):  # the model's template: no tools in it
        param, message = refusal(client, tools=TOOLS, tool_choice="none")
        assert param == "tools" and "does not use 'tools'" in message
        assert chat(client, tools=TOOLS, tool_choice="required").choices[0].message.tool_calls


# ---- against a real json_schema backend ---------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_tool_calls_validate_against_the_functions_schemas_with_a_real_backend():
    """SmolLM2 through a loaded plugin's json_schema grammar (skipped when none is loaded): every call parses and
    validates against its function's parameters, required and named, whole and streamed."""
    jsonschema = pytest.importorskip("jsonschema")
    board = load_board()
    if "json_schema" not in board.grammars:
        pytest.skip("no loaded plugin registers a json_schema grammar")
    engine = AsyncLLMEngine.from_config(EngineConfig(model="smollm2", device="cpu", dtype="float32",
                                                     max_model_len=2048, kv_cache_memory_gb=0.25), board)
    schemas = {tool["function"]["name"]: tool["function"].get("parameters", {"type": "object"}) for tool in TOOLS}
    try:
        with serving_in_thread(build_app(engine, ("tiny",))) as url:
            real = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
            for tool_choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
                for temperature in (0, 0.8):
                    choice = chat(real, tools=TOOLS, tool_choice=tool_choice, temperature=temperature,
                                  max_tokens=200).choices[0]
                    assert choice.finish_reason in ("tool_calls", "stop") and choice.message.tool_calls
                    for call in choice.message.tool_calls:
                        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
                calls, _, finish, _ = streamed(real, tools=TOOLS, tool_choice=tool_choice, max_tokens=200)
                assert finish != "length" and calls
                for call in calls:
                    jsonschema.validate(json.loads(call["arguments"]), schemas[call["name"]])
    finally:
        engine.shutdown()


# ---- the serve flags ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, error", [
    (["--enable-auto-tool-choice"], "--enable-auto-tool-choice needs --tool-call-parser NAME too"),
    (["--tool-call-parser", "hermes"], "--tool-call-parser needs --enable-auto-tool-choice too"),
    (["--enable-auto-tool-choice", "--tool-call-parser", "nope"], "no loaded plugin registers it (available: hermes"),
])
def test_the_auto_tool_choice_flags_go_together_and_name_a_registered_parser(flags, error):
    import argparse

    from pegboard.core.errors import InvalidParameterError
    from pegboard.plugins.serve_command.serve import add_arguments, tool_parser_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(InvalidParameterError, match=error.replace("(", r"\(")):
        tool_parser_from_args(parser.parse_args(flags), load_board())
    args = parser.parse_args(["--enable-auto-tool-choice", "--tool-call-parser", "hermes"])
    assert tool_parser_from_args(args, load_board()) == "hermes"
