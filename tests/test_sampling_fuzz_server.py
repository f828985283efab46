"""Fuzz: sampling fields over their whole range and beyond (JSON's NaN, Infinity and 1e400 included), sent to a
running server, never kill or freeze the engine: every answer is a 200 or a 400 naming the field, /health stays
200, and a greedy canary gives the same tokens before and after. Bounded in time for CI.
"""

from __future__ import annotations

import json

import httpx2
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pegboard.core.async_engine import AsyncLLMEngine
from pegboard.core.config import EngineConfig
from pegboard.core.plugins import load_board
from pegboard.server.app import build_app
from pegboard.server.uvicorn_server import serving_in_thread

# Raw JSON number texts: json.loads reads NaN, Infinity and 1e400 (inf) as floats, so clients can send them.
EDGES = ["0", "-0.0", "1e-46", "5e-324", "1e-5", "0.5", "1", "2", "-1", "-2.0000001", "1e30", "1e39", "1e308",
         "1e400", "-1e400", "NaN", "Infinity", "-Infinity", "12345678901234567890123456789", "true", "null", '"1"']
NUMBER = st.one_of(st.sampled_from(EDGES), st.sampled_from(EDGES), st.floats(allow_nan=False).map(repr),
                   st.integers(-10**6, 10**6).map(str))
FIELDS = ["temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty",
          "seed", "min_tokens", "logprobs", "n", "max_tokens"]
CANARY = {"model": "tiny", "prompt": [5, 6, 7], "max_tokens": 8, "temperature": 0}


def body(fields: dict[str, str], bias: dict[str, str], stop_ids: list[int], stream: bool) -> str:
    """A completions body whose sampling fields are raw JSON texts."""
    parts = [f'"{name}": {text}' for name, text in fields.items()]
    if bias:
        parts.append('"logit_bias": {' + ", ".join(f'"{k}": {v}' for k, v in bias.items()) + "}")
    if stop_ids:
        parts.append(f'"stop_token_ids": {json.dumps(stop_ids)}')
    parts += ['"model": "tiny"', '"prompt": [1, 2, 3]', f'"stream": {json.dumps(stream)}']
    return "{" + ", ".join(parts) + "}"


@pytest.fixture(scope="module")
def server(tiny_llama_dir):
    config = EngineConfig(model=str(tiny_llama_dir), load_format="dummy", skip_tokenizer_init=True, device="cpu",
                          max_num_seqs=8, num_kv_blocks=128, max_model_len=64)
    engine = AsyncLLMEngine.from_config(config, load_board())
    try:
        with serving_in_thread(build_app(engine, ("tiny",))) as url, httpx2.Client(base_url=url, timeout=60) as client:
            canary = client.post("/v1/completions", json=CANARY).json()["choices"][0]["text"]
            yield client, engine, canary
    finally:
        engine.shutdown()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(fields=st.dictionaries(st.sampled_from(FIELDS), NUMBER, min_size=2, max_size=8),
       bias=st.dictionaries(st.sampled_from(["0", "1", "255", "256", "-1", "x"]), NUMBER, max_size=3),
       stop_ids=st.one_of(st.just([]), st.just(list(range(256))), st.lists(st.integers(-3, 300), max_size=3)),
       stream=st.booleans())
@example(fields={"top_p": "1e-46"}, bias={}, stop_ids=[], stream=False)  # killed the engine at d7b5593
@example(fields={"top_p": "0.5", "repetition_penalty": "5e-324"}, bias={}, stop_ids=[], stream=True)
def test_no_sampling_value_kills_the_engine(server, fields, bias, stop_ids, stream):
    client, engine, _ = server
    if "max_tokens" in fields or "n" in fields:  # keep each case quick: few tokens, few sequences
        fields = {**fields, "max_tokens": "4", "n": "2"}
    response = client.post("/v1/completions", content=body(fields, bias, stop_ids, stream),
                           headers={"Content-Type": "application/json"})
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"]
    elif stream:
        assert response.text.rstrip().endswith("data: [DONE]") and '"error"' not in response.text
    else:
        assert all(0 <= t < 256 for c in response.json()["choices"] for t in c.get("token_ids") or [])
    assert engine.is_running


def test_the_canary_is_unchanged_after_the_fuzz(server):
    client, engine, canary = server
    assert client.get("/health").status_code == 200
    assert client.post("/v1/completions", json=CANARY).json()["choices"][0]["text"] == canary
    assert engine.engine.block_manager.num_free_blocks == engine.engine.block_manager.num_blocks
