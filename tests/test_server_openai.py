"""The server as the official ``openai`` client sees it, serving the packaged SmolLM2: completions and chat,
streamed and whole, n > 1, stop strings, seeds, logprobs, echo; greedy output equals the offline LLM's."""

from __future__ import annotations

import http.client
import json
from collections import defaultdict
from urllib.parse import urlparse

import openai
import pytest

from pegboard.core.async_engine import AsyncLLMEngine
from pegboard.core.config import EngineConfig
from pegboard.core.sampling_params import SamplingParams
from pegboard.server.app import build_app
from pegboard.server.uvicorn_server import serving_in_thread

pytestmark = pytest.mark.slow

ENGINE = dict(model="smollm2", device="cpu", dtype="float32", max_model_len=2048, kv_cache_memory_gb=0.25)
PROMPTS = ["The capital of France is", "def fibonacci(n):"]
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = dict(temperature=0, max_tokens=12)


@pytest.fixture(scope="session")
def server():
    """A real uvicorn server for SmolLM2 on a free loopback port: (base URL, AsyncLLMEngine)."""
    engine = AsyncLLMEngine.from_config(EngineConfig(**ENGINE))
    try:
        with serving_in_thread(build_app(engine)) as url:
            yield url, engine
    finally:
        engine.shutdown()


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="session")
def offline():
    from pegboard import LLM

    return LLM(**ENGINE)


def post(url: str, path: str, body: dict) -> tuple[int, bytes]:
    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=300)
    connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, response.read()


def streamed_texts(chunks, field: str = "text") -> dict[int, str]:
    """Choice index -> the concatenation of its streamed text."""
    texts: dict[int, str] = defaultdict(str)
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += (getattr(choice, field) if field == "text" else choice.delta.content) or ""
    return dict(texts)


# ---- equal to the offline API -------------------------------------------------------------------------------


def test_greedy_completions_equal_the_offline_llm(client, offline):
    expected = offline.generate(PROMPTS, SamplingParams(**GREEDY), use_tqdm=False)
    got = client.completions.create(model="smollm2", prompt=PROMPTS, extra_body={"return_token_ids": True}, **GREEDY)
    assert [c.text for c in got.choices] == [o.outputs[0].text for o in expected]
    assert [c.model_extra["token_ids"] for c in got.choices] == [o.outputs[0].token_ids for o in expected]
    assert got.usage.prompt_tokens == sum(len(o.prompt_token_ids) for o in expected)
    assert got.usage.completion_tokens == sum(len(o.outputs[0].token_ids) for o in expected)


def test_greedy_chat_equals_the_offline_llm(client, offline):
    [expected] = offline.chat(CHAT, SamplingParams(**GREEDY), use_tqdm=False)
    got = client.chat.completions.create(model="smollm2", messages=CHAT, **GREEDY)
    assert got.choices[0].message.content == expected.outputs[0].text
    assert got.choices[0].message.role == "assistant"
    assert got.usage.prompt_tokens == len(expected.prompt_token_ids)


def test_token_id_prompts_give_the_same_completion(server, client):
    ids = json.loads(post(server[0], "/tokenize", {"prompt": PROMPTS[0]})[1])["tokens"]
    by_text = client.completions.create(model="smollm2", prompt=PROMPTS[0], **GREEDY)
    by_ids = client.completions.create(model="smollm2", prompt=ids, **GREEDY)
    assert by_ids.choices[0].text == by_text.choices[0].text


# ---- streaming ------------------------------------------------------------------------------------------------


def test_streamed_completion_adds_up_to_the_whole_one(client):
    whole = client.completions.create(model="smollm2", prompt=PROMPTS, **GREEDY)
    chunks = list(client.completions.create(model="smollm2", prompt=PROMPTS, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY))
    assert streamed_texts(chunks) == {c.index: c.text for c in whole.choices}
    finals = {c.index: c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason}
    assert finals == {c.index: c.finish_reason for c in whole.choices}
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(chunk.usage is None for chunk in chunks[:-1])


def test_streamed_chat_starts_with_the_role_and_ends_with_done(server, client):
    whole = client.chat.completions.create(model="smollm2", messages=CHAT, **GREEDY)
    chunks = list(client.chat.completions.create(model="smollm2", messages=CHAT, stream=True, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert streamed_texts(chunks, "delta") == {0: whole.choices[0].message.content}
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    status, raw = post(server[0], "/v1/chat/completions", {"messages": CHAT, "stream": True, **GREEDY})
    assert status == 200 and raw.endswith(b"\n\ndata: [DONE]\n\n")


def test_n_streamed_choices_each_carry_their_index(client):
    kwargs = dict(model="smollm2", prompt=PROMPTS, n=3, seed=7, temperature=1.0, max_tokens=8)
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(stream=True, **kwargs))
    assert sorted(streamed_texts(chunks)) == list(range(6))
    assert streamed_texts(chunks) == {c.index: c.text for c in whole.choices}


# ---- sampling -----------------------------------------------------------------------------------------------------


def test_a_seed_reproduces_a_sample(client):
    def sample(seed: int) -> list[str]:
        reply = client.chat.completions.create(model="smollm2", messages=CHAT, n=2, seed=seed, temperature=1.2,
                                               max_tokens=10)
        return [c.message.content for c in reply.choices]

    first = sample(1)
    assert sample(1) == first and sample(2) != first
    assert first[0] != first[1]  # the n sequences draw differently


def test_stop_strings_end_the_text_and_never_stream_a_partial_match(client):
    whole = client.completions.create(model="smollm2", prompt=PROMPTS[0], **GREEDY).choices[0].text
    stop = whole[whole.index(".") + 1:][:4]  # a stop string that starts right after the first sentence
    assert len(stop) > 1
    stopped = client.completions.create(model="smollm2", prompt=PROMPTS[0], stop=[stop], **GREEDY).choices[0]
    assert (stopped.text, stopped.finish_reason) == (whole[:whole.index(stop)], "stop")
    assert stopped.model_extra["stop_reason"] == stop
    chunks = list(client.completions.create(model="smollm2", prompt=PROMPTS[0], stop=stop, stream=True, **GREEDY))
    assert streamed_texts(chunks) == {0: stopped.text}
    sent = ""
    for chunk in chunks:
        sent += chunk.choices[0].text
        assert stop[0] not in sent[whole.index(".") + 1:]  # not even the stop string's first character leaked


def test_completion_logprobs_in_the_legacy_shape(client):
    choice = client.completions.create(model="smollm2", prompt=PROMPTS[0], logprobs=2, **GREEDY).choices[0]
    logprobs = choice.logprobs
    assert "".join(logprobs.tokens) == choice.text and len(logprobs.tokens) == GREEDY["max_tokens"]
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    for token, lp, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        assert top[token] == lp and max(top.values()) == lp and 2 <= len(top) <= 3  # greedy: the chosen is best
    offsets = [sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(logprobs.tokens))]
    assert logprobs.text_offset == offsets


