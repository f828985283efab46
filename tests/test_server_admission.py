"""Admission by work, on the tiny random Llama with a byte-level tokenizer: caps on prompts and on n x prompts
(400 naming the field), a request's sequences counted against capacity all at once (503 when they do not fit
now, 400 when they never could), a request over max_model_len a 400 (the KV cache always holds max_model_len
tokens), and prompt text longer than max_model_len tokens could spell refused before it is tokenized."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from pegboard.core import cli
from pegboard.core.async_engine import AsyncLLMEngine
from pegboard.core.config import EngineConfig
from pegboard.core.errors import InvalidParameterError
from pegboard.core.plugins import load_board
from pegboard.server.protocol import RequestLimits
from pegboard.plugins.serve_command.server_flags import request_limits_from_args
from tiny_server import connect, serving  # tests/tiny_server.py (conftest puts tests/ on sys.path)

LONG = {"prompt": [1, 2, 3], "max_tokens": 200, "ignore_eos": True, "stream": True}


def refused(url: str, body: dict[str, Any], path: str = "/v1/completions") -> tuple[int, dict, dict]:
    """(status, headers, error object) of a request that is not answered 200."""
    response = connect(url, path, body)
    data = json.loads(response.read())
    assert response.status != 200, data
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data["error"]


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def engine_of(app) -> AsyncLLMEngine:
    return app.state.pegboard.engine


# ---- caps per request --------------------------------------------------------------------------------------------


def test_a_million_one_token_prompts_are_refused_before_any_engine_request(tiny_chat_model):
    with serving(tiny_chat_model) as (url, app):
        for prompts in ([[1]] * 1_000_000, ["a"] * 1_000_000):
            status, _, error = refused(url, {"prompt": prompts, "max_tokens": 1})
            assert (status, error["param"]) == (400, "prompt") and "1000000 prompts" in error["message"]
        assert engine_of(app).num_pending == 0 and not engine_of(app).engine.output_processor.groups


def test_n_times_prompts_beyond_the_cap_is_a_400_naming_n(tiny_chat_model):
    limits = RequestLimits(max_prompts=8, max_sequences=12)
    with serving(tiny_chat_model, max_waiting_requests=16, limits=limits) as (url, _):
        status, _, error = refused(url, {"prompt": [[1]] * 4, "n": 4, "max_tokens": 1})
        assert (status, error["param"]) == (400, "n") and "16 sequences" in error["message"]
        chat = {"messages": [{"role": "user", "content": "hi"}], "n": 13, "max_tokens": 1}
        assert refused(url, chat, "/v1/chat/completions")[2]["param"] == "n"
        assert refused(url, {"prompt": [[1]] * 9, "max_tokens": 1})[2]["param"] == "prompt"
        fits = connect(url, "/v1/completions", {"prompt": [[1]] * 4, "n": 3, "max_tokens": 1})
        assert fits.status == 200 and len(json.loads(fits.read())["choices"]) == 12


def test_the_serve_flags_set_the_caps_and_a_cap_below_1_is_refused():
    parser = cli.build_parser(load_board())
    args = parser.parse_args(["serve", "--max-prompts-per-request", "3", "--max-sequences-per-request", "9"])
    assert request_limits_from_args(args) == RequestLimits(max_prompts=3, max_sequences=9)
    assert request_limits_from_args(parser.parse_args(["serve"])) == RequestLimits()
    with pytest.raises(InvalidParameterError, match="--max-sequences-per-request must be >= 1"):
        request_limits_from_args(parser.parse_args(["serve", "--max-sequences-per-request", "0"]))


# ---- capacity --------------------------------------------------------------------------------------------------


def test_a_request_counts_n_times_prompts_against_capacity_at_once(tiny_chat_model):
    with serving(tiny_chat_model, max_num_seqs=2, max_waiting_requests=2) as (url, app):  # capacity: 4 sequences
        engine = engine_of(app)
        running = connect(url, "/v1/completions", {**LONG, "n": 3})
        assert running.status == 200 and running.readline().startswith(b"data: ")
        assert engine.num_pending == 3
        status, headers, error = refused(url, {"prompt": [[1], [2]], "max_tokens": 1})
        assert (status, headers.get("retry-after"), error["code"]) == (503, "1", "engine_overloaded")
        assert engine.num_pending == 3  # nothing of the refused request was admitted
        assert connect(url, "/v1/completions", {"prompt": [[1]], "max_tokens": 1}).status == 200
        running.close()
        wait_for(lambda: engine.num_pending == 0)  # the disconnect aborted it and gave its room back
        assert connect(url, "/v1/completions", {"prompt": [[1], [2]], "n": 2, "max_tokens": 1}).status == 200


def test_more_sequences_than_capacity_could_ever_admit_is_a_400_not_a_503(tiny_chat_model):
    with serving(tiny_chat_model, max_num_seqs=2, max_waiting_requests=2) as (url, app):
        status, headers, error = refused(url, {"prompt": [[1], [2]], "n": 3, "max_tokens": 1})
        assert (status, error["param"], "retry-after" in headers) == (400, "n", False)
        assert "6 sequences" in error["message"] and engine_of(app).num_pending == 0


def test_an_admission_gives_back_the_room_no_stream_took(tiny_llama_dir):
    config = EngineConfig(model=str(tiny_llama_dir), load_format="dummy", skip_tokenizer_init=True, device="cpu",
                          max_num_seqs=2, num_kv_blocks=16)
    engine = AsyncLLMEngine.from_config(config, max_waiting_requests=3)
    try:
        admission = engine.admit(4)
        assert (engine.capacity, engine.num_pending) == (5, 4)
        admission.take(1)
        admission.release()
        assert engine.num_pending == 1  # the one taken is the stream's, freed when it finishes
        with pytest.raises(InvalidParameterError, match="ever holds"):
            engine.admit(6)
    finally:
        engine.shutdown()


# ---- what the KV cache could never hold --------------------------------------------------------------------------


def test_an_engine_whose_kv_cache_cannot_hold_max_model_len_tokens_does_not_start(tiny_llama_dir):
    """So any one sequence that passes the context check (prompt + max_tokens <= max_model_len) fits alone, and
    the only request that could never run is one with more sequences than capacity (the 400 above)."""
    from pegboard.core.engine import LLMEngine

    config = EngineConfig(model=str(tiny_llama_dir), load_format="dummy", skip_tokenizer_init=True, device="cpu",
                          num_kv_blocks=15)  # 240 tokens; max_model_len 256
    with pytest.raises(InvalidParameterError, match="fewer than max_model_len") as refused_start:
        LLMEngine(config)
    assert refused_start.value.param == "max_model_len"


def test_a_request_over_max_model_len_is_a_400_not_a_503(tiny_chat_model):
    with serving(tiny_chat_model, max_num_seqs=1, max_waiting_requests=0) as (url, _):
        status, headers, error = refused(url, {"prompt": [1] * 10, "max_tokens": 247})
        assert (status, error["param"], error["code"]) == (400, "max_tokens", "context_length_exceeded")
        assert "retry-after" not in headers


# ---- characters before tokens ------------------------------------------------------------------------------------


class CountingTokenizer:
    """The server's tokenizer, counting the texts it is asked to tokenize."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.texts: list[int] = []

    def __call__(self, text: str, **kwargs: Any) -> Any:
        self.texts.append(len(text))
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


def test_prompt_text_longer_than_the_context_could_spell_is_refused_before_tokenizing(tiny_chat_model):
    with serving(tiny_chat_model) as (url, app):
        state = app.state.pegboard
        state.tokenizer = counting = CountingTokenizer(state.tokenizer)
        bound = state.model.max_model_len * state.model.longest_token_chars  # 256 tokens of 1 byte each
        assert bound == 256
        for path, body, param in [
            ("/v1/completions", {"prompt": "a" * (bound + 1)}, "prompt"),
            ("/v1/completions", {"prompt": ["ok", "a" * 4 * 2**20]}, "prompt"),
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a" * bound}]}, "messages"),
            ("/tokenize", {"prompt": "a" * (bound + 1)}, "prompt"),
        ]:
            status, _, error = refused(url, body, path)
            assert (status, error["param"], error["code"]) == (400, param, "context_length_exceeded")
            assert "characters" in error["message"]
        assert max(counting.texts, default=0) <= bound  # nothing over the bound reached the tokenizer
        assert refused(url, {"prompt": "a" * bound})[2]["code"] == "context_length_exceeded"  # by tokens
        assert counting.texts[-1] == bound
