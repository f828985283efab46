"""Request parsing and stream deltas without a server: what a body becomes, what a chunk may show."""

from __future__ import annotations

import pytest

from pegboard.core.errors import InvalidParameterError
from pegboard.core.outputs import CompletionOutput
from pegboard.server.errors import APIError
from pegboard.server.protocol import (DEFAULT_MAX_PROMPTS, DEFAULT_MAX_SEQUENCES, RequestLimits, ServedModel,
                                      parse_chat_request, parse_completion_request)
from pegboard.server.schemas import MAX_N
from pegboard.server.streaming import ChoiceStream

MODEL = ServedModel(names=("m", "alias"), vocab_size=100, max_model_len=64, grammars=frozenset())


def with_grammars(*kinds: str) -> ServedModel:
    return ServedModel(MODEL.names, MODEL.vocab_size, MODEL.max_model_len, frozenset(kinds))


@pytest.mark.parametrize("prompt, expected", [
    ("hi", ["hi"]), (["a", "b"], ["a", "b"]), ([1, 2], [[1, 2]]), ([[1], [2, 3]], [[1], [2, 3]])])
def test_the_four_prompt_shapes(prompt, expected):
    assert parse_completion_request({"prompt": prompt}, MODEL).prompts == expected


def test_completion_defaults_follow_openai():
    parsed = parse_completion_request({"prompt": "x"}, MODEL)
    assert (parsed.model, parsed.params.max_tokens, parsed.params.n, parsed.params.temperature) == ("m", 16, 1, 1.0)
    assert not parsed.body.stream and not parsed.body.echo and parsed.params.logprobs is None


def test_echo_with_max_tokens_0_asks_for_prompt_logprobs_only():
    parsed = parse_completion_request({"prompt": "x", "echo": True, "max_tokens": 0, "logprobs": 2}, MODEL)
    assert parsed.echo_only and parsed.params.prompt_logprobs == 2 and parsed.params.max_tokens == 1


def test_vllm_extras_reach_the_sampling_params():
    body = {"prompt": "x", "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2, "min_tokens": 2, "ignore_eos": True,
            "stop_token_ids": [7], "logit_bias": {"3": -100}, "seed": 11, "stop": "END"}
    params = parse_completion_request(body, MODEL).params
    assert (params.top_k, params.min_p, params.repetition_penalty, params.min_tokens) == (5, 0.1, 1.2, 2)
    assert (params.ignore_eos, params.stop_token_ids, params.logit_bias) == (True, [7], {3: -100.0})
    assert (params.seed, params.stop) == (11, ["END"])


def test_chat_messages_become_template_input():
    body = {"messages": [{"role": "developer", "content": "be brief"},
                         {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                         {"role": "assistant", "content": None, "name": "bot"}],
            "max_tokens": 9, "max_completion_tokens": 4, "logprobs": True}
    parsed = parse_chat_request(body, MODEL)
    assert parsed.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a\nb"},
                               {"role": "assistant", "content": "", "name": "bot"}]
    assert parsed.params.max_tokens == 4 and parsed.params.logprobs == 0
    assert parse_chat_request({"messages": body["messages"]}, MODEL).params.max_tokens is None


def test_prompts_and_n_x_prompts_are_capped_per_request():
    limits = RequestLimits(max_prompts=3, max_sequences=4)
    for body, param in [({"prompt": ["a"] * 4}, "prompt"), ({"prompt": [[1]] * 4}, "prompt"),
                        ({"prompt": ["a", "b"], "n": 3}, "n"), ({"prompt": "a", "n": 5}, "n")]:
        with pytest.raises(InvalidParameterError) as error:
            parse_completion_request(body, MODEL, limits)
        assert error.value.param == param
    assert parse_completion_request({"prompt": [1] * 50}, MODEL, limits).prompts == [[1] * 50]  # one prompt
    assert parse_completion_request({"prompt": ["a", "b"], "n": 2}, MODEL, limits).params.n == 2
    with pytest.raises(InvalidParameterError, match="at most 4 per request") as error:
        parse_chat_request({"messages": [{"role": "user", "content": "hi"}], "n": 5}, MODEL, limits)
    assert error.value.param == "n"


