"""The server under bad input, overload, missing keys and disconnects (a tiny random model with a byte-level
tokenizer and a chat template, so every request is cheap): every answer is a 4xx in OpenAI's error shape or a
success, never a 500, and the server keeps serving."""

from __future__ import annotations

import http.client
import json
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pegboard.core.async_engine import AsyncLLMEngine
from pegboard.core.config import EngineConfig
from pegboard.server.app import build_app
from pegboard.server.uvicorn_server import serving_in_thread



@contextmanager
def tiny_server(model: Path, **app_kwargs):
    """A server for the tiny model on a free loopback port: yields (base URL, AsyncLLMEngine)."""
    config = EngineConfig(model=str(model), load_format="dummy", device="cpu", max_num_seqs=8, num_kv_blocks=256)
    engine = AsyncLLMEngine.from_config(config)
    try:
        with serving_in_thread(build_app(engine, ("tiny", "tiny-alias"), **app_kwargs)) as url:
            yield url, engine
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def server(tiny_chat_model):
    with tiny_server(tiny_chat_model) as (url, engine):
        yield url, engine


def send(url: str, method: str, path: str, body: bytes | str | dict | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request (bodies sent exactly as given): status, headers, body."""
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def assert_error_shape(status: int, data: bytes) -> dict:
    """A 4xx with OpenAI's error object."""
    assert 400 <= status < 500, (status, data[:300])
    error = json.loads(data)["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
    assert error["type"] == "invalid_request_error"
    return error


def assert_serving(url: str) -> None:
    status, _, data = send(url, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})
    assert status == 200, data
    assert send(url, "GET", "/health")[0] == 200


# ---- the sweep ----------------------------------------------------------------------------------------------

COMPLETION = {"prompt": "hello", "max_tokens": 2}
CHAT = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}