def test_echo_with_no_new_tokens_scores_the_prompt(client):
    reply = client.completions.create(model="smollm2", prompt=PROMPTS[0], echo=True, max_tokens=0, logprobs=1)
    choice = reply.choices[0]
    assert choice.text == PROMPTS[0] and reply.usage.completion_tokens == 0
    assert choice.logprobs.token_logprobs[0] is None and all(lp < 0 for lp in choice.logprobs.token_logprobs[1:])
    assert "".join(choice.logprobs.tokens) == PROMPTS[0]
    echoed = client.completions.create(model="smollm2", prompt=PROMPTS[0], echo=True, **GREEDY).choices[0]
    plain = client.completions.create(model="smollm2", prompt=PROMPTS[0], **GREEDY).choices[0]
    assert echoed.text == PROMPTS[0] + plain.text


def test_chat_logprobs_list_the_top_alternatives(client):
    reply = client.chat.completions.create(model="smollm2", messages=CHAT, logprobs=True, top_logprobs=3, **GREEDY)
    content = reply.choices[0].logprobs.content
    text = "".join(t.token for t in content)
    assert text.removesuffix("<|im_end|>") == reply.choices[0].message.content  # the EOS token is scored too
    for token in content:
        assert len(token.top_logprobs) == 3 and token.top_logprobs[0].token == token.token
        assert [t.logprob for t in token.top_logprobs] == sorted((t.logprob for t in token.top_logprobs),
                                                                reverse=True)
        assert bytes(token.bytes).decode() == token.token


# ---- the other routes ----------------------------------------------------------------------------------------------


def test_models_health_version_tokenize_detokenize(server, client):
    url, _ = server
    assert [m.id for m in client.models.list().data] == ["smollm2"]
    assert client.models.retrieve("smollm2").model_extra["max_model_len"] == 2048
    tokens = json.loads(post(url, "/tokenize", {"prompt": "Hello world", "return_token_strs": True})[1])
    assert tokens["count"] == 2 and tokens["token_strs"] == ["Hello", "Ġworld"]
    assert json.loads(post(url, "/detokenize", {"tokens": tokens["tokens"]})[1]) == {"prompt": "Hello world"}
    chat_count = json.loads(post(url, "/tokenize", {"messages": CHAT})[1])["count"]
    usage = client.chat.completions.create(model="smollm2", messages=CHAT, max_tokens=1).usage
    assert chat_count == usage.prompt_tokens
    for path, expected in (("/health", b""), ("/version", b'{"version":"0.1.0"}')):
        parsed = urlparse(url)
        connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
        connection.request("GET", path)
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, expected)


# ---- vLLM's extras through the official client ------------------------------------------------------------------


def test_vllm_extras_through_the_openai_client(client):
    prefill = client.chat.completions.create(
        model="smollm2", messages=[*CHAT, {"role": "assistant", "content": "The capital of France is"}],
        extra_body={"continue_final_message": True, "add_generation_prompt": False, "return_prompt_text": True},
        **GREEDY)
    assert prefill.model_extra["prompt_text"].endswith("The capital of France is")
    assert "Paris" in prefill.choices[0].message.content  # it goes on with the answer it was given
    scored = client.completions.create(model="smollm2", prompt=PROMPTS[0], max_tokens=1,
                                       extra_body={"prompt_logprobs": 1})
    positions = scored.choices[0].model_extra["prompt_logprobs"]
    assert positions[0] is None and len(positions) == scored.usage.prompt_tokens
    chunks = list(client.completions.create(model="smollm2", prompt=PROMPTS[0], stream=True, stream_options={
        "include_usage": True}, extra_body={"stream_options": {"include_usage": True,
                                                               "continuous_usage_stats": True}}, **GREEDY))
    assert [c.usage.completion_tokens for c in chunks if c.choices][-1] == GREEDY["max_tokens"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == GREEDY["max_tokens"]
    with pytest.raises(openai.BadRequestError, match="use_beam_search"):
        client.completions.create(model="smollm2", prompt=PROMPTS[0], extra_body={"use_beam_search": True})