def test_the_default_caps_allow_the_largest_n_and_a_batch_of_prompts():
    assert MAX_N <= DEFAULT_MAX_SEQUENCES and DEFAULT_MAX_PROMPTS <= DEFAULT_MAX_SEQUENCES
    assert parse_completion_request({"prompt": "a", "n": MAX_N}, MODEL).params.n == MAX_N
    with pytest.raises(InvalidParameterError, match="1000000 prompts"):
        parse_completion_request({"prompt": [[1]] * 1_000_000}, MODEL)


def test_an_unknown_model_is_404_and_an_alias_is_fine():
    with pytest.raises(APIError) as error:
        parse_completion_request({"prompt": "x", "model": "gpt-4"}, MODEL)
    assert (error.value.status, error.value.code, error.value.param) == (404, "model_not_found", "model")
    assert parse_completion_request({"prompt": "x", "model": "alias"}, MODEL).model == "alias"


def test_response_format_goes_to_a_registered_grammar():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    body = {"messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}}
    params = parse_chat_request(body, with_grammars("json_schema")).params
    assert params.extra == {"grammar": {"kind": "json_schema", "spec": schema}}
    as_object = {**body, "response_format": {"type": "json_object"}}
    assert parse_chat_request(as_object, with_grammars("json_schema")).params.extra == {
        "grammar": {"kind": "json_schema", "spec": {"type": "object"}}}
    guided = {"prompt": "x", "guided_choice": ["yes", "no"]}
    assert parse_completion_request(guided, with_grammars("choice")).params.extra["grammar"]["kind"] == "choice"
    with pytest.raises(InvalidParameterError, match="needs a grammar plugin that registers 'json_schema'.*none"):
        parse_chat_request(body, MODEL)
    with pytest.raises(InvalidParameterError, match="cannot be combined"):
        parse_chat_request({**body, "guided_json": schema}, with_grammars("json_schema"))


def output(text: str, tokens: int, finish: str | None = None) -> CompletionOutput:
    return CompletionOutput(index=0, text=text, token_ids=list(range(tokens)), finish_reason=finish)


def test_a_stream_holds_back_what_could_start_a_stop_string_until_it_finishes():
    stream = ChoiceStream(hold_back=len("STOP") - 1)
    assert stream.advance(output("Hello S", 2)) == ("Hell", 0, 2)
    assert stream.advance(output("Hello ST", 3)) == ("o", 2, 3)
    assert stream.advance(output("Hello ST", 3)) is None  # nothing new
    assert stream.advance(output("Hello ", 4, "stop")) == (" ", 3, 4)  # the stop string was cut: none of it leaked
    assert stream.advance(output("Hello ", 4, "stop")) is None  # finished choices stay quiet


def test_a_finished_stream_flushes_the_held_back_text():
    stream = ChoiceStream(hold_back=3)
    assert stream.advance(output("abcdef", 3)) == ("abc", 0, 3)
    assert stream.advance(output("abcdefg", 4, "length")) == ("defg", 3, 4)


# ---- structured outputs: every name for a constraint becomes the engine's grammar request -----------------------

ALL_KINDS = with_grammars("json_schema", "json_object", "regex", "choice", "grammar", "structural_tag")
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


@pytest.mark.parametrize("fields, kind, spec", [
    ({"structured_outputs": {"json": SCHEMA}}, "json_schema", SCHEMA),
    ({"structured_outputs": {"json": '{"type": "object"}'}}, "json_schema", {"type": "object"}),
    ({"structured_outputs": {"regex": "[0-9]+"}}, "regex", "[0-9]+"),
    ({"structured_outputs": {"choice": ["yes", "no"]}}, "choice", ["yes", "no"]),
    ({"structured_outputs": {"grammar": 'start: "a"+'}}, "grammar", 'start: "a"+'),
    ({"structured_outputs": {"json_object": True}}, "json_object", {}),
    ({"structured_outputs": {"structural_tag": '{"format": {}}'}}, "structural_tag", '{"format": {}}'),
    ({"guided_json": SCHEMA}, "json_schema", SCHEMA), ({"guided_regex": "a|b"}, "regex", "a|b"),
    ({"guided_choice": ["x"]}, "choice", ["x"]), ({"guided_grammar": 'start: "b"'}, "grammar", 'start: "b"'),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMA, "strict": True}}},
     "json_schema", SCHEMA),
    ({"response_format": {"type": "json_object"}}, "json_object", {}),
    ({"response_format": {"type": "structural_tag", "format": {"type": "const_string", "value": "hi"}}},
     "structural_tag", '{"type": "structural_tag", "format": {"type": "const_string", "value": "hi"}}'),
])
def test_each_constraint_field_maps_to_its_grammar_kind_on_both_routes(fields, kind, spec):
    for parse, base in ((parse_completion_request, {"prompt": "x"}),
                        (parse_chat_request, {"messages": [{"role": "user", "content": "x"}]})):
        assert parse({**base, **fields}, ALL_KINDS).params.extra == {"grammar": {"kind": kind, "spec": spec}}