BAD_REQUESTS = [
    # (path, body, status, param)
    ("/v1/completions", "{not json", 400, None),
    ("/v1/completions", "", 400, None),
    ("/v1/completions", "[1, 2]", 400, None),
    ("/v1/completions", '{"prompt": "x", "temperature": NaN}', 400, None),
    ("/v1/completions", '{"prompt": "x", "temperature": 1e400}', 400, "temperature"),
    ("/v1/completions", b'{"prompt": "\xff\xfe"}', 400, None),
    ("/v1/completions", r'{"prompt": "a\ud800"}', 400, None),
    ("/v1/completions", r'{"prompt": "a", "model": "\udfff"}', 400, None),
    ("/v1/completions", "[" * 100_000 + "]" * 100_000, 400, None),
    ("/v1/completions", '{"prompt": "x", "seed": 1' + "0" * 5000 + "}", 400, None),
    ("/v1/completions", {"max_tokens": 2}, 400, "prompt"),
    ("/v1/completions", {"prompt": ""}, 400, "prompt"),
    ("/v1/completions", {"prompt": []}, 400, "prompt"),
    ("/v1/completions", {"prompt": [[]]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1, "a"]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [256]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [-1]}, 400, "prompt"),
    ("/v1/completions", {"prompt": 12}, 400, "prompt"),
    ("/v1/completions", {**COMPLETION, "model": "gpt-4"}, 404, "model"),
    ("/v1/completions", {**COMPLETION, "model": 3}, 400, "model"),
    ("/v1/completions", {**COMPLETION, "max_tokens": -1}, 400, "max_tokens"),
    ("/v1/completions", {**COMPLETION, "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {**COMPLETION, "max_tokens": 10**30}, 400, "max_tokens"),
    ("/v1/completions", {**COMPLETION, "max_tokens": 255}, 400, "max_tokens"),
    ("/v1/completions", {**COMPLETION, "max_tokens": "2"}, 400, "max_tokens"),
    ("/v1/completions", {**COMPLETION, "max_tokens": 2.5}, 400, "max_tokens"),
    ("/v1/completions", {**COMPLETION, "max_tokens": True}, 400, "max_tokens"),
    ("/v1/completions", {**COMPLETION, "n": 0}, 400, "n"),
    ("/v1/completions", {**COMPLETION, "n": 10**6}, 400, "n"),
    ("/v1/completions", {**COMPLETION, "temperature": -0.5}, 400, "temperature"),
    ("/v1/completions", {**COMPLETION, "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {**COMPLETION, "top_p": 1.5}, 400, "top_p"),
    ("/v1/completions", {**COMPLETION, "top_k": -2}, 400, "top_k"),
    ("/v1/completions", {**COMPLETION, "min_p": 2}, 400, "min_p"),
    ("/v1/completions", {**COMPLETION, "repetition_penalty": 0}, 400, "repetition_penalty"),
    ("/v1/completions", {**COMPLETION, "presence_penalty": 3}, 400, "presence_penalty"),
    ("/v1/completions", {**COMPLETION, "frequency_penalty": -3}, 400, "frequency_penalty"),
    ("/v1/completions", {**COMPLETION, "seed": 2**64}, 400, "seed"),
    ("/v1/completions", {**COMPLETION, "seed": "1"}, 400, "seed"),
    ("/v1/completions", {**COMPLETION, "logprobs": 21}, 400, "logprobs"),
    ("/v1/completions", {**COMPLETION, "logprobs": True}, 400, "logprobs"),
    ("/v1/completions", {**COMPLETION, "stop": ""}, 400, "stop"),
    ("/v1/completions", {**COMPLETION, "stop": ["a", 3]}, 400, "stop"),
    ("/v1/completions", {**COMPLETION, "stop_token_ids": [999]}, 400, "stop_token_ids"),
    ("/v1/completions", {**COMPLETION, "logit_bias": {"999": 1}}, 400, "logit_bias"),
    ("/v1/completions", {**COMPLETION, "logit_bias": {"x": 1}}, 400, "logit_bias"),
    ("/v1/completions", {**COMPLETION, "logit_bias": {"5": 101}}, 400, "logit_bias"),
    ("/v1/completions", {**COMPLETION, "logit_bias": [1]}, 400, "logit_bias"),
    ("/v1/completions", {**COMPLETION, "min_tokens": 3}, 400, "min_tokens"),
    ("/v1/completions", {**COMPLETION, "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {**COMPLETION, "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ("/v1/completions", {**COMPLETION, "stream": True, "stream_options": []}, 400, "stream_options"),
    ("/v1/completions", {**COMPLETION, "echo": 1}, 400, "echo"),
    ("/v1/completions", {**COMPLETION, "suffix": "end"}, 400, "suffix"),
    ("/v1/completions", {**COMPLETION, "best_of": 3}, 400, "best_of"),
    ("/v1/completions", {**COMPLETION, "user": 5}, 400, "user"),
    ("/v1/completions", {**COMPLETION, "ignore_eos": "no"}, 400, "ignore_eos"),
    ("/v1/chat/completions", {"max_tokens": 2}, 400, "messages"),
    ("/v1/chat/completions", {**CHAT, "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {**CHAT, "messages": "hello"}, 400, "messages"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"content": "hi"}]}, 400, "messages[0].role"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user"}]}, 400, "messages[0].content"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "messages[0].content"),
    ("/v1/chat/completions", {**CHAT, "messages": ["hi"]}, 400, "messages[0]"),
    ("/v1/chat/completions", {**CHAT, "max_completion_tokens": 0}, 400, "max_completion_tokens"),
    ("/v1/chat/completions", {**CHAT, "top_logprobs": 2}, 400, "top_logprobs"),
    ("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 50}, 400, "top_logprobs"),
    ("/v1/chat/completions", {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tool_choice"),
    ("/v1/chat/completions", {**CHAT, "tool_choice": "required"}, 400, "tool_choice"),
    ("/v1/chat/completions", {**CHAT, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "minProperties": 1}}}}, 400, "json_schema"),  # not enforceable
    ("/v1/chat/completions", {**CHAT, "response_format": {"type": "yaml"}}, 400, "response_format"),
    ("/v1/chat/completions", {**CHAT, "guided_regex": "a(?=b)"}, 400, "regex"),  # lookahead: no DFA has it
    ("/v1/chat/completions", {**CHAT, "max_tokens": 250}, 400, "max_tokens"),
    ("/tokenize", {"prompt": 3}, 400, "prompt"),
    ("/detokenize", {"tokens": [1, 300]}, 400, "tokens"),
    ("/detokenize", {}, 400, "tokens"),
]


@pytest.mark.parametrize("path, body, status, param", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_in_openai_shape(server, path, body, status, param):
    url, _ = server
    got, _, data = send(url, "POST", path, body)
    assert got == status, data
    assert assert_error_shape(got, data)["param"] == param


def test_the_server_keeps_serving_after_the_sweep(server):
    assert_serving(server[0])


def test_surrogate_pairs_are_text(server):
    status, _, data = send(server[0], "POST", "/v1/completions", r'{"prompt": "\ud83d\ude00", "max_tokens": 2}')
    assert status == 200, data


def test_context_length_errors_say_how_many_tokens(server):
    status, _, data = send(server[0], "POST", "/v1/completions", {"prompt": "x" * 256})
    error = assert_error_shape(status, data)
    assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
    assert "maximum context length is 256 tokens" in error["message"] and "256 in the prompt" in error["message"]


def test_huge_bodies_get_413(server):
    status, _, data = send(server[0], "POST", "/v1/completions", '{"prompt": "' + "a" * (9 * 2**20) + '"}')
    assert status == 413 and assert_error_shape(status, data)["code"] == "request_too_large"
    assert_serving(server[0])


def test_unknown_routes_and_methods_are_404_and_405(server):
    url, _ = server
    status, _, data = send(url, "GET", "/v1/nothing")
    assert status == 404 and "Invalid URL (GET /v1/nothing)" in assert_error_shape(status, data)["message"]
    status, _, data = send(url, "GET", "/v1/completions")
    assert status == 405 and assert_error_shape(status, data)
    status, _, data = send(url, "GET", "/v1/models/gpt-4")
    assert status == 404 and assert_error_shape(status, data)["code"] == "model_not_found"


def test_unknown_fields_are_refused_by_name_and_every_served_name_works(server):
    url, _ = server
    for field in ("store", "metadata", "a_future_field"):  # OpenAI's stored completions, or a typo: never ignored
        status, _, data = send(url, "POST", "/v1/completions", {**COMPLETION, field: [1]})
        assert status == 400 and json.loads(data)["error"]["param"] == field
    for model in ("tiny", "tiny-alias"):
        status, _, data = send(url, "POST", "/v1/completions", {**COMPLETION, "model": model})
        assert status == 200 and json.loads(data)["model"] == model
    assert [m["id"] for m in json.loads(send(url, "GET", "/v1/models")[2])["data"]] == ["tiny", "tiny-alias"]


def test_a_sequence_banned_from_every_token_still_finishes(server):
    """min_tokens with every token a stop token leaves nothing to sample; the engine must survive it."""
    body = {"prompt": [1, 2], "max_tokens": 3, "min_tokens": 2, "stop_token_ids": list(range(256)),
            "temperature": 1.0}
    status, _, data = send(server[0], "POST", "/v1/completions", body)
    assert status == 200, data
    assert_serving(server[0])


def test_a_chat_template_given_at_start_replaces_the_models(tiny_chat_model):
    with tiny_server(tiny_chat_model, chat_template="{{ messages[-1]['content'] }}") as (url, _):
        status, _, data = send(url, "POST", "/tokenize", {"messages": [{"role": "user", "content": "abc"}]})
        assert status == 200 and json.loads(data)["tokens"] == [ord(c) - ord("!") for c in "abc"]


# ---- fuzzing both POST schemas -------------------------------------------------------------------------------

JSON_LEAVES = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False,
                                                                             allow_infinity=False) | st.text(max_size=8)
ANY_JSON = st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=6), inner, max_size=4), max_leaves=12)
SMALL_TEXT = st.text(min_size=1, max_size=12)


