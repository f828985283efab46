"""The server under load: 64 concurrent streaming clients on SmolLM2 (CPU), a quarter of them hanging up
mid-stream. Afterwards every other request is complete, the KV block pool is free again, /health is OK
and the /metrics counts add up.

Disconnected requests are aborted by the server; the engine reports only requests that finished on
their own, so aborts appear in no ``request_success_total`` series (not even ``finished_reason="abort"``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx2
import pytest
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from pegboard.core.async_engine import AsyncLLMEngine
from pegboard.core.config import EngineConfig
from pegboard.server.app import build_app
from pegboard.server.uvicorn_server import serving_in_thread

pytestmark = pytest.mark.slow

CLIENTS = 64
HANG_UP_AFTER = 2  # chunks a disconnecting client reads before it closes the stream


@dataclass(frozen=True)
class Client:
    """One client's request: a token-id prompt, how many tokens it asks for, whether it hangs up."""

    index: int
    prompt: list[int]
    max_tokens: int
    hangs_up: bool


@dataclass
class Outcome:
    chunks: int = 0
    finish_reason: str | None = None
    completion_tokens: int | None = None


CLIENT_REQUESTS = [Client(i, list(range(1000 + 7 * i, 1000 + 7 * i + 4 + i % 13)), 8 + i % 9, i % 4 == 0)
                   for i in range(CLIENTS)]


async def stream(openai: AsyncOpenAI, client: Client) -> Outcome:
    """Stream one completion (greedy, ignore_eos), hanging up after a few chunks if the client does."""
    outcome = Outcome()
    response = await openai.completions.create(
        model="smollm2", prompt=client.prompt, max_tokens=200 if client.hangs_up else client.max_tokens,
        temperature=0, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    async with response:
        async for chunk in response:
            if chunk.choices:
                outcome.chunks += 1
                outcome.finish_reason = chunk.choices[0].finish_reason or outcome.finish_reason
            if chunk.usage:
                outcome.completion_tokens = chunk.usage.completion_tokens
            if client.hangs_up and outcome.chunks == HANG_UP_AFTER:
                break  # leaving the block closes the connection
    return outcome


async def run_clients(url: str) -> list[Outcome]:
    async with AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300) as openai:
        return await asyncio.gather(*(stream(openai, client) for client in CLIENT_REQUESTS))


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    text = httpx2.get(f"{url}/metrics").text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset({"model_name": "smollm2", **labels}.items()))]


def settled(url: str, timeout: float = 30.0) -> dict:
    """/metrics once no request is running or waiting (aborts land within an engine step or two)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        idle = metric(samples, "pegboard:num_requests_running") == metric(samples, "pegboard:num_requests_waiting") == 0
        if idle or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def test_64_streaming_clients_with_a_quarter_hanging_up():
    config = EngineConfig(model="smollm2", device="cpu", max_num_seqs=CLIENTS, max_model_len=512, num_kv_blocks=1024)
    engine = AsyncLLMEngine.from_config(config)
    try:
        with serving_in_thread(build_app(engine)) as url:
            outcomes = asyncio.run(run_clients(url))
            samples = settled(url)
            health = httpx2.get(f"{url}/health").status_code
            blocks = engine.engine.block_manager
            free_blocks, all_blocks = blocks.num_free_blocks, blocks.num_blocks
    finally:
        engine.shutdown()

    completers = [(c, o) for c, o in zip(CLIENT_REQUESTS, outcomes) if not c.hangs_up]
    assert len(completers) == 48
    for client, outcome in completers:  # complete, to the token
        assert outcome.finish_reason == "length", client
        assert outcome.completion_tokens == client.max_tokens, client
    assert all(o.chunks == HANG_UP_AFTER for c, o in zip(CLIENT_REQUESTS, outcomes) if c.hangs_up)

    assert free_blocks == all_blocks  # every aborted request's KV blocks came back
    assert health == 200
    assert metric(samples, "pegboard:num_requests_running") == metric(samples, "pegboard:num_requests_waiting") == 0
    assert metric(samples, "pegboard:kv_cache_usage_perc") == 0

    assert metric(samples, "pegboard:request_success_total", finished_reason="length") == 48
    assert metric(samples, "pegboard:request_success_total", finished_reason="stop") == 0
    assert not any(dict(labels).get("finished_reason") == "abort" for _, labels in samples)
    assert metric(samples, "pegboard:e2e_request_latency_seconds_count") == 48
    assert metric(samples, "pegboard:time_to_first_token_seconds_count") == CLIENTS  # hang-ups got tokens too
    assert metric(samples, "pegboard:num_preemptions_total") == 0
    assert metric(samples, "pegboard:prompt_tokens_total") == sum(len(c.prompt) for c in CLIENT_REQUESTS)
    completed_tokens = sum(c.max_tokens for c, _ in completers)
    generated = metric(samples, "pegboard:generation_tokens_total")
    assert completed_tokens + 16 * HANG_UP_AFTER <= generated < completed_tokens + 16 * 200