@pytest.mark.parametrize("fields, param, message", [
    ({"structured_outputs": {"regex": "a"}}, "structured_outputs", "registers 'regex'.*loaded grammars: none"),
    ({"guided_grammar": "start: x"}, "guided_grammar", "registers 'grammar'"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "more than one constraint"),
    ({"guided_regex": "a", "structured_outputs": {"choice": ["b"]}}, "structured_outputs", "cannot be combined"),
    ({"structured_outputs": {}}, "structured_outputs", "needs one of"),
    ({"structured_outputs": {"regex": "a", "whitespace_pattern": " "}}, "structured_outputs.whitespace_pattern",
     "no such option"),
    ({"structured_outputs": {"regexp": "a"}}, "structured_outputs.regexp", "extra inputs"),
    ({"structured_outputs": {"json": "{not json"}}, "structured_outputs", "not a JSON schema"),
    ({"guided_choice": "yes"}, "guided_choice", "valid list"),
])
def test_a_constraint_nothing_enforces_or_that_is_malformed_is_a_400_naming_it(fields, param, message):
    model = MODEL if "loaded grammars: none" in message or "registers" in message else ALL_KINDS
    with pytest.raises(InvalidParameterError, match=message) as error:
        parse_completion_request({"prompt": "x", **fields}, model)
    assert error.value.param == param


# ---- vLLM's other extras -----------------------------------------------------------------------------------------

def test_prompt_logprobs_are_bounded_by_max_logprobs_and_never_streamed():
    assert parse_completion_request({"prompt": "x", "prompt_logprobs": 3}, MODEL).params.prompt_logprobs == 3
    limits = RequestLimits(max_logprobs=2)
    for body, param in [({"prompt_logprobs": 3}, "prompt_logprobs"), ({"logprobs": 3}, "logprobs"),
                        ({"prompt_logprobs": 1, "stream": True}, "prompt_logprobs")]:
        with pytest.raises(InvalidParameterError) as error:
            parse_completion_request({"prompt": "x", **body}, MODEL, limits)
        assert error.value.param == param
    with pytest.raises(InvalidParameterError, match="--max-logprobs") as error:
        parse_chat_request({"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 3},
                           MODEL, limits)
    assert error.value.param == "top_logprobs"


def test_continue_final_message_needs_add_generation_prompt_off():
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "The answer is"}]
    with pytest.raises(InvalidParameterError, match="add_generation_prompt") as error:
        parse_chat_request({"messages": messages, "continue_final_message": True}, MODEL)
    assert error.value.param == "continue_final_message"
    parsed = parse_chat_request({"messages": messages, "continue_final_message": True,
                                 "add_generation_prompt": False}, MODEL)
    assert parsed.body.continue_final_message and not parsed.body.add_generation_prompt


def test_continuous_usage_stats_needs_include_usage():
    body = {"prompt": "x", "stream": True, "stream_options": {"continuous_usage_stats": True}}
    with pytest.raises(InvalidParameterError, match="needs include_usage") as error:
        parse_completion_request(body, MODEL)
    assert error.value.param == "stream_options"


def test_truncate_prompt_tokens_may_not_exceed_max_model_len():
    with pytest.raises(InvalidParameterError) as error:
        parse_completion_request({"prompt": "x", "truncate_prompt_tokens": MODEL.max_model_len + 1}, MODEL)
    assert error.value.param == "truncate_prompt_tokens"