def field(valid: st.SearchStrategy, *, keep_small: bool = False) -> st.SearchStrategy:
    """Mostly a valid value, sometimes any JSON (never a large count when ``keep_small``: generation stays short)."""
    wild = ANY_JSON.filter(lambda v: not (keep_small and (v is None or isinstance(v, int) and v > 4)))
    return st.integers(0, 7).flatmap(lambda roll: wild if roll == 7 else valid)


SAMPLING = {
    "model": field(st.sampled_from(["tiny", "tiny-alias"])),
    "n": field(st.integers(1, 3), keep_small=True),
    "temperature": field(st.floats(0, 2)), "top_p": field(st.floats(0.01, 1)), "top_k": field(st.integers(-1, 300)),
    "min_p": field(st.floats(0, 1)), "seed": field(st.integers(-2**63, 2**63)),
    "presence_penalty": field(st.floats(-2, 2)), "frequency_penalty": field(st.floats(-2, 2)),
    "repetition_penalty": field(st.floats(0.1, 2)),
    "logit_bias": field(st.dictionaries(st.integers(0, 255).map(str), st.floats(-100, 100), max_size=3)),
    "stop": field(SMALL_TEXT | st.lists(SMALL_TEXT, max_size=3)),
    "stop_token_ids": field(st.lists(st.integers(0, 255), max_size=3)),
    "min_tokens": field(st.integers(0, 3), keep_small=True), "ignore_eos": field(st.booleans()),
    "stream": field(st.booleans()), "stream_options": field(st.fixed_dictionaries({"include_usage": st.booleans()})),
    "user": field(SMALL_TEXT), "skip_special_tokens": field(st.booleans()),
}
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "developer"]),
                                 "content": SMALL_TEXT | st.lists(st.fixed_dictionaries(
                                     {"type": st.just("text"), "text": SMALL_TEXT}), max_size=2)})
