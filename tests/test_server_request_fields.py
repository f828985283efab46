"""vLLM's request extras doing what their names say, on a running server (the tiny model with a byte-level
tokenizer, whose token i is the byte character i + 33 for the printable ones): prompt logprobs, prefilled answers
(continue_final_message), template variables, tokens named by id, usage in streams, truncation, request ids, the
response role and max-logprobs flags, /openapi.json."""

from __future__ import annotations

import argparse
import json

import pytest

from pegboard.core.errors import InvalidParameterError
from pegboard.server.protocol import RequestLimits
from pegboard.plugins.serve_command.server_flags import add_request_limit_arguments, request_limits_from_args
from tiny_server import connect, serving  # tests/tiny_server.py (conftest puts tests/ on sys.path)

TEMPLATE = ("{% if greeting %}{{ greeting }}|{% endif %}{% for d in documents or [] %}<{{ d['text'] }}>{% endfor %}"
            "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant: {% endif %}")
USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tiny_chat_model):
    with serving(tiny_chat_model, chat_template=TEMPLATE, response_role="bot",
                 limits=RequestLimits(max_logprobs=5)) as (url, _):
        yield url


def post(url: str, path: str, body: dict) -> tuple[int, dict]:
    response = connect(url, path, {"max_tokens": 3, "temperature": 0, **body})
    return response.status, json.loads(response.read())


def events(url: str, path: str, body: dict) -> list[dict]:
    raw = connect(url, path, {"max_tokens": 3, "temperature": 0, "stream": True, **body}).read().decode()
    return [json.loads(line[6:]) for line in raw.split("\n\n") if line.startswith("data: {")]


def test_prompt_logprobs_score_every_prompt_token_after_the_first(server):
    status, reply = post(server, "/v1/completions", {"prompt": [5, 6, 7, 8], "prompt_logprobs": 2})
    assert status == 200
    positions = reply["choices"][0]["prompt_logprobs"]
    assert len(positions) == 4 and positions[0] is None
    for token, entry in zip([6, 7, 8], positions[1:]):
        assert str(token) in entry and 2 <= len(entry) <= 3  # the prompt's token plus the top 2
        assert all(e["logprob"] <= 0 and e["rank"] >= 1 and isinstance(e["decoded_token"], str)
                   for e in entry.values())
    status, chat = post(server, "/v1/chat/completions", {"messages": USER, "prompt_logprobs": 1})
    assert status == 200 and chat["prompt_logprobs"][0] is None and len(chat["prompt_logprobs"]) > 1


def test_continue_final_message_prefills_the_answer_and_keeps_its_role(server):
    messages = [*USER, {"role": "assistant", "content": "Sure"}]
    status, reply = post(server, "/v1/chat/completions", {"messages": messages, "continue_final_message": True,
                                                          "add_generation_prompt": False,
                                                          "return_prompt_text": True})
    assert status == 200 and reply["prompt_text"] == "user: hi\nassistant: Sure"  # open-ended: no newline after
    assert reply["choices"][0]["message"]["role"] == "assistant"
    status, plain = post(server, "/v1/chat/completions", {"messages": USER, "return_prompt_text": True})
    assert plain["prompt_text"] == "user: hi\nassistant: " and plain["choices"][0]["message"]["role"] == "bot"


def test_template_variables_reach_the_template_and_unknown_ones_are_refused(server):
    status, reply = post(server, "/v1/chat/completions", {"messages": USER, "return_prompt_text": True,
                                                          "chat_template_kwargs": {"greeting": "hello"},
                                                          "documents": [{"text": "doc"}]})
    assert status == 200 and reply["prompt_text"].startswith("hello|<doc>user: hi")
    for body, param in [({"chat_template_kwargs": {"enable_thinking": False}}, "chat_template_kwargs"),
                        ({"chat_template_kwargs": {"add_generation_prompt": False}}, "chat_template_kwargs")]:
        status, error = post(server, "/v1/chat/completions", {"messages": USER, **body})
        assert (status, error["error"]["param"]) == (400, param)


