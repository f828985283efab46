"""Every structured-outputs option behaves the same offline (StructuredOutputsParams) and over HTTP (the
``structured_outputs`` field and the older names): the same grammar request, or the same refusal naming the field."""

from __future__ import annotations

import pytest

from pegboard.core.errors import InvalidParameterError
from pegboard.core.sampling_params import SamplingParams
from pegboard.core.structured_outputs_params import KINDS, StructuredOutputsParams
from pegboard.server.protocol import ServedModel, parse_chat_request, parse_completion_request

MODEL = ServedModel(names=("m",), vocab_size=100, max_model_len=64, grammars=frozenset(KINDS.values()))
SCHEMA = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "integer"}}}}}
CASES = [
    {"json": SCHEMA}, {"json": '{"type": "object", "properties": {}}'}, {"json": "{not json"},
    {"regex": "[0-9]+"}, {"choice": ["yes", "no"]}, {"grammar": 'start: "a"+'}, {"json_object": True},
    {"structural_tag": '{"structures": [], "triggers": []}'},
    {}, {"regex": "a", "choice": ["b"]}, {"json_object": False, "regex": "a"},
    {"json": SCHEMA, "disable_additional_properties": True},
    {"json": {"type": "object", "additionalProperties": True}, "disable_additional_properties": True},
    {"regex": "a", "disable_additional_properties": True},
    {"json": SCHEMA, "disable_any_whitespace": True}, {"json": SCHEMA, "whitespace_pattern": " "},
    {"regex": "a", "disable_fallback": True},
]


def offline(fields: dict) -> object:
    try:
        return SamplingParams(structured_outputs=StructuredOutputsParams(**fields)).extra["grammar"]
    except InvalidParameterError as exc:
        return exc.param, str(exc)


def http(parse, base: dict, fields: dict) -> object:
    try:
        return parse({**base, **fields}, MODEL).params.extra["grammar"]
    except InvalidParameterError as exc:
        return exc.param, str(exc)


@pytest.mark.parametrize("fields", CASES, ids=[str(sorted(c)) for c in CASES])
def test_offline_and_http_give_the_same_grammar_request_or_the_same_refusal(fields):
    expected = offline(fields)
    for parse, base in ((parse_completion_request, {"prompt": "x"}),
                        (parse_chat_request, {"messages": [{"role": "user", "content": "x"}]})):
        assert http(parse, base, {"structured_outputs": fields}) == expected


@pytest.mark.parametrize("field, name", [("guided_json", "json"), ("guided_regex", "regex"),
                                         ("guided_choice", "choice"), ("guided_grammar", "grammar"),
                                         ("structural_tag", "structural_tag")])
def test_the_older_top_level_names_give_the_same_grammar_request(field, name):
    value = next(c[name] for c in CASES if set(c) == {name})
    assert http(parse_completion_request, {"prompt": "x"}, {field: value}) == offline({name: value})


def test_the_options_do_what_they_say():
    closed = offline({"json": SCHEMA, "disable_additional_properties": True})
    assert closed["spec"]["additionalProperties"] is False
    assert closed["spec"]["properties"]["a"]["additionalProperties"] is False
    assert offline({"json": "{not json"})[0] == "structured_outputs"
    assert offline({"json": SCHEMA, "whitespace_pattern": " "})[0] == "structured_outputs.whitespace_pattern"
    assert offline({"structural_tag": "{}"}) == {"kind": "structural_tag", "spec": "{}"}