COMPLETION_FIELDS = {
    **SAMPLING, "max_tokens": field(st.integers(0, 3), keep_small=True), "echo": field(st.booleans()),
    "logprobs": field(st.integers(0, 5)),
    "prompt": field(SMALL_TEXT | st.lists(SMALL_TEXT, min_size=1, max_size=2)
                    | st.lists(st.integers(0, 255), min_size=1, max_size=6)
                    | st.lists(st.lists(st.integers(0, 255), min_size=1, max_size=4), min_size=1, max_size=2)),
}
CHAT_FIELDS = {
    **SAMPLING, "max_tokens": field(st.integers(1, 3), keep_small=True),
    "max_completion_tokens": field(st.integers(1, 3), keep_small=True),
    "messages": field(st.lists(MESSAGE, min_size=1, max_size=3)), "logprobs": field(st.booleans()),
    "top_logprobs": field(st.integers(0, 5)), "add_generation_prompt": field(st.booleans()),
    "response_format": field(st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])})),
}


def bodies(fields: dict[str, st.SearchStrategy], required: tuple[str, ...]) -> st.SearchStrategy:
    """JSON objects with the required fields (mostly valid) and any subset of the others, sometimes extra keys."""
    optional = {k: v for k, v in fields.items() if k not in required}
    return st.fixed_dictionaries({k: fields[k] for k in required}, optional=optional).flatmap(
        lambda body: st.dictionaries(st.text(max_size=5), JSON_LEAVES, max_size=1).map(lambda extra: {**extra, **body}))


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def check_fuzzed(url: str, path: str, body: dict) -> None:
    if "max_tokens" not in body and "max_completion_tokens" not in body:
        body = {**body, "max_tokens": 2}  # the chat default (up to max_model_len) would be slow, not wrong
    status, _, data = send(url, "POST", path, body)
    assert status < 500, (status, data[:500])
    if status >= 400:
        assert_error_shape(status, data)
    elif body.get("stream") is True:
        assert data.endswith(b"data: [DONE]\n\n") and b'"error"' not in data, data[-500:]


@FUZZ
@given(body=bodies(COMPLETION_FIELDS, ("prompt",)))
def test_fuzzed_completion_bodies_never_get_a_5xx(server, body):
    check_fuzzed(server[0], "/v1/completions", body)


@FUZZ
@given(body=bodies(CHAT_FIELDS, ("messages",)))
def test_fuzzed_chat_bodies_never_get_a_5xx(server, body):
    check_fuzzed(server[0], "/v1/chat/completions", body)


def test_the_server_keeps_serving_after_fuzzing(server):
    assert_serving(server[0])