def test_return_tokens_as_token_ids_names_tokens_by_id(server):
    _, legacy = post(server, "/v1/completions", {"prompt": [5, 6], "logprobs": 2, "return_tokens_as_token_ids": True,
                                                 "return_token_ids": True})
    choice = legacy["choices"][0]
    assert choice["logprobs"]["tokens"] == [f"token_id:{t}" for t in choice["token_ids"]]
    assert all(key.startswith("token_id:") for top in choice["logprobs"]["top_logprobs"] for key in top)
    _, chat = post(server, "/v1/chat/completions", {"messages": USER, "logprobs": True, "top_logprobs": 2,
                                                    "return_tokens_as_token_ids": True, "return_token_ids": True})
    content = chat["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in content] == [f"token_id:{t}" for t in chat["choices"][0]["token_ids"]]
    assert all(alt["token"].startswith("token_id:") for t in content for alt in t["top_logprobs"])


def test_usage_in_streams_as_openai_and_vllm_send_it(server):
    body = {"prompt": [5, 6, 7], "n": 2, "ignore_eos": True}
    chunks = events(server, "/v1/completions", {**body, "stream_options": {"include_usage": True}})
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 6,
                                                                  "total_tokens": 9}
    continuous = events(server, "/v1/completions", {**body, "stream_options": {"include_usage": True,
                                                                               "continuous_usage_stats": True}})
    counts = [chunk["usage"]["completion_tokens"] for chunk in continuous]
    assert counts == sorted(counts) and counts[-1] == 6 and continuous[-1]["choices"] == []
    assert all(chunk["usage"]["prompt_tokens"] == 3 for chunk in continuous)
    chat = events(server, "/v1/chat/completions", {"messages": USER, "stream_options": {
        "include_usage": True, "continuous_usage_stats": True}})
    assert chat[0]["choices"][0]["delta"]["role"] == "bot" and chat[0]["usage"]["completion_tokens"] == 0
    assert chat[-1]["choices"] == [] and chat[-1]["usage"]["completion_tokens"] == 3


def test_truncation_keeps_the_last_or_first_tokens(server):
    for side, kept in (("left", [7, 8]), (None, [7, 8]), ("right", [5, 6])):
        _, reply = post(server, "/v1/completions", {"prompt": [5, 6, 7, 8], "truncate_prompt_tokens": 2,
                                                    "truncation_side": side, "return_token_ids": True})
        assert reply["choices"][0]["prompt_token_ids"] == kept and reply["usage"]["prompt_tokens"] == 2


def test_a_request_id_names_the_response(server):
    assert post(server, "/v1/completions", {"prompt": [5], "request_id": "abc"})[1]["id"] == "cmpl-abc"
    assert post(server, "/v1/chat/completions", {"messages": USER, "request_id": "abc"})[1]["id"] == "chatcmpl-abc"


def test_max_logprobs_bounds_every_logprobs_field(server):
    for path, body, param in [("/v1/completions", {"prompt": [5], "logprobs": 6}, "logprobs"),
                              ("/v1/completions", {"prompt": [5], "prompt_logprobs": 6}, "prompt_logprobs"),
                              ("/v1/chat/completions", {"messages": USER, "logprobs": True, "top_logprobs": 6},
                               "top_logprobs")]:
        status, error = post(server, path, body)
        assert (status, error["error"]["param"]) == (400, param) and "--max-logprobs" in error["error"]["message"]


def test_the_max_logprobs_flag_sets_the_cap_and_refuses_what_the_engine_cannot_compute():
    parser = argparse.ArgumentParser()
    add_request_limit_arguments(parser)
    assert request_limits_from_args(parser.parse_args([])).max_logprobs == 20  # vLLM's default
    assert request_limits_from_args(parser.parse_args(["--max-logprobs", "3"])).max_logprobs == 3
    with pytest.raises(InvalidParameterError, match="--max-logprobs must be in"):
        request_limits_from_args(parser.parse_args(["--max-logprobs", "21"]))


def test_openapi_json_describes_the_bodies_with_their_bounds(server):
    import http.client
    from urllib.parse import urlparse

    parsed = urlparse(server)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    connection.request("GET", "/openapi.json")
    document = json.loads(connection.getresponse().read())
    schemas = document["components"]["schemas"]
    body = document["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/CompletionBody"}
    completion = schemas["CompletionBody"]["properties"]
    assert completion["top_p"]["exclusiveMinimum"] == 0 and completion["top_p"]["maximum"] == 1
    assert {"prompt_logprobs", "structured_outputs", "return_tokens_as_token_ids"} <= set(completion)
    assert {"continue_final_message", "chat_template_kwargs"} <= set(schemas["ChatBody"]["properties"])
    assert "prompt" in schemas["CompletionBody"]["required"]
